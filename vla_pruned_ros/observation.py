"""
Observation: everything the policy sees at one instant, as numpy arrays.

Built from synchronised sensor messages (live topics, bags) or straight from a simulator, and
the only input of ``Policy.step``.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from vla_pruned_ros.camera import CameraIntrinsics
from vla_pruned_ros.convert import ConversionError, depth_to_points

# A pose quaternion further than this from unit norm is treated as garbage, not as rounding.
QUATERNION_NORM_TOLERANCE = 1e-2


@dataclass
class Observation:
    """
    One synchronised observation.

    - ``rgb``: (H, W, 3) uint8, RGB order.
    - ``depth``: (H, W) float32 metres registered to ``rgb``, NaN where invalid; or None.
    - ``points``: (N, 3) float32 camera-frame (optical) metres, all finite; or None.
    - ``intrinsics``: of the ``rgb`` image (and of ``depth``, which is registered to it).
    - ``stamp_ns``: sensor time of the rgb image, nanoseconds.
    - ``instruction``: the language instruction.
    - ``ee_pose``: (7,) x y z qx qy qz qw of the end effector, or None.
    - ``joint_state``: (J,) joint positions, or None.
    - ``frame_id``: camera optical frame of ``points`` and ``depth``.
    """

    rgb: np.ndarray
    depth: Optional[np.ndarray] = None
    points: Optional[np.ndarray] = None
    intrinsics: Optional[CameraIntrinsics] = None
    stamp_ns: int = 0
    instruction: str = ''
    ee_pose: Optional[np.ndarray] = None
    joint_state: Optional[np.ndarray] = None
    frame_id: str = ''

    @property
    def image_size(self) -> tuple[int, int]:
        """Return (width, height) of the rgb image."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    def cloud(self, stride: int = 1) -> np.ndarray:
        """
        Return the 3D points of this observation, (N, 3) float32 in the camera frame.

        ``points`` when set, else the back-projection of ``depth`` through ``intrinsics``
        (every ``stride``-th pixel). Raises ``ConversionError`` when neither is usable.
        """
        if self.points is not None:
            return np.asarray(self.points, dtype=np.float32)
        if self.depth is None or self.intrinsics is None:
            raise ConversionError(
                'observation has no 3D input: neither points nor depth with intrinsics '
                f'(depth {"set" if self.depth is not None else "missing"}, intrinsics '
                f'{"set" if self.intrinsics is not None else "missing"})'
            )
        return depth_to_points(self.depth, self.intrinsics, stride=stride)

    def validate(self) -> None:
        """
        Check shapes, dtypes and values; raise ``ConversionError`` naming the first problem.

        Rules: rgb (H, W, 3) uint8 with H, W > 0; depth float (H, W), same size as rgb;
        points (N >= 1, 3) float and finite; intrinsics of the rgb image size; ee_pose 7 finite
        values with a unit quaternion; joint_state 1-D finite; stamp_ns an integer;
        instruction and frame_id strings.
        """
        width, height = _check_rgb(self.rgb)
        if self.depth is not None:
            _check_depth(self.depth, width, height)
        if self.points is not None:
            _check_points(self.points)
        if self.intrinsics is not None:
            _check_intrinsics(self.intrinsics, width, height)
        if self.ee_pose is not None:
            pose = _finite_vector('ee_pose', self.ee_pose)
            if pose.shape != (7,):
                raise ConversionError(
                    f'ee_pose must be 7 values (x y z qx qy qz qw), got shape {pose.shape}'
                )
            norm = float(np.linalg.norm(pose[3:]))
            if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
                raise ConversionError(f'ee_pose quaternion is not unit length (norm {norm:.4f})')
        if self.joint_state is not None:
            _finite_vector('joint_state', self.joint_state)
        if isinstance(self.stamp_ns, bool) or not isinstance(self.stamp_ns, (int, np.integer)):
            raise ConversionError(
                f'stamp_ns must be an integer, got {type(self.stamp_ns).__name__}'
            )
        for name in ('instruction', 'frame_id'):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ConversionError(f'{name} must be a string, got {type(value).__name__}')


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f'{value.dtype} array of shape {value.shape}'
    return type(value).__name__


def _check_rgb(rgb: object) -> tuple[int, int]:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConversionError(f'rgb must be an (H, W, 3) array, got {_describe(rgb)}')
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ConversionError(f'rgb has no pixels: shape {rgb.shape}')
    if rgb.dtype != np.uint8:
        # Float images (possibly NaN) would silently change the encoder's input scale.
        raise ConversionError(f'rgb must be uint8 0..255, got {rgb.dtype}')
    return int(rgb.shape[1]), int(rgb.shape[0])


def _check_depth(depth: object, width: int, height: int) -> None:
    if not isinstance(depth, np.ndarray) or depth.ndim != 2 or depth.dtype.kind != 'f':
        raise ConversionError(
            f'depth must be a float (H, W) array in metres, got {_describe(depth)}'
        )
    if depth.shape != (height, width):
        raise ConversionError(
            f'depth size {depth.shape[1]} x {depth.shape[0]} does not match rgb size '
            f'{width} x {height}'
        )


def _check_points(points: object) -> None:
    if (
        not isinstance(points, np.ndarray)
        or points.ndim != 2
        or points.shape[1] != 3
        or points.dtype.kind != 'f'
    ):
        raise ConversionError(f'points must be a float (N, 3) array, got {_describe(points)}')
    if points.shape[0] == 0:
        raise ConversionError('empty cloud: points has 0 rows')
    if not np.isfinite(points).all():
        raise ConversionError('points contain NaN or inf')


def _check_intrinsics(intr: object, width: int, height: int) -> None:
    if not isinstance(intr, CameraIntrinsics):
        raise ConversionError(f'intrinsics must be CameraIntrinsics, got {_describe(intr)}')
    if (intr.width, intr.height) != (width, height):
        raise ConversionError(
            f'intrinsics size {intr.width} x {intr.height} does not match rgb size '
            f'{width} x {height}; use intrinsics.scaled()'
        )


def _finite_vector(name: str, value: object) -> np.ndarray:
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConversionError(f'{name} must be numeric, got {_describe(value)}') from None
    if vector.ndim != 1 or not np.isfinite(vector).all():
        raise ConversionError(
            f'{name} must be a 1-D array of finite values, got {_describe(vector)}'
        )
    return vector
