"""
Replay a bag into the running nodes and report what the diagnostics node says, per pruner.

``run_graph_demo`` starts the policy node, the diagnostics node, a bag player and a listener in
one process (one executor, real topics over DDS), switches the pruner through the policy node's
parameter callback (the path rqt and ``ros2 param set`` take), plays the bag once per pruner
with ``/clock`` (the nodes use sim time) and returns a table of the last ``/diagnostics`` report
of each run. ``make demo`` calls it with the shipped sample bag and model.
"""

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import threading
import time
from typing import Optional

REPLAY_TOPICS = (
    '/camera/color/image_raw',
    '/camera/depth/image_rect_raw',
    '/camera/color/camera_info',
    '/camera/depth/points',
    '/ee_pose',
    '/instruction',
)
# Bag time the clock runs on after each play: the diagnostics node publishes once per second.
DIAGNOSTICS_TAIL_S = 1.2
COLUMNS = ('pruner', 'level', 'chunks', 'rate Hz', 'p50 ms', 'p95 ms', '2D kept', '3D kept',
           'FLOPs', 'speedup')


@dataclass
class PrunerRun:
    """What /diagnostics reported while the bag played with one pruner."""

    pruner: str
    reports: list = field(default_factory=list)  # (level, message, {key: value})
    chunks: int = 0

    def last(self) -> Optional[tuple]:
        """The last report about this pruner's steps, else the last report at all."""
        mine = [r for r in self.reports if r[2].get('pruner') == self.pruner]
        return (mine or self.reports or [None])[-1]

    def row(self) -> list:
        """One table row."""
        report = self.last()
        if report is None:
            return [self.pruner, 'no report'] + ['-'] * (len(COLUMNS) - 2)
        level, _, values = report
        names = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}

        def get(key: str) -> str:
            return values.get(key, '-')

        speedup = get('speedup')
        if speedup not in ('-', '0.00'):
            speedup = f'{float(speedup):.2f}x ({get("speedup_source")})'
        else:
            speedup = f'n/a ({get("speedup_source")})'
        return [
            self.pruner, names.get(level, str(level)), str(self.chunks), get('rate_hz'),
            get('latency_p50_ms'), get('latency_p95_ms'),
            f'{get("tokens_2d_kept")}/{get("tokens_2d_in")}',
            f'{get("tokens_3d_kept")}/{get("tokens_3d_in")}', get('flops_ratio'), speedup,
        ]


def format_table(runs: Sequence[PrunerRun]) -> str:
    """Markdown table of the runs."""
    rows = [list(COLUMNS)] + [run.row() for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ['| ' + ' | '.join(cell.ljust(w) for cell, w in zip(row, widths)) + ' |'
             for row in rows]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(lines)


def run_graph_demo(
    bag_path: str,
    model_dir: Optional[str] = None,
    pruners: Sequence[str] = ('dense', 'tri_stage'),
    keep_ratio: float = 0.25,
    rate: float = 1.0,
    preset: str = '',
    device: str = 'auto',
    dtype: str = 'fp32',
    dense_calibration_period: int = 10,
    input_mode: str = 'depth',
    printer: Optional[Callable[[str], None]] = print,
) -> str:
    """
    Play ``bag_path`` into the nodes once per pruner; return (and print) the diagnostics table.

    ``model_dir`` None (and no ``preset``) uses the embedded default model. ``rate`` slows the
    replay down for models slower than the bag's frame rate. The dense run uses all tokens; the
    others keep ``keep_ratio`` of them.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from vla_pruned_ros.msg import ActionChunk
    from vla_pruned_ros.nodes.diagnostics_node import DiagnosticsNode
    from vla_pruned_ros.nodes.player import BagPlayer
    from vla_pruned_ros.nodes.policy_node import PolicyNode

    def say(line: str) -> None:
        if printer is not None:
            printer(line)

    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    sim_time = Parameter('use_sim_time', value=True)
    nodes = []
    executor = None
    spinner = None
    try:
        say(f'graph demo: starting policy_node ({model_dir or preset or "default model"}) '
            'and diagnostics_node')
        policy = PolicyNode(context=context, parameter_overrides=[
            sim_time,
            Parameter('model', value=model_dir or ''),
            Parameter('preset', value=preset),
            Parameter('device', value=device),
            Parameter('dtype', value=dtype),
            Parameter('pruner', value='dense'),
            Parameter('input_mode', value=input_mode),
            Parameter('dense_calibration_period', value=dense_calibration_period),
            Parameter('max_obs_age_s', value=10.0),
            Parameter('dry_run', value=False),
        ])
        nodes.append(policy)
        nodes.append(DiagnosticsNode(context=context, parameter_overrides=[
            sim_time, Parameter('min_rate_hz', value=0.0)]))
        listener = rclpy.create_node('graph_demo_listener', context=context)
        nodes.append(listener)
        player_node = rclpy.create_node('graph_demo_player', context=context)
        nodes.append(player_node)

        lock = threading.Lock()
        current: list = []

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name.endswith(': policy') and current:
                    level = status.level[0] if isinstance(status.level, bytes) else status.level
                    values = {kv.key: kv.value for kv in status.values}
                    with lock:
                        current[-1].reports.append((int(level), status.message, values))

        def on_chunk(_: ActionChunk) -> None:
            with lock:
                if current:
                    current[-1].chunks += 1

        listener.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
        listener.create_subscription(ActionChunk, 'action_chunk', on_chunk, 10)
        player = BagPlayer(player_node, bag_path, rate=rate, clock=True, topics=REPLAY_TOPICS)

        executor = MultiThreadedExecutor(num_threads=6, context=context)
        for node in nodes:
            executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        player.wait_for_subscribers(['/camera/color/image_raw', '/instruction'], 10.0)

        runs = []
        for pruner in pruners:
            ratio = 1.0 if pruner == 'dense' else keep_ratio
            result = policy.set_parameters_atomically([
                Parameter('pruner', value=pruner),
                Parameter('token_budget', value=0),
                Parameter('keep_ratio', value=float(ratio)),
            ])
            if not result.successful:
                raise ValueError(f'policy_node refused pruner {pruner!r}: {result.reason}')
            with lock:
                current.append(PrunerRun(pruner))
            say(f'graph demo: playing {bag_path} with {pruner} '
                f'(keep_ratio {ratio:g}, rate {rate:g}) ...')
            started = time.monotonic()
            player.play()
            # Let bag time run on for one more diagnostics period, then wait for delivery.
            player.advance_clock(DIAGNOSTICS_TAIL_S)
            time.sleep(0.3)
            with lock:
                runs.append(current[-1])
            say(f'graph demo: {pruner}: {runs[-1].chunks} action chunks in '
                f'{time.monotonic() - started:.1f} s')
        table = format_table(runs)
        say(table)
        return table
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        if spinner is not None:
            spinner.join(timeout=5.0)
        for node in reversed(nodes):
            close = getattr(node, 'close', None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vla_pruned_ros.nodes.graph_demo BAG [--model DIR] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('bag')
    parser.add_argument('--model', default=None)
    parser.add_argument('--preset', default='')
    parser.add_argument('--pruners', nargs='+', default=['dense', 'tri_stage'])
    parser.add_argument('--keep-ratio', type=float, default=0.25)
    parser.add_argument('--rate', type=float, default=1.0)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--dtype', default='fp32')
    args = parser.parse_args(argv)
    run_graph_demo(args.bag, args.model, args.pruners, args.keep_ratio, args.rate,
                   preset=args.preset, device=args.device, dtype=args.dtype)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
