"""
The generated messages round-trip through rclpy and interoperate with rosbags.

Bags are read and written with rosbags (no ROS needed), live topics with rclpy: both must agree
on the CDR bytes and on the type hash, or a recorded chunk would not replay.
"""

import array
import json
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from vla_pruned_ros.msg import ActionChunk, PruningStats

REPO = Path(__file__).resolve().parents[1]
MESSAGES = {'ActionChunk': ActionChunk, 'PruningStats': PruningStats}


def typename(name: str) -> str:
    return f'vla_pruned_ros/msg/{name}'


@pytest.fixture(scope='module')
def typestore():
    store = get_typestore(Stores.ROS2_KILTED)
    for name in MESSAGES:
        text = (REPO / 'msg' / f'{name}.msg').read_text()
        store.register(get_types_from_msg(text, typename(name)))
    return store


def make_action_chunk() -> ActionChunk:
    msg = ActionChunk(
        horizon=3,
        action_dim=7,
        dt=0.125,
        action_space='eef_delta_xyz_rpy_gripper',
        dimension_names=['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper'],
        # multiples of 1/64 are exact in float32, so equality is exact
        data=[(k - 10) / 64.0 for k in range(21)],
    )
    msg.header.stamp.sec = 1_700_000_123
    msg.header.stamp.nanosec = 456_789_000
    msg.header.frame_id = 'panda_link0'
    return msg


def make_pruning_stats() -> PruningStats:
    msg = PruningStats(
        pruner='tri_stage',
        budget=96,
        full_step=False,
        tokens_2d_in=256,
        tokens_3d_in=128,
        tokens_2d_kept=64,
        tokens_3d_kept=32,
        stage_names=['before_llm', 'layer_2', 'temporal'],
        stage_tokens_2d=[160, 96, 64],
        stage_tokens_3d=[96, 48, 32],
        latency_ms=41.5,
        tokenize_ms=3.25,
        decoder_ms=30.75,
        pruning_overhead_ms=0.5,
        action_head_ms=7.0,
        flops_dense=3.1e12,
        flops_actual=1.05e12,
        speedup=2.75,
        device='cuda:0',
    )
    msg.header.stamp.sec = 42
    msg.header.stamp.nanosec = 7
    msg.header.frame_id = 'camera_color_optical_frame'
    return msg


SAMPLES = {'ActionChunk': make_action_chunk, 'PruningStats': make_pruning_stats}


def plain(value):
    """Turn an rclpy or a rosbags message into nested dicts and lists of Python scalars."""
    if hasattr(value, 'get_fields_and_field_types'):
        return {f: plain(getattr(value, f)) for f in value.get_fields_and_field_types()}
    if hasattr(value, '__dataclass_fields__'):
        fields = [f for f in value.__dataclass_fields__ if f != '__msgtype__']
        return {f: plain(getattr(value, f)) for f in fields}
    if isinstance(value, (list, tuple, array.array, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@pytest.mark.parametrize('name', sorted(MESSAGES))
def test_rclpy_round_trip(name):
    msg = SAMPLES[name]()
    again = deserialize_message(serialize_message(msg), MESSAGES[name])
    assert again == msg
    assert plain(again) == plain(msg)


@pytest.mark.parametrize('name', sorted(MESSAGES))
def test_rclpy_bytes_decode_with_rosbags(typestore, name):
    msg = SAMPLES[name]()
    decoded = typestore.deserialize_cdr(serialize_message(msg), typename(name))
    assert plain(decoded) == plain(msg)


@pytest.mark.parametrize('name', sorted(MESSAGES))
def test_rosbags_bytes_decode_with_rclpy(typestore, name):
    msg = SAMPLES[name]()
    as_rosbags = typestore.deserialize_cdr(serialize_message(msg), typename(name))
    as_rosbags.header.frame_id = 'changed_by_rosbags'
    data = bytes(typestore.serialize_cdr(as_rosbags, typename(name)))
    decoded = deserialize_message(data, MESSAGES[name])
    assert decoded.header.frame_id == 'changed_by_rosbags'
    msg.header.frame_id = 'changed_by_rosbags'
    assert decoded == msg


@pytest.mark.parametrize('name', sorted(MESSAGES))
def test_rosbags_type_hash_matches_rosidl(typestore, name):
    # Jazzy and later record this hash in bags and check it on topics.
    share = Path(get_package_share_directory('vla_pruned_ros'))
    description = json.loads((share / 'msg' / f'{name}.json').read_text())
    hashes = {h['type_name']: h['hash_string'] for h in description['type_hashes']}
    assert typestore.hash_rihs01(typename(name)) == hashes[typename(name)]
