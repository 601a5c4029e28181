"""
``vla-pruned-ros eval``: compare pruners on recorded rosbag2 bags and write a report.

Reads each BAG (an MCAP or SQLite3 bag folder, or a single .mcap/.db3 file), finds its rgb,
depth, camera_info, point cloud, instruction, pose and recorded-action topics by message type
(or takes them from the --*-topic flags), synchronises them like the policy node and steps
dense plus every pruner at every budget on identical observations, interleaved so latencies
share machine conditions. Writes to --out: results.json, report.md, error/speedup plots,
overlays of the kept 2D patches and 3D groups on sample frames and, with --mcap, the predicted
actions as an MCAP bag for Foxglove or PlotJuggler. With --live, also scores the node's
ActionChunk outputs recorded while BAG was replayed into it.

Exit status 2 with a one-line message when a bag or an option cannot be used.
"""

import argparse
import platform
import sys
import time
from typing import Any

TOPIC_FLAGS = (
    ('rgb', 'rgb Image topic'),
    ('depth', 'depth Image topic (16UC1/mono16 mm or 32FC1 m, registered to rgb)'),
    ('info', 'CameraInfo topic of the rgb image'),
    ('cloud', 'PointCloud2 topic'),
    ('instruction', 'std_msgs/String instruction topic'),
    ('episode', 'std_msgs/String episode marker topic'),
    ('pose', 'PoseStamped end-effector pose topic (models with proprioception)'),
    ('action', 'recorded actions: ActionChunk or TwistStamped topic'),
)
ROLE_OF_FLAG = {'info': 'camera_info', 'action': 'actions'}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval``."""
    parser = subparsers.add_parser(
        'eval', help='compare pruners on recorded bags: action error, latency, tokens, report',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('bags', nargs='+', metavar='BAG', help='rosbag2 folder or .mcap/.db3')
    parser.add_argument('--out', default='eval_results', help='output directory')
    parser.add_argument('--pruners', nargs='+', default=['tri_stage', 'fastv', 'random'],
                        help='pruners to compare with dense (dense always runs): names, '
                             'name:key=value,... (config overrides) or "all"')
    parser.add_argument('--budgets', nargs='+', default=['0.5', '0.25', '0.125'],
                        help='keep ratios (<= 1) or token counts (> 1)')
    model = parser.add_mutually_exclusive_group()
    model.add_argument('--model', help='model directory (save_model)')
    model.add_argument('--preset', help="model preset with random weights (default: 'tiny')")
    parser.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto')
    parser.add_argument('--dtype', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    parser.add_argument('--seed', type=int, default=0, help='weight seed of a preset')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    topics = parser.add_argument_group(
        'topics', "found by message type when not given; 'none' switches an optional one off"
    )
    for flag, text in TOPIC_FLAGS:
        topics.add_argument(f'--{flag}-topic', metavar='TOPIC', help=text)
    parser.add_argument('--instruction', default='',
                        help='instruction for bags without an instruction topic')
    parser.add_argument('--points-from', choices=('auto', 'depth', 'cloud'), default='auto',
                        help='3D tokens from depth + camera_info or the point cloud')
    parser.add_argument('--slop', type=float, default=0.05,
                        help='synchronisation slop in seconds (as the node)')
    parser.add_argument('--queue-size', type=int, default=10)
    parser.add_argument('--twist-dt', type=float,
                        help='seconds per recorded TwistStamped step (default: model control_dt)')
    parser.add_argument('--gripper-threshold', type=float, default=0.5,
                        help='gripper commands above this mean closed')
    parser.add_argument('--warmup', type=int, default=2,
                        help='first observations stepped but not timed')
    parser.add_argument('--samples', type=int, default=3, help='overlay images to draw')
    parser.add_argument('--max-observations', type=int, help='stop each bag after N')
    parser.add_argument('--mcap', action='store_true',
                        help='also write the predicted actions as an MCAP bag')
    parser.add_argument('--live', nargs='+', metavar='RECORDING',
                        help="recordings of the node's outputs, one per BAG, to score")
    parser.add_argument('--live-topic', help='ActionChunk topic of the live recordings')
    parser.add_argument('--no-progress', action='store_true')
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; print a one-line error and return 2 when it cannot."""
    from vla_pruned_ros.eval.errors import EvalError

    try:
        return evaluate(args)
    except EvalError as err:
        print(f'vla-pruned-ros eval: error: {err}', file=sys.stderr)
        return 2


def _load_policy(args: argparse.Namespace) -> tuple[Any, str]:
    from vla_pruned_ros.eval.errors import EvalError
    from vla_pruned_ros.policy import Policy

    try:
        if args.model:
            policy = Policy.from_pretrained(args.model, device=args.device, dtype=args.dtype)
            return policy, args.model
        preset = args.preset or 'tiny'
        policy = Policy.from_preset(preset, seed=args.seed, device=args.device, dtype=args.dtype)
    except (OSError, ValueError) as err:  # CheckpointError, unknown preset or device
        raise EvalError(f'cannot load the model: {err}') from None
    return policy, f'{preset} preset (random weights, seed {args.seed})'


def _configurations(args: argparse.Namespace) -> list:
    from vla_pruned_ros.bench import BenchConfiguration, parse_budgets
    from vla_pruned_ros.eval.errors import EvalError
    from vla_pruned_ros.pruning.spec import parse_pruner_specs

    try:
        budgets = parse_budgets(args.budgets)
    except (argparse.ArgumentTypeError, ValueError) as err:
        raise EvalError(str(err)) from None
    try:
        specs = parse_pruner_specs(args.pruners)
    except ValueError as err:
        raise EvalError(str(err)) from None
    return [BenchConfiguration(spec.name, budget, spec.options) for spec in specs
            if spec.name != 'dense' for budget in budgets]


def _check_numbers(args: argparse.Namespace) -> None:
    from vla_pruned_ros.eval.errors import EvalError

    checks = (
        ('--slop', args.slop, args.slop >= 0, '>= 0'),
        ('--queue-size', args.queue_size, args.queue_size >= 1, '>= 1'),
        ('--warmup', args.warmup, args.warmup >= 0, '>= 0'),
        ('--samples', args.samples, args.samples >= 0, '>= 0'),
        ('--max-observations', args.max_observations,
         args.max_observations is None or args.max_observations >= 1, '>= 1'),
        ('--twist-dt', args.twist_dt, args.twist_dt is None or args.twist_dt > 0, '> 0'),
    )
    for flag, value, ok, rule in checks:
        if not ok:
            raise EvalError(f'{flag} must be {rule}, got {value}')


def evaluate(args: argparse.Namespace) -> int:
    """Replay the bags, score them and write the outputs (raises ``EvalError``)."""
    import torch

    from vla_pruned_ros.eval.errors import EvalError
    from vla_pruned_ros.eval.live import read_live, score_live
    from vla_pruned_ros.eval.replay import ReplayOptions, plan_bag, replay_bags
    from vla_pruned_ros.eval.report import build_results, markdown_report, write_outputs

    started = time.time()
    configurations = _configurations(args)
    if args.live and len(args.live) != len(args.bags):
        raise EvalError(
            f'--live needs one recording per BAG: {len(args.bags)} bag(s), '
            f'{len(args.live)} recording(s)'
        )
    _check_numbers(args)
    options = ReplayOptions(
        slop_s=args.slop,
        queue_size=args.queue_size,
        points_from=args.points_from,
        topics={ROLE_OF_FLAG.get(flag, flag): getattr(args, f'{flag}_topic')
                for flag, _ in TOPIC_FLAGS},
        instruction=args.instruction,
        twist_dt=args.twist_dt,
        warmup=args.warmup,
        samples=args.samples,
        max_observations=args.max_observations,
        progress=not args.no_progress,
    )
    # Bags and recordings are checked before the model loads: a bad topic fails in seconds.
    for path in args.bags:
        plan_bag(path, options, needs_pose=False)
    recordings = [read_live(path, args.live_topic) for path in args.live or []]
    if args.threads:
        torch.set_num_threads(args.threads)
    policy, model_name = _load_policy(args)
    replay = replay_bags(policy, args.bags, configurations, options)
    tolerance_ns = int(round(args.slop * 1e9))
    device_name = (
        torch.cuda.get_device_name(policy.device) if policy.device.type == 'cuda'
        else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    )
    meta = {
        'command': 'vla-pruned-ros ' + ' '.join(sys.argv[1:]),
        'model': model_name,
        'device': str(policy.device),
        'device_name': device_name,
        'dtype': args.dtype,
        'torch': torch.__version__,
        'created_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'slop_s': args.slop,
    }
    results = build_results(replay, meta, args.gripper_threshold, tolerance_ns)
    for bag, recording in enumerate(recordings):
        results['live'].append(
            score_live(recording, replay, bag, tolerance_ns, args.gripper_threshold)
        )
    results['meta']['seconds'] = time.time() - started
    paths = write_outputs(
        results, replay, args.out, predictions=args.mcap, tolerance_ns=tolerance_ns,
        action_space=policy.config.action_space, control_dt=float(policy.config.control_dt),
    )
    summary = markdown_report(results).split('## Summary', 1)[1].split('\n## ', 1)[0]
    print(summary.strip())
    print(f'wrote {len(paths)} files to {args.out} (report.md, results.json) in '
          f'{time.time() - started:.0f} s')
    return 0
