"""``vla-pruned-ros eval`` end to end: generated and hand-made bags, report numbers, live runs."""

import json

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
import torch

from eval_fixtures import MS, REALSENSE, T0, BagBuilder, camera_bag
from model_fixtures import make_observation
from vla_pruned_ros import cli
from vla_pruned_ros.convert import package_typestore
from vla_pruned_ros.model.checkpoint import save_model
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.record import record_episodes

# Recorded chunks of the hand-made bag: 4 steps each, shorter than the model's horizon of 8.
RECORDED = [
    np.array([[0.01, -0.02, 0.0, 0.0, 0.0, 0.1, 0.0]] * 4, np.float32),
    np.array([[0.0, 0.03, -0.01, 0.05, 0.0, -0.1, 1.0]] * 4, np.float32),
]


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    policy = Policy.from_preset('tiny', seed=0, device='cpu')
    path = tmp_path_factory.mktemp('model') / 'tiny'
    save_model(policy.model, policy.tokenizer, str(path))
    return path


def evaluate(model_dir, bags, out, *extra):
    code = cli.main(['eval', *map(str, bags), '--model', str(model_dir), '--out', str(out),
                     '--threads', '1', '--no-progress', *map(str, extra)])
    results = None
    if code == 0:
        results = json.loads((out / 'results.json').read_text(encoding='utf-8'))
    return code, results


@pytest.fixture(scope='module')
def two_step_bag(tmp_path_factory):
    """Two RealSense-named frames with end-effector poses and known recorded chunks."""
    builder = BagBuilder()
    builder.string('/instruction', 'pick up the red cube', T0 - MS)
    observations = [make_observation(seed) for seed in (1, 2)]
    stamps = camera_bag(builder, observations, REALSENSE)
    for stamp, obs, chunk in zip(stamps, observations, RECORDED):
        builder.pose('/ee_pose', obs.ee_pose, stamp)
        builder.chunk('/teleop/action_chunk', chunk, stamp)
    return builder.write(tmp_path_factory.mktemp('hand') / 'bag'), stamps


@pytest.mark.parametrize(('storage', 'samples'), [('mcap', 3), ('sqlite3', 1)])
def test_generated_bags_in_both_storages(tmp_path, model_dir, storage, samples):
    summary = record_episodes(tmp_path / 'bag', ['reach'], 2, storage=storage,
                              image_size=(64, 64))
    out = tmp_path / 'out'
    # The MCAP run also sweeps a second budget: five panels wrap onto two overlay rows.
    mcap = ('--mcap', '--budgets', '0.5', '0.25') if storage == 'mcap' else ()
    code, results = evaluate(model_dir, [tmp_path / 'bag'], out, '--pruners', 'tri_stage',
                             'random', '--budgets', '0.5', '--samples', samples, *mcap)
    assert code == 0
    observations = sum(e['steps'] + 1 for e in summary.episodes)
    steps = sum(e['steps'] for e in summary.episodes)
    assert results['observations'] == observations
    rows = {row['label']: row for row in results['configurations']}
    labels = ['dense', 'tri_stage@0.5', 'random@0.5']
    if mcap:
        labels = ['dense', 'tri_stage@0.5', 'tri_stage@0.25', 'random@0.5', 'random@0.25']
    assert list(rows) == labels
    dense, tri, rand = rows['dense'], rows['tri_stage@0.5'], rows['random@0.5']
    assert dense['tokens_kept'] == 96 and dense['full_steps'] == observations
    assert rand['tokens_kept'] == 48 and rand['full_steps'] == 0
    assert tri['tokens_kept'] < 96 and tri['flops_ratio'] < 1
    # The last observation of an episode has no recorded action.
    assert dense['vs_recorded']['observations'] == steps
    assert rand['vs_dense']['translation_error'] > 0
    assert results['bags'][0]['storage'] == storage
    assert results['bags'][0]['topics']['actions'] == '/expert/action_chunk'
    assert [r['instruction'] for r in results['episode_rows'][::len(labels)]] == [
        e['instruction'] for e in summary.episodes]
    report = (out / 'report.md').read_text(encoding='utf-8')
    assert '| tri_stage@0.5 |' in report and '## Per episode' in report
    for name in ['error_vs_tokens.png', 'speedup_vs_tokens.png', *results['files']['overlays']]:
        assert (out / name).read_bytes()[:4] == b'\x89PNG'
        assert f'({name})' in report
    assert len(results['samples']) == samples
    sample = results['samples'][0]
    assert len(sample['kept']['random@0.5']['2d']) + len(sample['kept']['random@0.5']['3d']) \
        == 48
    if not mcap:
        assert results['files']['predictions'] is None
        return
    # The predictions bag replays the same chunks, one per observation and configuration.
    typestore = package_typestore()
    with Reader(out / 'predictions') as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts['/eval/tri_stage_0_5/action_chunk'] == observations
        assert counts['/eval/dense/pruning_stats'] == observations
        assert counts['/eval/recorded/action_chunk'] == steps
        connection = next(c for c in reader.connections if c.topic == '/eval/dense/action_chunk')
        _, stamp, raw = next(reader.messages(connections=[connection]))
    message = typestore.deserialize_cdr(raw, connection.msgtype)
    first = results['steps'][0]
    assert stamp == first['stamp_ns']
    np.testing.assert_allclose(message.data.reshape(8, 7), first['runs']['dense']['actions'],
                               rtol=1e-6, atol=1e-9)


def test_report_numbers_match_a_hand_computation(tmp_path, model_dir, two_step_bag):
    bag, stamps = two_step_bag
    code, results = evaluate(model_dir, [bag], tmp_path / 'out', '--pruners', 'random',
                             '--budgets', '0.25', '--warmup', '0')
    assert code == 0
    steps = results['steps']
    assert [s['stamp_ns'] for s in steps] == stamps
    dense = [np.array(s['runs']['dense']['actions']) for s in steps]
    pruned = [np.array(s['runs']['random@0.25']['actions']) for s in steps]
    recorded = [np.array(s['recorded']) for s in steps]
    for got, wrote in zip(recorded, RECORDED):
        np.testing.assert_allclose(got, wrote, rtol=1e-6)

    # By hand: 2 observations x 4 common steps, every value counts once.
    pairs = [(p[t], r[t]) for p, r in zip(dense, recorded) for t in range(4)]
    mae = [sum(abs(p[d] - r[d]) for p, r in pairs) / 8 for d in range(7)]
    translation = sum(np.sqrt(sum((p[d] - r[d]) ** 2 for d in range(3))) for p, r in pairs) / 8
    agree = sum((p[6] > 0.5) == (r[6] > 0.5) for p, r in pairs) / 8
    rows = {row['label']: row for row in results['configurations']}
    vs_recorded = rows['dense']['vs_recorded']
    # the JSON's actions carry 7 significant digits (report.ACTION_DIGITS), the report used all
    # of them: a difference of two close values keeps fewer digits than either
    assert vs_recorded['mae'] == pytest.approx(mae, rel=1e-5, abs=1e-7)
    assert vs_recorded['translation_error'] == pytest.approx(translation, rel=1e-5)
    assert vs_recorded['gripper_agreement'] == pytest.approx(agree)
    assert (vs_recorded['observations'], vs_recorded['pairs']) == (2, 8)

    pairs = [(p[t], d[t]) for p, d in zip(pruned, dense) for t in range(8)]
    mae = [sum(abs(p[k] - d[k]) for p, d in pairs) / 16 for k in range(7)]
    vs_dense = rows['random@0.25']['vs_dense']
    assert vs_dense['mae'] == pytest.approx(mae, rel=1e-5, abs=1e-7)
    assert vs_dense['pairs'] == 16

    latency = [[s['runs'][label]['latency_ms'] for s in steps] for label in rows]
    assert rows['dense']['latency_ms_p50'] == pytest.approx(np.median(latency[0]))
    assert rows['random@0.25']['speedup'] == pytest.approx(
        np.median(latency[0]) / np.median(latency[1]))
    assert rows['random@0.25']['tokens_kept'] == 24  # round(0.25 x (64 + 32))
    assert results['bags'][0]['topics']['pose'] == '/ee_pose'
    assert results['episode_rows'] == []  # one episode: no per-episode table


def test_runs_are_deterministic_and_a_live_run_is_scored(tmp_path, model_dir, two_step_bag):
    bag, stamps = two_step_bag
    code, first = evaluate(model_dir, [bag], tmp_path / 'first', '--pruners', 'tri_stage',
                           '--budgets', '0.5', '--samples', '1')
    assert code == 0
    dense = [np.array(s['runs']['dense']['actions'], np.float32) for s in first['steps']]
    # The node's recording: dense chunks shifted 1 cm in x, one chunk of an unknown frame.
    offset = np.array([0.01, 0, 0, 0, 0, 0, 0], np.float32)
    live = BagBuilder()
    for stamp, chunk, latency in zip(stamps, dense, (5.0, 7.0)):
        live.chunk('/action_chunk', chunk + offset, stamp)
        live.stats('/pruning_stats', stamp, 'tri_stage', latency, 30)
    live.chunk('/action_chunk', dense[0], stamps[-1] + 1000 * MS)
    live.chunk('/teleop/action_chunk', dense[1], stamps[0])  # not the node's: ignored
    recording = live.write(tmp_path / 'live', 'mcap')

    code, second = evaluate(model_dir, [bag], tmp_path / 'second', '--pruners', 'tri_stage',
                            '--budgets', '0.5', '--samples', '1', '--live', recording)
    assert code == 0
    for a, b in zip(first['steps'], second['steps']):
        assert a['runs']['dense']['actions'] == b['runs']['dense']['actions']
        assert a['runs']['tri_stage@0.5']['actions'] == b['runs']['tri_stage@0.5']['actions']
    (row,) = second['live']
    assert (row['chunks'], row['matched'], row['unmatched']) == (3, 2, 1)
    assert row['coverage'] == 1.0 and row['pruner'] == 'tri_stage'
    assert row['latency_ms_p50'] == pytest.approx(6.0) and row['tokens_kept'] == 30
    assert row['vs_dense']['mae'][0] == pytest.approx(0.01, rel=1e-4)
    assert row['vs_dense']['mae'][1:6] == pytest.approx([0.0] * 5, abs=1e-7)
    assert row['vs_dense']['translation_error'] == pytest.approx(0.01, rel=1e-4)
    expected = np.mean([abs(c[t, 0] + 0.01 - r[t, 0]) for c, r in zip(dense, RECORDED)
                        for t in range(4)])
    assert row['vs_recorded']['mae'][0] == pytest.approx(expected, rel=1e-4)
    assert '## Live run' in (tmp_path / 'second' / 'report.md').read_text(encoding='utf-8')


def test_cloud_bag_without_camera_info_and_a_frame_the_policy_refuses(tmp_path, model_dir):
    builder = BagBuilder()
    builder.string('/instruction', 'reach the ball', T0)
    observations = [make_observation(seed) for seed in range(4)]
    stamps = camera_bag(builder, observations, REALSENSE, info=False, cloud=True)
    for k, (stamp, obs) in enumerate(zip(stamps, observations)):
        if k != 1:  # frame 1 has no pose, which this model reads: it is skipped for everyone
            builder.pose('/tool_pose', obs.ee_pose, stamp)
    code, results = evaluate(model_dir, [builder.write(tmp_path / 'bag', 'mcap')],
                             tmp_path / 'out', '--pruners', 'fastv', '--budgets', '40',
                             '--samples', '1')
    assert code == 0
    bag = results['bags'][0]
    assert bag['points_from'] == 'cloud' and bag['topics']['camera_info'] is None
    assert [s['stamp_ns'] for s in results['steps']] == [stamps[0], stamps[2], stamps[3]]
    assert bag['unusable_observations'] == 1
    assert 'end-effector pose' in bag['messages'][REALSENSE['rgb']]['errors'][0]
    assert results['configurations'][1]['tokens_kept'] == 40
    assert results['configurations'][1]['steps'] == 3
    assert 'no camera_info' in (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')


def test_unusable_input_exits_2_with_one_line(tmp_path, model_dir, two_step_bag, capsys):
    builder = BagBuilder()
    builder.string('/instruction', 'pick', T0)
    camera_bag(builder, [make_observation(0)], {'rgb': '/camera/color/image_raw'}, info=False)
    bad = builder.write(tmp_path / 'rgb_only')
    bag, _ = two_step_bag
    cases = [
        ([bad], (), 'no 3D input'),
        ([tmp_path / 'missing'], (), 'does not exist'),
        ([bag], ('--pruners', 'nope'), "unknown pruner 'nope'"),
        ([bag], ('--budgets', '1.5'), 'budget'),
        ([bag], ('--rgb-topic', '/nope'), '--rgb-topic /nope: no such topic'),
        ([bag], ('--live', bag, bag), 'one recording per BAG'),
        ([bag], ('--live', bad), 'no vla_pruned_ros/msg/ActionChunk topic'),
        ([bag], ('--live', bag, '--live-topic', '/x'), '--live-topic /x: not an'),
    ]
    for bags, extra, message in cases:
        code, _ = evaluate(model_dir, bags, tmp_path / 'out', *extra)
        err = capsys.readouterr().err.strip()
        assert code == 2, message
        assert err.startswith('vla-pruned-ros eval: error:') and '\n' not in err
        assert message in err
