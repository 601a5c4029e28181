"""
Pinhole camera geometry: intrinsics (image pixels to camera-frame 3D points) and a camera's pose.

Pixel convention (the one ROS CameraInfo uses): integer pixel coordinates name pixel
centres, so the centre of a W-pixel-wide image lies at u = (W - 1) / 2. Camera frame: x right,
y down, z forward (optical frame), metres.
"""

from dataclasses import dataclass
import math

import numpy as np


def _conversion_error(message: str) -> ValueError:
    # convert.py defines the error type and imports this module, so import it late.
    from vla_pruned_ros.convert import ConversionError

    return ConversionError(message)


@dataclass(frozen=True)
class CameraIntrinsics:
    """
    Focal lengths and principal point, in pixels, of an image of ``width`` x ``height``.

    Raises ``ConversionError`` on construction when a value is not finite, a focal length is
    zero or the image size is not positive.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        # Store plain Python numbers, whatever the caller passed (numpy scalars, ints).
        for name in ('fx', 'fy', 'cx', 'cy'):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ('width', 'height'):
            value = getattr(self, name)
            if int(value) != value:
                raise _conversion_error(f'intrinsics {name} must be a whole number, got {value}')
            object.__setattr__(self, name, int(value))
        values = {'fx': self.fx, 'fy': self.fy, 'cx': self.cx, 'cy': self.cy}
        bad = [f'{name}={value}' for name, value in values.items() if not math.isfinite(value)]
        if bad:
            raise _conversion_error(f'non-finite intrinsics: {", ".join(bad)}')
        if self.fx == 0 or self.fy == 0:
            raise _conversion_error(
                f'zero focal length (fx={self.fx}, fy={self.fy}): is the camera calibrated?'
            )
        if self.width <= 0 or self.height <= 0:
            raise _conversion_error(
                f'intrinsics image size must be positive, got {self.width} x {self.height}'
            )

    def matrix(self) -> np.ndarray:
        """Return the 3x3 camera matrix K as float64."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
            dtype=np.float64,
        )

    def project(self, points_xyz: np.ndarray) -> np.ndarray:
        """
        Project camera-frame points (..., 3) to pixel coordinates (..., 2) as (u, v).

        Points with z <= 0 (behind the camera) or non-finite coordinates give NaN. Pixels are not
        clipped to the image; callers decide what to do with points outside it.
        """
        points = np.asarray(points_xyz, dtype=np.float64)
        if points.ndim == 0 or points.shape[-1] != 3:
            raise _conversion_error(f'points must have shape (N, 3), got {points.shape}')
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        in_front = np.isfinite(points).all(axis=-1) & (z > 0)
        safe_z = np.where(in_front, z, 1.0)
        u = np.where(in_front, self.fx * x / safe_z + self.cx, np.nan)
        v = np.where(in_front, self.fy * y / safe_z + self.cy, np.nan)
        return np.stack([u, v], axis=-1)

    def scaled(self, width: int, height: int) -> 'CameraIntrinsics':
        """
        Return the intrinsics of this image resized to ``width`` x ``height``.

        Resizing maps pixel edges onto pixel edges (as cv2.resize does), so the principal point
        moves as (c + 0.5) * scale - 0.5 under the pixel-centre convention.
        """
        if int(width) <= 0 or int(height) <= 0:
            raise _conversion_error(f'target size must be positive, got {width} x {height}')
        sx = width / self.width
        sy = height / self.height
        return CameraIntrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=int(width),
            height=int(height),
        )

    @classmethod
    def from_fov(cls, width: int, height: int, fovy_deg: float) -> 'CameraIntrinsics':
        """
        Build intrinsics of an ideal camera from its vertical field of view (MuJoCo, OpenGL).

        Pixels are square (fx = fy) and the principal point is the image centre.
        """
        if not 0.0 < fovy_deg < 180.0:
            raise _conversion_error(f'fovy_deg must lie in (0, 180), got {fovy_deg}')
        focal = 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)
        return cls(
            fx=focal,
            fy=focal,
            cx=(width - 1) / 2.0,
            cy=(height - 1) / 2.0,
            width=int(width),
            height=int(height),
        )


def look_at_pose(
    position: 'tuple[float, float, float]', target: 'tuple[float, float, float]'
) -> np.ndarray:
    """
    Return the 4 x 4 pose of a camera optical frame at ``position`` looking at ``target``.

    The optical axes are x right, y down, z forward; with no roll, x stays horizontal (world z
    is up). Raises ``ValueError`` for a camera looking straight up or down (roll undefined).
    """
    forward = np.subtract(target, position).astype(np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError('a camera looking straight up or down has no defined roll')
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    pose[:3, 3] = position
    return pose
