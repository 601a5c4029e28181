"""
Action-chunk errors: per-dimension MAE, translation and rotation error, gripper agreement.

Actions are end-effector deltas ``dx dy dz droll dpitch dyaw gripper`` (metres, radians, and a
gripper command where > 0.5 means closed). A predicted chunk (H x 7) is compared with a
reference chunk (another configuration's prediction, or the actions recorded in the bag) over
the steps both have; a reference value that is unknown (a TwistStamped has no gripper and one
step only) is NaN and left out. Over a set of observations every compared (observation, step)
pair counts once:

- ``mae[d]``: mean |predicted - reference| of dimension d;
- ``translation_error``: mean Euclidean norm of the dx dy dz difference (m);
- ``rotation_error``: mean angle of the rotation between the two droll dpitch dyaw deltas (rad),
  read as fixed-axis roll, pitch, yaw (R = Rz(yaw) Ry(pitch) Rx(roll), the ROS convention);
- ``gripper_agreement``: fraction of pairs where both say closed or both say open.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

ACTION_NAMES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
ACTION_UNITS = ('m', 'm', 'm', 'rad', 'rad', 'rad', '')
ACTION_DIM = len(ACTION_NAMES)
GRIPPER_THRESHOLD = 0.5


def rpy_to_quaternion(rpy: np.ndarray) -> np.ndarray:
    """Return fixed-axis roll, pitch, yaw (..., 3) as unit quaternions (..., 4), x y z w."""
    rpy = np.asarray(rpy, dtype=np.float64)
    half = rpy / 2.0
    cr, cp, cy = np.cos(half[..., 0]), np.cos(half[..., 1]), np.cos(half[..., 2])
    sr, sp, sy = np.sin(half[..., 0]), np.sin(half[..., 1]), np.sin(half[..., 2])
    return np.stack(
        [
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy,
        ],
        axis=-1,
    )


def rotation_angle(rpy_a: np.ndarray, rpy_b: np.ndarray) -> np.ndarray:
    """
    Return the angle (rad, in [0, pi]) of the rotation taking ``rpy_a`` to ``rpy_b``.

    Computed from the quaternion of the relative rotation as 2 atan2(|v|, |w|), which stays
    accurate for the small angles of one control step (arccos of the trace does not).
    """
    qa, qb = rpy_to_quaternion(rpy_a), rpy_to_quaternion(rpy_b)
    # Vector and scalar parts of conj(qa) * qb.
    va, wa = -qa[..., :3], qa[..., 3:]
    vb, wb = qb[..., :3], qb[..., 3:]
    vector = wa * vb + wb * va + np.cross(va, vb)
    scalar = wa[..., 0] * wb[..., 0] - np.sum(va * vb, axis=-1)
    return 2.0 * np.arctan2(np.linalg.norm(vector, axis=-1), np.abs(scalar))


@dataclass
class ActionErrors:
    """
    Errors of predictions against references (None where nothing could be compared).

    ``observations`` counts observations with a reference, ``pairs`` the (observation, chunk
    step) pairs compared.
    """

    mae: list[Optional[float]]
    translation_error: Optional[float]
    rotation_error: Optional[float]
    gripper_agreement: Optional[float]
    observations: int
    pairs: int

    def to_dict(self) -> dict:
        """JSON-friendly dict; ``mae`` also by name."""
        data = asdict(self)
        data['mae_by_name'] = dict(zip(ACTION_NAMES, self.mae))
        return data


def align(predicted: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    Return both chunks cut to their common steps and padded to 7 values (NaN where missing).

    ``predicted`` is (H, D) and ``reference`` (H', D'); the result is two (min(H, H'), 7)
    float64 arrays.
    """
    predicted = np.atleast_2d(np.asarray(predicted, dtype=np.float64))
    reference = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    steps = min(len(predicted), len(reference))
    out = []
    for chunk in (predicted, reference):
        padded = np.full((steps, ACTION_DIM), np.nan)
        dims = min(chunk.shape[1], ACTION_DIM)
        padded[:, :dims] = chunk[:steps, :dims]
        out.append(padded)
    return out[0], out[1]


def _mean(values: np.ndarray) -> Optional[float]:
    return float(np.mean(values)) if values.size else None


def action_errors(
    predicted: Sequence[np.ndarray],
    references: Sequence[Optional[np.ndarray]],
    gripper_threshold: float = GRIPPER_THRESHOLD,
) -> ActionErrors:
    """
    Compare predicted chunks with reference chunks, observation by observation.

    ``references[i]`` may be None (no reference for observation i). See the module docstring
    for the definitions.
    """
    if len(predicted) != len(references):
        raise ValueError(
            f'{len(predicted)} predictions but {len(references)} references: one per observation'
        )
    rows_p, rows_r = [], []
    observations = 0
    for chunk, reference in zip(predicted, references):
        if reference is None:
            continue
        p, r = align(chunk, reference)
        if not np.isfinite(r).any():
            continue
        observations += 1
        rows_p.append(p)
        rows_r.append(r)
    if not rows_p:
        return ActionErrors([None] * ACTION_DIM, None, None, None, 0, 0)
    p, r = np.concatenate(rows_p), np.concatenate(rows_r)
    known = np.isfinite(r)
    difference = np.abs(p - r)
    mae = [_mean(difference[known[:, d], d]) for d in range(ACTION_DIM)]
    xyz = known[:, :3].all(axis=1)
    rotation = known[:, 3:6].all(axis=1)
    gripper = known[:, 6]
    return ActionErrors(
        mae=mae,
        translation_error=_mean(np.linalg.norm(p[xyz, :3] - r[xyz, :3], axis=1)),
        rotation_error=_mean(rotation_angle(p[rotation, 3:6], r[rotation, 3:6])),
        gripper_agreement=_mean(
            ((p[gripper, 6] > gripper_threshold) == (r[gripper, 6] > gripper_threshold)).astype(
                np.float64
            )
        ),
        observations=observations,
        pairs=int(known.any(axis=1).sum()),
    )
