"""The MuJoCo tabletop environment: rendering, camera geometry, action convention, determinism."""

import numpy as np
import pytest

from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sim.env import ACTION_HIGH, SIM_START_NS, EnvError, TabletopEnv
from vla_pruned_ros.sim.scene import COLOURS

SIZE = (64, 48)  # width, height: non-square catches swapped axes


def _env(family='pick', seed=0, split='train', **kwargs):
    kwargs.setdefault('image_size', SIZE)
    return TabletopEnv(family, seed, split, **kwargs)


def _action(**values):
    names = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
    action = np.zeros(7)
    for name, value in values.items():
        action[names.index(name)] = value
    return action


@pytest.fixture()
def env():
    with _env() as env:
        env.reset()
        yield env


def test_observation_has_the_documented_shapes_and_units(env):
    obs = env.observe()
    obs.validate()
    assert isinstance(obs, Observation)
    assert obs.rgb.shape == (48, 64, 3) and obs.rgb.dtype == np.uint8
    assert obs.depth.shape == (48, 64) and obs.depth.dtype == np.float32
    assert (obs.intrinsics.width, obs.intrinsics.height) == SIZE
    assert obs.points.ndim == 2 and obs.points.shape[1] == 3 and np.isfinite(obs.points).all()
    assert obs.instruction == env.task.instruction
    assert obs.stamp_ns == SIM_START_NS
    assert obs.ee_pose.shape == (7,) and obs.joint_state.shape == (2,)
    # The table (and the gripper) fill the lower half of the view, 0.2-1.5 m away.
    lower = obs.depth[24:]
    assert np.isfinite(lower).all()
    assert lower.min() > 0.2 and lower.max() < 1.5


def test_depth_back_projects_onto_the_table_plane_through_the_extrinsics(env):
    obs = env.observe()
    intr = obs.intrinsics
    v, u = np.mgrid[0 : intr.height, 0 : intr.width]
    z = obs.depth.astype(np.float64)
    camera = np.stack([(u - intr.cx) * z / intr.fx, (v - intr.cy) * z / intr.fy, z], axis=-1)
    transform = env.camera_to_world()
    world = camera @ transform[:3, :3].T + transform[:3, 3]
    # Bottom row corners look at bare table (objects and gripper stay in the middle).
    for row, col in ((47, 0), (47, 63), (30, 2)):
        assert abs(world[row, col, 2]) < 2e-3, world[row, col]


def test_sim_preset_states_the_camera_pose_the_simulator_renders_from(env):
    # the sim preset's head reads pointed positions in the world frame through this pose
    for name in ('sim', 'tiny'):
        np.testing.assert_allclose(preset_config(name).camera_to_base, env.camera_to_world(),
                                   atol=1e-6)


def test_target_object_appears_in_its_colour_where_the_camera_model_projects_it(env):
    target = env.task.target_object
    centre = env.scene.object_position(target.name)
    top = centre + (0.0, 0.0, 0.8 * target.half_height)
    world_to_camera = np.linalg.inv(env.camera_to_world())
    in_camera = world_to_camera[:3, :3] @ top + world_to_camera[:3, 3]
    u, v = np.round(env.observe().intrinsics.project(in_camera)).astype(int)
    pixel = env.observe().rgb[v, u].astype(float) / 255.0
    distances = {name: np.linalg.norm(pixel - rgb) for name, rgb in COLOURS.items()}
    assert min(distances, key=distances.get) == target.colour, (pixel, target.colour)


@pytest.mark.parametrize('axis', [0, 1, 2])
def test_translation_moves_the_tcp_by_the_commanded_delta(env, axis):
    before = env.scene.tcp_position()
    delta = np.zeros(7)
    delta[axis] = 0.03 if axis < 2 else -0.03
    obs, done, info = env.step(delta)
    moved = obs.ee_pose[:3] - before
    assert moved[axis] == pytest.approx(delta[axis], abs=2e-3)
    assert np.abs(np.delete(moved, axis)).max() < 2e-3
    assert not done and not info['success']


def test_yaw_turns_and_roll_pitch_are_ignored(env):
    yaw = env.scene.gripper_yaw()
    obs, _, _ = env.step(_action(droll=0.3, dpitch=-0.3, dyaw=0.2))
    assert env.scene.gripper_yaw() - yaw == pytest.approx(0.2, abs=0.01)
    qx, qy, qz, qw = obs.ee_pose[3:]
    assert abs(qx) < 1e-9 and abs(qy) < 1e-9
    assert 2 * np.arctan2(qz, qw) == pytest.approx(env.scene.gripper_yaw())


def test_actions_beyond_the_limits_are_clipped(env):
    before = env.scene.tcp_position()
    obs, _, info = env.step(_action(dx=0.5, gripper=3.0))
    assert info['action'][0] == ACTION_HIGH[0] and info['action'][6] == 1.0
    assert obs.ee_pose[0] - before[0] == pytest.approx(ACTION_HIGH[0], abs=3e-3)


def test_gripper_closes_and_opens(env):
    opened = env.observe().joint_state
    for _ in range(2):
        obs, _, _ = env.step(_action(gripper=1.0))
    assert env.gripper_closed
    assert opened.min() > 0.04 and obs.joint_state.max() < 0.003
    obs, _, _ = env.step(_action(gripper=0.4))  # <= 0.5 means open
    assert obs.joint_state.min() > 0.035


def test_stamps_advance_by_control_dt(env):
    first = env.observe().stamp_ns
    stamps = [env.step(np.zeros(7))[0].stamp_ns for _ in range(3)]
    assert np.diff([first, *stamps]).tolist() == [100_000_000] * 3


def test_same_seed_and_actions_reproduce_the_episode():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.03, 0.03, (4, 7))
    actions[:, 6] = [0, 1, 1, 0]
    runs = []
    for _ in range(2):
        with _env('push', 5) as env:
            observations = [env.reset()] + [env.step(a)[0] for a in actions]
            runs.append(observations)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.ee_pose, b.ee_pose)
    with _env('push', 6) as other:
        assert not np.array_equal(other.reset().rgb, runs[0][0].rgb)


def test_reset_with_a_new_seed_changes_the_task(env):
    instruction, scene = env.task.instruction, env.task.scene
    env.reset(seed=1)
    assert env.seed == 1 and env.task.scene != scene
    assert env.observe().instruction == env.task.instruction != '' and instruction != ''


def test_episode_times_out_after_max_steps():
    with _env('reach', 0, max_steps=2) as env:
        env.reset()
        assert env.step(np.zeros(7))[1] is False
        _, done, info = env.step(np.zeros(7))
        assert done and info['timeout'] and not info['success']
        with pytest.raises(EnvError, match='reset'):
            env.step(np.zeros(7))


def test_bad_actions_and_arguments_raise_env_error(env):
    with pytest.raises(EnvError, match='shape'):
        env.step(np.zeros(6))
    with pytest.raises(EnvError, match='non-finite'):
        env.step(_action(dx=np.nan))
    with pytest.raises(EnvError, match='control_dt'):
        _env(control_dt=0.0)
    with pytest.raises(EnvError, match='image_size'):
        _env(image_size=(0, 10))
