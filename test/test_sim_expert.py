"""Scripted experts solve every family in both splits, in the project's action convention."""

import math

import numpy as np
import pytest

from vla_pruned_ros.sim.env import ACTION_HIGH, ACTION_LOW, TabletopEnv
from vla_pruned_ros.sim.expert import (
    LOOSE_TOLERANCES,
    TOLERANCES,
    ExpertError,
    action_chunks,
    grasp_yaw,
    make_expert,
    run_episode,
)
from vla_pruned_ros.sim.tasks import LIFT_HEIGHT


@pytest.mark.parametrize('split', ['train', 'heldout'])
@pytest.mark.parametrize('family', ['reach', 'push', 'pick'])
def test_expert_solves_two_seeds(family, split):
    for seed in (0, 1):
        with TabletopEnv(family, seed, split, image_size=(32, 32), points_stride=None) as env:
            expert = make_expert(family, translation_noise=0.003, yaw_noise=0.015, seed=seed)
            episode = run_episode(env, expert, keep_observations=False)
            assert episode.success, (family, split, seed, env.task.instruction, episode.steps)
            actions = np.array(episode.actions)
            assert actions.shape == (episode.steps, 7)
            assert (actions >= ACTION_LOW).all() and (actions <= ACTION_HIGH).all()
            assert set(np.unique(actions[:, 6])) <= {0.0, 1.0}
            if family == 'pick':
                # Lifting means the gripper closed at some point and moved up with the object.
                assert actions[:, 6].max() == 1.0
                target = env.task.target_object
                lifted = env.scene.object_position(target.name)[2] - target.half_height
                assert lifted > LIFT_HEIGHT
            if family == 'push':
                zone = env.task.target_zone
                final = env.scene.object_position(env.task.target)
                assert math.hypot(final[0] - zone.x, final[1] - zone.y) < zone.radius


@pytest.mark.parametrize('family', ['push', 'pick'])
def test_loose_experts_still_solve_and_descend_from_further_off(family):
    """'loose' tolerances: the same episodes solved, the approach ended earlier (fewer steps)."""
    steps = {}
    for tolerance in TOLERANCES:
        expert = make_expert(family, tolerance=tolerance)
        assert expert.tolerance == tolerance
        steps[tolerance] = 0
        for seed in (0, 1, 2):
            with TabletopEnv(family, seed, 'train', image_size=(32, 32),
                             points_stride=None) as env:
                episode = run_episode(env, expert, keep_observations=False)
            assert episode.success, (family, tolerance, seed)
            steps[tolerance] += episode.steps
    loose, strict = make_expert(family, tolerance='loose'), make_expert(family)
    for name, value in LOOSE_TOLERANCES[family].items():
        assert getattr(loose, name) == value > getattr(strict, name)
    assert steps['loose'] <= steps['strict']
    with pytest.raises(ExpertError, match='tolerance'):
        make_expert(family, tolerance='sloppy')


def test_noise_perturbs_executed_actions_but_not_labels():
    with TabletopEnv('reach', 3, image_size=(32, 32), points_stride=None) as env:
        expert = make_expert('reach', translation_noise=0.01, seed=0)
        episode = run_episode(env, expert)
    executed, labels = np.array(episode.executed), np.array(episode.actions)
    assert len(episode.observations) == episode.steps + 1
    assert np.abs(executed[:, :3] - labels[:, :3]).max() > 1e-3
    np.testing.assert_array_equal(executed[:, 6], labels[:, 6])


def test_expert_refuses_another_family():
    with TabletopEnv('push', 0, image_size=(32, 32), points_stride=None) as env:
        env.reset()
        with pytest.raises(ExpertError, match='push'):
            make_expert('pick').act(env)
    with pytest.raises(ExpertError, match='stack'):
        make_expert('stack')


def test_action_chunks_repeat_the_last_action_past_the_end():
    actions = np.arange(3 * 7, dtype=float).reshape(3, 7)
    chunks = action_chunks(actions, 4)
    assert chunks.shape == (3, 4, 7)
    np.testing.assert_array_equal(chunks[0], actions[[0, 1, 2, 2]])
    np.testing.assert_array_equal(chunks[2], actions[[2, 2, 2, 2]])


def test_grasp_yaw_meets_box_faces_and_keeps_round_objects():
    # A block turned by 0.3 rad is grasped across its short side: yaw 0.3 or 0.3 - pi.
    assert grasp_yaw('block', 0.3, 0.0) == pytest.approx(0.3)
    assert grasp_yaw('block', 0.3, -2.5) == pytest.approx(0.3 - math.pi)
    # A cube is symmetric under a quarter turn.
    assert grasp_yaw('cube', 0.3, 1.6) == pytest.approx(0.3 + math.pi / 2)
    assert grasp_yaw('sphere', 0.3, 1.0) == 1.0
