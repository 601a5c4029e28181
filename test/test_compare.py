"""The comparison table joins bench speedups and sim success rates by pruner spec and budget."""

import json

import pytest

from vla_pruned_ros.cli import main
from vla_pruned_ros.compare import comparison_table, paired_rows, paired_table
from vla_pruned_ros.confidence import mcnemar_exact


def _sim_results(cells):
    return {'model': 'models/default', 'split': 'heldout', 'families': ['reach', 'push'],
            'episodes': 10, 'cells': cells}


def _cell(pruner, ratio, family, successes, episodes=10):
    return {'pruner': pruner, 'keep_ratio': ratio, 'family': family, 'successes': successes,
            'episodes': episodes}


def test_table_from_a_real_bench_run_and_pooled_success(tmp_path):
    bench_dir = tmp_path / 'bench'
    assert main(['bench', '--preset', 'tiny', '--device', 'cpu', '--dtype', 'fp32', '--steps',
                 '1', '--warmup', '1', '--pruners', 'random', 'fastv:layer=1', '--budgets',
                 '0.5', '0.25', '24', '--out', str(bench_dir), '--no-progress']) == 0
    sim = _sim_results([
        _cell('dense', None, 'reach', 9), _cell('dense', None, 'push', 7),
        _cell('random', 0.5, 'reach', 5), _cell('random', 0.5, 'push', 3),
        {**_cell('safe', 0.25, 'reach', 10), 'tokens_in': 128, 'tokens_kept_mean': 40.0},
        {**_cell('safe', 0.25, 'push', 10), 'tokens_in': 128, 'tokens_kept_mean': 20.0},
    ])
    (tmp_path / 'sim').mkdir()
    (tmp_path / 'sim' / 'results.json').write_text(json.dumps(sim))
    out = tmp_path / 'table.md'
    assert main(['compare', '--bench', str(bench_dir), '--sim', str(tmp_path / 'sim'),
                 '--out', str(out)]) == 0
    lines = {line.split(' | ')[0].strip('| '): line.split(' | ')[1:]
             for line in out.read_text().splitlines() if line.startswith('| ')}
    bench = json.loads((bench_dir / 'bench.json').read_text())
    rows = {row['label']: row for row in bench['rows']}
    # dense first; success pooled over families: 16 / 20
    assert list(lines)[1] == 'dense' and lines['dense'][3] == '80% (58%-92%)'
    random_speedup = f"{rows['random@0.5']['speedup']:.2f}x"
    assert lines['random'][0].startswith(random_speedup)
    assert lines['random'][3].startswith('40%')
    # options stay part of the row name; budgets given as token counts are left out
    assert lines['fastv:layer=1'][1].startswith(f"{rows['fastv:layer=1@0.25']['speedup']:.2f}x")
    assert lines['fastv:layer=1'][3] == '-'
    # a pruner only the simulator measured still gets its row
    assert lines['safe'][0] == '-'
    # the simulator's mean visual tokens kept (full steps included), pooled over families
    assert lines['safe'][4] == '100% (84%-100%, 30/128 tok)'


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(['compare', '--bench', str(tmp_path), '--sim', str(tmp_path)]) == 2
    assert 'cannot read' in capsys.readouterr().err


def test_budgets_choose_the_columns():
    bench = {'rows': [{'label': 'dense', 'pruner': 'dense', 'budget': None, 'speedup': 1.0,
                       'flops_ideal_speedup': 1.0},
                      {'label': 'random@0.1', 'pruner': 'random', 'budget': 0.1,
                       'speedup': 3.0, 'flops_ideal_speedup': 4.0}]}
    table = comparison_table(bench, _sim_results([]), budgets=[0.1])
    assert '| random | 3.00x (4.00x) | - |' in table


def test_sim_results_split_over_runs_are_pooled_only_when_comparable(tmp_path):
    first = _sim_results([_cell('dense', None, 'reach', 9)])
    second = _sim_results([_cell('random', 0.5, 'reach', 4)])
    for name, result in (('a', first), ('b', second), ('c', {**second, 'episodes': 20}),
                         ('d', first)):
        (tmp_path / f'{name}.json').write_text(json.dumps(result))
    bench = tmp_path / 'bench.json'
    bench.write_text(json.dumps({'rows': []}))

    def compare(*names):
        return main(['compare', '--bench', str(bench), '--sim',
                     *[str(tmp_path / f'{n}.json') for n in names]])

    assert compare('a', 'b') == 0
    assert compare('a', 'c') == 2  # 10 vs 20 episodes per family
    assert compare('a', 'd') == 2  # the same cell twice


def _paired(pruner, ratio, family, failed, episodes=10):
    return {**_cell(pruner, ratio, family, episodes - len(failed), episodes),
            'seeds_failed': list(failed)}


def test_mcnemar_exact_counts_only_the_pairs_that_differ():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(11, 1) == pytest.approx(2 * (1 + 12) / 2**12)  # 0 or 1 of 12, twice
    assert mcnemar_exact(8, 4) == mcnemar_exact(4, 8) == pytest.approx(0.3877, abs=1e-4)
    assert mcnemar_exact(5, 5) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_rows_compare_each_pruned_cell_with_dense_on_the_same_seeds(tmp_path, capsys):
    sim = _sim_results([
        _paired('dense', None, 'reach', [1]), _paired('dense', None, 'push', [2, 3]),
        # reach: loses seeds 4 and 5, gains 1; push: loses 4, keeps 2 and 3 failed
        _paired('fastv', 0.25, 'reach', [4, 5]), _paired('fastv', 0.25, 'push', [2, 3, 4]),
        _paired('random', 0.5, 'push', [0, 1, 2, 3, 5, 6, 7, 8, 9]),
        _cell('ties', 0.25, 'push', 7),  # written without failed seeds: not paired
    ])
    rows = {(row['spec'], row['family']): row for row in paired_rows(sim)}
    assert set(rows) == {('fastv', 'reach'), ('fastv', 'push'), ('fastv', 'all'),
                         ('random', 'push')}  # one family: no pooled row
    assert (rows['fastv', 'reach']['lost'], rows['fastv', 'reach']['gained']) == (2, 1)
    assert (rows['fastv', 'push']['lost'], rows['fastv', 'push']['gained']) == (1, 0)
    pooled = rows['fastv', 'all']
    assert (pooled['episodes'], pooled['dense'], pooled['pruned']) == (20, 17, 15)
    assert (pooled['lost'], pooled['gained']) == (3, 1)
    assert pooled['p_value'] == pytest.approx(mcnemar_exact(3, 1))
    assert rows['random', 'push']['lost'] == 7 and rows['random', 'push']['p_value'] < 0.02
    assert '| fastv @ 0.25 | all | 17/20 | 15/20 | 3 | 1 | -10 points | 0.625 |' in (
        paired_table(sim))
    with pytest.raises(ValueError, match='dense cell'):
        paired_table(_sim_results([_paired('fastv', 0.25, 'reach', [4])]))
    # the command: --paired alone, and neither table asked for
    (tmp_path / 'results.json').write_text(json.dumps(sim))
    assert main(['compare', '--paired', '--sim', str(tmp_path)]) == 0
    assert '| random @ 0.5 | push | 8/10 | 1/10 | 7 | 0 | -70 points | 0.016 |' in (
        capsys.readouterr().out)
    assert main(['compare', '--sim', str(tmp_path)]) == 2
    assert '--paired' in capsys.readouterr().err
