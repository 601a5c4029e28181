"""Excursion recording: random detours break the expert's path, the expert labels the recovery."""

import numpy as np
import pytest

from vla_pruned_ros.sim import cli
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.excursion import ExcursionDriver, ExcursionError
from vla_pruned_ros.sim.expert import make_expert, run_episode
from vla_pruned_ros.sim.record import read_episode_metadata

SIZE = 32


def _detours(episode) -> np.ndarray:
    """Steps whose executed translation is not the (noise-free) expert's label."""
    executed, labels = np.array(episode.executed), np.array(episode.actions)
    return np.abs(executed[:, :3] - labels[:, :3]).max(axis=1) > 1e-9


def test_detours_move_at_the_set_speed_and_the_expert_still_solves_the_task():
    driver = ExcursionDriver(probability=0.3, max_steps=3, speed=0.03, seed=4)
    with TabletopEnv('pick', 3, 'train', image_size=(SIZE, SIZE)) as env:
        episode = run_episode(env, make_expert('pick'), driver=driver)
    detoured = _detours(episode)
    assert driver.detour_steps == detoured.sum() > 0
    executed, labels = np.array(episode.executed), np.array(episode.actions)
    np.testing.assert_allclose(np.linalg.norm(executed[detoured, :3], axis=1), 0.03, atol=1e-9)
    # The gripper follows the expert's command through a detour (a grasp is not dropped).
    np.testing.assert_array_equal(executed[:, 6], labels[:, 6])
    # The expert labels the recovery: after each detour its label points back, not along it.
    ends = np.flatnonzero(detoured[:-1] & ~detoured[1:])
    back = [labels[end + 1, :3] @ executed[end, :3] for end in ends if labels[end + 1, :3].any()]
    assert back and min(back) < 0
    assert episode.success


def test_no_probability_is_the_plain_expert_and_seeds_repeat():
    def roll(driver):
        with TabletopEnv('push', 1, 'train', image_size=(SIZE, SIZE)) as env:
            return run_episode(env, make_expert('push'), keep_observations=False, driver=driver)

    plain = roll(ExcursionDriver(probability=0.0))
    assert not _detours(plain).any()
    first, again = roll(ExcursionDriver(0.2, seed=7)), roll(ExcursionDriver(0.2, seed=7))
    np.testing.assert_array_equal(first.executed, again.executed)
    assert _detours(first).any() and first.steps > plain.steps


@pytest.mark.parametrize('settings, message', [
    ({'probability': 1.0}, 'probability'),
    ({'probability': -0.1}, 'probability'),
    ({'max_steps': 0}, 'steps'),
    ({'speed': 0.0}, 'speed'),
    ({'speed': 0.5}, 'speed'),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ExcursionError, match=message):
        ExcursionDriver(**settings)


def test_cli_records_excursions_and_refuses_them_with_a_policy(tmp_path, capsys, sim_cli):
    out = tmp_path / 'excursions'
    assert sim_cli(
        'record', '--out', str(out), '--families', 'push', '--episodes', '1',
        '--seed', '2', '--image-size', str(SIZE), str(SIZE), '--excursions', '0.3',
        '--excursion-steps', '2',
    ) == 0
    printed = capsys.readouterr().out
    assert 'expert success' in printed and 'of them detours' in printed
    [meta] = read_episode_metadata(out)
    assert meta['driver'] == 'excursion'
    assert 0 < meta['detour_steps'] < meta['steps']
    assert meta['excursion_probability'] == 0.3 and meta['excursion_steps'] == 2
    for flags, message in (
        (['--excursions', '0.1', '--policy', str(cli.DEFAULT_MODEL_DIR)], 'driven by the policy'),
        (['--excursion-steps', '5'], 'needs --excursions'),
        (['--excursions', '1.5'], 'probability'),
    ):
        assert sim_cli('record', '--out', str(tmp_path / 'bad'), *flags) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / 'bad').exists()
