"""Recorded expert bags read back with rosbags: topics, stamps, images and the ActionChunk."""

from collections import defaultdict
import json

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from vla_pruned_ros.convert import (
    camera_info_to_intrinsics,
    image_to_depth,
    image_to_rgb,
    package_typestore,
    pointcloud2_to_numpy,
    stamp_to_ns,
)
from vla_pruned_ros.sim import cli
from vla_pruned_ros.sim.env import ACTION_NAMES, ACTION_SPACE, TabletopEnv
from vla_pruned_ros.sim.expert import TOLERANCES
from vla_pruned_ros.sim.record import (
    CHUNK_HORIZON,
    STORAGES,
    TOPICS,
    RecordError,
    read_episode_metadata,
    record_episodes,
)
from vla_pruned_ros.sim.tasks import FAMILIES, SPLITS

SIZE = (48, 40)
DT_NS = 100_000_000


def _read(path):
    typestore = package_typestore()
    messages = defaultdict(list)
    with Reader(path) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        for connection, timestamp, raw in reader.messages():
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            messages[connection.topic].append((timestamp, msg))
    return topics, messages


@pytest.fixture(scope='module', params=[('mcap', True), ('sqlite3', False)], ids=STORAGES)
def bag(request, tmp_path_factory):
    storage, compress = request.param
    path = tmp_path_factory.mktemp(storage) / 'bag'
    summary = record_episodes(
        path, ['reach', 'push'], 1, seed=2, storage=storage, image_size=SIZE, compress=compress
    )
    return summary, *_read(path)


def test_every_topic_is_there_with_its_type(bag):
    summary, topics, messages = bag
    assert topics == TOPICS
    observations = sum(e['steps'] + 1 for e in summary.episodes)
    steps = sum(e['steps'] for e in summary.episodes)
    per_episode = {'/episode', '/instruction'}
    per_step = {'/expert/twist', '/expert/action_chunk'}
    for topic in TOPICS:
        if topic in per_episode:
            expected = len(summary.episodes)
        else:
            expected = steps if topic in per_step else observations
        assert len(messages[topic]) == expected, topic
    assert summary.messages == {t: len(m) for t, m in messages.items()}


def test_header_stamps_equal_bag_timestamps_and_observations_share_them(bag):
    _, _, messages = bag
    for topic, items in messages.items():
        for timestamp, msg in items:
            if hasattr(msg, 'header'):
                assert stamp_to_ns(msg.header.stamp) == timestamp, topic
    image_stamps = [t for t, _ in messages['/camera/color/image_raw']]
    for topic in ('/camera/depth/image_rect_raw', '/camera/color/camera_info',
                  '/camera/depth/points', '/ee_pose', '/sim/target_position'):
        assert [t for t, _ in messages[topic]] == image_stamps, topic
    assert image_stamps == sorted(image_stamps) and len(set(image_stamps)) == len(image_stamps)


def test_episode_stamps_step_by_control_dt_and_actions_follow_observations(bag):
    summary, _, messages = bag
    image_stamps = [t for t, _ in messages['/camera/color/image_raw']]
    action_stamps = {t for t, _ in messages['/expert/action_chunk']}
    episode_starts = [t for t, _ in messages['/episode']]
    assert [t for t, _ in messages['/instruction']] == episode_starts
    for meta, start in zip(summary.episodes, episode_starts):
        assert meta['start_ns'] == start
        stamps = [t for t in image_stamps if meta['start_ns'] <= t <= meta['end_ns']]
        assert len(stamps) == meta['steps'] + 1
        assert set(np.diff(stamps)) == {DT_NS}
        # Every observation but the final outcome carries the expert's action.
        assert set(stamps[:-1]) <= action_stamps and stamps[-1] not in action_stamps


def test_action_chunks_decode_and_agree_with_the_twist(bag):
    summary, _, messages = bag
    chunks = [msg for _, msg in messages['/expert/action_chunk']]
    twists = [msg for _, msg in messages['/expert/twist']]
    for chunk in chunks:
        assert chunk.horizon == CHUNK_HORIZON and chunk.action_dim == 7
        assert chunk.action_space == ACTION_SPACE
        assert list(chunk.dimension_names) == list(ACTION_NAMES)
        assert chunk.dt == pytest.approx(0.1)
        assert chunk.data.shape == (CHUNK_HORIZON * 7,)
    first_episode = chunks[: summary.episodes[0]['steps']]
    data = [c.data.reshape(CHUNK_HORIZON, 7) for c in first_episode]
    for previous, current in zip(data, data[1:]):
        np.testing.assert_array_equal(previous[1:], current[:-1])  # a sliding window
    np.testing.assert_array_equal(data[-1], np.repeat(data[-1][:1], CHUNK_HORIZON, axis=0))
    assert data[-1][0, 6] in (0.0, 1.0)
    for chunk, twist in zip(chunks, twists):
        first = chunk.data[:7].astype(np.float64)
        linear = [twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z]
        np.testing.assert_allclose(linear, first[:3] / 0.1, atol=1e-5)
        assert twist.twist.angular.z == pytest.approx(first[5] / 0.1, abs=1e-5)


def test_episode_metadata_and_camera_data_match_the_simulator(bag):
    summary, _, messages = bag
    episodes = [json.loads(msg.data) for _, msg in messages['/episode']]
    assert [e['family'] for e in episodes] == ['reach', 'push']
    assert [e['index'] for e in episodes] == [0, 1]
    for meta in episodes:
        assert meta['split'] == 'train' and meta['seed'] == 2 and meta['success'] is True
    instructions = [msg.data for _, msg in messages['/instruction']]
    assert instructions == [e['instruction'] for e in episodes]
    assert read_episode_metadata(summary.path) == episodes

    with TabletopEnv('reach', 2, image_size=SIZE) as env:
        first = env.reset()
    image = messages['/camera/color/image_raw'][0][1]
    assert image.encoding == 'rgb8' and image.header.frame_id == first.frame_id
    np.testing.assert_array_equal(image_to_rgb(image), first.rgb)
    depth = image_to_depth(messages['/camera/depth/image_rect_raw'][0][1])
    np.testing.assert_allclose(depth, first.depth, atol=6e-4)
    assert camera_info_to_intrinsics(messages['/camera/color/camera_info'][0][1]) == (
        first.intrinsics
    )
    points, _ = pointcloud2_to_numpy(messages['/camera/depth/points'][0][1])
    np.testing.assert_allclose(points, first.points, atol=1e-6)
    pose = messages['/ee_pose'][0][1].pose
    assert [pose.position.x, pose.position.y, pose.orientation.w] == pytest.approx(
        [first.ee_pose[0], first.ee_pose[1], first.ee_pose[6]]
    )


def test_the_target_track_starts_at_the_named_object_and_follows_the_push(bag):
    summary, _, messages = bag
    track = [(t, msg.point) for t, msg in messages['/sim/target_position']]
    assert all(msg.header.frame_id == 'world' for _, msg in messages['/sim/target_position'])
    for meta in summary.episodes:
        target = next(o for o in meta['objects']
                      if f"{o['colour']} {o['shape']}" == meta['target'])
        points = [p for t, p in track if meta['start_ns'] <= t <= meta['end_ns']]
        start = np.array([points[0].x, points[0].y])
        np.testing.assert_allclose(start, [target['x'], target['y']], atol=2e-3)
        end = np.array([points[-1].x, points[-1].y])
        zone = next((z for z in meta['zones'] if z['colour'] == meta['zone']), None)
        if meta['family'] == 'push':  # a solved push ends inside the zone, far from its start
            assert np.hypot(end[0] - zone['x'], end[1] - zone['y']) < zone['radius']
            assert np.linalg.norm(end - start) > 0.05
        else:  # nothing touches the object in reach
            np.testing.assert_allclose(end, start, atol=2e-3)


def test_recording_refuses_bad_arguments(tmp_path):
    with pytest.raises(RecordError, match='exists'):
        record_episodes(tmp_path, ['reach'], 1)
    with pytest.raises(RecordError, match='storage'):
        record_episodes(tmp_path / 'a', ['reach'], 1, storage='rosbag1')
    with pytest.raises(RecordError, match='families'):
        record_episodes(tmp_path / 'b', ['stack'], 1)
    with pytest.raises(RecordError, match='tolerance'):
        record_episodes(tmp_path / 'c', ['reach'], 1, expert_tolerance='sloppy')


def test_cli_choices_match_the_library_and_record_runs(tmp_path, capsys, sim_cli):
    assert cli.FAMILY_CHOICES == FAMILIES
    assert cli.SPLIT_CHOICES == SPLITS
    assert cli.STORAGE_CHOICES == STORAGES
    assert cli.TOLERANCE_CHOICES == TOLERANCES
    out = tmp_path / 'cli_bag'
    argv = ('record', '--out', str(out), '--families', 'reach', '--episodes', '1', '--split',
            'heldout', '--seed', '4', '--storage', 'sqlite3', '--image-size', '32', '24')
    assert sim_cli(*argv) == 0
    assert 'expert success 100%' in capsys.readouterr().out
    [meta] = read_episode_metadata(out)
    assert (meta['family'], meta['split'], meta['seed']) == ('reach', 'heldout', 4)
    assert meta['image_size'] == [32, 24]
    assert sim_cli(*argv) == 2  # the folder exists now
    assert 'already exists' in capsys.readouterr().err
