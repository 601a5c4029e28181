"""Object nudges: the named object is moved while the gripper works on it; the expert recovers."""

import numpy as np
import pytest

from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.expert import make_expert, run_episode
from vla_pruned_ros.sim.nudge import NudgeError, ObjectNudgeDriver
from vla_pruned_ros.sim.record import read_episode_metadata

SIZE = 32


class _Watch:
    """Wraps a nudge driver: the target's position and the gripper's around every call."""

    def __init__(self, driver: ObjectNudgeDriver) -> None:
        self.driver = driver
        self.moves: list[np.ndarray] = []
        self.clearances: list[float] = []

    def reset(self) -> None:
        self.driver.reset()
        self.moves.clear()

    def bind(self, env) -> None:
        self.env = env
        self.driver.bind(env)

    def __call__(self, observation, action):
        scene, target = self.env.scene, self.env.task.target_object
        before = scene.object_position(target.name)
        nudges = self.driver.nudges
        executed = self.driver(observation, action)
        after = scene.object_position(target.name)
        self.moves.append(after - before)
        if self.driver.nudges > nudges:
            others = [scene.object_position(o.name) for o in self.env.task.scene.objects
                      if o.name != target.name]
            self.clearances.append(min(np.linalg.norm(p[:2] - after[:2]) for p in others))
        return executed


def test_push_nudges_move_the_object_by_the_drawn_distance_and_the_expert_recovers():
    watch = _Watch(ObjectNudgeDriver(probability=0.5, seed=3))
    with TabletopEnv('push', 4, 'train', image_size=(SIZE, SIZE)) as env:
        episode = run_episode(env, make_expert('push'), keep_observations=False, driver=watch)
        zone = env.task.target_zone
    driver = watch.driver
    assert driver.nudges >= 2 and len(driver.nudge_steps) == driver.nudges
    moves = np.array(watch.moves)
    # Only the nudged steps move the object inside the driver call, by the drawn distance,
    # horizontally; the object keeps its height.
    moved = np.flatnonzero(np.linalg.norm(moves[:, :2], axis=1) > 5e-3)
    np.testing.assert_array_equal(moved, driver.nudge_steps)
    # (MuJoCo's body positions after a step lag its state by one substep: 0.2 mm here.)
    np.testing.assert_allclose(np.linalg.norm(moves[moved, :2], axis=1), driver.nudge_distances,
                               atol=2e-4)
    assert np.all(np.abs(moves[:, 2]) < 2e-4)
    assert all(0.015 <= d <= 0.05 for d in driver.nudge_distances)
    assert min(watch.clearances) > 0.03  # never onto another object
    # The expert still brings the object into its zone, and the actions it executed are its own.
    assert episode.success and zone is not None
    np.testing.assert_array_equal(np.array(episode.executed), np.array(episode.actions))


def test_a_held_object_is_never_nudged():
    with TabletopEnv('pick', 2, 'train', image_size=(SIZE, SIZE)) as env:
        env.reset()
        expert = make_expert('pick')
        done = False
        while not done and expert.phase != 'lift':
            _, done, _ = env.step(expert.act(env))
        assert expert.phase == 'lift'
        driver = ObjectNudgeDriver(probability=0.99, interval=1, seed=0)
        driver.bind(env)
        for _ in range(5):
            if done:
                break
            _, done, _ = env.step(driver(None, expert.act(env)))
        assert driver.nudges == 0
        assert env.success


def test_no_probability_is_the_plain_expert_and_seeds_repeat():
    def roll(driver):
        with TabletopEnv('push', 1, 'train', image_size=(SIZE, SIZE)) as env:
            return run_episode(env, make_expert('push'), keep_observations=False, driver=driver)

    plain = roll(None)
    untouched = ObjectNudgeDriver(probability=0.0)
    np.testing.assert_array_equal(roll(untouched).executed, plain.executed)
    assert untouched.nudges == 0
    first, second = ObjectNudgeDriver(0.4, seed=5), ObjectNudgeDriver(0.4, seed=5)
    np.testing.assert_array_equal(roll(first).executed, roll(second).executed)
    assert first.nudge_steps == second.nudge_steps and first.nudges > 0


def test_displace_object_moves_and_stops_the_body():
    with TabletopEnv('reach', 0, 'train', image_size=(SIZE, SIZE)) as env:
        env.reset()
        name = env.task.target_object.name
        before = env.scene.object_position(name)
        env.scene.displace_object(name, (0.02, -0.01))
        np.testing.assert_allclose(env.scene.object_position(name) - before, [0.02, -0.01, 0.0],
                                   atol=1e-6)
        env.scene.advance(0.2)
        np.testing.assert_allclose(env.scene.object_position(name)[:2], before[:2] + (0.02, -0.01),
                                   atol=2e-3)


@pytest.mark.parametrize('settings, message', [
    ({'probability': 1.0}, 'probability'),
    ({'probability': -0.1}, 'probability'),
    ({'min_distance': 0.0}, 'distances'),
    ({'min_distance': 0.06, 'max_distance': 0.05}, 'distances'),
    ({'max_distance': 0.5}, 'distances'),
    ({'near': 0.0}, 'range'),
    ({'interval': 0}, 'interval'),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(NudgeError, match=message):
        ObjectNudgeDriver(**settings)


def test_an_unbound_driver_refuses_to_act():
    with pytest.raises(NudgeError, match='bind'):
        ObjectNudgeDriver(0.5)(None, np.zeros(7))


def test_cli_records_nudges_and_refuses_them_with_other_drivers(tmp_path, capsys, sim_cli):
    out = tmp_path / 'nudges'
    assert sim_cli(
        'record', '--out', str(out), '--families', 'push', '--episodes', '1',
        '--seed', '4', '--image-size', str(SIZE), str(SIZE), '--nudges', '0.5',
    ) == 0
    printed = capsys.readouterr().out
    assert 'expert success' in printed and 'object nudges' in printed
    [meta] = read_episode_metadata(out)
    assert meta['driver'] == 'nudge' and meta['nudges'] > 0
    assert meta['nudge_probability'] == 0.5
    for flags, message in (
        (['--nudges', '0.1', '--excursions', '0.1'], 'not with --policy or --excursions'),
        (['--nudges', '1.5'], 'probability'),
    ):
        assert sim_cli('record', '--out', str(tmp_path / 'bad'), *flags) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / 'bad').exists()
