"""
``vla-pruned-ros demo``: the main job end to end on this machine.

Renders real RGB-D observations of the MuJoCo tabletop (a scripted pick episode), runs
``Policy.step`` on them with the dense model and with the tri-stage pruner at 25 % of the
visual tokens, interleaved on the same frames, and prints the action chunk of one step and the
side-by-side latency/FLOPs table. The model is the ``small`` preset (SigLIP-base-sized tower,
256 2D + 256 3D tokens, Qwen2-0.5B-shaped decoder) in bf16 unless ``--model`` names a model
directory.
"""

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo``."""
    parser = subparsers.add_parser(
        'demo', help='run the policy on rendered RGB-D frames, dense and tri_stage side by side',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--preset', default='small')
    parser.add_argument('--model', help='model directory instead of the preset')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--dtype', default='bf16', choices=('fp32', 'bf16', 'fp16'))
    parser.add_argument('--keep-ratio', type=float, default=0.25)
    parser.add_argument('--steps', type=int, default=4, help='timed steps per configuration')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--out', default='demo_results')
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo and print what it measured."""
    import numpy as np

    from vla_pruned_ros.bench import (
        BenchConfiguration,
        markdown_table,
        run_benchmark,
        sim_observations,
        write_outputs,
    )
    from vla_pruned_ros.policy import Policy

    if args.model:
        policy = Policy.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        source = args.model
    else:
        print(f'building the {args.preset!r} preset with random weights ({args.dtype}) ...')
        policy = Policy.from_preset(args.preset, device=args.device, dtype=args.dtype)
        source = f'{args.preset} preset (random weights)'
    size = policy.config.vision.image_size
    print(f'rendering {args.warmup + args.steps} RGB-D frames ({size}x{size}) in MuJoCo ...')
    observations = sim_observations(args.warmup + args.steps, size)
    first = observations[0]
    print(f'instruction: {first.instruction!r}; cloud: {len(first.cloud())} points')
    actions, stats = policy.step(first)
    np.set_printoptions(precision=4, suppress=True)
    print(f'dense action chunk ({actions.shape[0]} steps x dx dy dz droll dpitch dyaw grip):')
    print(actions)
    configurations = [
        BenchConfiguration('dense'),
        BenchConfiguration('tri_stage', args.keep_ratio),
    ]
    result = run_benchmark(policy, observations, configurations, args.warmup)
    result['meta'] = {
        'title': f'demo: {source}, {args.dtype}, {policy.device}',
        'device': str(policy.device), 'dtype': args.dtype, 'steps': args.steps,
    }
    print(markdown_table(result))
    print('wrote ' + ', '.join(write_outputs(result, args.out)))
    return 0
