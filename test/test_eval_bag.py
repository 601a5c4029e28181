"""Reading observations from hand-made bags: corruption, rates, episodes, missing topics."""

import numpy as np
import pytest

from eval_fixtures import (
    CHUNK,
    IMAGE,
    MS,
    REALSENSE,
    T0,
    BagBuilder,
    camera_bag,
    truncated,
)
from model_fixtures import make_observation
from vla_pruned_ros.convert import numpy_to_image
from vla_pruned_ros.eval.bag import BagReplay, list_topics, open_reader
from vla_pruned_ros.eval.errors import EvalError
from vla_pruned_ros.eval.topics import plan_topics

OBSERVATIONS = [make_observation(seed) for seed in range(6)]


def replay(path, overrides=None, **kwargs):
    reader = open_reader(path)
    try:
        topics = list_topics(reader)
    finally:
        reader.close()
    plan = plan_topics(topics, overrides or {}, kwargs.pop('points_from', 'auto'))
    bag = BagReplay(path, plan, topics, **kwargs)
    return list(bag.frames()), bag.summary


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_corrupted_and_invalid_messages_are_skipped_and_counted(tmp_path, storage):
    builder = BagBuilder()
    builder.string('/instruction', 'pick up the red cube', T0 - MS)
    for k, obs in enumerate(OBSERVATIONS):
        stamp = T0 + k * 100 * MS
        if k == 2:
            truncated(builder, REALSENSE['rgb'], IMAGE, stamp,
                      numpy_to_image(obs.rgb, 'rgb8', stamp, 'cam'))
        else:
            builder.rgb(REALSENSE['rgb'], obs, stamp)
        builder.depth(REALSENSE['depth'], obs, stamp, step=7 if k == 4 else None)
        builder.info(REALSENSE['info'], obs, stamp)
    path = builder.write(tmp_path / 'bag', storage)
    frames, summary = replay(path)
    # Frame 2 lost its rgb, frame 4 its depth: the other four become observations.
    assert [f.observation.stamp_ns for f in frames] == [T0 + k * 100 * MS for k in (0, 1, 3, 5)]
    rgb, depth = summary.counts[REALSENSE['rgb']], summary.counts[REALSENSE['depth']]
    assert (rgb.read, rgb.decoded, rgb.undecodable, rgb.invalid) == (6, 5, 1, 0)
    assert (depth.read, depth.decoded, depth.undecodable, depth.invalid) == (6, 5, 0, 1)
    assert 'step 7 smaller than' in depth.errors[0]
    assert summary.storage == storage
    first = frames[0].observation
    np.testing.assert_array_equal(first.rgb, OBSERVATIONS[0].rgb)
    assert np.nanmax(np.abs(first.depth - OBSERVATIONS[0].depth)) <= 0.0005  # mm rounding
    assert first.intrinsics == OBSERVATIONS[0].intrinsics
    assert first.instruction == 'pick up the red cube'
    # The storage file alone reads the same.
    single = next(p for p in path.iterdir() if p.suffix in ('.db3', '.mcap'))
    assert len(replay(single)[0]) == 4


def test_depth_at_half_the_rgb_rate_gives_observations_at_the_depth_rate(tmp_path):
    builder = BagBuilder()
    builder.string('/instruction', 'push the block', T0)
    observations = [make_observation(seed) for seed in range(10)]
    stamps = camera_bag(builder, observations, REALSENSE, period_ns=33 * MS, depth_every=2)
    frames, summary = replay(builder.write(tmp_path / 'bag'), slop_s=0.05)
    assert [f.observation.stamp_ns for f in frames] == stamps[::2]
    for frame in frames:
        index = stamps.index(frame.observation.stamp_ns)
        np.testing.assert_array_equal(frame.observation.rgb, observations[index].rgb)
    # Odd rgb frames never got a depth image of their own.
    assert summary.sync['dropped_unmatched'] + summary.sync['unmatched_at_end'] == 5


def test_episodes_follow_instruction_changes(tmp_path):
    builder = BagBuilder()
    builder.string('/instruction', 'first task', T0)
    camera_bag(builder, OBSERVATIONS[:3], REALSENSE, start_ns=T0)
    builder.string('/instruction', 'second task', T0 + 1000 * MS)
    camera_bag(builder, OBSERVATIONS[3:], REALSENSE, start_ns=T0 + 1000 * MS)
    frames, summary = replay(builder.write(tmp_path / 'bag'))
    assert [f.episode for f in frames] == [0, 0, 0, 1, 1, 1]
    assert [e.instruction for e in summary.episodes] == ['first task', 'second task']
    assert [e.observations for e in summary.episodes] == [3, 3]
    assert frames[3].observation.instruction == 'second task'


def test_time_running_backwards_restarts_the_synchroniser(tmp_path):
    builder = BagBuilder()
    builder.string('/instruction', 'pick', T0)
    first = camera_bag(builder, OBSERVATIONS[:3], REALSENSE)
    # A second recording appended later whose sensor clock starts over.
    builder.log_offset_ns = 10_000 * MS
    second = camera_bag(builder, OBSERVATIONS[3:], REALSENSE, info=False)
    frames, summary = replay(builder.write(tmp_path / 'bag'))
    assert summary.time_jumps == 1
    # Without the restart the second block would be refused as older than what was consumed;
    # the camera_info of the first block stays latched across the restart.
    assert [f.observation.stamp_ns for f in frames] == first + second
    assert frames[-1].observation.intrinsics == OBSERVATIONS[0].intrinsics


def test_cloud_without_camera_info_and_recorded_chunks(tmp_path):
    builder = BagBuilder()
    builder.string('/instruction', 'reach the ball', T0)
    stamps = camera_bag(builder, OBSERVATIONS[:4], REALSENSE, info=False, cloud=True)
    for k, stamp in enumerate(stamps):
        builder.chunk('/teleop/action_chunk', np.full((4, 7), k, np.float32), stamp)
    frames, summary = replay(builder.write(tmp_path / 'bag'))
    assert summary.plan.points_from == 'cloud'
    assert summary.plan.depth is None
    assert any('no camera_info' in note for note in summary.plan.notes)
    assert len(frames) == 4
    assert frames[0].observation.intrinsics is None
    assert frames[0].observation.points.shape[1] == 3
    assert sorted(summary.recorded) == stamps
    np.testing.assert_array_equal(summary.recorded[stamps[2]], np.full((4, 7), 2.0))


def test_unusable_bags_raise_one_clear_error(tmp_path):
    builder = BagBuilder()
    builder.string('/instruction', 'pick', T0)
    for k, obs in enumerate(OBSERVATIONS[:3]):
        stamp = T0 + k * 100 * MS
        truncated(builder, REALSENSE['rgb'], IMAGE, stamp,
                  numpy_to_image(obs.rgb, 'rgb8', stamp, 'cam'))
        builder.depth(REALSENSE['depth'], obs, stamp)
        builder.info(REALSENSE['info'], obs, stamp)
    path = builder.write(tmp_path / 'bag')
    with pytest.raises(EvalError, match='no observation could be built.*0/3 usable'):
        replay(path, {'rgb': REALSENSE['rgb']})

    no_instruction = BagBuilder()
    camera_bag(no_instruction, OBSERVATIONS[:2], REALSENSE)
    path = no_instruction.write(tmp_path / 'silent')
    with pytest.raises(EvalError, match='--instruction TEXT'):
        replay(path)
    frames, _ = replay(path, instruction='wave')
    assert [f.observation.instruction for f in frames] == ['wave', 'wave']

    (tmp_path / 'notabag').mkdir()
    with pytest.raises(EvalError, match='not a readable rosbag2'):
        open_reader(tmp_path / 'notabag')
    with pytest.raises(EvalError, match='does not exist'):
        open_reader(tmp_path / 'missing')


def test_chunk_with_wrong_length_is_counted_invalid(tmp_path):
    builder = BagBuilder()
    builder.string('/instruction', 'pick', T0)
    stamps = camera_bag(builder, OBSERVATIONS[:2], REALSENSE)
    message = builder.types[CHUNK](
        header=builder.header(stamps[0]), horizon=4, action_dim=7, dt=0.1, action_space='',
        dimension_names=[], data=np.zeros(5, np.float32),
    )
    builder.add('/expert/action_chunk', CHUNK, stamps[0], message)
    builder.chunk('/expert/action_chunk', np.ones((2, 7)), stamps[1])
    _, summary = replay(builder.write(tmp_path / 'bag'))
    counts = summary.counts['/expert/action_chunk']
    assert (counts.invalid, counts.decoded) == (1, 1)
    assert 'horizon x action_dim' in counts.errors[0]
    assert list(summary.recorded) == [stamps[1]]


def test_zed_like_bag_with_bgra_colour_and_float_depth(tmp_path):
    ns = '/zed/zed_node'
    builder = BagBuilder()
    builder.string('/zed/instruction', 'pick up the red cube', T0)
    for k, obs in enumerate(OBSERVATIONS[:3]):
        stamp = T0 + k * 66 * MS
        bgra = np.concatenate([obs.rgb[..., ::-1], np.full(obs.rgb.shape[:2] + (1,), 255,
                                                            np.uint8)], axis=2)
        builder.add(f'{ns}/rgb/image_rect_color', IMAGE, stamp,
                    numpy_to_image(bgra, 'bgra8', stamp, 'cam'))
        builder.add(f'{ns}/right/image_rect_color', IMAGE, stamp,
                    numpy_to_image(bgra, 'bgra8', stamp, 'cam'))
        builder.add(f'{ns}/depth/depth_registered', IMAGE, stamp,
                    numpy_to_image(obs.depth, '32FC1', stamp, 'cam'))
        builder.add(f'{ns}/confidence/confidence_map', IMAGE, stamp,
                    numpy_to_image(np.ones_like(obs.depth), '32FC1', stamp, 'cam'))
        builder.info(f'{ns}/rgb/camera_info', obs, stamp)
        builder.info(f'{ns}/depth/camera_info', obs, stamp)
    frames, summary = replay(builder.write(tmp_path / 'zed', 'mcap'))
    assert summary.plan.rgb == f'{ns}/rgb/image_rect_color'
    assert summary.plan.depth == f'{ns}/depth/depth_registered'
    assert summary.plan.camera_info == f'{ns}/rgb/camera_info'
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[1].observation.rgb, OBSERVATIONS[1].rgb)
    np.testing.assert_array_equal(frames[1].observation.depth, OBSERVATIONS[1].depth)
