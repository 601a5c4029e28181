"""Topic discovery by message type and name, for RealSense, ZED, Orbbec and simulator bags."""

import pytest

from vla_pruned_ros.eval.errors import EvalError
from vla_pruned_ros.eval.topics import (
    ACTION_CHUNK,
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    IMAGE,
    POINT_CLOUD,
    POSE,
    PRUNING_STATS,
    STRING,
    TWIST,
    BagTopic,
    plan_topics,
)

VGA = (640, 480)


def image(name, encoding, size=VGA):
    return BagTopic(name, IMAGE, 30, encoding, size)


def info(name, size=VGA):
    return BagTopic(name, CAMERA_INFO, 30, '', size)


def other(name, msgtype):
    return BagTopic(name, msgtype, 30)


def realsense(aligned=True):
    ns = '/camera/camera'
    topics = [
        image(f'{ns}/color/image_raw', 'rgb8'),
        image(f'{ns}/depth/image_rect_raw', '16UC1', (848, 480)),
        image(f'{ns}/infra1/image_rect_raw', 'mono8', (848, 480)),
        info(f'{ns}/color/camera_info'),
        info(f'{ns}/depth/camera_info', (848, 480)),
        info(f'{ns}/infra1/camera_info', (848, 480)),
        other(f'{ns}/depth/color/points', POINT_CLOUD),
        other('/instruction', STRING),
    ]
    if aligned:
        topics += [image(f'{ns}/aligned_depth_to_color/image_raw', '16UC1'),
                   info(f'{ns}/aligned_depth_to_color/camera_info')]
    return topics


def zed():
    ns = '/zed/zed_node'
    return [
        image(f'{ns}/rgb/image_rect_color', 'bgra8'),
        image(f'{ns}/rgb_raw/image_raw_color', 'bgra8'),
        image(f'{ns}/left/image_rect_color', 'bgra8'),
        image(f'{ns}/right/image_rect_color', 'bgra8'),
        image(f'{ns}/depth/depth_registered', '32FC1'),
        image(f'{ns}/confidence/confidence_map', '32FC1'),
        info(f'{ns}/rgb/camera_info'),
        info(f'{ns}/depth/camera_info'),
        info(f'{ns}/left/camera_info'),
        other(f'{ns}/point_cloud/cloud_registered', POINT_CLOUD),
        other(f'{ns}/pose', POSE),
        other('/task/instruction', STRING),
    ]


def test_realsense_prefers_depth_aligned_to_colour_and_the_colour_camera_info():
    plan = plan_topics(realsense())
    assert plan.rgb == '/camera/camera/color/image_raw'
    assert plan.depth == '/camera/camera/aligned_depth_to_color/image_raw'
    assert plan.camera_info == '/camera/camera/color/camera_info'
    assert plan.points_from == 'depth' and plan.cloud is None
    assert plan.instruction == '/instruction'
    assert plan.actions is None and plan.episode is None


def test_unregistered_depth_falls_back_to_the_cloud_or_fails_clearly():
    plan = plan_topics(realsense(aligned=False))
    assert plan.points_from == 'cloud'
    assert plan.cloud == '/camera/camera/depth/color/points' and plan.depth is None
    assert any('848x480' in note and 'registered' in note for note in plan.notes)
    without_cloud = [t for t in realsense(aligned=False) if t.msgtype != POINT_CLOUD]
    with pytest.raises(EvalError, match='registered to the colour camera'):
        plan_topics(without_cloud)
    with pytest.raises(EvalError, match='cannot use depth'):
        plan_topics(realsense(aligned=False), points_from='depth')


def test_zed_names():
    plan = plan_topics(zed(), needs_pose=True)
    assert plan.rgb == '/zed/zed_node/rgb/image_rect_color'
    assert plan.depth == '/zed/zed_node/depth/depth_registered'
    assert plan.camera_info == '/zed/zed_node/rgb/camera_info'
    assert plan.pose == '/zed/zed_node/pose'
    assert plan.instruction == '/task/instruction'
    cloud = plan_topics(zed(), points_from='cloud')
    assert cloud.cloud == '/zed/zed_node/point_cloud/cloud_registered'
    assert cloud.depth is None and cloud.camera_info == '/zed/zed_node/rgb/camera_info'


def test_orbbec_names_skip_the_infrared_image_and_prefer_the_registered_cloud():
    topics = [
        image('/camera/color/image_raw', 'rgb8'),
        image('/camera/depth/image_raw', '16UC1'),
        image('/camera/ir/image_raw', 'mono16'),
        info('/camera/color/camera_info'),
        info('/camera/depth/camera_info'),
        other('/camera/depth/points', POINT_CLOUD),
        other('/camera/depth_registered/points', POINT_CLOUD),
    ]
    plan = plan_topics(topics)
    assert (plan.rgb, plan.depth) == ('/camera/color/image_raw', '/camera/depth/image_raw')
    assert plan.camera_info == '/camera/color/camera_info'
    assert plan_topics(topics, points_from='cloud').cloud == '/camera/depth_registered/points'


def test_simulator_names_with_episode_markers_and_recorded_actions():
    topics = [
        image('/camera/color/image_raw', 'rgb8', (64, 64)),
        image('/camera/depth/image_rect_raw', '16UC1', (64, 64)),
        info('/camera/color/camera_info', (64, 64)),
        other('/camera/depth/points', POINT_CLOUD),
        other('/episode', STRING),
        other('/instruction', STRING),
        other('/ee_pose', POSE),
        other('/expert/twist', TWIST),
        other('/expert/action_chunk', ACTION_CHUNK),
        other('/vla/action_chunk', ACTION_CHUNK),  # the node's own output is never the label
    ]
    plan = plan_topics(topics, needs_pose=True)
    assert plan.depth == '/camera/depth/image_rect_raw'
    assert (plan.episode, plan.instruction) == ('/episode', '/instruction')
    assert (plan.actions, plan.action_type) == ('/expert/action_chunk', ACTION_CHUNK)
    assert plan.pose == '/ee_pose'
    twist = plan_topics([t for t in topics if t.msgtype != ACTION_CHUNK])
    assert (twist.actions, twist.action_type) == ('/expert/twist', TWIST)
    assert plan_topics(topics, {'actions': 'none'}).actions is None


def test_the_node_outputs_in_a_whole_graph_recording_are_not_labels():
    topics = [
        image('/camera/color/image_raw', 'rgb8'),
        image('/camera/depth/image_raw', '16UC1'),
        info('/camera/color/camera_info'),
        other('/action_chunk', ACTION_CHUNK),
        other('/cmd_twist', TWIST),
        other('/pruning_stats', PRUNING_STATS),
    ]
    assert plan_topics(topics).actions is None
    teleop = plan_topics(topics + [other('/teleop_twist', TWIST)])
    assert (teleop.actions, teleop.action_type) == ('/teleop_twist', TWIST)


def test_ambiguous_topics_name_the_candidates_and_the_flag():
    topics = [
        image('/wrist/color/image_raw', 'rgb8'),
        image('/scene/color/image_raw', 'rgb8'),
        image('/scene/depth/image_raw', '16UC1'),
        info('/scene/color/camera_info'),
    ]
    with pytest.raises(EvalError) as caught:
        plan_topics(topics)
    message = str(caught.value)
    assert '/wrist/color/image_raw' in message and '/scene/color/image_raw' in message
    assert '--rgb-topic' in message
    plan = plan_topics(topics, {'rgb': '/scene/color/image_raw'})
    assert plan.rgb == '/scene/color/image_raw'
    assert plan.camera_info == '/scene/color/camera_info'


def test_explicit_topics_are_checked():
    with pytest.raises(EvalError, match='--depth-topic /nope: no such topic.*aligned'):
        plan_topics(realsense(), {'depth': '/nope'})
    with pytest.raises(EvalError, match='holds sensor_msgs/msg/CameraInfo'):
        plan_topics(realsense(), {'rgb': '/camera/camera/color/camera_info'})
    with pytest.raises(EvalError, match='not a depth encoding'):
        plan_topics(realsense(), {'depth': '/camera/camera/color/image_raw'})
    with pytest.raises(EvalError, match='cannot be none'):
        plan_topics(realsense(), {'rgb': 'none'})
    # Naming a cloud means using it, even when depth would do.
    assert plan_topics(realsense(), {'cloud': '/camera/camera/depth/color/points'}).points_from \
        == 'cloud'


def test_bags_without_usable_input_fail_with_one_clear_error():
    compressed = [other('/camera/color/image_raw/compressed', COMPRESSED_IMAGE),
                  image('/camera/depth/image_raw', '16UC1')]
    with pytest.raises(EvalError, match='compressed images .* not supported'):
        plan_topics(compressed)
    no_3d = [image('/camera/color/image_raw', 'rgb8'), info('/camera/color/camera_info')]
    with pytest.raises(EvalError, match='no 3D input'):
        plan_topics(no_3d)
    no_info = [image('/camera/color/image_raw', 'rgb8'), image('/camera/depth/image_raw', '16UC1')]
    with pytest.raises(EvalError, match='no camera_info'):
        plan_topics(no_info)
    with pytest.raises(EvalError, match='end-effector pose'):
        plan_topics(realsense(), needs_pose=True)
