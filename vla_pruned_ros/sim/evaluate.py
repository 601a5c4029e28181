"""
Closed-loop evaluation: a policy drives the tabletop simulator through ``Policy.step``.

Per (pruner, budget, family) the policy runs ``episodes`` episodes of the given split on the
fixed task seeds ``seed, seed + 1, ...`` (the same seeds for every pruner and budget, chosen
before any result is seen). Each policy step predicts a chunk of ``horizon`` actions, of which
the first ``execute_steps`` (default :data:`EXECUTE_STEPS` = 4, half of the sim preset's
horizon of 8) are executed open loop before the next observation is taken; ``policy.reset()``
starts every episode. An episode succeeds when the task's success predicate holds before the
family's step limit.

Reported per cell: success rate with its 95% Wilson score interval, mean / median policy step
latency, mean visual tokens kept (2D, 3D) and the FLOPs ratio. ``write_report`` writes
``results.json``, ``results.md`` and ``success_vs_tokens.png`` (success against mean visual
tokens kept, one line per pruner, one panel per family).
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
import json
from pathlib import Path
import platform
import time
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.confidence import wilson_interval
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.tasks import FAMILIES, SPLITS

EXECUTE_STEPS = 4
# Point cloud density of the recorded demonstrations (sim record --points-stride).
POINTS_STRIDE = 2
DENSE = 'dense'


class EvalError(ValueError):
    """Unknown pruner, family or split, or a non-positive episode count or budget."""


@dataclass
class EpisodeResult:
    """One closed-loop episode."""

    family: str
    seed: int
    success: bool
    env_steps: int
    policy_steps: int
    latency_ms: list[float]
    tokens_2d_kept: float
    tokens_3d_kept: float
    flops_ratio: float


@dataclass
class CellResult:
    """Aggregate of one (pruner, budget, family)."""

    pruner: str
    keep_ratio: Optional[float]
    family: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    latency_ms_mean: float
    latency_ms_median: float
    tokens_in: int
    tokens_kept_mean: float
    tokens_2d_kept_mean: float
    tokens_3d_kept_mean: float
    flops_ratio_mean: float
    seeds_failed: list[int] = field(default_factory=list)


@dataclass
class EvalReport:
    """All cells of an evaluation and how it was run."""

    model: str
    split: str
    families: list[str]
    episodes: int
    seed: int
    execute_steps: int
    cells: list[CellResult]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        data['cells'] = [asdict(cell) for cell in self.cells]
        return data


def run_policy_episode(
    policy: Any, family: str, seed: int, split: str, execute_steps: int = EXECUTE_STEPS,
    points_stride: int = POINTS_STRIDE,
    on_reset: Optional[Callable[[TabletopEnv], None]] = None,
) -> EpisodeResult:
    """
    Run one closed-loop episode of ``family`` / ``seed`` with ``policy`` and return it.

    ``on_reset(env)``, if given, is called once the scene is reset, before the first step (a
    diagnostic that reads the simulator, such as :class:`vla_pruned_ros.sim.oracle.
    OraclePointer`, attaches there).
    """
    size = policy.config.vision.image_size
    latencies, kept_2d, kept_3d, flops = [], [], [], []
    policy.reset()
    with TabletopEnv(family, seed, split, image_size=(size, size),
                     points_stride=points_stride) as env:
        observation = env.reset()
        if on_reset is not None:
            on_reset(env)
        done = env.success
        while not done:
            actions, stats = policy.step(observation)
            latencies.append(stats.latency_ms)
            kept_2d.append(stats.tokens_2d_kept)
            kept_3d.append(stats.tokens_3d_kept)
            flops.append(stats.flops_ratio)
            for action in actions[:execute_steps]:
                observation, done, _ = env.step(action)
                if done:
                    break
        return EpisodeResult(
            family=family, seed=seed, success=bool(env.success), env_steps=env.steps,
            policy_steps=len(latencies), latency_ms=latencies,
            tokens_2d_kept=float(np.mean(kept_2d)) if kept_2d else 0.0,
            tokens_3d_kept=float(np.mean(kept_3d)) if kept_3d else 0.0,
            flops_ratio=float(np.mean(flops)) if flops else 1.0,
        )


def _cell(pruner: str, ratio: Optional[float], family: str, results: list[EpisodeResult],
          tokens_in: int) -> CellResult:
    successes = sum(r.success for r in results)
    low, high = wilson_interval(successes, len(results))
    latencies = [v for r in results for v in r.latency_ms]
    kept_2d = float(np.mean([r.tokens_2d_kept for r in results]))
    kept_3d = float(np.mean([r.tokens_3d_kept for r in results]))
    return CellResult(
        pruner=pruner, keep_ratio=ratio, family=family, episodes=len(results),
        successes=successes, success_rate=successes / len(results), ci_low=low, ci_high=high,
        latency_ms_mean=float(np.mean(latencies)), latency_ms_median=float(np.median(latencies)),
        tokens_in=tokens_in, tokens_kept_mean=kept_2d + kept_3d, tokens_2d_kept_mean=kept_2d,
        tokens_3d_kept_mean=kept_3d,
        flops_ratio_mean=float(np.mean([r.flops_ratio for r in results])),
        seeds_failed=[r.seed for r in results if not r.success],
    )


def evaluate(
    policy: Any,
    pruners: Sequence[str],
    budgets: Sequence[float],
    families: Sequence[str] = FAMILIES,
    episodes: int = 20,
    split: str = 'heldout',
    seed: int = 0,
    execute_steps: int = EXECUTE_STEPS,
    points_stride: int = POINTS_STRIDE,
    model_name: str = '',
    progress: bool = False,
) -> EvalReport:
    """
    Evaluate ``policy`` for every pruner x budget (keep ratios) x family.

    ``pruners`` are names or ``name:key=value,...`` specs (:mod:`vla_pruned_ros.pruning.spec`);
    each cell is reported under the spec's label.

    'dense' runs once, without a budget. Raises ``EvalError`` for unknown pruners, families or
    splits, ``episodes`` < 1 or a keep ratio outside (0, 1].
    """
    from vla_pruned_ros.pruning import Budget, available_pruners
    from vla_pruned_ros.pruning.spec import parse_pruner_spec

    if not pruners:
        raise EvalError(f'no pruners given; available: {", ".join(available_pruners())}')
    try:
        specs = {spec.label: spec for spec in map(parse_pruner_spec, pruners)}
    except ValueError as err:  # unknown pruner, option or value
        raise EvalError(str(err)) from None
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise EvalError(f'unknown or no families {list(families)}; known: {list(FAMILIES)}')
    if split not in SPLITS:
        raise EvalError(f'unknown split {split!r}; known: {list(SPLITS)}')
    if int(episodes) < 1 or int(execute_steps) < 1:
        raise EvalError(f'episodes and execute_steps must be >= 1: {episodes}, {execute_steps}')
    if any(not 0 < b <= 1 for b in budgets) or (not budgets and any(p != DENSE for p in specs)):
        raise EvalError(f'budgets are keep ratios in (0, 1], got {list(budgets)}')
    execute_steps = min(int(execute_steps), policy.config.horizon)
    runs = [(p, None) if p == DENSE else (p, float(b))
            for p in specs for b in (budgets if p != DENSE else [None])]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(runs) * len(families) * int(episodes), unit='episode',
                   desc='evaluating')
    tokens_in = policy.model.vision.num_tokens + policy.config.points.num_groups
    cells = []
    started = time.perf_counter()
    try:
        for pruner, ratio in runs:
            budget = Budget() if ratio is None else Budget(keep_ratio=ratio)
            spec = specs[pruner]
            policy.configure(pruner=spec.name, budget=budget, pruner_config=spec.options)
            for family in families:
                results = []
                for index in range(int(episodes)):
                    results.append(run_policy_episode(
                        policy, family, int(seed) + index, split, execute_steps, points_stride
                    ))
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(cell=f'{pruner}@{ratio or 1:g} {family}',
                                        success=f'{np.mean([r.success for r in results]):.0%}')
                cells.append(_cell(pruner, ratio, family, results, tokens_in))
    finally:
        if bar is not None:
            bar.close()
    return EvalReport(
        model=model_name, split=split, families=list(families), episodes=int(episodes),
        seed=int(seed), execute_steps=execute_steps, cells=cells,
        settings={
            'device': str(policy.device),
            'dtype': str(policy.dtype).replace('torch.', ''),
            'points_stride': points_stride,
            'machine': f'{platform.machine()} {platform.processor() or ""}'.strip(),
            'python': platform.python_version(),
            'seconds': round(time.perf_counter() - started, 1),
        },
    )


def _label(cell: CellResult) -> str:
    return cell.pruner if cell.keep_ratio is None else f'{cell.pruner} @ {cell.keep_ratio:g}'


def markdown_table(report: EvalReport) -> str:
    """Return the results as a markdown document (one row per cell, then an overall table)."""
    lines = [
        f'# Closed-loop evaluation ({report.split} split)',
        '',
        f'Model `{report.model}`, {report.episodes} episodes per family (task seeds '
        f'{report.seed}..{report.seed + report.episodes - 1}), first {report.execute_steps} '
        f'actions of each chunk executed; device {report.settings.get("device")}, '
        f'{report.settings.get("dtype")}. Success with 95% Wilson interval.',
        '',
        '| pruner @ keep ratio | family | success | 95% CI | visual tokens kept (2D+3D) '
        '| FLOPs ratio | step latency mean / median (ms) |',
        '|---|---|---|---|---|---|---|',
    ]
    for c in report.cells:
        lines.append(
            f'| {_label(c)} | {c.family} | {c.success_rate:.0%} ({c.successes}/{c.episodes}) '
            f'| {c.ci_low:.0%}-{c.ci_high:.0%} | {c.tokens_kept_mean:.1f} / {c.tokens_in} '
            f'({c.tokens_2d_kept_mean:.1f}+{c.tokens_3d_kept_mean:.1f}) '
            f'| {c.flops_ratio_mean:.2f} | {c.latency_ms_mean:.1f} / {c.latency_ms_median:.1f} |'
        )
    lines += ['', '| pruner @ keep ratio | success, all families | 95% CI |', '|---|---|---|']
    for label, cells in _by_label(report).items():
        successes = sum(c.successes for c in cells)
        trials = sum(c.episodes for c in cells)
        low, high = wilson_interval(successes, trials)
        lines.append(f'| {label} | {successes / trials:.0%} ({successes}/{trials}) '
                     f'| {low:.0%}-{high:.0%} |')
    return '\n'.join(lines) + '\n'


def _by_label(report: EvalReport) -> dict[str, list[CellResult]]:
    groups: dict[str, list[CellResult]] = {}
    for cell in report.cells:
        groups.setdefault(_label(cell), []).append(cell)
    return groups


def plot(report: EvalReport, path: 'str | Path') -> None:
    """Write a PNG: success rate (with 95% intervals) against mean visual tokens kept."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot

    families = report.families
    figure, axes = pyplot.subplots(1, len(families), figsize=(4.2 * len(families), 3.6),
                                   sharey=True, squeeze=False)
    pruners = list(dict.fromkeys(c.pruner for c in report.cells))
    for axis, family in zip(axes[0], families):
        for pruner in pruners:
            cells = sorted((c for c in report.cells if c.family == family and c.pruner == pruner),
                           key=lambda c: c.tokens_kept_mean)
            x = [c.tokens_kept_mean for c in cells]
            y = [c.success_rate for c in cells]
            error = [[max(0.0, c.success_rate - c.ci_low) for c in cells],
                     [max(0.0, c.ci_high - c.success_rate) for c in cells]]
            axis.errorbar(x, y, yerr=error, marker='o', capsize=3, label=pruner)
        axis.set_title(family)
        axis.set_xlabel('visual tokens kept (mean per step)')
        axis.set_ylim(-0.03, 1.03)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f'success rate ({report.split})')
    axes[0][-1].legend(fontsize='small')
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def write_report(report: EvalReport, out: 'str | Path') -> dict[str, Path]:
    """Write results.json, results.md and success_vs_tokens.png into ``out``; return paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        'json': folder / 'results.json',
        'markdown': folder / 'results.md',
        'plot': folder / 'success_vs_tokens.png',
    }
    paths['json'].write_text(json.dumps(report.to_dict(), indent=2) + '\n', encoding='utf-8')
    paths['markdown'].write_text(markdown_table(report), encoding='utf-8')
    plot(report, paths['plot'])
    return paths
