"""Closed-loop evaluation in the simulator: episodes, statistics, report files, command."""

import json

import pytest

from vla_pruned_ros.cli import main
from vla_pruned_ros.confidence import wilson_interval
from vla_pruned_ros.model.checkpoint import save_model
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import available_pruners
from vla_pruned_ros.sim import cli as sim_cli
from vla_pruned_ros.sim.env import DEFAULT_MAX_STEPS
from vla_pruned_ros.sim.evaluate import (
    EvalError,
    evaluate,
    markdown_table,
    run_policy_episode,
    write_report,
)


@pytest.fixture(scope='module')
def policy():
    return Policy.from_preset('tiny', seed=0, device='cpu')


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(0.8389, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for trials in range(1, 60):
        assert wilson_interval(0, trials)[0] == 0.0
        assert wilson_interval(trials, trials)[1] == 1.0


def test_an_episode_replans_every_execute_steps_until_the_step_limit(policy):
    # An untrained policy does not solve reach; the episode runs to the limit, re-planning
    # after every 3 executed actions.
    result = run_policy_episode(policy, 'reach', 0, 'heldout', execute_steps=3)
    limit = DEFAULT_MAX_STEPS['reach']
    if not result.success:
        assert result.env_steps == limit
        assert result.policy_steps == -(-limit // 3)
    assert len(result.latency_ms) == result.policy_steps
    assert result.tokens_2d_kept == 64 and result.tokens_3d_kept == 32


def test_evaluate_covers_every_cell_and_writes_the_report(policy, tmp_path):
    report = evaluate(policy, ['dense', 'random'], [0.5, 0.25], families=['reach'],
                      episodes=1, split='heldout', execute_steps=8, model_name='tiny')
    labels = [(c.pruner, c.keep_ratio) for c in report.cells]
    assert labels == [('dense', None), ('random', 0.5), ('random', 0.25)]
    random_half = report.cells[1]
    assert random_half.tokens_in == 96
    assert random_half.tokens_kept_mean == pytest.approx(48)
    assert report.cells[2].tokens_kept_mean == pytest.approx(24)
    assert report.cells[0].flops_ratio_mean == pytest.approx(1.0)
    assert random_half.flops_ratio_mean < 1.0
    for cell in report.cells:
        assert cell.episodes == 1 and 0 <= cell.ci_low <= cell.success_rate <= cell.ci_high <= 1
        assert cell.latency_ms_mean > 0

    paths = write_report(report, tmp_path)
    data = json.loads(paths['json'].read_text())
    assert len(data['cells']) == 3 and data['split'] == 'heldout' and data['execute_steps'] == 8
    assert paths['plot'].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = paths['markdown'].read_text()
    assert table == markdown_table(report) and '| random @ 0.25 | reach |' in table


def test_pruner_specs_are_cells_of_their_own(policy):
    report = evaluate(policy, ['random', 'random:seed=3'], [0.25], families=['reach'],
                      episodes=1, split='heldout', execute_steps=8)
    assert [c.pruner for c in report.cells] == ['random', 'random:seed=3']
    assert policy.pruner.config.seed == 3  # the spec's setting reached the pruner


def test_bad_requests_are_refused(policy):
    with pytest.raises(EvalError, match='unknown pruner'):
        evaluate(policy, ['no_such_pruner'], [0.5], episodes=1)
    with pytest.raises(EvalError, match='no pruners given'):
        evaluate(policy, [], [0.5], episodes=1)
    with pytest.raises(EvalError, match="unknown option 'nope'"):
        evaluate(policy, ['random:nope=1'], [0.5], episodes=1)
    with pytest.raises(EvalError, match='unknown or no families'):
        evaluate(policy, ['dense'], [0.5], families=['stack'], episodes=1)
    with pytest.raises(EvalError, match='keep ratios'):
        evaluate(policy, ['random'], [1.5], episodes=1)
    with pytest.raises(EvalError, match='episodes'):
        evaluate(policy, ['dense'], [0.5], episodes=0)


def test_eval_command_accepts_every_registered_pruner(policy, tmp_path, capsys):
    model_dir = tmp_path / 'model'
    save_model(policy.model, policy.tokenizer, str(model_dir))
    parser_args = ['sim', 'eval', '--model', str(model_dir), '--pruners', *available_pruners(),
                   '--out', str(tmp_path / 'report')]
    from vla_pruned_ros.cli import build_parser

    args = build_parser().parse_args(parser_args)
    assert args.pruners == available_pruners() and args.split == 'heldout'
    assert args._sim_run is sim_cli._run_eval
    code = main(['sim', 'eval', '--model', str(model_dir), '--pruners', 'dense',
                 '--episodes', '1', '--families', 'reach', '--execute-steps', '8',
                 '--out', str(tmp_path / 'report')])
    assert code == 0
    assert (tmp_path / 'report' / 'results.md').is_file()
    assert '| dense | reach |' in capsys.readouterr().out
    # a pruned cell on the same seeds pairs with dense episode by episode
    assert main(['sim', 'eval', '--model', str(model_dir), '--pruners', 'random',
                 '--budgets', '0.25', '--episodes', '1', '--families', 'reach',
                 '--execute-steps', '8', '--out', str(tmp_path / 'pruned')]) == 0
    capsys.readouterr()
    assert main(['compare', '--paired', '--sim', str(tmp_path / 'report'),
                 str(tmp_path / 'pruned')]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith('| random @ 0.25 | reach |')]
    dense_solved, pruned_solved, lost, gained = (int(cell.split('/')[0]) for cell in
                                                  row.split(' | ')[2:6])
    assert lost - gained == dense_solved - pruned_solved and lost + gained <= 1
    code = main(['sim', 'eval', '--model', str(tmp_path / 'missing'), '--out', str(tmp_path)])
    assert code == 2


def test_pointer_errors_reports_how_far_the_first_frame_points_are(policy, tmp_path):
    """tools/pointer_errors.py: per scene the object and zone pointers' distance to the truth."""
    from pathlib import Path
    import subprocess
    import sys

    save_model(policy.model, policy.tokenizer, str(tmp_path / 'model'))
    script = Path(__file__).resolve().parents[1] / 'tools' / 'pointer_errors.py'
    out = tmp_path / 'errors.json'
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / 'model'), '--families', 'push', 'reach',
         '--episodes', '2', '--first-seed', '3', '--split', 'train', '--tolerance', '0.05',
         '--out', str(out)], check=True, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    push = report['families']['push']
    assert [r['seed'] for r in push['records']] == [3, 4]
    for record in push['records']:
        assert record['object_error_m'] >= 0 and record['zone_error_m'] >= 0
        assert 'zone' in record['instruction']
    assert 'zone_error_m' not in report['families']['reach']['records'][0]  # no zone named
    misses = sum(r['object_error_m'] > 0.05 for r in push['records'])
    assert push['summary']['object_misses'] == misses
    assert f'in {misses} of 2 scenes' in result.stdout
    # re-worded with a family template: the same scenes, the template's words
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / 'model'), '--families', 'push',
         '--episodes', '1', '--first-seed', '3', '--split', 'train', '--template', '0',
         '--out', str(out)], check=True, capture_output=True, text=True, timeout=300)
    record = json.loads(out.read_text())['families']['push']['records'][0]
    assert record['instruction'].startswith('push the ')


def test_rollout_trace_prints_where_the_pointers_point(policy, tmp_path):
    """tools/rollout_trace.py: one line per policy step with the pointers' world points."""
    from pathlib import Path
    import subprocess
    import sys

    save_model(policy.model, policy.tokenizer, str(tmp_path / 'model'))
    script = Path(__file__).resolve().parents[1] / 'tools' / 'rollout_trace.py'
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / 'model'), 'reach', '0', '--split', 'train',
         '--pruner', 'tri_stage', '--keep-ratio', '0.25'],
        check=True, capture_output=True, text=True, timeout=300)
    lines = result.stdout.strip().splitlines()
    steps = [line for line in lines[1:-1] if ' object [' in line and ' zone [' in line]
    assert len(steps) == len(lines) - 2 >= 1  # every step, the tiny policy never succeeds
    assert lines[-1].startswith('target ') and lines[-1].endswith('success: False')
    assert policy.last_pointer is None or policy.last_pointer.points.shape[-1] == 3
    # the expert drives: it solves the episode, every line shows its phase and action
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / 'model'), 'pick', '0', '--split', 'train',
         '--teacher'], check=True, capture_output=True, text=True, timeout=300)
    lines = result.stdout.strip().splitlines()
    phases = [line.split(' expert ')[1].split()[0] for line in lines[1:-1]]
    assert phases[0] == 'approach' and 'close' in phases and phases[-1] == 'lift'
    assert lines[-1].endswith('success: True')


def test_oracle_pointer_points_at_the_named_object_and_zone(tmp_path):
    """sim.oracle + tools/oracle_pointer.py: the replaced pointers land on the truth."""
    from pathlib import Path
    import subprocess
    import sys

    import numpy as np

    from vla_pruned_ros.sim.env import TabletopEnv
    from vla_pruned_ros.sim.oracle import OracleError, OraclePointer

    # The shipped model: its preset crops the cloud to the table, so the objects have groups.
    model_dir = sim_cli.DEFAULT_MODEL_DIR
    policy = Policy.from_pretrained(str(model_dir), device='cpu')
    oracle = OraclePointer(policy, ['object', 'zone']).install(policy)
    size = policy.config.vision.image_size
    with TabletopEnv('push', 3, 'train', image_size=(size, size), points_stride=2) as env:
        observation = env.reset()
        with pytest.raises(OracleError, match='attach'):
            policy.step(observation)
        oracle.attach(env)
        policy.step(observation)
        to_world = env.camera_to_world()
        points = policy.last_pointer.points[0].float().numpy()
        world = points @ to_world[:3, :3].T + to_world[:3, 3]
        target = env.scene.object_position(env.task.target)
        zone = env.task.target_zone
    assert np.linalg.norm(world[0, :2] - target[:2]) < 0.03
    assert np.hypot(world[1, 0] - zone.x, world[1, 1] - zone.y) < zone.radius
    assert world[1, 2] < 0.02  # the zone is a mark on the table
    with pytest.raises(OracleError, match='no pointer'):
        OraclePointer(policy, ['gripper'])
    script = Path(__file__).resolve().parents[1] / 'tools' / 'oracle_pointer.py'
    out = tmp_path / 'oracle.json'
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir), '--families', 'reach', '--episodes', '1',
         '--split', 'train', '--pointers', 'object', '--out', str(out)],
        check=True, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    reach = report['families']['reach']
    assert reach['episodes'] == 1 and report['pointers'] == ['object']
    assert f"reach: {reach['successes']} / 1 with the oracle object pointer" in result.stdout
    trace = Path(__file__).resolve().parents[1] / 'tools' / 'rollout_trace.py'
    result = subprocess.run(
        [sys.executable, str(trace), str(model_dir), 'reach', '0', '--split', 'train',
         '--oracle'], check=True, capture_output=True, text=True, timeout=300)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith('oracle pointers: object, zone')
    assert lines[-1].startswith('target ')
