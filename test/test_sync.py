"""ObservationSynchronizer: which set wins, slop, staleness, consume-once and thread safety."""

import threading

import numpy as np
import pytest

from vla_pruned_ros.camera import CameraIntrinsics
from vla_pruned_ros.convert import ConversionError
from vla_pruned_ros.sync import ObservationSynchronizer

MS = 1_000_000
S = 1_000_000_000
T0 = 100 * S
INTR = CameraIntrinsics(20.0, 20.0, 1.5, 1.5, 4, 4)


def rgb(tag: int = 0) -> np.ndarray:
    return np.full((4, 4, 3), tag % 256, np.uint8)


def depth(value: float = 1.0) -> np.ndarray:
    return np.full((4, 4), value, np.float32)


def cloud(value: float = 1.0) -> np.ndarray:
    return np.full((5, 3), value, np.float32)


def synchronizer(**kwargs) -> ObservationSynchronizer:
    sync = ObservationSynchronizer(**kwargs)
    sync.set_instruction('stack the blocks')
    sync.add_camera_info(T0, INTR)
    return sync


def test_newest_complete_set_wins_and_newer_incomplete_rgb_waits():
    sync = synchronizer()
    for i in range(3):
        sync.add_rgb(T0 + i * 100 * MS, rgb(i), frame_id='cam')
    sync.add_depth(T0 + 2 * MS, depth(1.0))
    sync.add_depth(T0 + 101 * MS, depth(2.0))  # rgb 2 has no depth yet
    result = sync.pop_latest(T0 + 210 * MS)
    assert result.ok and result.reason == 'ok'
    obs = result.observation
    assert obs.stamp_ns == T0 + 100 * MS and obs.rgb[0, 0, 0] == 1 and obs.depth[0, 0] == 2.0
    assert obs.intrinsics == INTR and obs.frame_id == 'cam'
    assert obs.instruction == 'stack the blocks' and obs.points is None
    # rgb 0 and depth 1.0 were older than the popped set: consumed without being used.
    assert sync.counters == {
        'complete': 1, 'stale_refused': 0, 'invalid': 0, 'dropped_unmatched': 2
    }
    assert sync.pop_latest(T0 + 220 * MS).reason == 'no complete set'
    sync.add_depth(T0 + 199 * MS, depth(3.0))
    later = sync.pop_latest(T0 + 230 * MS).observation
    assert later.stamp_ns == T0 + 200 * MS and later.depth[0, 0] == 3.0


def test_slop_is_respected_on_both_sides():
    sync = synchronizer(slop_s=0.05)
    sync.add_rgb(T0, rgb())
    sync.add_depth(T0 + 51 * MS, depth())
    sync.add_depth(T0 - 51 * MS, depth())
    result = sync.pop_latest(T0)
    assert result.reason == 'no complete set' and result.observation is None
    assert 'nearest depth is 0.051 s from the newest rgb (slop 0.05 s)' in result.detail
    sync.add_depth(T0 + 50 * MS, depth(7.0))
    result = sync.pop_latest(T0)
    assert result.ok and result.observation.depth[0, 0] == 7.0


def test_nearest_depth_is_chosen_among_several_within_slop():
    sync = synchronizer(slop_s=0.05)
    sync.add_rgb(T0, rgb())
    for offset_ms, value in ((-40, 1.0), (-5, 2.0), (30, 3.0)):
        sync.add_depth(T0 + offset_ms * MS, depth(value))
    assert sync.pop_latest(T0).observation.depth[0, 0] == 2.0
    # The depth newer than the used one is still queued for the next rgb.
    assert sync.queued == {'rgb': 0, 'depth': 1, 'cloud': 0}


def test_stale_set_is_refused_and_consumed():
    sync = synchronizer(max_age_s=0.5)
    sync.add_rgb(T0, rgb())
    sync.add_depth(T0, depth())
    result = sync.pop_latest(T0 + 800 * MS)
    assert result.observation is None
    assert result.reason == 'stale: newest complete set is 0.80 s old (max 0.5 s)'
    assert sync.counters['stale_refused'] == 1 and sync.counters['dropped_unmatched'] == 2
    assert sync.pop_latest(T0 + 800 * MS).reason == 'no complete set'
    # Exactly max_age old is still fresh.
    sync.add_rgb(T0 + S, rgb())
    sync.add_depth(T0 + S, depth())
    assert sync.pop_latest(T0 + S + 500 * MS).ok


def test_a_set_is_never_returned_twice_and_late_messages_are_dropped():
    sync = synchronizer()
    sync.add_rgb(T0, rgb(1))
    sync.add_depth(T0, depth())
    assert sync.pop_latest(T0).ok
    assert sync.pop_latest(T0).reason == 'no complete set'
    # A frame arriving late, at or before the consumed stamp, never forms a set.
    sync.add_rgb(T0, rgb(2))
    sync.add_rgb(T0 - 10 * MS, rgb(3))
    sync.add_depth(T0 - 10 * MS, depth())
    sync.add_depth(T0 + 5 * MS, depth())
    assert sync.pop_latest(T0).reason == 'no complete set'
    assert sync.counters['dropped_unmatched'] == 3
    assert sync.queued == {'rgb': 0, 'depth': 1, 'cloud': 0}


def test_incomplete_sets_are_not_returned():
    sync = ObservationSynchronizer()
    assert sync.pop_latest(T0).reason == 'no instruction'
    sync.set_instruction('open the drawer')
    result = sync.pop_latest(T0)
    assert result.reason == 'no complete set' and result.detail == 'no rgb image yet'
    sync.add_rgb(T0, rgb())
    sync.add_depth(T0, depth())
    result = sync.pop_latest(T0)
    assert result.reason == 'no complete set' and 'camera_info' in result.detail
    sync.add_camera_info(T0 - 30 * S, INTR)  # latched: any age will do
    sync.add_rgb(T0 + 80 * MS, rgb())  # rgb without depth within slop
    result = sync.pop_latest(T0 + 90 * MS)
    assert result.ok and result.observation.stamp_ns == T0
    result = sync.pop_latest(T0 + 90 * MS)
    assert result.reason == 'no complete set' and 'no depth queued' in result.detail


def test_camera_info_within_slop_is_preferred_over_the_newest():
    sync = synchronizer()
    other = CameraIntrinsics(30.0, 30.0, 1.5, 1.5, 4, 4)
    newest = CameraIntrinsics(40.0, 40.0, 1.5, 1.5, 4, 4)
    sync.add_camera_info(T0 + S, other)
    sync.add_camera_info(T0 + 2 * S, newest)
    sync.add_rgb(T0 + S + 10 * MS, rgb())
    sync.add_depth(T0 + S + 10 * MS, depth())
    assert sync.pop_latest(T0 + S + 20 * MS).observation.intrinsics == other
    sync.add_rgb(T0 + 5 * S, rgb())
    sync.add_depth(T0 + 5 * S, depth())
    assert sync.pop_latest(T0 + 5 * S).observation.intrinsics == newest


def test_cloud_only_mode():
    sync = ObservationSynchronizer(use_depth=False, use_cloud=True)
    sync.set_instruction('push the cup')
    sync.add_rgb(T0, rgb())
    sync.add_depth(T0, depth())  # ignored in this mode
    assert sync.pop_latest(T0).reason == 'no complete set'
    sync.add_cloud(T0 + 20 * MS, cloud(4.0))
    obs = sync.pop_latest(T0 + 30 * MS).observation
    assert obs.depth is None and obs.intrinsics is None
    np.testing.assert_array_equal(obs.cloud(), cloud(4.0))


def test_depth_and_cloud_mode_needs_both():
    sync = synchronizer(use_depth=True, use_cloud=True, slop_s=0.03)
    sync.add_rgb(T0, rgb())
    sync.add_depth(T0 + 10 * MS, depth())
    sync.add_cloud(T0 + 40 * MS, cloud())
    result = sync.pop_latest(T0)
    assert result.reason == 'no complete set' and 'nearest cloud is 0.040 s' in result.detail
    sync.add_cloud(T0 - 25 * MS, cloud(2.0))
    obs = sync.pop_latest(T0).observation
    assert obs.depth is not None and obs.points[0, 0] == 2.0


def test_proprio_is_the_nearest_within_slop_or_none():
    sync = synchronizer()
    pose = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    for i in range(200):  # 1 kHz, with x encoding the time in ms
        sync.add_ee_pose(T0 + i * MS, pose + [i, 0, 0, 0, 0, 0, 0])
    sync.add_joint_state(T0 + 190 * MS, np.arange(6.0))
    sync.add_rgb(T0 + 120 * MS, rgb())
    sync.add_depth(T0 + 120 * MS, depth())
    obs = sync.pop_latest(T0 + 150 * MS).observation
    assert obs.ee_pose[0] == 120
    assert obs.joint_state is None  # 70 ms away, beyond the slop
    sync.add_rgb(T0 + 900 * MS, rgb())
    sync.add_depth(T0 + 900 * MS, depth())
    obs = sync.pop_latest(T0 + 900 * MS).observation
    assert obs.ee_pose is None


def test_invalid_set_is_refused_with_the_reason():
    sync = synchronizer()
    sync.add_rgb(T0, rgb())
    sync.add_depth(T0, np.ones((2, 2), np.float32))
    result = sync.pop_latest(T0)
    assert result.reason == 'invalid set: depth size 2 x 2 does not match rgb size 4 x 4'
    assert sync.counters['invalid'] == 1


def test_queue_overflow_drops_the_oldest():
    sync = synchronizer(queue_size=3)
    for i in range(5):
        sync.add_rgb(T0 + i * 100 * MS, rgb(i))
    assert sync.queued['rgb'] == 3 and sync.counters['dropped_unmatched'] == 2
    sync.add_depth(T0, depth())  # partner of an rgb that was dropped
    assert sync.pop_latest(T0 + 500 * MS).reason == 'no complete set'


def test_reset_allows_time_to_run_backwards():
    sync = synchronizer()
    sync.add_rgb(T0, rgb())
    sync.add_depth(T0, depth())
    assert sync.pop_latest(T0).ok
    sync.reset()
    sync.add_camera_info(0, INTR)
    sync.add_rgb(10 * MS, rgb())
    sync.add_depth(10 * MS, depth())
    assert sync.pop_latest(20 * MS).ok


def test_bad_inputs_raise():
    sync = ObservationSynchronizer()
    with pytest.raises(ConversionError, match=r'rgb must be an \(H, W, 3\) array'):
        sync.add_rgb(0, np.zeros((4, 4), np.uint8))
    with pytest.raises(ConversionError, match=r'points must be an \(N, 3\) array'):
        sync.add_cloud(0, np.zeros((4, 4)))
    with pytest.raises(ConversionError, match='ee_pose must hold 7 values'):
        sync.add_ee_pose(0, np.zeros(3))
    with pytest.raises(ConversionError, match='intrinsics must be CameraIntrinsics'):
        sync.add_camera_info(0, (1, 2, 3))
    with pytest.raises(ValueError, match='slop_s must be >= 0'):
        ObservationSynchronizer(slop_s=-1)


def test_threads_hammering_inputs_while_popping():
    """
    Producers add rgb and depth from their own threads; every popped set must be consistent.

    Each depth carries its stamp in milliseconds so a mismatched pair would show; stamps come
    out strictly increasing (consume-once) and every message is accounted for.
    """
    sync = synchronizer(slop_s=0.004, max_age_s=60.0, queue_size=5)
    frames = 3000
    period = 10 * MS
    start = threading.Barrier(4)
    errors = []

    def produce(add, make, jitter_ms):
        try:
            start.wait()
            for i in range(frames):
                add(T0 + i * period + jitter_ms * MS, make(i))
        except Exception as err:  # reported to the main thread below
            errors.append(err)

    threads = [
        threading.Thread(target=produce, args=(sync.add_rgb, rgb, 0)),
        threading.Thread(target=produce, args=(sync.add_depth, lambda i: depth(10 * i + 3), 3)),
        threading.Thread(
            target=produce,
            args=(sync.add_ee_pose, lambda i: np.array([i, 0, 0, 0, 0, 0, 1.0]), 1),
        ),
    ]
    for thread in threads:
        thread.start()
    start.wait()
    stamps = []
    while any(thread.is_alive() for thread in threads) or sync.queued['rgb']:
        result = sync.pop_latest(T0 + frames * period)
        if result.ok:
            obs = result.observation
            stamps.append(obs.stamp_ns)
            assert obs.depth[0, 0] == pytest.approx((obs.stamp_ns - T0) / MS + 3)
            if obs.ee_pose is not None:
                assert abs(obs.ee_pose[0] * period - (obs.stamp_ns - T0)) <= 4 * MS
        elif not any(thread.is_alive() for thread in threads):
            break
    for thread in threads:
        thread.join()
    assert not errors
    assert len(stamps) > 0 and np.all(np.diff(stamps) > 0)
    counters, queued = sync.counters, sync.queued
    assert counters['complete'] == len(stamps)
    # Every rgb and depth message was returned, dropped or is still queued.
    accounted = 2 * counters['complete'] + counters['dropped_unmatched'] + sum(queued.values())
    assert accounted == 2 * frames


def test_rosbag_replay_through_converters_and_synchronizer(tmp_path):
    """A real MCAP bag of rgb (bgr8), 16UC1 depth, camera_info and a cloud becomes observations."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from vla_pruned_ros.convert import (
        camera_info_to_intrinsics,
        image_to_depth,
        image_to_rgb,
        intrinsics_to_camera_info,
        numpy_to_image,
        numpy_to_pointcloud2,
        package_typestore,
        pointcloud2_to_numpy,
        stamp_to_ns,
    )

    typestore = package_typestore()
    intr = CameraIntrinsics(8.0, 8.0, 3.5, 2.5, 8, 6)
    path = tmp_path / 'episode'
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        topics = {
            'rgb': writer.add_connection('/rgb', 'sensor_msgs/msg/Image', typestore=typestore),
            'depth': writer.add_connection('/depth', 'sensor_msgs/msg/Image', typestore=typestore),
            'info': writer.add_connection(
                '/info', 'sensor_msgs/msg/CameraInfo', typestore=typestore
            ),
            'cloud': writer.add_connection(
                '/points', 'sensor_msgs/msg/PointCloud2', typestore=typestore
            ),
        }
        for i in range(5):
            stamp = T0 + i * 100 * MS
            msgs = {
                'rgb': numpy_to_image(np.full((6, 8, 3), [i, 0, 200], np.uint8), 'bgr8', stamp),
                'depth': numpy_to_image(
                    np.full((6, 8), 1000 + i, np.uint16), '16UC1', stamp + 7 * MS, step=20
                ),
                'info': intrinsics_to_camera_info(intr, stamp),
                'cloud': numpy_to_pointcloud2(np.full((10, 3), i + 1.0), stamp_ns=stamp + 2 * MS),
            }
            for name, msg in msgs.items():
                cdr = typestore.serialize_cdr(msg, msg.__msgtype__)
                writer.write(topics[name], stamp, cdr)

    sync = ObservationSynchronizer(use_depth=True, use_cloud=True, max_age_s=0.25)
    sync.set_instruction('pick the red cube')
    observations = []
    with Reader(path) as reader:
        for connection, _, raw in reader.messages():
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            stamp = stamp_to_ns(msg.header.stamp)
            if connection.topic == '/rgb':
                sync.add_rgb(stamp, image_to_rgb(msg), msg.header.frame_id)
            elif connection.topic == '/depth':
                sync.add_depth(stamp, image_to_depth(msg))
            elif connection.topic == '/info':
                sync.add_camera_info(stamp, camera_info_to_intrinsics(msg))
            else:
                sync.add_cloud(stamp, pointcloud2_to_numpy(msg)[0])
            result = sync.pop_latest(stamp)
            if result.ok:
                observations.append(result.observation)
    assert [obs.stamp_ns for obs in observations] == [T0 + i * 100 * MS for i in range(5)]
    for i, obs in enumerate(observations):
        np.testing.assert_array_equal(obs.rgb[0, 0], [200, 0, i])
        assert obs.depth[0, 0] == pytest.approx((1000 + i) / 1000)
        assert obs.points[0, 0] == i + 1.0 and obs.intrinsics == intr
