"""
Sensor message <-> numpy conversion, camera intrinsics and Observation.

Messages under test are built by hand from raw bytes (not with the writers under test), as
rosbags messages and as rclpy messages, so every reader is checked against an independent
layout.
"""

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest

from vla_pruned_ros.camera import CameraIntrinsics
from vla_pruned_ros.convert import (
    ConversionError,
    camera_info_to_intrinsics,
    depth_to_points,
    image_to_depth,
    image_to_numpy,
    image_to_rgb,
    intrinsics_to_camera_info,
    ns_to_stamp,
    numpy_to_image,
    numpy_to_pointcloud2,
    package_typestore,
    pointcloud2_to_numpy,
    rclpy_types,
    rosbags_types,
    stamp_to_ns,
)
from vla_pruned_ros.observation import Observation

RNG = np.random.default_rng(7)

# encoding, numpy dtype, channels
ENCODINGS = [
    ('rgb8', 'u1', 3),
    ('bgr8', 'u1', 3),
    ('rgba8', 'u1', 4),
    ('bgra8', 'u1', 4),
    ('mono8', 'u1', 1),
    ('mono16', 'u2', 1),
    ('8UC1', 'u1', 1),
    ('8UC3', 'u1', 3),
    ('16UC1', 'u2', 1),
    ('32FC1', 'f4', 1),
]

# PointField datatypes
INT16, UINT8, UINT32, FLOAT32, FLOAT64 = 3, 2, 6, 7, 8


@pytest.fixture(params=['rosbags', 'rclpy'])
def types(request):
    if request.param == 'rclpy':
        pytest.importorskip('sensor_msgs.msg')
        return rclpy_types()
    return rosbags_types()


def random_pixels(dtype: str, channels: int, height: int = 4, width: int = 5) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == 'f4':
        return RNG.uniform(0.1, 5.0, shape).astype(np.float32)
    high = 256 if dtype == 'u1' else 65536
    return RNG.integers(1, high, shape).astype(dtype)


def raw_field(types, data: bytes):
    # rosbags stores byte arrays as numpy uint8, rclpy messages take bytes.
    return np.frombuffer(data, np.uint8).copy() if types.flavour == 'rosbags' else data


def header(types, sec: int = 3, nanosec: int = 4, frame_id: str = 'cam'):
    stamp = types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
    return types['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)


def make_image(types, encoding, pixels, pad=0, big=False, step=None, data=None):
    """Lay pixels out row by row, each row followed by ``pad`` junk bytes."""
    wire = pixels.astype(pixels.dtype.newbyteorder('>' if big else '<'))
    rows = [wire[r].tobytes() + b'\xee' * pad for r in range(wire.shape[0])]
    raw = b''.join(rows)
    return types['sensor_msgs/msg/Image'](
        header=header(types),
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=int(big),
        step=len(rows[0]) if step is None else step,
        data=raw_field(types, raw if data is None else data),
    )


def make_cloud(types, records, pad=0, big=False, fields=None, height=None, data=None):
    """Build a PointCloud2 from a structured array (H, W); ``fields`` overrides the fields."""
    records = np.atleast_2d(records)
    point_field = types['sensor_msgs/msg/PointField']
    if fields is None:
        fields = []
        for name in records.dtype.names:
            sub, offset = records.dtype.fields[name][:2]
            datatype = {'f4': FLOAT32, 'f8': FLOAT64, 'u4': UINT32, 'u2': 4, 'u1': UINT8}[
                sub.str[1:]
            ]
            fields.append((name, offset, datatype))
    rows = [records[r].tobytes() + b'\xee' * pad for r in range(records.shape[0])]
    raw = b''.join(rows)
    return types['sensor_msgs/msg/PointCloud2'](
        header=header(types),
        height=records.shape[0] if height is None else height,
        width=records.shape[1],
        fields=[point_field(name=n, offset=o, datatype=d, count=1) for n, o, d in fields],
        is_bigendian=big,
        point_step=records.dtype.itemsize,
        row_step=len(rows[0]),
        data=raw_field(types, raw if data is None else data),
        is_dense=False,
    )


def make_camera_info(types, k, p, width=640, height=480, binning=(0, 0), roi=(0, 0, 0, 0)):
    region = types['sensor_msgs/msg/RegionOfInterest'](
        x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3], do_rectify=False
    )
    return types['sensor_msgs/msg/CameraInfo'](
        header=header(types),
        height=height,
        width=width,
        distortion_model='plumb_bob',
        d=types.float64_array([0.1, -0.2, 0.0, 0.0, 0.0]),
        k=types.float64_array(k),
        r=types.float64_array(np.eye(3)),
        p=types.float64_array(p),
        binning_x=binning[0],
        binning_y=binning[1],
        roi=region,
    )


# ---------------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('big', [False, True], ids=['le', 'be'])
@pytest.mark.parametrize('pad', [0, 3], ids=['dense', 'padded'])
@pytest.mark.parametrize(('encoding', 'dtype', 'channels'), ENCODINGS)
def test_image_to_numpy_decodes_every_layout(types, encoding, dtype, channels, pad, big):
    pixels = random_pixels(dtype, channels)
    decoded = image_to_numpy(make_image(types, encoding, pixels, pad=pad, big=big))
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, pixels)


def test_image_to_numpy_returns_writable_copy(types):
    pixels = random_pixels('u1', 3)
    msg = make_image(types, 'rgb8', pixels)
    decoded = image_to_numpy(msg)
    decoded[:] = 0
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


def test_big_endian_16bit_bytes_are_swapped(types):
    # 0x0102 written big-endian is bytes 01 02; read little-endian it would be 513.
    msg = make_image(types, '16UC1', np.zeros((1, 1), np.uint16), data=b'\x01\x02', big=True)
    assert image_to_numpy(msg)[0, 0] == 0x0102


@pytest.mark.parametrize('pad', [0, 2])
def test_image_to_rgb_reorders_channels(types, pad):
    rgb = random_pixels('u1', 3)
    alpha = random_pixels('u1', 1)[..., None]
    cases = {
        'rgb8': rgb,
        'bgr8': rgb[..., ::-1],
        'rgba8': np.concatenate([rgb, alpha], axis=2),
        'bgra8': np.concatenate([rgb[..., ::-1], alpha], axis=2),
    }
    for encoding, pixels in cases.items():
        out = image_to_rgb(make_image(types, encoding, np.ascontiguousarray(pixels), pad=pad))
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


def test_image_to_rgb_grey_and_mono16(types):
    grey = random_pixels('u1', 1)
    for encoding in ('mono8', '8UC1'):
        out = image_to_rgb(make_image(types, encoding, grey))
        np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=2))
    mono16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    out = image_to_rgb(make_image(types, 'mono16', mono16, big=True))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 128])
    assert (out[..., 0] == out[..., 2]).all()


def test_image_to_depth_16uc1_millimetres(types):
    mm = np.array([[0, 1000, 1500], [250, 0, 65535]], np.uint16)
    for big in (False, True):
        depth = image_to_depth(make_image(types, '16UC1', mm, pad=2, big=big))
        assert depth.dtype == np.float32
        expected = np.array([[np.nan, 1.0, 1.5], [0.25, np.nan, 65.535]], np.float32)
        np.testing.assert_allclose(depth, expected, rtol=1e-6)
    # mono16 is read like 16UC1; another integer unit uses depth_scale_mm.
    depth = image_to_depth(make_image(types, 'mono16', mm, big=True), depth_scale_mm=0.0001)
    np.testing.assert_allclose(depth[0, 1], 0.1, rtol=1e-6)


def test_image_to_depth_32fc1_invalid_values_become_nan(types):
    metres = np.array([[0.0, np.inf, np.nan], [-1.0, 0.75, 2.5]], np.float32)
    for big in (False, True):
        depth = image_to_depth(make_image(types, '32FC1', metres, pad=4, big=big))
        assert np.isnan(depth[0]).all() and np.isnan(depth[1, 0])
        np.testing.assert_array_equal(depth[1, 1:], [0.75, 2.5])


@pytest.mark.parametrize('big', [False, True], ids=['le', 'be'])
@pytest.mark.parametrize(('encoding', 'dtype', 'channels'), ENCODINGS)
def test_numpy_to_image_round_trip(types, encoding, dtype, channels, big):
    pixels = random_pixels(dtype, channels, height=3, width=7)
    row_bytes = 7 * channels * np.dtype(dtype).itemsize
    msg = numpy_to_image(pixels, encoding, 5_000_000_123, 'cam', types, row_bytes + 5, big)
    assert (msg.height, msg.width, msg.step) == (3, 7, row_bytes + 5)
    assert len(msg.data) == msg.step * 3
    assert msg.encoding == encoding and bool(msg.is_bigendian) == big
    assert stamp_to_ns(msg.header.stamp) == 5_000_000_123 and msg.header.frame_id == 'cam'
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


def test_numpy_to_image_writes_big_endian_bytes(types):
    msg = numpy_to_image(np.array([[0x0102]], np.uint16), '16UC1', types=types, is_bigendian=True)
    assert bytes(msg.data) == b'\x01\x02'
    msg = numpy_to_image(np.array([[0x0102]], np.uint16), '16UC1', types=types)
    assert bytes(msg.data) == b'\x02\x01'


def test_rclpy_cdr_bytes_decode_with_rosbags():
    serialization = pytest.importorskip('rclpy.serialization')
    from sensor_msgs.msg import Image

    pixels = random_pixels('u2', 1, height=6, width=5)
    msg = numpy_to_image(pixels, '16UC1', 7 * 10**9 + 5, 'depth', rclpy_types(), step=13)
    cdr = serialization.serialize_message(msg)
    decoded = package_typestore().deserialize_cdr(cdr, 'sensor_msgs/msg/Image')
    assert isinstance(decoded.data, np.ndarray) and decoded.step == 13
    assert stamp_to_ns(decoded.header.stamp) == 7 * 10**9 + 5
    np.testing.assert_array_equal(image_to_numpy(decoded), pixels)

    # And back: rosbags CDR bytes read by rclpy.
    bag_msg = numpy_to_image(pixels, '16UC1', types=rosbags_types(), is_bigendian=True)
    cdr = package_typestore().serialize_cdr(bag_msg, 'sensor_msgs/msg/Image')
    live = serialization.deserialize_message(bytes(cdr), Image)
    np.testing.assert_array_equal(image_to_numpy(live), pixels)


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('ns', [0, 1, 1_700_000_000_123_456_789, -1, -1_500_000_000])
def test_stamp_round_trip(types, ns):
    stamp = ns_to_stamp(ns, types)
    assert 0 <= stamp.nanosec < 10**9
    assert stamp_to_ns(stamp) == ns


# ---------------------------------------------------------------------------------------------
# CameraInfo and intrinsics
# ---------------------------------------------------------------------------------------------

K = [600.0, 0.0, 320.5, 0.0, 610.0, 240.25, 0.0, 0.0, 1.0]
P = [580.0, 0.0, 316.0, 0.0, 0.0, 590.0, 236.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_camera_info_k_for_raw_p_for_rectified(types):
    msg = make_camera_info(types, K, P)
    assert camera_info_to_intrinsics(msg) == CameraIntrinsics(600, 610, 320.5, 240.25, 640, 480)
    assert camera_info_to_intrinsics(msg, rectified=True) == CameraIntrinsics(
        580, 590, 316, 236, 640, 480
    )


def test_camera_info_binning_and_roi(types):
    binned = camera_info_to_intrinsics(make_camera_info(types, K, P, binning=(2, 4)))
    assert binned == CameraIntrinsics(300, 152.5, 160.25, 60.0625, 320, 120)
    roi = camera_info_to_intrinsics(make_camera_info(types, K, P, roi=(100, 40, 200, 120)))
    assert roi == CameraIntrinsics(600, 610, 220.5, 200.25, 200, 120)


def test_intrinsics_to_camera_info_round_trip(types):
    intr = CameraIntrinsics(500.0, 501.0, 111.5, 99.5, 224, 200)
    msg = intrinsics_to_camera_info(intr, 42, 'optical', types)
    assert msg.distortion_model == 'plumb_bob'
    np.testing.assert_array_equal(np.asarray(msg.d), np.zeros(5))
    np.testing.assert_array_equal(np.asarray(msg.r).reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(np.asarray(msg.k).reshape(3, 3), intr.matrix())
    assert camera_info_to_intrinsics(msg) == intr
    assert camera_info_to_intrinsics(msg, rectified=True) == intr
    assert stamp_to_ns(msg.header.stamp) == 42 and msg.header.frame_id == 'optical'


def test_project_and_depth_back_projection_are_inverse():
    intr = CameraIntrinsics(50.0, 60.0, 3.5, 2.0, 8, 5)
    depth = RNG.uniform(0.5, 3.0, (5, 8)).astype(np.float32)
    points = depth_to_points(depth, intr, organized=True)
    pixels = intr.project(points)
    v, u = np.mgrid[0:5, 0:8]
    np.testing.assert_allclose(pixels[..., 0], u, atol=1e-4)
    np.testing.assert_allclose(pixels[..., 1], v, atol=1e-4)
    behind = intr.project(np.array([[0.1, 0.2, -1.0], [0.1, 0.2, 0.0], [np.nan, 0, 1]]))
    assert np.isnan(behind).all()


def test_depth_to_points_matches_hand_computed_points():
    intr = CameraIntrinsics(fx=2.0, fy=4.0, cx=1.0, cy=0.5, width=3, height=2)
    depth = np.array([[2.0, np.nan, 1.0], [0.0, 4.0, 3.0]], np.float32)
    # X = (u - cx) z / fx, Y = (v - cy) z / fy
    expected = np.array(
        [
            [(0 - 1.0) * 2.0 / 2.0, (0 - 0.5) * 2.0 / 4.0, 2.0],  # u=0 v=0
            [(2 - 1.0) * 1.0 / 2.0, (0 - 0.5) * 1.0 / 4.0, 1.0],  # u=2 v=0
            [(1 - 1.0) * 4.0 / 2.0, (1 - 0.5) * 4.0 / 4.0, 4.0],  # u=1 v=1
            [(2 - 1.0) * 3.0 / 2.0, (1 - 0.5) * 3.0 / 4.0, 3.0],  # u=2 v=1
        ],
        np.float32,
    )
    points = depth_to_points(depth, intr)
    assert points.dtype == np.float32
    np.testing.assert_allclose(points, expected)
    organized = depth_to_points(depth, intr, organized=True)
    assert organized.shape == (2, 3, 3)
    assert np.isnan(organized[0, 1]).all() and np.isnan(organized[1, 0]).all()
    np.testing.assert_allclose(organized[1, 2], expected[3])
    strided = depth_to_points(depth, intr, stride=2, organized=True)
    assert strided.shape == (1, 2, 3)
    np.testing.assert_allclose(strided[0], expected[:2])


def test_from_fov_puts_the_fov_edge_on_the_image_edge():
    intr = CameraIntrinsics.from_fov(64, 48, 60.0)
    assert intr.fx == intr.fy == pytest.approx(24 / math.tan(math.radians(30)))
    # A ray at half the vertical fov above the axis hits the top edge of pixel row 0.
    edge = intr.project(np.array([[0.0, -math.tan(math.radians(30)), 1.0]]))[0]
    assert edge[0] == pytest.approx(31.5) and edge[1] == pytest.approx(-0.5)


def test_scaled_keeps_pixel_edges_aligned():
    intr = CameraIntrinsics(600.0, 600.0, 319.5, 239.5, 640, 480)
    half = intr.scaled(320, 240)
    assert (half.width, half.height) == (320, 240)
    point = np.array([[0.3, -0.2, 1.5]])
    # The same ray lands at half the distance from the top-left image corner (-0.5, -0.5).
    full_px = intr.project(point)[0] + 0.5
    half_px = half.project(point)[0] + 0.5
    np.testing.assert_allclose(half_px, full_px / 2)


# ---------------------------------------------------------------------------------------------
# PointCloud2
# ---------------------------------------------------------------------------------------------


def scrambled_dtype(order: str) -> np.dtype:
    """X/Y/Z out of order, mixed FLOAT32/FLOAT64, extra fields, and point_step padding."""
    return np.dtype(
        {
            'names': ['intensity', 'z', 'ring', 'x', 'rgb', 'y'],
            'formats': [order + 'f4', order + 'f8', order + 'u2', order + 'f4', order + 'u4',
                        order + 'f8'],
            'offsets': [0, 4, 12, 16, 20, 28],
            'itemsize': 44,
        }
    )


def scrambled_records(order: str, height: int = 2, width: int = 3):
    records = np.zeros((height, width), scrambled_dtype(order))
    xyz = RNG.uniform(-2, 2, (height, width, 3)).astype(np.float32)
    colours = RNG.integers(0, 256, (height, width, 3)).astype(np.uint8)
    records['x'], records['y'], records['z'] = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    records['intensity'] = 9.0
    records['ring'] = 7
    c = colours.astype(np.uint32)
    records['rgb'] = (0xFF << 24) | (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    return records, xyz, colours


@pytest.mark.parametrize('big', [False, True], ids=['le', 'be'])
def test_cloud_with_scrambled_fields_and_padding(types, big):
    records, xyz, colours = scrambled_records('>' if big else '<')
    msg = make_cloud(types, records, pad=6, big=big)
    points, rgb = pointcloud2_to_numpy(msg, with_rgb=True)
    assert points.dtype == np.float32 and points.shape == (6, 3)
    np.testing.assert_array_equal(points, xyz.reshape(-1, 3))
    np.testing.assert_array_equal(rgb, colours.reshape(-1, 3))
    organized, rgb_grid = pointcloud2_to_numpy(msg, with_rgb=True, keep_organized=True)
    assert organized.shape == (2, 3, 3) and rgb_grid.shape == (2, 3, 3)
    np.testing.assert_array_equal(organized, xyz)


def test_organized_cloud_with_invalid_points(types):
    records, xyz, _ = scrambled_records('<', height=3, width=4)
    records['x'][0, 1] = np.nan
    records['z'][2, 3] = np.inf
    records['y'][1, 0] = -np.inf
    msg = make_cloud(types, records)
    assert not msg.is_dense
    valid = np.ones((3, 4), bool)
    valid[0, 1] = valid[2, 3] = valid[1, 0] = False
    points, rgb = pointcloud2_to_numpy(msg)
    assert rgb is None
    np.testing.assert_array_equal(points, xyz[valid])
    organized, _ = pointcloud2_to_numpy(msg, keep_organized=True)
    assert np.isnan(organized[~valid]).all()
    np.testing.assert_array_equal(organized[valid], xyz[valid])
    everything, _ = pointcloud2_to_numpy(msg, skip_invalid=False)
    assert everything.shape == (12, 3) and (~np.isfinite(everything).all(axis=1)).sum() == 3


@pytest.mark.parametrize('name', ['rgb', 'rgba'])
def test_packed_float32_colour(types, name):
    dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), (name, '<u4')])
    records = np.zeros((1, 2), dtype)
    records['z'] = 1.0
    records[name] = [0x00FF8001, 0x7F102030]
    fields = [('x', 0, FLOAT32), ('y', 4, FLOAT32), ('z', 8, FLOAT32), (name, 12, FLOAT32)]
    _, rgb = pointcloud2_to_numpy(make_cloud(types, records, fields=fields), with_rgb=True)
    np.testing.assert_array_equal(rgb, [[0xFF, 0x80, 0x01], [0x10, 0x20, 0x30]])


def test_separate_uint8_colour_fields(types):
    dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('b', 'u1'), ('g', 'u1'),
                      ('r', 'u1'), ('pad', 'u1')])
    records = np.zeros((1, 2), dtype)
    records['z'] = 1.0
    records['r'], records['g'], records['b'] = [1, 4], [2, 5], [3, 6]
    _, rgb = pointcloud2_to_numpy(make_cloud(types, records), with_rgb=True)
    np.testing.assert_array_equal(rgb, [[1, 2, 3], [4, 5, 6]])


def test_numpy_to_pointcloud2_round_trip(types):
    xyz = RNG.uniform(-1, 1, (2, 3, 3)).astype(np.float32)
    xyz[1, 1] = np.nan
    colours = RNG.integers(0, 256, (2, 3, 3)).astype(np.uint8)
    msg = numpy_to_pointcloud2(xyz, colours, 9, 'cam', types)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (2, 3, 16, 48)
    assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb']
    assert not msg.is_dense and not msg.is_bigendian
    packed = np.frombuffer(bytes(msg.data), '<u4').reshape(6, 4)[:, 3]
    c = colours.reshape(-1, 3).astype(np.uint32)
    np.testing.assert_array_equal(packed, (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2])
    organized, rgb = pointcloud2_to_numpy(msg, with_rgb=True, keep_organized=True)
    np.testing.assert_array_equal(organized, xyz)
    np.testing.assert_array_equal(rgb, colours)
    flat = numpy_to_pointcloud2(xyz.reshape(-1, 3), types=types, organized_shape=(3, 2))
    assert (flat.height, flat.width, flat.point_step) == (3, 2, 12)
    points, _ = pointcloud2_to_numpy(flat)
    assert points.shape == (5, 3)


def test_package_typestore_has_this_packages_messages():
    typestore = package_typestore()
    chunk_type = typestore.types['vla_pruned_ros/msg/ActionChunk']
    types = rosbags_types()
    chunk = chunk_type(
        header=header(types),
        horizon=2,
        action_dim=1,
        dt=0.1,
        action_space='test',
        dimension_names=['gripper'],
        data=np.array([0.5, -0.5], np.float32),
    )
    cdr = typestore.serialize_cdr(chunk, 'vla_pruned_ros/msg/ActionChunk')
    back = typestore.deserialize_cdr(cdr, 'vla_pruned_ros/msg/ActionChunk')
    np.testing.assert_array_equal(back.data, [0.5, -0.5])
    assert 'vla_pruned_ros/msg/PruningStats' in typestore.types


# ---------------------------------------------------------------------------------------------
# Every bad input raises ConversionError naming the problem
# ---------------------------------------------------------------------------------------------


def _image(types, **changes):
    pixels = changes.pop('pixels', np.zeros((2, 3), np.uint16))
    msg = make_image(types, changes.pop('encoding', '16UC1'), pixels)
    for name, value in changes.items():
        setattr(msg, name, raw_field(types, value) if name == 'data' else value)
    return msg


def _xyz_cloud(types, **kwargs):
    dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4')])
    records = np.ones((1, 4), dtype)
    return make_cloud(types, records, **kwargs)


XYZ = [('x', 0, FLOAT32), ('y', 4, FLOAT32), ('z', 8, FLOAT32)]
GOOD_INTR = CameraIntrinsics(10.0, 10.0, 1.0, 1.0, 3, 2)

BAD_CASES = {
    'unsupported encoding': (
        lambda t: image_to_numpy(_image(t, encoding='xyz')),
        "unsupported encoding 'xyz'",
    ),
    'image data length': (
        lambda t: image_to_numpy(_image(t, data=b'\x00' * 11)),
        'data length 11 does not match step x height = 6 x 2 = 12',
    ),
    'image step too small': (
        lambda t: image_to_numpy(_image(t, step=5)),
        'step 5 smaller than width x pixel size = 3 x 2 = 6',
    ),
    'image without pixels': (lambda t: image_to_numpy(_image(t, width=0)), 'no pixels'),
    'image data not bytes': (
        # Any object with the Image field names is read, so this one needs no message class.
        lambda t: image_to_numpy(
            SimpleNamespace(
                encoding='16UC1', height=2, width=3, step=6, is_bigendian=0,
                data=np.zeros(6, np.uint16),
            )
        ),
        'data must hold bytes',
    ),
    'depth as rgb': (lambda t: image_to_rgb(_image(t)), "'16UC1' is not a colour image"),
    'unordered channels as rgb': (
        lambda t: image_to_rgb(_image(t, encoding='8UC3', pixels=np.zeros((2, 3, 3), 'u1'))),
        "'8UC3' is not a colour image with a known channel order",
    ),
    'rgb as depth': (
        lambda t: image_to_depth(_image(t, encoding='rgb8', pixels=np.zeros((2, 3, 3), 'u1'))),
        "'rgb8' is not a depth encoding",
    ),
    'all-zero depth': (lambda t: image_to_depth(_image(t)), 'all-invalid depth'),
    'all-nan depth': (
        lambda t: image_to_depth(
            _image(t, encoding='32FC1', pixels=np.full((2, 2), np.nan, np.float32))
        ),
        'all-invalid depth',
    ),
    'bad depth scale': (
        lambda t: image_to_depth(_image(t, pixels=np.ones((1, 1), 'u2')), depth_scale_mm=0),
        'depth_scale_mm must be positive',
    ),
    'writer dtype': (
        lambda t: numpy_to_image(np.zeros((2, 2), np.float64), '32FC1', types=t),
        "dtype float64 does not match encoding '32FC1'",
    ),
    'writer shape': (
        lambda t: numpy_to_image(np.zeros((2, 2), np.uint8), 'rgb8', types=t),
        r"shape \(2, 2\) does not fit encoding 'rgb8'",
    ),
    'writer step': (
        lambda t: numpy_to_image(np.zeros((2, 2, 3), np.uint8), 'rgb8', types=t, step=4),
        'step 4 smaller than width x pixel size = 2 x 3 = 6',
    ),
    'uncalibrated camera': (
        lambda t: camera_info_to_intrinsics(make_camera_info(t, [0.0] * 9, [0.0] * 12)),
        'zero focal length in CameraInfo K .*not calibrated',
    ),
    'rectified without P': (
        lambda t: camera_info_to_intrinsics(make_camera_info(t, K, [0.0] * 12), True),
        'zero focal length in CameraInfo P .*rectified=False',
    ),
    'non-finite K': (
        lambda t: camera_info_to_intrinsics(make_camera_info(t, [np.nan] + K[1:], P)),
        'non-finite intrinsics in CameraInfo K',
    ),
    'non-finite intrinsics': (
        lambda t: CameraIntrinsics(math.inf, 1.0, 0.0, 0.0, 4, 4),
        'non-finite intrinsics: fx=inf',
    ),
    'zero focal length': (
        lambda t: CameraIntrinsics(0.0, 1.0, 0.0, 0.0, 4, 4),
        'zero focal length',
    ),
    'empty intrinsics size': (
        lambda t: CameraIntrinsics(1.0, 1.0, 0.0, 0.0, 0, 4),
        'image size must be positive',
    ),
    'bad fov': (lambda t: CameraIntrinsics.from_fov(4, 4, 180.0), 'fovy_deg must lie'),
    'project shape': (
        lambda t: GOOD_INTR.project(np.zeros((4, 2))),
        r'points must have shape \(N, 3\)',
    ),
    'cloud missing z': (
        lambda t: pointcloud2_to_numpy(_xyz_cloud(t, fields=XYZ[:2] + [('intensity', 8, 7)])),
        r'missing z field\(s\) \(fields: x, y, intensity\)',
    ),
    'cloud data length': (
        lambda t: pointcloud2_to_numpy(_xyz_cloud(t, data=b'\x00' * 40)),
        'data length 40 does not match row_step x height = 48 x 1 = 48',
    ),
    'cloud without points': (
        lambda t: pointcloud2_to_numpy(_xyz_cloud(t, height=0)),
        'empty cloud: 0 points',
    ),
    'cloud without finite points': (
        lambda t: pointcloud2_to_numpy(
            make_cloud(t, np.full((1, 3), np.nan, [('x', '<f4'), ('y', '<f4'), ('z', '<f4')]))
        ),
        'empty cloud: none of the 3 points is finite',
    ),
    'cloud integer coordinates': (
        lambda t: pointcloud2_to_numpy(_xyz_cloud(t, fields=[('x', 0, INT16)] + XYZ[1:])),
        "field 'x' has datatype INT16; expected FLOAT32 or FLOAT64",
    ),
    'cloud field beyond point_step': (
        lambda t: pointcloud2_to_numpy(_xyz_cloud(t, fields=XYZ[:2] + [('z', 8, FLOAT64)])),
        "field 'z' ends at byte 16, beyond point_step 12",
    ),
    'cloud unknown datatype': (
        lambda t: pointcloud2_to_numpy(_xyz_cloud(t, fields=XYZ + [('w', 0, 9)])),
        "field 'w' has unknown datatype 9",
    ),
    'cloud without colour': (
        lambda t: pointcloud2_to_numpy(_xyz_cloud(t), with_rgb=True),
        "with_rgb=True but the cloud has no 'rgb' or 'rgba' field",
    ),
    'cloud writer shape': (
        lambda t: numpy_to_pointcloud2(np.zeros((4, 2), np.float32), types=t),
        r'points must be numeric \(N, 3\)',
    ),
    'cloud writer colours': (
        lambda t: numpy_to_pointcloud2(np.zeros((4, 3)), np.zeros((3, 3), np.uint8), types=t),
        'rgb must be uint8 with one colour per point',
    ),
    'cloud writer empty': (
        lambda t: numpy_to_pointcloud2(np.zeros((0, 3)), types=t),
        'empty cloud: 0 points',
    ),
    'cloud writer organized shape': (
        lambda t: numpy_to_pointcloud2(np.zeros((4, 3)), types=t, organized_shape=(3, 3)),
        r'organized_shape \(3, 3\) does not hold 4 points',
    ),
    'depth size mismatch': (
        lambda t: depth_to_points(np.ones((4, 6), np.float32), GOOD_INTR),
        r'depth size 6 x 4 does not match intrinsics 3 x 2; use intrinsics.scaled\(\)',
    ),
    'depth stride': (
        lambda t: depth_to_points(np.ones((2, 3), np.float32), GOOD_INTR, stride=0),
        'stride must be a positive integer',
    ),
    'depth not 2D': (
        lambda t: depth_to_points(np.ones((2, 3, 1), np.float32), GOOD_INTR),
        r'depth must be a float \(H, W\) array',
    ),
    'depth back-projection without valid pixel': (
        lambda t: depth_to_points(np.zeros((2, 3), np.float32), GOOD_INTR),
        'all-invalid depth',
    ),
    'stamp nanosec': (
        lambda t: stamp_to_ns(t['builtin_interfaces/msg/Time'](sec=1, nanosec=10**9)),
        r'nanosec 1000000000 outside \[0, 1e9\)',
    ),
    'stamp overflow': (lambda t: ns_to_stamp(2**31 * 10**9, t), 'does not fit the int32'),
}


@pytest.mark.parametrize('case', list(BAD_CASES))
def test_bad_input_raises_conversion_error(types, case):
    call, pattern = BAD_CASES[case]
    with pytest.raises(ConversionError, match=pattern) as info:
        call(types)
    assert isinstance(info.value, ValueError)


def test_conversion_error_message_survives_str():
    with pytest.raises(ConversionError) as info:
        image_to_numpy(_image(rosbags_types(), encoding='yuv422'))
    assert re.search(r"unsupported encoding 'yuv422' \(supported: rgb8, ", str(info.value))


# ---------------------------------------------------------------------------------------------
# Observation
# ---------------------------------------------------------------------------------------------


def observation(**changes) -> Observation:
    fields = {
        'rgb': np.zeros((2, 3, 3), np.uint8),
        'depth': np.array([[1.0, np.nan, 2.0], [1.0, 1.0, 1.0]], np.float32),
        'intrinsics': GOOD_INTR,
        'stamp_ns': 5,
        'instruction': 'pick up the cube',
        'ee_pose': np.array([0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0]),
        'joint_state': np.zeros(6),
        'frame_id': 'cam',
    }
    fields.update(changes)
    return Observation(**fields)


def test_observation_cloud_prefers_points_then_back_projects_depth():
    obs = observation()
    obs.validate()
    np.testing.assert_allclose(obs.cloud(), depth_to_points(obs.depth, GOOD_INTR))
    assert obs.cloud().shape == (5, 3)
    points = np.array([[0.0, 0.0, 1.0]], np.float32)
    np.testing.assert_array_equal(observation(points=points).cloud(), points)
    with pytest.raises(ConversionError, match='neither points nor depth with intrinsics'):
        observation(intrinsics=None).cloud()
    with pytest.raises(ConversionError, match='all-invalid depth'):
        observation(depth=np.full((2, 3), np.nan, np.float32)).cloud()


OBSERVATION_PROBLEMS = {
    'rgb float': ({'rgb': np.zeros((2, 3, 3), np.float32)}, 'rgb must be uint8'),
    'rgb with nan': ({'rgb': np.full((2, 3, 3), np.nan)}, 'rgb must be uint8'),
    'rgb grey': ({'rgb': np.zeros((2, 3), np.uint8)}, r'rgb must be an \(H, W, 3\) array'),
    'rgb empty': ({'rgb': np.zeros((0, 3, 3), np.uint8)}, 'rgb has no pixels'),
    'depth size': (
        {'depth': np.ones((3, 3), np.float32)},
        'depth size 3 x 3 does not match rgb size 3 x 2',
    ),
    'depth integer': ({'depth': np.ones((2, 3), np.uint16)}, 'depth must be a float'),
    'points shape': ({'points': np.ones((4, 2), np.float32)}, r'points must be a float \(N, 3\)'),
    'points empty': ({'points': np.ones((0, 3), np.float32)}, 'empty cloud'),
    'points nan': ({'points': np.array([[np.nan, 0, 1]], np.float32)}, 'NaN or inf'),
    'intrinsics size': (
        {'intrinsics': CameraIntrinsics(1, 1, 0, 0, 6, 4)},
        r'intrinsics size 6 x 4 does not match rgb size 3 x 2; use intrinsics.scaled\(\)',
    ),
    'ee_pose length': ({'ee_pose': np.zeros(6)}, 'ee_pose must be 7 values'),
    'ee_pose quaternion': ({'ee_pose': np.zeros(7)}, 'quaternion is not unit length'),
    'ee_pose nan': ({'ee_pose': np.full(7, np.nan)}, 'ee_pose must be a 1-D array of finite'),
    'joint_state text': ({'joint_state': 'abc'}, 'joint_state must be numeric'),
    'stamp float': ({'stamp_ns': 1.5}, 'stamp_ns must be an integer'),
    'instruction bytes': ({'instruction': b'go'}, 'instruction must be a string'),
}


@pytest.mark.parametrize('case', list(OBSERVATION_PROBLEMS))
def test_observation_validate_names_the_problem(case):
    changes, pattern = OBSERVATION_PROBLEMS[case]
    with pytest.raises(ConversionError, match=pattern):
        observation(**changes).validate()
