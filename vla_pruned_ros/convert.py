"""
Conversion between sensor messages (Image, CameraInfo, PointCloud2) and numpy arrays.

Readers accept any object with the sensor_msgs field names, so live rclpy messages and
messages read from bags with ``rosbags`` share one code path. They honour ``step`` /
``row_step`` row padding, ``point_step`` padding, field offsets and ``is_bigendian``, and
return arrays in native byte order that own their memory.

Writers build messages through a ``MessageTypes`` object: ``rosbags_types()`` (the default,
no ROS needed) or ``rclpy_types()`` (message classes of a ROS 2 install, for publishing).

Every problem with the input raises ``ConversionError`` with a message naming it.
"""

import array
from collections.abc import Callable
from dataclasses import dataclass
import functools
import importlib
import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.camera import CameraIntrinsics

PACKAGE_NAME = 'vla_pruned_ros'

NS_PER_S = 1_000_000_000


class ConversionError(ValueError):
    """A message or array cannot be converted; the message names the problem."""


# ---------------------------------------------------------------------------------------------
# Message classes
# ---------------------------------------------------------------------------------------------


class MessageTypes:
    """
    Message classes by full type name, plus how that flavour of message stores arrays.

    rosbags messages hold numeric arrays as numpy arrays; rclpy messages hold unbounded byte
    arrays as ``array.array('B')`` (built here from the buffer in one copy, where rclpy's own
    setter would iterate element by element).
    """

    def __init__(self, flavour: str, lookup: Callable[[str], type]) -> None:
        self.flavour = flavour
        self._lookup = lookup

    def __getitem__(self, name: str) -> type:
        """Return the class of message type ``name``, e.g. ``'sensor_msgs/msg/Image'``."""
        return self._lookup(name)

    def uint8_array(self, data: np.ndarray) -> Any:
        """
        Return ``data`` (uint8) in the form this flavour stores a ``uint8[]`` field in.

        For rosbags a contiguous uint8 ``data`` is used as is (not copied).
        """
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        if self.flavour == 'rclpy':
            out = array.array('B')
            out.frombytes(memoryview(data))
            return out
        return data

    def float64_array(self, values: Any) -> Any:
        """Return ``values`` in the form this flavour stores a ``float64[]`` field in."""
        return np.asarray(values, dtype=np.float64).reshape(-1).copy()

    def __repr__(self) -> str:
        return f'MessageTypes({self.flavour!r})'


def _find_msg_dirs() -> list[Path]:
    """
    Return the folders that hold this package's .msg files, nearest first.

    A source checkout keeps them at ``<repo>/msg``; an install keeps them at
    ``<prefix>/share/vla_pruned_ros/msg``, found from this file's prefix or AMENT_PREFIX_PATH.
    """
    candidates = []
    here = Path(__file__).resolve().parent
    for ancestor in here.parents:
        candidates.append(ancestor / 'msg')
        candidates.append(ancestor / 'share' / PACKAGE_NAME / 'msg')
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / 'share' / PACKAGE_NAME / 'msg')
    found = []
    for folder in candidates:
        if (folder / 'ActionChunk.msg').is_file() and folder not in found:
            found.append(folder)
    return found


@functools.cache
def package_typestore() -> Any:
    """
    Return a rosbags typestore with the ROS 2 standard messages and this package's messages.

    Uses the ROS 2 Jazzy store (sensor_msgs definitions are the same from Humble to Kilted).
    This package's ``msg/*.msg`` are registered when their folder is found; otherwise only the
    standard types are available. The typestore is built once and shared.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    # Older rosbags releases (Humble-era robots) have no Jazzy store; Humble's is equivalent.
    store = getattr(Stores, 'ROS2_JAZZY', None) or Stores.ROS2_HUMBLE
    typestore = get_typestore(store)
    msg_dirs = _find_msg_dirs()
    if msg_dirs:
        definitions = {}
        for path in sorted(msg_dirs[0].glob('*.msg')):
            name = f'{PACKAGE_NAME}/msg/{path.stem}'
            definitions.update(get_types_from_msg(path.read_text(encoding='utf-8'), name))
        typestore.register(definitions)
    return typestore


def _rosbags_lookup(name: str) -> type:
    try:
        return package_typestore().types[name]
    except KeyError:
        raise KeyError(f'message type {name!r} is not in the rosbags typestore') from None


@functools.cache
def rosbags_types() -> MessageTypes:
    """Return message classes from ``package_typestore()`` (the default for writers)."""
    return MessageTypes('rosbags', _rosbags_lookup)


def _rclpy_lookup(name: str) -> type:
    package, interface, type_name = name.split('/')
    module = importlib.import_module(f'{package}.{interface}')
    return getattr(module, type_name)


@functools.cache
def rclpy_types() -> MessageTypes:
    """
    Return message classes of the ROS 2 Python message packages (``sensor_msgs.msg``, ...).

    The packages are imported on first use of a type; rclpy itself is not imported.
    """
    return MessageTypes('rclpy', _rclpy_lookup)


def _types_or_default(types: Optional[MessageTypes]) -> MessageTypes:
    return rosbags_types() if types is None else types


# ---------------------------------------------------------------------------------------------
# Time and header
# ---------------------------------------------------------------------------------------------


def stamp_to_ns(stamp: Any) -> int:
    """Return a ``builtin_interfaces/Time`` (anything with sec and nanosec) as nanoseconds."""
    try:
        sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    except AttributeError:
        raise ConversionError(f'stamp {stamp!r} has no sec/nanosec fields') from None
    if not 0 <= nanosec < NS_PER_S:
        raise ConversionError(f'stamp nanosec {nanosec} outside [0, 1e9)')
    return sec * NS_PER_S + nanosec


def ns_to_stamp(ns: int, types: Optional[MessageTypes] = None) -> Any:
    """Return nanoseconds as a ``builtin_interfaces/Time`` message (nanosec always >= 0)."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    if not -(2**31) <= sec < 2**31:
        raise ConversionError(f'stamp {ns} ns does not fit the int32 seconds of a ROS stamp')
    time_type = _types_or_default(types)['builtin_interfaces/msg/Time']
    return time_type(sec=sec, nanosec=nanosec)


def _header(types: MessageTypes, stamp_ns: int, frame_id: str) -> Any:
    header_type = types['std_msgs/msg/Header']
    return header_type(stamp=ns_to_stamp(stamp_ns, types), frame_id=str(frame_id))


def _byte_buffer(data: Any) -> np.ndarray:
    """Return a message's ``data`` field as a flat uint8 array, without copying if possible."""
    if isinstance(data, np.ndarray):
        if data.dtype.itemsize != 1:
            raise ConversionError(f'data must hold bytes, got a {data.dtype} array')
        return data.reshape(-1).view(np.uint8)
    if isinstance(data, (list, tuple)):
        try:
            return np.asarray(data, dtype=np.uint8)
        except (OverflowError, ValueError, TypeError) as err:
            raise ConversionError(f'data is not a sequence of bytes: {err}') from None
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        raise ConversionError(f'data of type {type(data).__name__} is not bytes') from None


def _byte_order(is_bigendian: Any) -> str:
    return '>' if is_bigendian else '<'


# ---------------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoding:
    name: str
    dtype: np.dtype
    channels: int


def _encodings(*specs: tuple) -> dict:
    return {name.lower(): _Encoding(name, np.dtype(code), ch) for name, code, ch in specs}


# Keys are lower-case so 'RGB8' and '16uc1' are understood; messages keep the ROS spelling.
IMAGE_ENCODINGS = _encodings(
    ('rgb8', 'u1', 3),
    ('bgr8', 'u1', 3),
    ('rgba8', 'u1', 4),
    ('bgra8', 'u1', 4),
    ('mono8', 'u1', 1),
    ('mono16', 'u2', 1),
    ('8UC1', 'u1', 1),
    ('8UC3', 'u1', 3),
    ('8UC4', 'u1', 4),
    ('16UC1', 'u2', 1),
    ('32FC1', 'f4', 1),
)

DEPTH_ENCODINGS = ('16UC1', 'mono16', '32FC1')


def _encoding(name: Any) -> _Encoding:
    spec = IMAGE_ENCODINGS.get(str(name).lower())
    if spec is None:
        known = ', '.join(e.name for e in IMAGE_ENCODINGS.values())
        raise ConversionError(f'unsupported encoding {name!r} (supported: {known})')
    return spec


def image_to_numpy(msg: Any) -> np.ndarray:
    """
    Return the pixels of a ``sensor_msgs/Image`` in the message's own encoding.

    Shape (H, W) for one channel, (H, W, C) otherwise; dtype uint8, uint16 or float32 in native
    byte order. Row padding (``step`` > width x pixel size) is dropped and big-endian data is
    byte-swapped.
    """
    spec = _encoding(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ConversionError(f'image has no pixels: width {width}, height {height}')
    pixel_size = spec.dtype.itemsize * spec.channels
    row_bytes = width * pixel_size
    if step < row_bytes:
        raise ConversionError(
            f'step {step} smaller than width x pixel size = {width} x {pixel_size} = {row_bytes}'
        )
    data = _byte_buffer(msg.data)
    if data.size != step * height:
        raise ConversionError(
            f'data length {data.size} does not match step x height = {step} x {height} = '
            f'{step * height}'
        )
    rows = np.ascontiguousarray(data.reshape(height, step)[:, :row_bytes])
    pixels = rows.view(spec.dtype.newbyteorder(_byte_order(msg.is_bigendian)))
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    # astype to the native dtype swaps bytes when needed and always returns an owned copy.
    return pixels.reshape(shape).astype(spec.dtype, copy=True)


def image_to_rgb(msg: Any) -> np.ndarray:
    """
    Return a colour or grey ``sensor_msgs/Image`` as an (H, W, 3) uint8 RGB array.

    bgr8/rgba8/bgra8 are reordered (alpha dropped), mono8/8UC1 repeated over three channels,
    mono16 scaled from 0..65535 to 0..255. 8UC3/8UC4 carry no channel order and are refused.
    """
    spec = _encoding(msg.encoding)
    name = spec.name
    if name in ('16UC1', '32FC1', '8UC3', '8UC4'):
        raise ConversionError(
            f'encoding {name!r} is not a colour image with a known channel order '
            '(expected rgb8, bgr8, rgba8, bgra8, mono8, 8UC1 or mono16)'
        )
    raw = image_to_numpy(msg)
    if name == 'rgb8':
        return raw
    if name == 'bgr8':
        return np.ascontiguousarray(raw[..., ::-1])
    if name == 'rgba8':
        return np.ascontiguousarray(raw[..., :3])
    if name == 'bgra8':
        return np.ascontiguousarray(raw[..., 2::-1])
    if name == 'mono16':
        # Rounded division by 257 maps 0..65535 exactly onto 0..255.
        raw = ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.repeat(raw[..., None], 3, axis=2)


def image_to_depth(msg: Any, depth_scale_mm: float = 0.001) -> np.ndarray:
    """
    Return a depth ``sensor_msgs/Image`` as (H, W) float32 metres, NaN where invalid.

    16UC1/mono16 hold integer millimetres (multiplied by ``depth_scale_mm`` to get metres; 0
    means no reading); 32FC1 holds metres (0, negative, inf and NaN mean no reading). Raises
    ``ConversionError`` when no pixel is valid.
    """
    spec = _encoding(msg.encoding)
    if spec.name not in DEPTH_ENCODINGS:
        raise ConversionError(
            f'encoding {spec.name!r} is not a depth encoding '
            f'(expected {", ".join(DEPTH_ENCODINGS)})'
        )
    if not (math.isfinite(depth_scale_mm) and depth_scale_mm > 0):
        raise ConversionError(f'depth_scale_mm must be positive and finite, got {depth_scale_mm}')
    raw = image_to_numpy(msg)
    if spec.dtype.kind == 'u':
        depth = raw.astype(np.float32) * np.float32(depth_scale_mm)
        depth[raw == 0] = np.nan
    else:
        depth = raw
        with np.errstate(invalid='ignore'):
            depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    if not np.isfinite(depth).any():
        raise ConversionError(
            f'all-invalid depth: none of the {depth.size} pixels holds a reading (0/NaN/inf)'
        )
    return depth


def numpy_to_image(
    array_: np.ndarray,
    encoding: str,
    stamp_ns: int = 0,
    frame_id: str = '',
    types: Optional[MessageTypes] = None,
    step: Optional[int] = None,
    is_bigendian: bool = False,
) -> Any:
    """
    Build a ``sensor_msgs/Image`` from an array laid out as ``encoding`` expects.

    The dtype must match the encoding (uint8 for rgb8/mono8..., uint16 for 16UC1/mono16,
    float32 for 32FC1). ``step`` larger than the minimal row size pads every row with zeros;
    ``is_bigendian`` writes multi-byte values big-endian.
    """
    spec = _encoding(encoding)
    pixels = np.asarray(array_)
    if pixels.dtype.kind != spec.dtype.kind or pixels.dtype.itemsize != spec.dtype.itemsize:
        raise ConversionError(
            f'array dtype {pixels.dtype} does not match encoding {spec.name!r} ({spec.dtype})'
        )
    if spec.channels == 1 and pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    expected_ndim = 2 if spec.channels == 1 else 3
    if pixels.ndim != expected_ndim or (expected_ndim == 3 and pixels.shape[2] != spec.channels):
        raise ConversionError(
            f'array shape {pixels.shape} does not fit encoding {spec.name!r} '
            f'({spec.channels} channel(s))'
        )
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ConversionError(f'image has no pixels: shape {pixels.shape}')
    row_bytes = width * spec.channels * spec.dtype.itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ConversionError(
            f'step {step} smaller than width x pixel size = {width} x '
            f'{spec.channels * spec.dtype.itemsize} = {row_bytes}'
        )
    wire_dtype = spec.dtype.newbyteorder(_byte_order(is_bigendian))
    ordered = np.ascontiguousarray(pixels, dtype=wire_dtype)
    data = np.zeros((height, step), dtype=np.uint8)
    data[:, :row_bytes] = ordered.view(np.uint8).reshape(height, row_bytes)
    types = _types_or_default(types)
    return types['sensor_msgs/msg/Image'](
        header=_header(types, stamp_ns, frame_id),
        height=height,
        width=width,
        encoding=spec.name,
        is_bigendian=int(bool(is_bigendian)),
        step=step,
        data=types.uint8_array(data),
    )


# ---------------------------------------------------------------------------------------------
# CameraInfo
# ---------------------------------------------------------------------------------------------


def camera_info_to_intrinsics(msg: Any, rectified: bool = False) -> CameraIntrinsics:
    """
    Return the intrinsics of the image a ``sensor_msgs/CameraInfo`` describes.

    Raw (distorted) images use K; rectified images (``image_rect``) use P, as image_geometry
    does. Binning divides focal length and principal point (0 and 1 mean no binning); a
    non-zero ROI shifts the principal point and sets the image size (REP 104).
    """
    name = 'P' if rectified else 'K'
    values = np.asarray(msg.p if rectified else msg.k, dtype=np.float64).reshape(-1)
    expected = 12 if rectified else 9
    if values.size != expected:
        raise ConversionError(f'CameraInfo {name} has {values.size} values, expected {expected}')
    if rectified:
        fx, fy, cx, cy = values[0], values[5], values[2], values[6]
    else:
        fx, fy, cx, cy = values[0], values[4], values[2], values[5]
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)):
        raise ConversionError(
            f'non-finite intrinsics in CameraInfo {name}: fx={fx}, fy={fy}, cx={cx}, cy={cy}'
        )
    if fx == 0 or fy == 0:
        hint = 'the camera is not calibrated'
        if rectified:
            hint += ', or the image is raw (use rectified=False to read K)'
        raise ConversionError(f'zero focal length in CameraInfo {name} (fx={fx}, fy={fy}): {hint}')
    width, height = int(msg.width), int(msg.height)
    roi = getattr(msg, 'roi', None)
    if roi is not None and int(roi.width) > 0 and int(roi.height) > 0:
        cx -= int(roi.x_offset)
        cy -= int(roi.y_offset)
        width, height = int(roi.width), int(roi.height)
    binning_x = max(int(getattr(msg, 'binning_x', 0)), 1)
    binning_y = max(int(getattr(msg, 'binning_y', 0)), 1)
    if width <= 0 or height <= 0:
        raise ConversionError(f'CameraInfo image size must be positive, got {width} x {height}')
    return CameraIntrinsics(
        fx=fx / binning_x,
        fy=fy / binning_y,
        cx=cx / binning_x,
        cy=cy / binning_y,
        width=width // binning_x,
        height=height // binning_y,
    )


def intrinsics_to_camera_info(
    intr: CameraIntrinsics,
    stamp_ns: int = 0,
    frame_id: str = '',
    types: Optional[MessageTypes] = None,
) -> Any:
    """Build a ``sensor_msgs/CameraInfo`` of an undistorted camera (plumb_bob, zero D)."""
    types = _types_or_default(types)
    k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    roi = types['sensor_msgs/msg/RegionOfInterest'](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return types['sensor_msgs/msg/CameraInfo'](
        header=_header(types, stamp_ns, frame_id),
        height=intr.height,
        width=intr.width,
        distortion_model='plumb_bob',
        d=types.float64_array(np.zeros(5)),
        k=types.float64_array(k),
        r=types.float64_array(np.eye(3)),
        p=types.float64_array(p),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


# ---------------------------------------------------------------------------------------------
# PointCloud2
# ---------------------------------------------------------------------------------------------

# sensor_msgs/PointField datatype constants -> numpy dtype (byte order applied per message).
POINT_FIELD_DTYPES = {
    1: np.dtype('i1'),
    2: np.dtype('u1'),
    3: np.dtype('i2'),
    4: np.dtype('u2'),
    5: np.dtype('i4'),
    6: np.dtype('u4'),
    7: np.dtype('f4'),
    8: np.dtype('f8'),
}
POINT_FIELD_NAMES = {
    1: 'INT8',
    2: 'UINT8',
    3: 'INT16',
    4: 'UINT16',
    5: 'INT32',
    6: 'UINT32',
    7: 'FLOAT32',
    8: 'FLOAT64',
}
UINT8 = 2
INT32 = 5
UINT32 = 6
FLOAT32 = 7
FLOAT64 = 8


@dataclass(frozen=True)
class _CloudLayout:
    height: int
    width: int
    point_step: int
    row_step: int
    order: str
    fields: dict


def _cloud_layout(msg: Any) -> _CloudLayout:
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height * width == 0:
        raise ConversionError(f'empty cloud: 0 points (width {width}, height {height})')
    fields = {}
    for field in msg.fields:
        datatype = int(field.datatype)
        if datatype not in POINT_FIELD_DTYPES:
            raise ConversionError(f'field {field.name!r} has unknown datatype {datatype}')
        end = int(field.offset) + POINT_FIELD_DTYPES[datatype].itemsize
        if end > point_step:
            raise ConversionError(
                f'field {field.name!r} ends at byte {end}, beyond point_step {point_step}'
            )
        fields[str(field.name)] = (int(field.offset), datatype)
    if row_step < width * point_step:
        raise ConversionError(
            f'row_step {row_step} smaller than width x point_step = {width} x {point_step} = '
            f'{width * point_step}'
        )
    return _CloudLayout(height, width, point_step, row_step, _byte_order(msg.is_bigendian), fields)


def _field_view(data: np.ndarray, layout: _CloudLayout, name: str, dtype: np.dtype) -> np.ndarray:
    """Return an (H, W) strided view of one field, read as ``dtype`` in the cloud's order."""
    offset = layout.fields[name][0]
    return np.ndarray(
        shape=(layout.height, layout.width),
        dtype=dtype.newbyteorder(layout.order),
        buffer=data,
        offset=offset,
        strides=(layout.row_step, layout.point_step),
    )


def _cloud_rgb(data: np.ndarray, layout: _CloudLayout) -> np.ndarray:
    """Return (H, W, 3) uint8 colours from packed 'rgb'/'rgba' or separate 'r', 'g', 'b'."""
    for name in ('rgb', 'rgba'):
        if name in layout.fields:
            datatype = layout.fields[name][1]
            if datatype not in (FLOAT32, UINT32, INT32):
                raise ConversionError(
                    f'packed colour field {name!r} has datatype {POINT_FIELD_NAMES[datatype]}; '
                    'expected FLOAT32, UINT32 or INT32'
                )
            # PCL packs 0x(AA)RRGGBB into 4 bytes; a FLOAT32 field only reinterprets the bits.
            packed = _field_view(data, layout, name, np.dtype('u4')).astype(np.uint32)
            channels = [(packed >> shift) & 0xFF for shift in (16, 8, 0)]
            return np.stack(channels, axis=-1).astype(np.uint8)
    if all(name in layout.fields for name in 'rgb'):
        channels = []
        for name in 'rgb':
            if layout.fields[name][1] != UINT8:
                raise ConversionError(f'colour field {name!r} must be UINT8')
            channels.append(_field_view(data, layout, name, np.dtype('u1')))
        return np.stack(channels, axis=-1).astype(np.uint8)
    raise ConversionError(
        f"with_rgb=True but the cloud has no 'rgb' or 'rgba' field "
        f'(fields: {", ".join(layout.fields)})'
    )


def pointcloud2_to_numpy(
    msg: Any,
    with_rgb: bool = False,
    skip_invalid: bool = True,
    keep_organized: bool = False,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """
    Return ``(xyz, rgb)`` of a ``sensor_msgs/PointCloud2``.

    ``xyz`` is float32 (N, 3), or (H, W, 3) with ``keep_organized`` (invalid points set to
    NaN there). ``rgb`` is uint8 with the same leading shape when ``with_rgb``, else None.
    x/y/z may be FLOAT32 or FLOAT64 at any offsets, among any other fields, with any
    ``point_step``/``row_step`` padding and either byte order. ``skip_invalid`` drops points
    with a NaN/inf coordinate (checked always: ``is_dense`` is not trusted). Raises
    ``ConversionError`` for missing x/y/z, a data length mismatch or an empty cloud (no points
    or no finite point).
    """
    layout = _cloud_layout(msg)
    missing = [axis for axis in 'xyz' if axis not in layout.fields]
    if missing:
        raise ConversionError(
            f'missing {"/".join(missing)} field(s) (fields: {", ".join(layout.fields) or "none"})'
        )
    data = _byte_buffer(msg.data)
    expected = layout.row_step * layout.height
    if data.size != expected:
        raise ConversionError(
            f'data length {data.size} does not match row_step x height = {layout.row_step} x '
            f'{layout.height} = {expected}'
        )
    axes = []
    for axis in 'xyz':
        datatype = layout.fields[axis][1]
        if datatype not in (FLOAT32, FLOAT64):
            raise ConversionError(
                f'field {axis!r} has datatype {POINT_FIELD_NAMES[datatype]}; '
                'expected FLOAT32 or FLOAT64'
            )
        axes.append(_field_view(data, layout, axis, POINT_FIELD_DTYPES[datatype]))
    xyz = np.stack(axes, axis=-1).astype(np.float32)
    rgb = _cloud_rgb(data, layout) if with_rgb else None
    valid = np.isfinite(xyz).all(axis=-1)
    if not valid.any():
        raise ConversionError(f'empty cloud: none of the {valid.size} points is finite')
    if keep_organized:
        xyz[~valid] = np.nan
        return xyz, rgb
    xyz = xyz.reshape(-1, 3)
    rgb = None if rgb is None else rgb.reshape(-1, 3)
    if skip_invalid:
        keep = valid.reshape(-1)
        xyz = xyz[keep]
        rgb = None if rgb is None else rgb[keep]
    return xyz, rgb


def numpy_to_pointcloud2(
    points: np.ndarray,
    rgb: Optional[np.ndarray] = None,
    stamp_ns: int = 0,
    frame_id: str = '',
    types: Optional[MessageTypes] = None,
    organized_shape: Optional[tuple[int, int]] = None,
) -> Any:
    """
    Build a little-endian ``sensor_msgs/PointCloud2`` with FLOAT32 x, y, z (and packed rgb).

    ``points`` is (N, 3) or organized (H, W, 3); ``organized_shape=(H, W)`` lays N = H x W
    points out as an organized cloud. ``rgb`` (uint8, same leading shape) is packed as
    0x00RRGGBB in a FLOAT32 'rgb' field, the layout RViz and PCL read.
    """
    xyz = np.asarray(points)
    if xyz.ndim not in (2, 3) or xyz.shape[-1] != 3 or xyz.dtype.kind not in 'fiu':
        raise ConversionError(f'points must be numeric (N, 3) or (H, W, 3), got {xyz.shape}')
    height, width = (1, xyz.shape[0]) if xyz.ndim == 2 else xyz.shape[:2]
    if organized_shape is not None:
        height, width = (int(v) for v in organized_shape)
        if height * width != xyz.size // 3:
            raise ConversionError(
                f'organized_shape {organized_shape} does not hold {xyz.size // 3} points'
            )
    if height * width == 0:
        raise ConversionError('empty cloud: 0 points')
    xyz = xyz.reshape(height, width, 3).astype(np.float32)
    fields = [('x', 0), ('y', 4), ('z', 8)]
    if rgb is not None:
        colours = np.asarray(rgb)
        if colours.dtype != np.uint8 or colours.size != xyz.size:
            raise ConversionError(
                f'rgb must be uint8 with one colour per point, got {colours.dtype} '
                f'{colours.shape} for {height * width} points'
            )
        colours = colours.reshape(height, width, 3).astype(np.uint32)
        packed = (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]
        fields.append(('rgb', 12))
    point_step = 4 * len(fields)
    record = np.zeros((height, width, len(fields)), dtype='<u4')
    record[..., :3] = xyz.astype('<f4').view('<u4')
    if rgb is not None:
        record[..., 3] = packed
    types = _types_or_default(types)
    field_type = types['sensor_msgs/msg/PointField']
    return types['sensor_msgs/msg/PointCloud2'](
        header=_header(types, stamp_ns, frame_id),
        height=height,
        width=width,
        fields=[field_type(name=n, offset=o, datatype=FLOAT32, count=1) for n, o in fields],
        is_bigendian=False,
        point_step=point_step,
        row_step=point_step * width,
        data=types.uint8_array(record.view(np.uint8)),
        is_dense=bool(np.isfinite(xyz).all()),
    )


# ---------------------------------------------------------------------------------------------
# Depth back-projection
# ---------------------------------------------------------------------------------------------


def depth_to_points(
    depth_m: np.ndarray,
    intrinsics: CameraIntrinsics,
    stride: int = 1,
    organized: bool = False,
) -> np.ndarray:
    """
    Back-project a depth image (metres) into camera-frame points, float32.

    X = (u - cx) z / fx, Y = (v - cy) z / fy, Z = z for every ``stride``-th pixel in u and v.
    Returns (N, 3) valid points, or (H', W', 3) with NaN at invalid pixels when ``organized``.
    Invalid pixels are non-finite or <= 0. Raises ``ConversionError`` when the depth size does
    not match the intrinsics or no sampled pixel is valid.
    """
    depth = np.asarray(depth_m)
    if depth.ndim != 2 or depth.dtype.kind != 'f':
        raise ConversionError(
            f'depth must be a float (H, W) array in metres, got {depth.dtype} {depth.shape}'
        )
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ConversionError(
            f'depth size {depth.shape[1]} x {depth.shape[0]} does not match intrinsics '
            f'{intrinsics.width} x {intrinsics.height}; use intrinsics.scaled()'
        )
    if int(stride) != stride or stride < 1:
        raise ConversionError(f'stride must be a positive integer, got {stride}')
    stride = int(stride)
    z = depth[::stride, ::stride].astype(np.float32)
    with np.errstate(invalid='ignore'):
        valid = np.isfinite(z) & (z > 0)
    if not valid.any():
        raise ConversionError('all-invalid depth: no sampled pixel holds a reading')
    u = np.arange(0, depth.shape[1], stride, dtype=np.float32)
    v = np.arange(0, depth.shape[0], stride, dtype=np.float32)
    x = (u[None, :] - np.float32(intrinsics.cx)) * z / np.float32(intrinsics.fx)
    y = (v[:, None] - np.float32(intrinsics.cy)) * z / np.float32(intrinsics.fy)
    points = np.stack([x, y, z], axis=-1)
    if organized:
        points[~valid] = np.nan
        return points
    return points[valid]
