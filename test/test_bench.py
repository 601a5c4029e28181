"""The benchmark command writes consistent JSON, markdown and a plot."""

import json

import pytest

from vla_pruned_ros.bench import BenchConfiguration, parse_budgets, roofline_speedup
from vla_pruned_ros.cli import main


def test_budget_parsing_and_labels():
    assert parse_budgets(['0.25', '128']) == [0.25, 128.0]
    with pytest.raises(Exception, match='keep ratio'):
        parse_budgets(['1.5'])
    assert BenchConfiguration('tri_stage', 0.25).label == 'tri_stage@0.25'
    assert BenchConfiguration('fastv', 128).make_budget().tokens == 128
    assert BenchConfiguration('dense').make_budget().is_dense
    configuration = BenchConfiguration('info_entropy', 0.25, {'reuse': False, 'k1': 0.6})
    assert configuration.label == 'info_entropy:reuse=false,k1=0.6@0.25'


def test_roofline_bound_caps_speedup_by_weight_reads():
    row = {'flops_dense': 100.0, 'flops_actual': 25.0}
    assert roofline_speedup(row, weight_bytes=0.0, peak_flops=1.0, bandwidth=1.0) == 4.0
    # Weight reads take 50 time units: dense max(100, 50), pruned max(25, 50).
    assert roofline_speedup(row, weight_bytes=50.0, peak_flops=1.0, bandwidth=1.0) == 2.0


def test_bench_command_on_tiny_preset(tmp_path):
    out = tmp_path / 'bench'
    code = main(['bench', '--preset', 'tiny', '--device', 'cpu', '--dtype', 'fp32', '--steps',
                 '2', '--warmup', '1', '--pruners', 'tri_stage', 'random', '--budgets', '0.5',
                 '24', '--out', str(out), '--no-progress'])
    assert code == 0
    result = json.loads((out / 'bench.json').read_text())
    labels = [row['label'] for row in result['rows']]
    assert labels == ['dense', 'tri_stage@0.5', 'tri_stage@24', 'random@0.5', 'random@24']
    rows = {row['label']: row for row in result['rows']}
    assert rows['dense']['speedup'] == 1.0 and rows['dense']['flops_ratio'] == 1.0
    assert rows['random@24']['tokens_kept'] == 24
    assert rows['random@0.5']['tokens_kept'] == 48
    for row in result['rows']:
        assert row['steps'] == 2
        assert row['latency_ms_p90'] >= row['latency_ms_p50'] > 0
        assert row['flops_ideal_speedup'] == pytest.approx(1 / row['flops_ratio'])
    assert '| tri_stage@0.5 |' in (out / 'bench.md').read_text()
    assert (out / 'bench.png').read_bytes()[:4] == b'\x89PNG'


def test_bench_pruner_options_make_separate_rows(tmp_path):
    out = tmp_path / 'bench'
    code = main(['bench', '--preset', 'tiny', '--device', 'cpu', '--dtype', 'fp32', '--steps',
                 '3', '--warmup', '1', '--pruners', 'info_entropy', 'info_entropy:reuse=false',
                 '--budgets', '0.25', '--out', str(out), '--no-progress'])
    assert code == 0
    rows = {row['label']: row for row in json.loads((out / 'bench.json').read_text())['rows']}
    assert set(rows) == {'dense', 'info_entropy@0.25', 'info_entropy:reuse=false@0.25'}
    without = rows['info_entropy:reuse=false@0.25']
    assert without['options'] == {'reuse': False} and without['tokens_reused'] == 0
    assert without['spec'] == 'info_entropy:reuse=false'


@pytest.mark.parametrize('spec', ['nope', 'fastv:no_such=1', 'fastv:layer=two'])
def test_bench_rejects_bad_pruner_specs_before_loading_a_model(tmp_path, capsys, spec):
    code = main(['bench', '--preset', 'tiny', '--pruners', spec, '--out', str(tmp_path)])
    assert code == 2
    assert 'error' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
