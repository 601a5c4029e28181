"""
``vla-pruned-ros ties-calibrate``: measure TIES' tau distribution on recorded frames.

Reads rosbag2 recordings (MCAP or SQLite3; topics found by message type as ``vla-pruned-ros
eval`` does, or given with --*-topic), samples --frames observations evenly over them, runs
the model unpruned with attention probes on the tau layers, and writes the median and
quantiles of tau to a JSON file for the ``ties`` pruner's ``calibration_file``.

Example::

    vla-pruned-ros ties-calibrate --model my_model --bag demos.mcap --out ties_calibration.json
    ros2 param set /policy pruner_config '{"calibration_file": "ties_calibration.json"}'
"""

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ties-calibrate``."""
    parser = subparsers.add_parser(
        'ties-calibrate', help='calibrate the TIES pruner (tau distribution) on recorded bags',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--bag', action='append', required=True,
                        help='rosbag2 folder (repeat for several)')
    parser.add_argument('--model', help='model directory (default: a random --preset model)')
    parser.add_argument('--preset', default='tiny', help='model preset when no --model')
    parser.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto')
    parser.add_argument('--dtype', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    parser.add_argument('--frames', type=int, default=100, help='frames to sample (TIES: 100)')
    parser.add_argument('--keep-ratio', type=float, default=56 / 256,
                        help='budget that sets the ranking top-k when --rank-k is 0')
    parser.add_argument('--layer', type=int, default=3, help='TIES layer K')
    parser.add_argument('--tau-layers', type=int, nargs='*', default=[],
                        help='layers whose adjacent pairs give tau (default 0..K-1)')
    parser.add_argument('--queries', default='last_text',
                        choices=('last_text', 'text', 'action', 'text_action'))
    parser.add_argument('--rank-k', type=int, default=0, help='ranking top-k (0: from budget)')
    parser.add_argument('--points-from', choices=('auto', 'depth', 'cloud'), default='auto',
                        help='3D tokens from the depth image or the PointCloud2')
    parser.add_argument('--instruction', default='',
                        help='instruction for bags without an instruction topic')
    topics = parser.add_argument_group('topics', 'found by message type when not given')
    for flag in ('rgb', 'depth', 'info', 'cloud', 'instruction', 'pose'):
        topics.add_argument(f'--{flag}-topic', metavar='TOPIC')
    parser.add_argument('--seed', type=int, default=0, help='seed of a --preset model')
    parser.add_argument('--out', default='ties_calibration.json', help='output JSON file')
    return parser


def run(args: argparse.Namespace) -> int:
    """Read the bags, measure tau per frame, write the calibration."""
    from vla_pruned_ros.eval.errors import EvalError
    from vla_pruned_ros.policy import Policy
    from vla_pruned_ros.pruning.calibration import (
        CalibrationError,
        bag_observations,
        calibrate_ties,
    )

    if args.frames < 1:
        raise SystemExit('ties-calibrate: --frames must be at least 1')
    overrides = {('camera_info' if flag == 'info' else flag): getattr(args, f'{flag}_topic')
                 for flag in ('rgb', 'depth', 'info', 'cloud', 'instruction', 'pose')}
    overrides = {role: topic for role, topic in overrides.items() if topic}
    try:
        if args.model:
            policy = Policy.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        else:
            policy = Policy.from_preset(args.preset, seed=args.seed, device=args.device,
                                        dtype=args.dtype)
        observations = bag_observations(
            args.bag, args.frames, overrides, args.points_from,
            needs_pose=bool(policy.model.n_proprio), instruction=args.instruction,
        )
        calibration = calibrate_ties(
            policy, observations, keep_ratio=args.keep_ratio, layer=args.layer,
            tau_layers=args.tau_layers, queries=args.queries, rank_k=args.rank_k,
            model=args.model or f'preset:{args.preset}', sources=list(args.bag),
        )
    except (CalibrationError, EvalError) as err:
        raise SystemExit(f'ties-calibrate: {err}') from None
    calibration.save(args.out)
    print(f'tau over {calibration.frames} frames: median {calibration.tau_median:.3f}, '
          f'25% {calibration.quantile(0.25):.3f}, 75% {calibration.quantile(0.75):.3f}')
    print(f'wrote {args.out}')
    return 0
