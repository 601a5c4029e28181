"""
``vla-pruned-ros compare``: one table of every pruner's speedup and success, per budget.

It joins two measurements that are made separately because they need different models:

- speed from ``vla-pruned-ros bench`` (``bench.json``): p50 step speedup against dense in the
  same run, with the FLOPs-ideal speedup beside it; usually a large preset (``small``) where
  the decoder dominates the step, as on a real VLA;
- success from ``vla-pruned-ros sim eval`` (``results.json``): closed-loop success of the
  trained reference policy, pooled over the task families, with its 95% Wilson interval.

Rows are matched by pruner spec (``name`` or ``name:key=value,...``) and keep ratio; a cell
without a measurement shows ``-``.

With ``--paired`` it also compares every pruned cell with dense on the same task seeds (the
episodes a pruner loses and gains against dense, and the exact McNemar p-value): two success
rates of 100 episodes each have 95 % intervals of about +-9 points, but the same scenes run
twice differ only where the outcome changed, so a paired difference says far more.
"""

import argparse
from collections import Counter
from collections.abc import Sequence
import json
from pathlib import Path
import sys
from typing import Any, Optional

from vla_pruned_ros.confidence import mcnemar_exact, wilson_interval


def _load(path: str, file_name: str) -> dict[str, Any]:
    location = Path(path)
    if location.is_dir():
        location = location / file_name
    try:
        return json.loads(location.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f'cannot read {location}: {err}') from None


def speed_cells(bench: dict[str, Any]) -> dict[tuple[str, Optional[float]], dict[str, float]]:
    """(spec, keep ratio) -> speedup and FLOPs-ideal speedup, from a ``bench.json``."""
    cells = {}
    for row in bench['rows']:
        budget = row['budget']
        if budget is not None and budget > 1:
            continue  # token counts: not comparable across models
        cells[(row.get('spec', row['pruner']), budget)] = {
            'speedup': row['speedup'], 'ideal': row['flops_ideal_speedup'],
        }
    return cells


def success_cells(sim: dict[str, Any]) -> dict[tuple[str, Optional[float]], dict[str, float]]:
    """
    (spec, keep ratio) -> successes, episodes and visual tokens kept, pooled over families.

    ``tokens`` is the episode-weighted mean of the cells' mean visual tokens per step (full
    steps included), ``tokens_in`` the tokens one observation gives.
    """
    cells: dict[tuple[str, Optional[float]], dict[str, float]] = {}
    for cell in sim['cells']:
        pooled = cells.setdefault((cell['pruner'], cell['keep_ratio']),
                                  {'successes': 0, 'episodes': 0, 'token_sum': 0.0,
                                   'tokens_in': cell.get('tokens_in', 0)})
        pooled['successes'] += cell['successes']
        pooled['episodes'] += cell['episodes']
        pooled['token_sum'] += cell.get('tokens_kept_mean', 0.0) * cell['episodes']
    for pooled in cells.values():
        pooled['tokens'] = pooled.pop('token_sum') / max(pooled['episodes'], 1)
    return cells


def merge_sim_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """
    Pool the cells of several ``sim eval`` results that ran the same evaluation.

    Split, episodes per family, task seeds and model must agree (otherwise the success rates
    would not be comparable); a (pruner, budget, family) cell measured twice is an error.
    """
    first = results[0]
    cells, seen = [], set()
    for result in results:
        for key in ('model', 'split', 'episodes', 'seed', 'execute_steps'):
            if result.get(key) != first.get(key):
                raise ValueError(f'sim results differ in {key}: {first.get(key)!r} vs '
                                 f'{result.get(key)!r}')
        for cell in result['cells']:
            key = (cell['pruner'], cell['keep_ratio'], cell['family'])
            if key in seen:
                raise ValueError(f'cell {key} is in more than one sim result')
            seen.add(key)
            cells.append(cell)
    families = list(dict.fromkeys(f for result in results for f in result.get('families', [])))
    return {**first, 'families': families, 'cells': cells}


def comparison_table(bench: dict[str, Any], sim: dict[str, Any],
                     budgets: Sequence[float] = (0.5, 0.25, 0.125)) -> str:
    """The markdown table: one row per pruner, speedup then success per budget."""
    speed, success = speed_cells(bench), success_cells(sim)
    specs = list(dict.fromkeys([key[0] for key in speed] + [key[0] for key in success]))
    specs.sort(key=lambda spec: spec != 'dense')

    def speed_text(spec: str, budget: Optional[float]) -> str:
        cell = speed.get((spec, budget))
        if cell is None or cell['speedup'] is None:
            return '-'
        return f"{cell['speedup']:.2f}x ({cell['ideal']:.2f}x)"

    def success_text(spec: str, budget: Optional[float]) -> str:
        cell = success.get((spec, budget))
        if cell is None:
            return '-'
        low, high = wilson_interval(int(cell['successes']), int(cell['episodes']))
        rate = cell['successes'] / cell['episodes']
        tokens = f", {cell['tokens']:.0f}/{cell['tokens_in']:.0f} tok" if cell['tokens_in'] else ''
        return f'{rate:.0%} ({low:.0%}-{high:.0%}{tokens})'

    percents = [f'{100 * b:g}%' for b in budgets]
    lines = [
        '| pruner | ' + ' | '.join(f'speedup @ {p}' for p in percents) + ' | '
        + ' | '.join(f'success @ {p}' for p in percents) + ' |',
        '|---|' + '---|' * (2 * len(budgets)),
    ]
    for spec in specs:
        if spec == 'dense':
            cells = ['1.00x (1.00x)' if ('dense', None) in speed else '-'] + [''] * (
                len(budgets) - 1) + [success_text('dense', None)] + [''] * (len(budgets) - 1)
        else:
            cells = [speed_text(spec, b) for b in budgets] + [success_text(spec, b)
                                                               for b in budgets]
        lines.append(f'| {spec} | ' + ' | '.join(cells) + ' |')
    meta = bench.get('meta', {})
    families = ', '.join(sim.get('families', []))
    lines += [
        '',
        f"Speedup: p50 step latency of dense / pruned, same run ({meta.get('title', '?')}, "
        f"{meta.get('steps', '?')} timed steps); in brackets the FLOPs-ideal speedup. "
        f"Command: `{meta.get('command', '?')}`.",
        f"Success: closed loop in the MuJoCo tabletop, {sim.get('split', '?')} split, "
        f"{sim.get('episodes', '?')} episodes per family ({families}) pooled, model "
        f"`{sim.get('model', '?')}`; in brackets the 95% Wilson interval and the mean visual "
        'tokens kept per step in those episodes (full steps included).',
    ]
    return '\n'.join(lines) + '\n'


def paired_rows(sim: dict[str, Any]) -> list[dict[str, Any]]:
    """
    Every pruned cell against the dense cell of its family, episode by episode.

    Each row: spec, keep ratio, family ('all' pools the families of that spec and ratio),
    episodes, dense and pruned successes, ``lost`` (solved dense, failed pruned), ``gained``
    (the other way) and the exact McNemar p-value. Cells without a dense cell of their family
    or without their failed seeds (results written before they were recorded) are left out.
    """
    dense = {cell['family']: cell for cell in sim['cells'] if cell['pruner'] == 'dense'}
    rows: list[dict[str, Any]] = []
    pooled: dict[tuple[str, Optional[float]], dict[str, Any]] = {}
    for cell in sim['cells']:
        reference = dense.get(cell['family'])
        if (cell['pruner'] == 'dense' or reference is None or 'seeds_failed' not in cell
                or 'seeds_failed' not in reference):
            continue
        failed, dense_failed = set(cell['seeds_failed']), set(reference['seeds_failed'])
        row = {'spec': cell['pruner'], 'keep_ratio': cell['keep_ratio'],
               'family': cell['family'], 'episodes': cell['episodes'],
               'dense': reference['successes'], 'pruned': cell['successes'],
               'lost': len(failed - dense_failed), 'gained': len(dense_failed - failed)}
        rows.append(row)
        total = pooled.setdefault((row['spec'], row['keep_ratio']),
                                  {**row, 'family': 'all', 'episodes': 0, 'dense': 0,
                                   'pruned': 0, 'lost': 0, 'gained': 0})
        for key in ('episodes', 'dense', 'pruned', 'lost', 'gained'):
            total[key] += row[key]
    families = Counter((row['spec'], row['keep_ratio']) for row in rows)
    rows += [total for key, total in pooled.items() if families[key] > 1]
    # (spec, ratio) in the order their cells came, each one's pooled row after its families
    order = {key: index for index, key in enumerate(pooled)}
    rows.sort(key=lambda row: (order[(row['spec'], row['keep_ratio'])], row['family'] == 'all'))
    for row in rows:
        row['p_value'] = mcnemar_exact(row['lost'], row['gained'])
    return rows


def paired_table(sim: dict[str, Any]) -> str:
    """The markdown table of :func:`paired_rows`."""
    rows = paired_rows(sim)
    if not rows:
        raise ValueError('no pruned cell has a dense cell of its family with failed seeds to '
                         'pair with (run dense in the same evaluation or pass its results)')
    lines = ['| pruner @ keep ratio | family | dense | pruned | lost | gained | difference '
             '| McNemar p |', '|---|---|---|---|---|---|---|---|']
    for row in rows:
        difference = 100 * (row['pruned'] - row['dense']) / row['episodes']
        ratio = 'all tokens' if row['keep_ratio'] is None else f"{row['keep_ratio']:g}"
        lines.append(
            f"| {row['spec']} @ {ratio} | {row['family']} | "
            f"{row['dense']}/{row['episodes']} | {row['pruned']}/{row['episodes']} | "
            f"{row['lost']} | {row['gained']} | {difference:+.0f} points | "
            f"{row['p_value']:.3f} |")
    lines += ['', f"Paired against dense on the same task seeds ({sim.get('split', '?')} split, "
              f"{sim.get('episodes', '?')} episodes per family, model `{sim.get('model', '?')}`):"
              ' lost = solved dense and failed pruned, gained = the other way; McNemar p: '
              'exact two-sided test on those pairs (below 0.05: the difference is unlikely to '
              'be chance).']
    return '\n'.join(lines) + '\n'


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``compare``."""
    parser = subparsers.add_parser(
        'compare', help='one table of speedup (bench) and success (sim eval) per pruner',
        description='Join the speedups of a bench.json and the success rates of a sim eval '
                    'results.json into one markdown table, one row per pruner; with --paired, '
                    'compare every pruned cell with dense on the same task seeds.',
    )
    parser.add_argument('--bench', help='bench output directory or bench.json (the speedup and '
                        'success table)')
    parser.add_argument('--paired', action='store_true',
                        help='also (or, without --bench, only) the paired table: each pruned '
                             'cell against dense on the same seeds, with the McNemar p-value')
    parser.add_argument('--sim', required=True, nargs='+',
                        help='sim eval output directories or results.json files (their cells '
                             'are pooled, e.g. runs split over two machines)')
    parser.add_argument('--budgets', nargs='+', type=float, default=[0.5, 0.25, 0.125],
                        help='keep ratios to show (default: 0.5 0.25 0.125)')
    parser.add_argument('--out', help='also write the table to this markdown file')
    return parser


def run(args: argparse.Namespace) -> int:
    """Print (and optionally write) the comparison table."""
    if not args.bench and not args.paired:
        print('vla-pruned-ros compare: error: give --bench, --paired or both', file=sys.stderr)
        return 2
    try:
        sim = merge_sim_results([_load(p, 'results.json') for p in args.sim])
        tables = []
        if args.bench:
            tables.append(comparison_table(_load(args.bench, 'bench.json'), sim, args.budgets))
        if args.paired:
            tables.append(paired_table(sim))
        table = '\n'.join(tables)
    except (ValueError, KeyError) as err:
        print(f'vla-pruned-ros compare: error: {err}', file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table, encoding='utf-8')
    print(table, end='')
    return 0
