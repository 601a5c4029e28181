"""The command stream: chunk -> twist / pose / gripper commands, scaling, clipping, holding."""

import math

import numpy as np
import pytest

from vla_pruned_ros.actions import (
    ActionError,
    CommandConfig,
    CommandStream,
    chunk_to_pose_targets,
    chunk_to_twists,
    gripper_commands,
    quaternion_from_rpy,
    quaternion_multiply,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S
IDENTITY_POSE = np.array([0.4, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0])


def chunk(*rows):
    return np.array(rows, dtype=np.float64)


def test_twist_is_delta_over_dt_scaled_and_clipped_per_axis():
    config = CommandConfig(axis_scale=(2.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0),
                           axis_limit=(0.5, 0.5, 0.05, 1.0, 1.0, 1.0))
    actions = chunk([0.01, -0.02, 0.03, 0.0, 0.05, 0.02, 1.0])
    twist = chunk_to_twists(actions, 0.1, config)[0]
    # x doubled, y as is, z clipped to 0.05 m/s, yaw sign flipped by its scale
    np.testing.assert_allclose(twist, [0.2, -0.2, 0.05, 0.0, 0.5, -0.2])


def test_pose_targets_accumulate_translation_and_world_frame_rotation():
    config = CommandConfig(output_mode='pose', axis_limit=(10.0,) * 6)
    yaw = math.pi / 8
    actions = chunk([0.01, 0.0, 0.0, 0.0, 0.0, yaw, 0.0], [0.0, 0.02, -0.01, 0.0, 0.0, yaw, 0.0])
    targets = chunk_to_pose_targets(actions, 0.1, IDENTITY_POSE, config)
    np.testing.assert_allclose(targets[0, :3], [0.41, 0.0, 0.3])
    np.testing.assert_allclose(targets[1, :3], [0.41, 0.02, 0.29])
    # two yaw steps of pi/8 about world z: a pi/4 rotation about z
    np.testing.assert_allclose(targets[1, 3:], quaternion_from_rpy(0, 0, math.pi / 4), atol=1e-12)


def test_world_frame_rotation_is_applied_after_the_current_orientation():
    # Start rolled by 90 deg; a world yaw must pre-multiply (not rotate about the tool axis).
    start = np.concatenate([[0, 0, 0], quaternion_from_rpy(math.pi / 2, 0, 0)])
    config = CommandConfig(output_mode='pose', axis_limit=(10.0,) * 6)
    targets = chunk_to_pose_targets(chunk([0, 0, 0, 0, 0, 0.3, 0]), 0.1, start, config)
    expected = quaternion_multiply(quaternion_from_rpy(0, 0, 0.3), start[3:])
    np.testing.assert_allclose(targets[0, 3:], expected, atol=1e-12)
    tool_frame = quaternion_multiply(start[3:], quaternion_from_rpy(0, 0, 0.3))
    assert not np.allclose(expected, tool_frame)


def test_gripper_binary_and_continuous():
    actions = chunk([0, 0, 0, 0, 0, 0, 0.7], [0, 0, 0, 0, 0, 0, 0.3], [0, 0, 0, 0, 0, 0, 1.4])
    np.testing.assert_array_equal(gripper_commands(actions, CommandConfig()), [1.0, 0.0, 1.0])
    continuous = CommandConfig(gripper_binary=False)
    np.testing.assert_allclose(gripper_commands(actions, continuous), [0.7, 0.3, 1.0])


def test_stream_picks_the_step_planned_for_now():
    stream = CommandStream(CommandConfig(axis_limit=(10.0,) * 6, max_age_s=1.0))
    actions = np.zeros((4, 7))
    actions[:, 0] = [0.01, 0.02, 0.03, 0.04]
    actions[:, 6] = [0, 0, 1, 1]
    stream.set_chunk(actions, T0, 0.1)
    assert stream.command(T0).step == 0
    command = stream.command(T0 + int(0.25 * S))  # inference took 0.25 s: steps 0, 1 are past
    assert command.active and command.step == 2
    assert command.twist[0] == pytest.approx(0.3)
    assert command.gripper == 1.0
    assert command.chunk_stamp_ns == T0


def test_stream_holds_with_zero_twist_and_last_gripper_when_exhausted_or_stale():
    stream = CommandStream(CommandConfig(max_age_s=0.3))
    actions = np.full((2, 7), 0.01)
    actions[:, 6] = 1.0
    stream.set_chunk(actions, T0, 0.1)
    assert stream.command(T0 + int(0.05 * S)).active
    exhausted = stream.command(T0 + int(0.25 * S))
    assert not exhausted.active and 'exhausted' in exhausted.reason
    np.testing.assert_array_equal(exhausted.twist, np.zeros(6))
    assert exhausted.gripper == 1.0  # a closed gripper stays closed while holding

    stream = CommandStream(CommandConfig(max_age_s=0.3))
    stream.set_chunk(np.full((20, 7), 0.01), T0, 0.1)
    stale = stream.command(T0 + int(0.5 * S))
    assert not stale.active and stale.reason.startswith('stale')
    np.testing.assert_array_equal(stale.twist, np.zeros(6))


def test_stream_before_any_chunk_and_after_invalidate():
    stream = CommandStream()
    first = stream.command(T0)
    assert not first.active and first.gripper is None and first.reason == 'no action chunk yet'
    stream.set_chunk(np.full((8, 7), 0.01), T0, 0.1)
    assert stream.command(T0).active
    stream.invalidate('inference failed: boom')
    held = stream.command(T0)
    assert not held.active and held.reason == 'inference failed: boom'
    np.testing.assert_array_equal(held.twist, np.zeros(6))


def test_nan_chunk_is_refused_and_stops_the_previous_chunk():
    stream = CommandStream()
    stream.set_chunk(np.full((8, 7), 0.01), T0, 0.1)
    bad = np.full((8, 7), 0.01)
    bad[3, 2] = np.nan
    with pytest.raises(ActionError, match='NaN'):
        stream.set_chunk(bad, T0 + S // 10, 0.1)
    command = stream.command(T0 + S // 10)
    assert not command.active and 'invalid action chunk' in command.reason


def test_clock_mismatch_holds():
    stream = CommandStream(CommandConfig(max_age_s=0.5))
    stream.set_chunk(np.full((8, 7), 0.01), T0, 0.1)
    command = stream.command(T0 - 5 * S)
    assert not command.active and 'clock mismatch' in command.reason


def test_pose_mode_holds_current_pose_and_needs_a_start_pose():
    stream = CommandStream(CommandConfig(output_mode='pose', max_age_s=1.0))
    current = IDENTITY_POSE + np.array([0.1, 0, 0, 0, 0, 0, 0])
    stream.set_chunk(np.full((8, 7), 0.01), T0, 0.1)  # no pose at the observation
    command = stream.command(T0, current_pose=current)
    assert not command.active and 'ee_pose' in command.reason
    np.testing.assert_array_equal(command.pose, current)

    stream.set_chunk(np.full((8, 7), 0.01), T0, 0.1, start_pose=IDENTITY_POSE)
    command = stream.command(T0 + S // 10 + 1, current_pose=current)
    assert command.active and command.step == 1
    np.testing.assert_allclose(command.pose[:3], IDENTITY_POSE[:3] + 0.02)


def test_configure_rederives_the_current_chunk():
    stream = CommandStream(CommandConfig(axis_limit=(10.0,) * 6))
    stream.set_chunk(np.full((8, 7), 0.01), T0, 0.1)
    assert stream.command(T0).twist[0] == pytest.approx(0.1)
    stream.configure(CommandConfig(axis_scale=(0.5,) * 7, axis_limit=(10.0,) * 6))
    assert stream.command(T0).twist[0] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'output_mode': 'joint'}, 'output_mode'),
        ({'axis_scale': (1.0,) * 6}, 'axis_scale must hold 7'),
        ({'axis_limit': (1.0, 1.0, 0.0, 1.0, 1.0, 1.0)}, 'positive'),
        ({'axis_scale': (1.0, math.nan, 1, 1, 1, 1, 1)}, 'finite'),
        ({'gripper_threshold': 1.5}, 'gripper_threshold'),
        ({'max_age_s': 0.0}, 'max_age_s'),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ActionError, match=message):
        CommandConfig(**kwargs)


def test_bad_chunks_are_refused():
    stream = CommandStream()
    with pytest.raises(ActionError, match='shape'):
        stream.set_chunk(np.zeros((8, 6)), T0, 0.1)
    with pytest.raises(ActionError, match='dt'):
        stream.set_chunk(np.zeros((8, 7)), T0, 0.0)
    with pytest.raises(ActionError, match='unit length'):
        chunk_to_pose_targets(np.zeros((2, 7)), 0.1, np.zeros(7), CommandConfig())
