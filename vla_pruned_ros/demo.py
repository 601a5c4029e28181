"""
``vla-pruned-ros demo``: the main job end to end on this machine (what ``make demo`` runs).

1. ROS 2 graph: the policy and diagnostics nodes run with the embedded default model while the
   shipped sample bag is played into them (``/clock``, sim time), once dense and once with
   ``tri_stage`` at 25 % of the visual tokens; it prints what ``/diagnostics`` reported.
2. Offline, the same model steps on the bag's observations with dense and ``tri_stage``
   interleaved on identical frames, and prints the side-by-side latency/FLOPs table.
3. The same comparison at the scale of a real 2D+3D VLA: the ``small`` preset (SigLIP-base-sized
   tower, 256 2D + 256 3D tokens, Qwen2-0.5B-shaped decoder, random weights, bf16) on RGB-D
   frames rendered by the MuJoCo tabletop (skip with ``--no-small``).

Without the embedded model or sample bag (a bare checkout), steps 1 and 2 are skipped.
"""

import argparse
from pathlib import Path
from typing import Any, Optional

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def default_sample_bag() -> Optional[Path]:
    """The shipped sample bag (source tree or installed share directory), if present."""
    from vla_pruned_ros.nodes.params import default_model_candidates

    for model_dir in default_model_candidates():
        bag = model_dir.parent.parent / 'data' / 'sample'
        if (bag / 'metadata.yaml').is_file():
            return bag
    return None


def default_model() -> Optional[Path]:
    """The embedded default model directory, if present."""
    from vla_pruned_ros.nodes.params import default_model_candidates

    for candidate in default_model_candidates():
        if (candidate / 'config.json').is_file():
            return candidate
    return None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo``."""
    parser = subparsers.add_parser(
        'demo', help='nodes over the sample bag, then dense vs tri_stage side by side',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--model', help='model directory (default: the embedded model)')
    parser.add_argument('--bag', help='rosbag2 to replay (default: the shipped sample bag)')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--keep-ratio', type=float, default=0.25)
    parser.add_argument('--steps', type=int, default=12, help='timed offline steps per config')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--no-graph', action='store_true', help='skip the ROS 2 graph part')
    parser.add_argument('--no-small', action='store_true', help='skip the small-preset part')
    parser.add_argument('--out', default='demo_results')
    return parser


def _side_by_side(policy: Any, observations: list, keep_ratio: float, warmup: int,
                  title: str, out_dir: str) -> None:
    from vla_pruned_ros.bench import (
        BenchConfiguration,
        markdown_table,
        run_benchmark,
        write_outputs,
    )

    configurations = [BenchConfiguration('dense'), BenchConfiguration('tri_stage', keep_ratio)]
    result = run_benchmark(policy, observations, configurations, warmup)
    result['meta'] = {'title': title, 'device': str(policy.device)}
    print(f'\n{title}\n')
    print(markdown_table(result))
    print('wrote ' + ', '.join(write_outputs(result, out_dir)))


def run(args: argparse.Namespace) -> int:
    """Run the demo and print what it measured."""
    import numpy as np

    from vla_pruned_ros.bench import bag_observations, sim_observations
    from vla_pruned_ros.policy import Policy

    model = Path(args.model) if args.model else default_model()
    bag = Path(args.bag) if args.bag else default_sample_bag()
    if model is not None and bag is not None:
        if not args.no_graph:
            from vla_pruned_ros.nodes.graph_demo import run_graph_demo

            print(f'== 1. ROS 2 graph: policy_node + diagnostics_node, {bag} replayed ==')
            run_graph_demo(str(bag), str(model), pruners=('dense', 'tri_stage'),
                           keep_ratio=args.keep_ratio, device=args.device)
        print(f'\n== 2. offline on the bag observations, model {model} ==')
        policy = Policy.from_pretrained(str(model), device=args.device)
        observations = bag_observations(str(bag), args.warmup + args.steps,
                                        needs_pose=bool(policy.model.n_proprio))
        actions, _ = policy.step(observations[0])
        np.set_printoptions(precision=4, suppress=True)
        print(f'instruction {observations[0].instruction!r}; dense action chunk '
              f'({actions.shape[0]} steps x dx dy dz droll dpitch dyaw gripper):')
        print(actions)
        _side_by_side(policy, observations, args.keep_ratio, args.warmup,
                      f'embedded model on the sample bag ({policy.device})',
                      str(Path(args.out) / 'default_model'))
    else:
        print('no embedded model or sample bag found: skipping the graph and bag parts')
    if not args.no_small:
        # bf16 only where it is native: on AVX2-only CPUs it is ~5x slower than fp32.
        from vla_pruned_ros.device import resolve_device

        dtype = 'bf16' if resolve_device(args.device).type == 'cuda' else 'fp32'
        print(f'\n== 3. small preset (256 2D + 256 3D tokens, random weights, {dtype}) ==')
        policy = Policy.from_preset('small', device=args.device, dtype=dtype)
        size = policy.config.vision.image_size
        observations = sim_observations(args.warmup + 4, size)
        _side_by_side(policy, observations, args.keep_ratio, args.warmup,
                      f'small preset, {dtype}, rendered tabletop frames ({policy.device})',
                      str(Path(args.out) / 'small'))
    return 0
