"""
Health bookkeeping for the policy: rolling latency/rate windows, speedup against dense, levels.

ROS-free; the nodes feed it and turn its reports into ``diagnostic_msgs``:

- :class:`FaultTracker` (policy node): counts conversion/inference/action faults and input
  trouble, and says OK / WARN (input stale or missing) / ERROR (a fault within ``hold_s``).
- :class:`PolicyMonitor` (diagnostics node): per-step samples in a time window -> p50/p95 step
  latency, effective rate, tokens kept per modality, FLOPs ratio and the measured speedup, merged
  with the policy node's own status into one level, message and key/value list.

Speedup is only ever a ratio of latencies measured on the same device: dense steps the policy
node interleaves every N steps (source 'periodic dense step'), or a dense latency measured
beforehand on the same device and given as a parameter (source 'calibration').
"""

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
import math
import threading
from typing import Any, Optional

import numpy as np

# diagnostic_msgs/DiagnosticStatus levels
OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: 'OK', WARN: 'WARN', ERROR: 'ERROR', STALE: 'STALE'}

SOURCE_PERIODIC = 'periodic dense step'
SOURCE_CALIBRATION = 'calibration'
SOURCE_DENSE_ACTIVE = 'dense is the active pruner'
SOURCE_NONE = 'not measured'


class DiagnosticsError(ValueError):
    """A bad monitor setting (negative window, rate or timeout); the message names it."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation) of ``values``; NaN when empty."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class RollingWindow:
    """Items stamped with a time in seconds; only those within ``seconds`` of now are kept."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise DiagnosticsError(f'window must be positive, got {seconds} s')
        self.seconds = float(seconds)
        self._items: deque = deque()

    def add(self, t_s: float, item: Any) -> None:
        """Add ``item`` seen at ``t_s``; time running backwards (a replay loop) restarts it."""
        if self._items and t_s < self._items[-1][0]:
            self._items.clear()
        self._items.append((float(t_s), item))

    def items(self, now_s: float) -> list:
        """Return (time, item) pairs newer than ``now_s - seconds``, oldest first."""
        if self._items and self._items[-1][0] > now_s:
            self._items.clear()  # the clock went back (replay restarted): all of it is old
        while self._items and self._items[0][0] < now_s - self.seconds:
            self._items.popleft()
        return list(self._items)

    def clear(self) -> None:
        """Forget every item."""
        self._items.clear()


@dataclass(frozen=True)
class StepSample:
    """One policy step as the diagnostics see it (from a PruningStats message or StepStats)."""

    pruner: str
    latency_ms: float
    tokens_2d_in: int = 0
    tokens_3d_in: int = 0
    tokens_2d_kept: int = 0
    tokens_3d_kept: int = 0
    flops_dense: float = 0.0
    flops_actual: float = 0.0
    device: str = ''
    full_step: bool = False

    @classmethod
    def from_stats(cls, stats: Any) -> 'StepSample':
        """Build from anything with the StepStats / PruningStats field names."""
        return cls(
            pruner=str(stats.pruner),
            latency_ms=float(stats.latency_ms),
            tokens_2d_in=int(stats.tokens_2d_in),
            tokens_3d_in=int(stats.tokens_3d_in),
            tokens_2d_kept=int(stats.tokens_2d_kept),
            tokens_3d_kept=int(stats.tokens_3d_kept),
            flops_dense=float(stats.flops_dense),
            flops_actual=float(stats.flops_actual),
            device=str(stats.device),
            full_step=bool(stats.full_step),
        )


@dataclass(frozen=True)
class Speedup:
    """Measured speedup of a pruner against dense on one device, and where dense came from."""

    value: float  # 0 when not measured
    source: str
    dense_ms: float = math.nan
    pruned_ms: float = math.nan
    dense_samples: int = 0


class SpeedupTracker:
    """
    Dense reference latency per device and the speedup of a pruner against it.

    Dense steps (pruner 'dense') seen while another pruner is active are the periodic dense
    steps; the last ``dense_samples`` per device are kept. ``calibration_ms`` (> 0) is a dense
    latency measured beforehand on the same device, used when no dense step has been seen.
    """

    def __init__(self, dense_samples: int = 10, calibration_ms: float = 0.0) -> None:
        if dense_samples < 1:
            raise DiagnosticsError(f'dense_samples must be >= 1, got {dense_samples}')
        if not (math.isfinite(calibration_ms) and calibration_ms >= 0):
            raise DiagnosticsError(f'calibration_ms must be >= 0, got {calibration_ms}')
        self.calibration_ms = float(calibration_ms)
        self._dense: dict = {}
        self._size = int(dense_samples)
        self._lock = threading.Lock()

    def add(self, sample: StepSample) -> None:
        """Record a step; only dense steps update the reference."""
        if sample.pruner != 'dense':
            return
        with self._lock:
            history = self._dense.setdefault(sample.device, deque(maxlen=self._size))
            history.append(float(sample.latency_ms))

    def clear(self) -> None:
        """Forget the dense latencies (e.g. after the device changed)."""
        with self._lock:
            self._dense.clear()

    def estimate(self, pruner: str, pruned_ms: Iterable[float], device: str) -> Speedup:
        """Speedup = median dense latency / median latency of ``pruner`` (``pruned_ms``)."""
        pruned = [float(v) for v in pruned_ms]
        pruned_p50 = percentile(pruned, 50)
        if pruner == 'dense':
            return Speedup(1.0, SOURCE_DENSE_ACTIVE, pruned_p50, pruned_p50, len(pruned))
        with self._lock:
            dense = list(self._dense.get(device, ()))
        if dense:
            dense_ms, source = percentile(dense, 50), SOURCE_PERIODIC
        elif self.calibration_ms > 0:
            dense_ms, source = self.calibration_ms, SOURCE_CALIBRATION
        else:
            return Speedup(0.0, SOURCE_NONE, math.nan, pruned_p50, 0)
        if not pruned or not pruned_p50 > 0:
            return Speedup(0.0, source, dense_ms, pruned_p50, len(dense))
        return Speedup(dense_ms / pruned_p50, source, dense_ms, pruned_p50, len(dense))


@dataclass
class HealthReport:
    """One diagnostics update: level, message, key/values (strings) and a compact log line."""

    level: int
    message: str
    values: list = field(default_factory=list)  # [(key, value string)]
    line: str = ''

    def value(self, key: str) -> Optional[str]:
        """Return the value of ``key``, or None."""
        for name, value in self.values:
            if name == key:
                return value
        return None


def _merge(parts: list) -> tuple:
    """Combine (level, message) pairs: highest level, messages of non-OK parts joined."""
    level = max((lvl for lvl, _ in parts), default=OK)
    messages = [msg for lvl, msg in parts if lvl > OK and msg]
    return level, '; '.join(messages)


def _fmt(value: float, digits: int = 2) -> str:
    return 'nan' if not math.isfinite(value) else f'{value:.{digits}f}'


class FaultTracker:
    """
    The policy node's own health: faults by kind, input state, and the level they give.

    ERROR while a fault (bad message, failed inference, NaN actions) is younger than
    ``hold_s``; WARN while the input is stale or missing; OK otherwise. Thread-safe.
    """

    def __init__(self, hold_s: float = 5.0) -> None:
        if not hold_s > 0:
            raise DiagnosticsError(f'hold_s must be positive, got {hold_s}')
        self.hold_s = float(hold_s)
        self.counts: dict = {}
        self._last_fault: Optional[tuple] = None  # (time s, message)
        self._input_ok = False
        self._input_message = 'waiting for the first observation'
        self._lock = threading.Lock()

    def fault(self, kind: str, message: str, now_s: float) -> None:
        """Record a fault of ``kind`` (e.g. 'conversion_errors') described by ``message``."""
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self._last_fault = (float(now_s), message)

    def count(self, kind: str, amount: int = 1) -> None:
        """Count an event that is not a fault (e.g. 'steps')."""
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + amount

    def input_state(self, ok: bool, message: str) -> None:
        """Record whether the input currently yields fresh observations, and why not."""
        with self._lock:
            self._input_ok, self._input_message = bool(ok), message

    def status(self, now_s: float) -> tuple:
        """Return (level, message, [(key, value)]) for a DiagnosticStatus."""
        with self._lock:
            parts = []
            if self._last_fault is not None:
                age = now_s - self._last_fault[0]
                if 0 <= age < self.hold_s:
                    parts.append((ERROR, self._last_fault[1]))
            if not self._input_ok:
                parts.append((WARN, f'input: {self._input_message}'))
            level, message = _merge(parts)
            values = [('input', 'ok' if self._input_ok else self._input_message)]
            values += [(key, str(value)) for key, value in sorted(self.counts.items())]
            if self._last_fault is not None:
                values.append(('last_fault', self._last_fault[1]))
                values.append(('last_fault_age_s', _fmt(now_s - self._last_fault[0], 1)))
        return level, message or 'OK', values


class PolicyMonitor:
    """
    Rolling statistics of the policy's steps plus the policy node's status, as a health report.

    - ``window_s``: steps older than this are forgotten.
    - ``min_rate_hz``: WARN when steps come slower (0 disables the check).
    - ``silence_timeout_s``: ERROR when neither a step nor a status arrived for this long.
    - ``calibration_dense_ms``: dense latency measured beforehand on the same device.
    """

    def __init__(
        self,
        window_s: float = 10.0,
        min_rate_hz: float = 1.0,
        silence_timeout_s: float = 5.0,
        calibration_dense_ms: float = 0.0,
        dense_samples: int = 10,
    ) -> None:
        if not (min_rate_hz >= 0 and silence_timeout_s > 0):
            raise DiagnosticsError(
                f'min_rate_hz must be >= 0 and silence_timeout_s > 0, got {min_rate_hz} and '
                f'{silence_timeout_s}'
            )
        self.min_rate_hz = float(min_rate_hz)
        self.silence_timeout_s = float(silence_timeout_s)
        self.speedup = SpeedupTracker(dense_samples, calibration_dense_ms)
        self._steps = RollingWindow(window_s)
        self._status: Optional[tuple] = None  # (time s, level, message, values)
        self._last_heard: Optional[float] = None
        self._started: Optional[float] = None
        self._lock = threading.Lock()

    def configure(
        self,
        window_s: Optional[float] = None,
        min_rate_hz: Optional[float] = None,
        silence_timeout_s: Optional[float] = None,
        calibration_dense_ms: Optional[float] = None,
    ) -> None:
        """Change settings live; None keeps a setting."""
        with self._lock:
            if window_s is not None:
                if not window_s > 0:
                    raise DiagnosticsError(f'window must be positive, got {window_s} s')
                self._steps.seconds = float(window_s)
            if min_rate_hz is not None:
                self.min_rate_hz = float(min_rate_hz)
            if silence_timeout_s is not None:
                self.silence_timeout_s = float(silence_timeout_s)
            if calibration_dense_ms is not None:
                self.speedup.calibration_ms = float(calibration_dense_ms)

    def add_step(self, sample: StepSample, now_s: float) -> None:
        """Record a step reported at ``now_s``."""
        with self._lock:
            self._steps.add(now_s, sample)
            self.speedup.add(sample)
            self._last_heard = float(now_s)

    def add_status(self, level: int, message: str, values: Sequence, now_s: float) -> None:
        """Record the policy node's own status (input state, faults, counters)."""
        with self._lock:
            self._status = (float(now_s), int(level), str(message), list(values))
            self._last_heard = float(now_s)

    def report(self, now_s: float) -> HealthReport:
        """Summarise the window ending at ``now_s``."""
        with self._lock:
            if self._started is None or now_s < self._started:
                self._started = float(now_s)
            window = self._steps.items(now_s)
            status, last_heard, started = self._status, self._last_heard, self._started
        parts = []
        values = []
        if last_heard is None:
            silent_for = now_s - started
            level = ERROR if silent_for >= self.silence_timeout_s else WARN
            parts.append((level, f'no PruningStats or status from the policy node for '
                                 f'{silent_for:.1f} s'))
        elif now_s - last_heard >= self.silence_timeout_s:
            parts.append((ERROR, f'policy node silent for {now_s - last_heard:.1f} s'))
        if status is not None and now_s - status[0] < self.silence_timeout_s:
            parts.append((status[1], status[2]))

        summary = self._summarise([s for _, s in window], [t for t, _ in window], now_s)
        values += summary['values']
        rate = summary['rate_hz']
        if window and self.min_rate_hz > 0 and rate < self.min_rate_hz:
            parts.append((WARN, f'rate {rate:.2f} Hz below target {self.min_rate_hz:g} Hz'))
        if status is not None:
            values += [(f'policy_node.{key}', value) for key, value in status[3]]
        level, message = _merge(parts)
        if not message:
            message = summary['headline']
        line = f'[{LEVEL_NAMES.get(level, level)}] {summary["headline"]}'
        if level > OK:
            line += f' | {message}'
        return HealthReport(level, message, values, line)

    def _summarise(self, steps: list, times: list, now_s: float) -> dict:
        if not steps:
            return {
                'rate_hz': 0.0,
                'headline': 'no policy steps in the window',
                'values': [('steps_in_window', '0'), ('rate_hz', '0.00')],
            }
        active = next((s.pruner for s in reversed(steps) if s.pruner != 'dense'), 'dense')
        mine = [s for s in steps if s.pruner == active]
        device = steps[-1].device
        latencies = [s.latency_ms for s in mine]
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        # (n - 1) intervals over the span up to now: decays to 0 when steps stop coming.
        span = now_s - times[0]
        rate = (len(steps) - 1) / span if len(steps) > 1 and span > 0 else 0.0
        n_2d_in = float(np.mean([s.tokens_2d_in for s in mine]))
        n_3d_in = float(np.mean([s.tokens_3d_in for s in mine]))
        k_2d = float(np.mean([s.tokens_2d_kept for s in mine]))
        k_3d = float(np.mean([s.tokens_3d_kept for s in mine]))
        dense_flops = sum(s.flops_dense for s in mine)
        flops_ratio = sum(s.flops_actual for s in mine) / dense_flops if dense_flops else 1.0
        speedup = self.speedup.estimate(active, latencies, device)
        speedup_text = (
            f'{speedup.value:.2f}x ({speedup.source})' if speedup.value > 0
            else f'n/a ({speedup.source})'
        )
        headline = (
            f'{active} on {device}: {rate:.2f} Hz, p50 {p50:.1f} ms, p95 {p95:.1f} ms, '
            f'2D {k_2d:.0f}/{n_2d_in:.0f} 3D {k_3d:.0f}/{n_3d_in:.0f}, '
            f'FLOPs {flops_ratio:.2f}, speedup {speedup_text}'
        )
        values = [
            ('pruner', active),
            ('device', device),
            ('steps_in_window', str(len(steps))),
            ('rate_hz', _fmt(rate)),
            ('latency_p50_ms', _fmt(p50)),
            ('latency_p95_ms', _fmt(p95)),
            ('tokens_2d_kept', _fmt(k_2d, 1)),
            ('tokens_2d_in', _fmt(n_2d_in, 1)),
            ('tokens_3d_kept', _fmt(k_3d, 1)),
            ('tokens_3d_in', _fmt(n_3d_in, 1)),
            ('flops_ratio', _fmt(flops_ratio, 3)),
            ('speedup', _fmt(speedup.value)),
            ('speedup_source', speedup.source),
            ('dense_latency_p50_ms', _fmt(speedup.dense_ms)),
            ('dense_samples', str(speedup.dense_samples)),
        ]
        return {'rate_hz': rate, 'headline': headline, 'values': values}
