"""
The policy and diagnostics nodes as real processes over DDS on localhost.

One pair of node processes (started from their console scripts, tiny model saved to a temp
folder) serves the whole module, in test order: sensors -> chunks, twists and stats; live
parameter changes through the parameter service; rejected values; stale input; malformed
messages; SIGINT. A test-side node publishes synchronised frames from a background thread in
the mode the test sets ('fresh', 'stale', 'bad' or 'pause').
"""

import signal
import threading
import time
import uuid

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from nodes_fixtures import (  # noqa: E402
    READY_TIMEOUT_S,
    Graph,
    SensorRig,
    read_log,
    script,
    start_process,
    stop_process,
    wait_for,
)

BUDGET = 40
MAX_OBS_AGE_S = 3.0  # steps take up to ~1.5 s when the 2 CI cores are busy
STEP_TIMEOUT_S = 45.0
INSTRUCTION = 'pick up the red cube'


class Frames:
    """Publishes frames at ~5 Hz in the current mode; remembers every stamp it sent."""

    def __init__(self, rig: SensorRig) -> None:
        self.rig = rig
        self.mode = 'pause'
        self.stamps: dict = {'fresh': set(), 'stale': set()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            mode = self.mode
            if mode == 'fresh':
                self.stamps['fresh'].add(self.rig.publish_frame())
            elif mode == 'stale':
                self.stamps['stale'].add(self.rig.publish_frame(self.rig.now_ns() - 30 * 10**9))
            elif mode == 'bad':
                self.rig.publish_bad_image()
                self.rig.publish_bad_cloud()
            self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.fixture(scope='module')
def graph(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import PoseStamped, TwistStamped
    from std_msgs.msg import Float64
    from vla_pruned_ros.msg import ActionChunk, PruningStats

    from vla_pruned_ros.model.checkpoint import save_model
    from vla_pruned_ros.policy import Policy

    tmp = tmp_path_factory.mktemp('nodes')
    policy = Policy.from_preset('tiny')
    save_model(policy.model, policy.tokenizer, str(tmp / 'tiny'))
    namespace = f'/t{uuid.uuid4().hex[:8]}'
    remap = ['-r', f'__ns:={namespace}']
    policy_args = [
        script('policy_node'), '--ros-args', *remap,
        '-p', f'model:={tmp / "tiny"}', '-p', 'pruner:=random', '-p', f'token_budget:={BUDGET}',
        '-p', 'dense_calibration_period:=4', '-p', f'max_obs_age_s:={MAX_OBS_AGE_S}',
        '-p', 'control_rate_hz:=20.0', '-p', 'input_mode:=both',
    ]
    processes = {
        'policy': start_process(policy_args, tmp / 'policy_node.log'),
        'diagnostics': start_process(
            [script('diagnostics_node'), '--ros-args', *remap, '-p', 'min_rate_hz:=0.05',
             '-p', 'silence_timeout_s:=30.0'], tmp / 'diagnostics_node.log'),
    }
    g = Graph(namespace)
    g.processes = processes
    for msg_type, topic in [
        (ActionChunk, 'action_chunk'), (PruningStats, 'pruning_stats'),
        (TwistStamped, 'cmd_twist'), (PoseStamped, 'cmd_pose'), (Float64, 'cmd_gripper'),
        (DiagnosticStatus, 'policy_status'), (DiagnosticArray, '/diagnostics'),
    ]:
        g.record(msg_type, topic)
    g.rig = SensorRig(g)
    try:
        wait_for(lambda: g.node.count_subscribers(f'{namespace}/camera/color/image_raw') > 0
                 and g.node.count_publishers(f'{namespace}/pruning_stats') > 0
                 and g.node.count_subscribers(f'{namespace}/pruning_stats') > 0,
                 READY_TIMEOUT_S, 'the node processes to come up',
                 tick=lambda: _check_alive(processes))
        g.rig.publish_instruction(INSTRUCTION)
        g.frames = Frames(g.rig)
        yield g
    finally:
        if hasattr(g, 'frames'):
            g.frames.close()
        for process in processes.values():
            stop_process(process, signal.SIGKILL)
        g.close()


def _check_alive(processes) -> None:
    for name, process in processes.items():
        if process.poll() is not None:
            raise AssertionError(f'{name} exited with {process.returncode}:\n{read_log(process)}')


def set_parameters(g, **values):
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(g.node, f'{g.namespace}/policy_node')
    assert client.wait_for_services(timeout_sec=20.0)
    future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
    wait_for(future.done, 20.0, 'set_parameters')
    return future.result().results


def get_parameter(g, name):
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(g.node, f'{g.namespace}/policy_node')
    future = client.get_parameters([name])
    wait_for(future.done, 20.0, 'get_parameters')
    value = future.result().values[0]
    return {1: value.bool_value, 2: value.integer_value, 3: value.double_value,
            4: value.string_value}[value.type]


def policy_status_reports(g, since):
    """(level, message, values) of the diagnostics node's 'policy' status since ``since``."""
    reports = []
    for array in g.messages('/diagnostics', since):
        for status in array.status:
            if status.name == 'diagnostics_node: policy':
                values = {kv.key: kv.value for kv in status.values}
                reports.append((status.level[0], status.message, values))
    return reports


def test_sensor_frames_give_chunks_twists_and_stats(graph):
    g = graph
    started = time.monotonic()
    g.frames.mode = 'fresh'
    wait_for(lambda: len(g.messages('action_chunk', started)) >= 2, STEP_TIMEOUT_S,
             'two action chunks', tick=lambda: _check_alive(g.processes))
    chunk = g.messages('action_chunk', started)[-1]
    assert (chunk.horizon, chunk.action_dim, len(chunk.data)) == (8, 7, 56)
    assert list(chunk.dimension_names) == ['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper']
    assert chunk.header.frame_id == 'world' and chunk.dt == pytest.approx(0.1)
    # stamped with the observation's stamp, not the publication time
    assert stamp_ns(chunk) in g.frames.stamps['fresh']
    assert np.isfinite(np.asarray(chunk.data)).all()

    moving = wait_for(
        lambda: [m for m in g.messages('cmd_twist', started)
                 if abs(m.twist.linear.x) + abs(m.twist.linear.z) + abs(m.twist.angular.z) > 0],
        STEP_TIMEOUT_S, 'a non-zero twist')
    assert moving[-1].header.frame_id == 'world'
    assert abs(moving[-1].twist.linear.x) <= 0.25 + 1e-6  # clipped to axis_limit
    assert g.messages('cmd_gripper', started)

    stats = wait_for(lambda: [s for s in g.messages('pruning_stats', started)
                              if s.pruner == 'random'], STEP_TIMEOUT_S, 'pruned stats')
    assert stats[-1].tokens_2d_kept + stats[-1].tokens_3d_kept == BUDGET
    assert (stats[-1].tokens_2d_in, stats[-1].tokens_3d_in) == (64, 32)
    assert stats[-1].flops_actual < stats[-1].flops_dense
    assert stamp_ns(stats[-1]) in g.frames.stamps['fresh']


def test_budget_change_through_the_parameter_service(graph):
    g = graph
    g.frames.mode = 'fresh'
    results = set_parameters(g, token_budget=20)
    assert results[0].successful, results[0].reason
    changed = time.monotonic()
    wait_for(lambda: [s for s in g.messages('pruning_stats', changed)
                      if s.pruner == 'random' and s.tokens_2d_kept + s.tokens_3d_kept == 20],
             STEP_TIMEOUT_S, 'stats with 20 tokens kept', tick=lambda: _check_alive(g.processes))
    # the periodic dense step measures the speedup on the same device
    dense = wait_for(lambda: [s for s in g.messages('pruning_stats') if s.pruner == 'dense'],
                     STEP_TIMEOUT_S, 'a periodic dense step')
    assert dense[-1].tokens_2d_kept + dense[-1].tokens_3d_kept == 96

    # per-pruner options are validated and applied to the active pruner at the next step
    results = set_parameters(g, pruner_options='random:seed=7;info_entropy:reuse=false')
    assert results[0].successful, results[0].reason
    assert get_parameter(g, 'pruner_options') == 'random:seed=7;info_entropy:reuse=false'
    applied = time.monotonic()
    wait_for(lambda: [s for s in g.messages('pruning_stats', applied) if s.pruner == 'random'],
             STEP_TIMEOUT_S, 'stats after the options change',
             tick=lambda: _check_alive(g.processes))

    assert set_parameters(g, output_mode='pose')[0].successful
    switched = time.monotonic()
    poses = wait_for(lambda: g.messages('cmd_pose', switched), STEP_TIMEOUT_S, 'pose targets')
    target = poses[-1].pose
    # pose targets start from the published end-effector pose (0.4, 0, 0.3), moved by deltas
    assert abs(target.position.x - 0.4) < 0.3 and abs(target.position.z - 0.3) < 0.3
    q = target.orientation
    assert np.linalg.norm([q.x, q.y, q.z, q.w]) == pytest.approx(1.0, abs=1e-6)
    assert set_parameters(g, output_mode='twist')[0].successful


@pytest.mark.parametrize(
    ('values', 'reason'),
    [
        ({'pruner': 'no_such_pruner'}, 'unknown pruner'),
        ({'keep_ratio': 1.5}, ''),
        ({'floor_2d': 15, 'floor_3d': 15}, 'floors'),
        ({'tri_stage_stage1': False, 'tri_stage_stage2': False}, 'stage1 or stage2'),
        ({'pruner_options': 'random:no_such=1'}, "unknown option 'no_such'"),
        ({'pruner_options': 'random:seed=7;random:seed=8'}, 'appears twice'),
        ({'axis_limit': [0.1, 0.1]}, 'axis_limit must hold 6'),
        ({'output_mode': 'joints'}, 'output_mode'),
        ({'device': 'cuda'}, ''),
    ],
)
def test_invalid_values_are_rejected_with_a_reason(graph, values, reason):
    results = set_parameters(graph, **values)
    assert not all(r.successful for r in results)
    assert reason in ' '.join(r.reason for r in results)
    assert get_parameter(graph, 'pruner') == 'random'
    assert get_parameter(graph, 'token_budget') == 20


def test_stale_input_gives_zero_twists_and_no_chunk(graph):
    g = graph
    g.frames.mode = 'stale'
    switched = time.monotonic()
    # The chunk of the last fresh frame may still finish; after max_obs_age_s it is unusable.
    settled = switched + MAX_OBS_AGE_S + 2.0
    wait_for(lambda: time.monotonic() > settled + 1.5, 30.0, 'the stale period')
    chunks = g.messages('action_chunk', switched)
    assert not [c for c in chunks if stamp_ns(c) in g.frames.stamps['stale']]
    assert not g.messages('action_chunk', settled)
    twists = g.messages('cmd_twist', settled)
    assert len(twists) >= 5
    assert all(t.twist.linear.x == t.twist.linear.y == t.twist.linear.z == 0.0
               and t.twist.angular.z == 0.0 for t in twists)
    warnings = [s.message for s in g.messages('policy_status', switched) if s.level[0] == 1]
    assert warnings and 'stale' in warnings[-1]


def test_malformed_images_and_clouds_leave_the_node_alive_with_an_error(graph):
    g = graph
    g.frames.mode = 'bad'
    started = time.monotonic()
    # both bad kinds (image and cloud) counted: the first ERROR report may precede the second
    errors = wait_for(
        lambda: [r for r in policy_status_reports(g, started)
                 if r[0] == 2 and int(r[2].get('policy_node.conversion_errors', 0)) >= 2],
        30.0, 'an ERROR on /diagnostics counting two conversion errors')
    level, message, values = errors[-1]
    assert 'bad' in message and ('rgb image' in message or 'point cloud' in message)
    log = read_log(g.processes['policy'])
    assert 'bad rgb image' in log and 'bad point cloud' in log and 'missing x/y/z' in log

    g.frames.mode = 'fresh'
    recovered = time.monotonic()
    wait_for(lambda: g.messages('action_chunk', recovered), STEP_TIMEOUT_S,
             'chunks after the malformed messages', tick=lambda: _check_alive(g.processes))


def test_sigint_shuts_both_nodes_down_cleanly(graph):
    g = graph
    g.frames.mode = 'fresh'
    for name, process in g.processes.items():
        assert process.poll() is None, f'{name} died:\n{read_log(process)}'
    codes = {name: stop_process(p, signal.SIGINT) for name, p in g.processes.items()}
    for name, process in g.processes.items():
        log = read_log(process)
        assert codes[name] in (0, 130), f'{name} exited {codes[name]}:\n{log}'
        assert 'Traceback' not in log, log


def test_a_bad_model_parameter_exits_with_one_clear_line(tmp_path):
    import subprocess

    result = subprocess.run(
        [script('policy_node'), '--ros-args', '-p', f'model:={tmp_path / "missing"}'],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert 'does not exist' in result.stderr and 'Traceback' not in result.stderr
