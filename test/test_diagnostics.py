"""Diagnostics bookkeeping: windows, percentiles, rate, speedup sources and status levels."""

import math

import pytest

from vla_pruned_ros.diagnostics import (
    ERROR,
    OK,
    SOURCE_CALIBRATION,
    SOURCE_DENSE_ACTIVE,
    SOURCE_NONE,
    SOURCE_PERIODIC,
    WARN,
    DiagnosticsError,
    FaultTracker,
    PolicyMonitor,
    RollingWindow,
    StepSample,
    percentile,
)
from vla_pruned_ros.stats import StepStats


def sample(pruner='tri_stage', latency_ms=10.0, device='cpu', kept=(16, 8)):
    return StepSample(
        pruner=pruner, latency_ms=latency_ms, tokens_2d_in=64, tokens_3d_in=32,
        tokens_2d_kept=kept[0], tokens_3d_kept=kept[1], flops_dense=100.0,
        flops_actual=100.0 if pruner == 'dense' else 25.0, device=device,
    )


def feed(monitor, start_s, rate_hz, count, **kwargs):
    """``count`` steps at ``rate_hz`` from ``start_s``; returns the time of the last one."""
    t = start_s
    for i in range(count):
        t = start_s + i / rate_hz
        monitor.add_step(sample(**kwargs), t)
    return t


def test_percentile_and_window():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert math.isnan(percentile([], 95))
    window = RollingWindow(2.0)
    for t in range(5):
        window.add(float(t), t)
    assert [item for _, item in window.items(4.0)] == [2, 3, 4]
    window.add(0.5, 'after a loop')  # time ran backwards: the old items are meaningless
    assert [item for _, item in window.items(0.5)] == ['after a loop']


def test_report_latency_rate_tokens_flops():
    monitor = PolicyMonitor(window_s=10.0, min_rate_hz=1.0)
    last = feed(monitor, 100.0, 10.0, 50, latency_ms=20.0)
    monitor.add_step(sample(latency_ms=60.0), last + 0.1)
    report = monitor.report(last + 0.1)
    assert report.level == OK, report.message
    assert float(report.value('rate_hz')) == pytest.approx(10.0, rel=0.02)
    assert float(report.value('latency_p50_ms')) == 20.0
    assert float(report.value('latency_p95_ms')) == 20.0
    assert report.value('tokens_2d_kept') == '16.0' and report.value('tokens_3d_in') == '32.0'
    assert float(report.value('flops_ratio')) == 0.25
    assert 'tri_stage' in report.line and '10.' in report.line


def test_speedup_from_periodic_dense_steps_on_the_same_device():
    monitor = PolicyMonitor()
    t = feed(monitor, 0.0, 10.0, 19, latency_ms=10.0)
    monitor.add_step(sample('dense', 40.0, kept=(64, 32)), t + 0.1)
    monitor.add_step(sample('dense', 40.0, device='cuda:0'), t + 0.15)  # other device: ignored
    t = feed(monitor, t + 0.2, 10.0, 5, latency_ms=10.0)
    report = monitor.report(t)
    assert report.value('pruner') == 'tri_stage'
    assert float(report.value('speedup')) == pytest.approx(4.0)
    assert report.value('speedup_source') == SOURCE_PERIODIC
    # dense steps are not mixed into the pruned latency
    assert float(report.value('latency_p95_ms')) == 10.0


def test_speedup_from_calibration_and_when_unmeasured():
    calibrated = PolicyMonitor(calibration_dense_ms=30.0)
    t = feed(calibrated, 0.0, 10.0, 10, latency_ms=10.0)
    report = calibrated.report(t)
    assert float(report.value('speedup')) == pytest.approx(3.0)
    assert report.value('speedup_source') == SOURCE_CALIBRATION

    unmeasured = PolicyMonitor()
    t = feed(unmeasured, 0.0, 10.0, 10, latency_ms=10.0)
    report = unmeasured.report(t)
    assert report.value('speedup') == '0.00'
    assert report.value('speedup_source') == SOURCE_NONE

    dense = PolicyMonitor()
    t = feed(dense, 0.0, 10.0, 10, pruner='dense', latency_ms=40.0)
    report = dense.report(t)
    assert report.value('pruner') == 'dense'
    assert report.value('speedup_source') == SOURCE_DENSE_ACTIVE


def test_rate_below_target_warns_and_silence_is_an_error():
    monitor = PolicyMonitor(min_rate_hz=5.0, silence_timeout_s=3.0)
    t = feed(monitor, 0.0, 2.0, 6)
    report = monitor.report(t)
    assert report.level == WARN and 'below target 5 Hz' in report.message
    report = monitor.report(t + 4.0)
    assert report.level == ERROR and 'silent' in report.message


def test_never_hearing_from_the_policy_node_becomes_an_error():
    monitor = PolicyMonitor(silence_timeout_s=2.0)
    assert monitor.report(10.0).level == WARN
    report = monitor.report(12.5)
    assert report.level == ERROR and 'no PruningStats' in report.message


def test_policy_node_status_is_merged():
    monitor = PolicyMonitor()
    t = feed(monitor, 0.0, 10.0, 20)
    monitor.add_status(ERROR, 'bad rgb image on camera/color/image_raw: data length 5',
                       [('conversion_errors', '1')], t)
    report = monitor.report(t)
    assert report.level == ERROR and 'data length' in report.message
    assert report.value('policy_node.conversion_errors') == '1'
    assert 'data length' in report.line


def test_fault_tracker_levels():
    faults = FaultTracker(hold_s=5.0)
    level, message, _ = faults.status(0.0)
    assert level == WARN and 'waiting for the first observation' in message
    faults.input_state(True, 'ok')
    assert faults.status(1.0)[0] == OK
    faults.fault('inference_errors', 'inference failed: boom', 2.0)
    level, message, values = faults.status(3.0)
    assert level == ERROR and message == 'inference failed: boom'
    assert ('inference_errors', '1') in values
    assert faults.status(7.5)[0] == OK  # the fault is older than hold_s
    faults.input_state(False, 'stale: newest complete set is 2.00 s old (max 0.5 s)')
    level, message, _ = faults.status(8.0)
    assert level == WARN and message.startswith('input: stale')


def test_sample_from_step_stats():
    stats = StepStats(pruner='fastv', budget=24, full_step=False, tokens_2d_in=64,
                      tokens_3d_in=32, tokens_2d_kept=16, tokens_3d_kept=8, latency_ms=12.5,
                      flops_dense=4.0, flops_actual=1.0, device='cpu')
    got = StepSample.from_stats(stats)
    assert (got.pruner, got.latency_ms, got.tokens_3d_kept) == ('fastv', 12.5, 8)
    assert got.device == 'cpu'


def test_bad_settings_are_refused():
    with pytest.raises(DiagnosticsError, match='window'):
        PolicyMonitor(window_s=0.0)
    with pytest.raises(DiagnosticsError, match='min_rate_hz'):
        PolicyMonitor(min_rate_hz=-1.0)
    with pytest.raises(DiagnosticsError, match='window'):
        PolicyMonitor().configure(window_s=-2.0)
