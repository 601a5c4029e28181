"""
``vla-pruned-ros bench``: step latency, its breakdown, speedup and FLOPs per pruner and budget.

Dense runs interleaved with every pruned configuration on the same fixed sequence of
observations, in the same process, so speedups compare like with like: for each observation
every configuration steps once, round robin, each with its own pruner state (temporal pruners
see the sequence in order). The first ``warmup`` observations are not timed. Full steps a
pruner chooses (episode start, new segment) inside the timed window are timed like any other:
they are part of what the pruner costs.

Observations come from a scripted episode of the MuJoCo tabletop (real RGB-D renders), or
from a rosbag2 given with ``--bag``.
"""

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
import json
import os
import platform
import resource
import sys
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from vla_pruned_ros.pruning.base import Pruner
    from vla_pruned_ros.pruning.spec import PrunerSpec


@dataclass
class BenchConfiguration:
    """One row of the benchmark: a pruner at a budget (dense has no budget)."""

    pruner: str
    budget: Optional[float] = None  # <= 1: keep ratio of visual tokens; > 1: tokens kept
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def pruner_spec(self) -> 'PrunerSpec':
        """The pruner and its option overrides as a :class:`PrunerSpec`."""
        from vla_pruned_ros.pruning.spec import PrunerSpec

        return PrunerSpec(self.pruner, self.options)

    @property
    def spec(self) -> str:
        """The pruner with its options, e.g. 'info_entropy:reuse=false' (see pruning.spec)."""
        return self.pruner_spec.label

    def make_pruner(self) -> 'Pruner':
        """A fresh pruner of this configuration (``ValueError`` for a bad name or option)."""
        return self.pruner_spec.create()

    @property
    def label(self) -> str:
        """Row label, e.g. 'tri_stage@0.25', 'fastv@128' or 'info_entropy:reuse=false@0.25'."""
        if self.budget is None:
            return self.spec
        value = f'{self.budget:g}' if self.budget <= 1 else str(int(self.budget))
        return f'{self.spec}@{value}'

    def make_budget(self):
        """The :class:`Budget` of this configuration."""
        from vla_pruned_ros.pruning import Budget

        if self.budget is None:
            return Budget()
        if self.budget <= 1:
            return Budget(keep_ratio=float(self.budget))
        return Budget(tokens=int(self.budget))


def parse_budgets(values: Sequence[str]) -> list[float]:
    """Budgets from the command line: fractions (keep ratio) or integers (tokens kept)."""
    budgets = []
    for value in values:
        number = float(value)
        if number <= 0 or (number > 1 and not number.is_integer()):
            raise argparse.ArgumentTypeError(
                f'budget {value!r}: use a keep ratio in (0, 1] or a whole number of tokens'
            )
        budgets.append(number)
    return budgets


def sim_observations(count: int, image_size: int, family: str = 'pick', seed: int = 0) -> list:
    """A fixed sequence of RGB-D observations from a scripted episode (repeated if short)."""
    os.environ.setdefault('MUJOCO_GL', 'egl')
    from vla_pruned_ros.sim.env import TabletopEnv
    from vla_pruned_ros.sim.expert import make_expert, run_episode

    observations: list = []
    episode_seed = seed
    while len(observations) < count:
        with TabletopEnv(family, episode_seed, image_size=(image_size, image_size)) as env:
            observations += run_episode(env, make_expert(family)).observations
        episode_seed += 1
    return observations[:count]


def bag_observations(path: str, count: int, needs_pose: bool) -> list:
    """The first ``count`` observations of a rosbag2, synchronised as the node does."""
    from vla_pruned_ros.eval.bag import BagReplay
    from vla_pruned_ros.eval.replay import ReplayOptions, plan_bag

    topics, plan = plan_bag(path, ReplayOptions(), needs_pose)
    replay = BagReplay(path, plan, topics, max_observations=count)
    observations = [frame.observation for frame in replay.frames()]
    if len(observations) < count:
        raise ValueError(f'{path} holds {len(observations)} observations, {count} needed')
    return observations


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float('nan')


def run_benchmark(
    policy: Any,
    observations: list,
    configurations: list[BenchConfiguration],
    warmup: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Step every configuration on every observation (round robin) and summarise."""
    import torch
    from tqdm import tqdm

    pruners = {c.label: c.make_pruner() for c in configurations}
    records: dict[str, list[Any]] = {c.label: [] for c in configurations}
    cuda = policy.device.type == 'cuda'
    peak_memory: dict[str, float] = {}
    bar = tqdm(total=len(observations) * len(configurations), disable=not progress,
               desc='bench', unit='step')
    for index, observation in enumerate(observations):
        for configuration in configurations:
            policy.configure(pruners[configuration.label], configuration.make_budget())
            if cuda:
                torch.cuda.reset_peak_memory_stats(policy.device)
            _, stats = policy.step(observation)
            if cuda:
                peak = torch.cuda.max_memory_allocated(policy.device) / 2**20
                label = configuration.label
                peak_memory[label] = max(peak, peak_memory.get(label, 0.0))
            if index >= warmup:
                records[configuration.label].append(stats)
            bar.update(1)
    bar.close()
    rows = [_summarise(c, records[c.label], peak_memory.get(c.label)) for c in configurations]
    dense = next((row for row in rows if row['pruner'] == 'dense'), None)
    for row in rows:
        row['speedup'] = dense['latency_ms_p50'] / row['latency_ms_p50'] if dense else None
    return {
        'rows': rows,
        'process_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _summarise(config: BenchConfiguration, stats: list, peak_mb: Optional[float]) -> dict:
    def column(name: str) -> list[float]:
        return [getattr(s, name) for s in stats]

    latency = column('latency_ms')
    # Medians, like the latencies they are compared with: a pruner's occasional full step
    # (episode start, new segment) moves the mean but not the typical step.
    flops_dense = np.median(column('flops_dense'))
    flops_actual = np.median(column('flops_actual'))
    return {
        'label': config.label,
        'pruner': config.pruner,
        'spec': config.spec,
        'budget': config.budget,
        'options': config.options,
        'steps': len(stats),
        'full_steps': int(sum(column('full_step'))),
        'tokens_in': float(np.mean([s.tokens_in for s in stats])),
        'tokens_kept': float(np.mean([s.tokens_kept for s in stats])),
        'tokens_2d_kept': float(np.mean(column('tokens_2d_kept'))),
        'tokens_3d_kept': float(np.mean(column('tokens_3d_kept'))),
        # visual tokens whose keys/values came from an earlier step (KV reuse), mean per step
        'tokens_reused': float(np.mean(column('tokens_reused'))),
        'latency_ms_p50': _percentile(latency, 50),
        'latency_ms_p90': _percentile(latency, 90),
        'tokenize_ms_p50': _percentile(column('tokenize_ms'), 50),
        'decoder_ms_p50': _percentile(column('decoder_ms'), 50),
        'pruning_overhead_ms_p50': _percentile(column('pruning_overhead_ms'), 50),
        'action_head_ms_p50': _percentile(column('action_head_ms'), 50),
        'overhead_fraction': _percentile(column('pruning_overhead_ms'), 50)
        / _percentile(latency, 50),
        'flops_dense': float(flops_dense),
        'flops_actual': float(flops_actual),
        'flops_ratio': float(flops_actual / flops_dense),
        'flops_ideal_speedup': float(flops_dense / flops_actual),
        'peak_gpu_memory_mb': peak_mb,
    }


def roofline_speedup(row: dict, weight_bytes: float, peak_flops: float, bandwidth: float) -> float:
    """
    Ideal speedup when a step costs max(FLOPs / peak, weights / bandwidth) (a roofline).

    Pruning shrinks FLOPs but every weight is still read once per step, so on a GPU the
    weight-read time bounds the speedup from above.
    """
    dense = max(row['flops_dense'] / peak_flops, weight_bytes / bandwidth)
    pruned = max(row['flops_actual'] / peak_flops, weight_bytes / bandwidth)
    return dense / pruned


def markdown_table(result: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    lines = [
        '| configuration | visual tokens kept (2D+3D) | full steps | p50 ms | p90 ms | tokenize |'
        ' decoder | pruning overhead | head | speedup | FLOPs ratio | FLOPs-ideal speedup |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for row in result['rows']:
        speedup = f"{row['speedup']:.2f}x" if row['speedup'] else '-'
        lines.append(
            f"| {row['label']} | {row['tokens_kept']:.0f} ({row['tokens_2d_kept']:.0f}+"
            f"{row['tokens_3d_kept']:.0f}) of {row['tokens_in']:.0f} | {row['full_steps']}/"
            f"{row['steps']} | {row['latency_ms_p50']:.1f} | {row['latency_ms_p90']:.1f} | "
            f"{row['tokenize_ms_p50']:.1f} | {row['decoder_ms_p50']:.1f} | "
            f"{row['pruning_overhead_ms_p50']:.1f} ({100 * row['overhead_fraction']:.1f}%) | "
            f"{row['action_head_ms_p50']:.2f} | {speedup} | {row['flops_ratio']:.3f} | "
            f"{row['flops_ideal_speedup']:.2f}x |"
        )
    return '\n'.join(lines) + '\n'


def plot(result: dict[str, Any], path: str) -> None:
    """Speedup against visual tokens kept per pruner, with the FLOPs-ideal curve beside it."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    rows = [row for row in result['rows'] if row['pruner'] != 'dense']
    for spec in sorted({row['spec'] for row in rows}):
        mine = sorted((r for r in rows if r['spec'] == spec), key=lambda r: r['tokens_kept'])
        axes.plot([r['tokens_kept'] for r in mine], [r['speedup'] for r in mine], 'o-',
                  label=f'{spec} (measured)')
    ideal = sorted(rows, key=lambda r: r['tokens_kept'])
    axes.plot([r['tokens_kept'] for r in ideal], [r['flops_ideal_speedup'] for r in ideal], 'k--',
              label='FLOPs-ideal')
    axes.axhline(1.0, color='grey', linewidth=0.8)
    axes.set_xlabel('visual tokens kept (2D + 3D)')
    axes.set_ylabel('step speedup against dense')
    axes.set_title(result['meta']['title'])
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(result: dict[str, Any], out_dir: str) -> list[str]:
    """Write bench.json, bench.md and bench.png to ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in ('bench.json', 'bench.md', 'bench.png')]
    with open(paths[0], 'w', encoding='utf-8') as stream:
        json.dump(result, stream, indent=2)
    with open(paths[1], 'w', encoding='utf-8') as stream:
        stream.write(f"# {result['meta']['title']}\n\n{markdown_table(result)}")
    plot(result, paths[2])
    return paths


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench``."""
    parser = subparsers.add_parser(
        'bench', help='measure latency, speedup and FLOPs per pruner and budget',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--preset', default='small', help='model preset (random weights)')
    parser.add_argument('--model', help='model directory instead of a preset')
    parser.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto')
    parser.add_argument('--dtype', default='bf16', choices=('fp32', 'bf16', 'fp16'))
    parser.add_argument('--pruners', nargs='+', default=['tri_stage', 'fastv', 'random'],
                        help='pruner names, or name:key=value,... to override config fields '
                             '(e.g. info_entropy:reuse=false); "all" = every registered one')
    parser.add_argument('--budgets', nargs='+', default=['0.5', '0.25', '0.125'],
                        help='keep ratios (<= 1) or token counts (> 1)')
    parser.add_argument('--steps', type=int, default=10, help='timed steps per configuration')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per configuration')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch default)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--bag', help='take the observations from this rosbag2 (default: sim)')
    parser.add_argument('--out', default='bench_results', help='output directory')
    parser.add_argument('--peak-tflops', type=float, help='device peak for the roofline bound')
    parser.add_argument('--bandwidth-gbs', type=float, help='memory bandwidth for the roofline')
    parser.add_argument('--no-progress', action='store_true')
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write its outputs."""
    import torch

    from vla_pruned_ros.policy import Policy
    from vla_pruned_ros.pruning.spec import parse_pruner_specs

    try:
        budgets = parse_budgets(args.budgets)
        specs = parse_pruner_specs(args.pruners)
    except (argparse.ArgumentTypeError, ValueError) as err:
        print(f'vla-pruned-ros bench: error: {err}', file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    if args.model:
        policy = Policy.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    else:
        policy = Policy.from_preset(args.preset, device=args.device, dtype=args.dtype,
                                    seed=args.seed)
    count = args.warmup + args.steps
    if args.bag:
        observations = bag_observations(args.bag, count, needs_pose=bool(policy.model.n_proprio))
    else:
        observations = sim_observations(count, policy.config.vision.image_size, seed=args.seed)
    configurations = [BenchConfiguration('dense')] + [
        BenchConfiguration(spec.name, budget, spec.options)
        for spec in specs if spec.name != 'dense' for budget in budgets
    ]
    result = run_benchmark(policy, observations, configurations, args.warmup,
                           progress=not args.no_progress)
    weight_bytes = sum(p.numel() * p.element_size() for p in policy.model.parameters())
    if args.peak_tflops and args.bandwidth_gbs:
        for row in result['rows']:
            row['roofline_ideal_speedup'] = roofline_speedup(
                row, weight_bytes, args.peak_tflops * 1e12, args.bandwidth_gbs * 1e9)
    device_name = (torch.cuda.get_device_name(policy.device) if policy.device.type == 'cuda'
                   else f'{platform.processor() or platform.machine()}, '
                        f'{torch.get_num_threads()} threads')
    result['meta'] = {
        'title': f'{args.model or args.preset}, {args.dtype}, {device_name}',
        'preset': args.preset, 'model': args.model, 'dtype': args.dtype,
        'device': str(policy.device), 'device_name': device_name,
        'torch': torch.__version__, 'steps': args.steps, 'warmup': args.warmup,
        'weight_bytes': weight_bytes, 'seconds': time.time() - started,
        'command': 'vla-pruned-ros ' + ' '.join(sys.argv[1:]),
    }
    paths = write_outputs(result, args.out)
    print(markdown_table(result))
    print('wrote ' + ', '.join(paths))
    return 0
