"""
Action chunk -> the command stream an arm controller reads between two inferences.

A chunk holds H steps of ``dx dy dz droll dpitch dyaw gripper`` predicted from one observation
(world-frame deltas per control period ``dt``, gripper 0 = open .. 1 = closed). Step ``k`` is the
motion planned for ``[stamp + k dt, stamp + (k + 1) dt)`` where ``stamp`` is the observation's
stamp, so a controller polling at its own rate always gets the step planned for *now*, and the
time the inference took is skipped rather than replayed late.

Commands come in two forms:

- twist: velocity = scaled delta / dt, clipped per axis (MoveIt Servo's TwistStamped input);
- pose: target = pose at the observation (+) the scaled, clipped deltas up to step ``k``
  (translations add, rotations compose as world-frame rotations).

When there is no usable chunk (none yet, stale, exhausted, invalidated after a failure) the
stream holds: zero twist, the current pose as target, the last gripper command repeated. A
command is never computed from data older than ``max_age_s``.

ROS-free: the policy node calls this from its control timer; tests drive it directly.
"""

from dataclasses import dataclass, field
import math
import threading
from typing import Optional

import numpy as np

ACTION_DIM = 7
OUTPUT_MODES = ('twist', 'pose')
NS_PER_S = 1_000_000_000


class ActionError(ValueError):
    """A chunk or command setting that cannot be used; the message names the problem."""


def _default_scale() -> tuple:
    return (1.0,) * ACTION_DIM


def _default_limit() -> tuple:
    return (0.25, 0.25, 0.25, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class CommandConfig:
    """
    How chunks become commands.

    - ``output_mode``: 'twist' or 'pose'.
    - ``axis_scale``: 7 factors applied to dx dy dz droll dpitch dyaw gripper.
    - ``axis_limit``: 6 speed limits, m/s for x y z and rad/s for roll pitch yaw; a delta is
      clipped to ``limit x dt`` (in pose mode too, so both modes move equally fast).
    - ``gripper_binary``: send 1.0 (close) when the scaled gripper value exceeds
      ``gripper_threshold``, else 0.0; otherwise send the value clipped to [0, 1].
    - ``max_age_s``: commands come only from chunks whose observation is at most this old.
    """

    output_mode: str = 'twist'
    axis_scale: tuple = field(default_factory=_default_scale)
    axis_limit: tuple = field(default_factory=_default_limit)
    gripper_binary: bool = True
    gripper_threshold: float = 0.5
    max_age_s: float = 0.5

    def __post_init__(self) -> None:
        if self.output_mode not in OUTPUT_MODES:
            raise ActionError(
                f'output_mode must be one of {", ".join(OUTPUT_MODES)}, got {self.output_mode!r}'
            )
        scale = _finite('axis_scale', self.axis_scale, ACTION_DIM)
        limit = _finite('axis_limit', self.axis_limit, ACTION_DIM - 1)
        if (limit <= 0).any():
            raise ActionError(f'axis_limit values must be positive, got {limit.tolist()}')
        if not 0.0 <= self.gripper_threshold <= 1.0:
            raise ActionError(f'gripper_threshold must be in [0, 1], got {self.gripper_threshold}')
        if not (math.isfinite(self.max_age_s) and self.max_age_s > 0):
            raise ActionError(f'max_age_s must be positive, got {self.max_age_s}')
        # Stored as tuples of floats so the config stays hashable and immutable.
        object.__setattr__(self, 'axis_scale', tuple(float(v) for v in scale))
        object.__setattr__(self, 'axis_limit', tuple(float(v) for v in limit))


@dataclass(frozen=True)
class Command:
    """
    One control-period command.

    ``active`` is True when it comes from a chunk; otherwise it holds and ``reason`` says why.
    ``twist`` is (6,) linear m/s + angular rad/s (zeros when holding). ``pose`` is the target
    (7,) x y z qx qy qz qw (pose mode; the hold pose when holding; None when no pose is known).
    ``gripper`` is the gripper command, None until a chunk has set one.
    """

    active: bool
    reason: str
    twist: np.ndarray
    pose: Optional[np.ndarray] = None
    gripper: Optional[float] = None
    chunk_stamp_ns: Optional[int] = None
    step: Optional[int] = None


def _finite(name: str, values: object, size: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ActionError(f'{name} must be {size} numbers, got {values!r}') from None
    if array.size != size:
        raise ActionError(f'{name} must hold {size} values, got {array.size}')
    if not np.isfinite(array).all():
        raise ActionError(f'{name} must be finite, got {array.tolist()}')
    return array


# ---------------------------------------------------------------------------------------------
# Rotations (quaternions x y z w)
# ---------------------------------------------------------------------------------------------


def quaternion_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Quaternion (x y z w) of R = Rz(yaw) Ry(pitch) Rx(roll), rotations about fixed axes."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return np.array([
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
        cr * cp * cy + sr * sp * sy,
    ])


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of quaternions (x y z w): rotate by b, then by a."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


# ---------------------------------------------------------------------------------------------
# Chunk -> per-step commands
# ---------------------------------------------------------------------------------------------


def check_chunk(actions: np.ndarray, dt: float) -> np.ndarray:
    """Return ``actions`` as float64 (H, 7); raise ActionError for a bad shape, NaN/inf or dt."""
    chunk = np.asarray(actions, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != ACTION_DIM:
        raise ActionError(f'action chunk must be (H >= 1, {ACTION_DIM}), got shape {chunk.shape}')
    if not np.isfinite(chunk).all():
        bad = int((~np.isfinite(chunk)).any(axis=1).sum())
        raise ActionError(f'action chunk holds NaN or inf in {bad} of {chunk.shape[0]} steps')
    if not (math.isfinite(dt) and dt > 0):
        raise ActionError(f'chunk dt must be positive, got {dt}')
    return chunk


def scaled_deltas(actions: np.ndarray, dt: float, config: CommandConfig) -> np.ndarray:
    """(H, 6) motion deltas per step after per-axis scaling and clipping to ``limit x dt``."""
    chunk = check_chunk(actions, dt)
    deltas = chunk[:, :6] * np.asarray(config.axis_scale[:6])
    bound = np.asarray(config.axis_limit) * dt
    return np.clip(deltas, -bound, bound)


def chunk_to_twists(actions: np.ndarray, dt: float, config: CommandConfig) -> np.ndarray:
    """(H, 6) velocities: scaled, clipped delta / dt (m/s, rad/s)."""
    return scaled_deltas(actions, dt, config) / dt


def chunk_to_pose_targets(
    actions: np.ndarray, dt: float, start_pose: np.ndarray, config: CommandConfig
) -> np.ndarray:
    """
    (H, 7) pose targets x y z qx qy qz qw: ``start_pose`` (+) the deltas of steps 0..k.

    Translations add in the world frame; each step's droll dpitch dyaw is a world-frame rotation
    applied after the previous target's orientation.
    """
    pose = _finite('start_pose', start_pose, 7)
    norm = float(np.linalg.norm(pose[3:]))
    if abs(norm - 1.0) > 1e-2:
        raise ActionError(f'start_pose quaternion is not unit length (norm {norm:.4f})')
    deltas = scaled_deltas(actions, dt, config)
    position, orientation = pose[:3].copy(), pose[3:] / norm
    targets = np.empty((len(deltas), 7))
    for k, delta in enumerate(deltas):
        position = position + delta[:3]
        orientation = quaternion_multiply(quaternion_from_rpy(*delta[3:]), orientation)
        orientation /= np.linalg.norm(orientation)
        targets[k, :3], targets[k, 3:] = position, orientation
    return targets


def gripper_commands(actions: np.ndarray, config: CommandConfig) -> np.ndarray:
    """(H,) gripper commands in [0, 1]: scaled, then binarised or clipped."""
    values = np.asarray(actions, dtype=np.float64)[:, ACTION_DIM - 1] * config.axis_scale[-1]
    if config.gripper_binary:
        return (values > config.gripper_threshold).astype(np.float64)
    return np.clip(values, 0.0, 1.0)


@dataclass(frozen=True)
class _Chunk:
    stamp_ns: int
    dt: float
    twists: np.ndarray
    poses: Optional[np.ndarray]
    grippers: np.ndarray


class CommandStream:
    """
    The current chunk and the command for any instant (thread-safe).

    The inference worker calls :meth:`set_chunk` or :meth:`invalidate`; the control timer calls
    :meth:`command` at its own rate.
    """

    def __init__(self, config: Optional[CommandConfig] = None) -> None:
        self._config = config or CommandConfig()
        self._lock = threading.Lock()
        self._chunk: Optional[_Chunk] = None
        self._raw: Optional[tuple] = None  # (actions, stamp_ns, dt, start_pose) to rebuild
        self._hold_reason = 'no action chunk yet'
        self._last_gripper: Optional[float] = None
        self._last_pose: Optional[np.ndarray] = None

    @property
    def config(self) -> CommandConfig:
        """Return the active configuration."""
        with self._lock:
            return self._config

    def configure(self, config: CommandConfig) -> None:
        """Use ``config`` from now on; the current chunk is re-derived with it."""
        with self._lock:
            self._config = config
            if self._raw is not None:
                self._chunk = self._build(*self._raw)

    def set_chunk(
        self,
        actions: np.ndarray,
        stamp_ns: int,
        dt: float,
        start_pose: Optional[np.ndarray] = None,
    ) -> None:
        """
        Replace the current chunk with one predicted from the observation at ``stamp_ns``.

        ``start_pose`` is the end-effector pose at that observation (needed for pose output).
        Raises ActionError (and keeps holding) for NaN/inf values or a bad shape or dt.
        """
        try:
            chunk = check_chunk(actions, dt)
            if start_pose is not None:
                start_pose = _finite('start_pose', start_pose, 7)
            with self._lock:
                built = self._build(chunk, int(stamp_ns), float(dt), start_pose)
                self._chunk, self._raw = built, (chunk, int(stamp_ns), float(dt), start_pose)
        except ActionError as err:
            self.invalidate(f'invalid action chunk: {err}')
            raise

    def invalidate(self, reason: str) -> None:
        """Drop the current chunk: commands hold until the next chunk, reporting ``reason``."""
        with self._lock:
            self._chunk, self._raw = None, None
            self._hold_reason = reason

    def command(self, now_ns: int, current_pose: Optional[np.ndarray] = None) -> Command:
        """
        Return the command for time ``now_ns`` (same clock as the observation stamps).

        ``current_pose`` (x y z qx qy qz qw), the latest measured end-effector pose, is the
        target while holding in pose mode.
        """
        with self._lock:
            config, chunk = self._config, self._chunk
            if chunk is None:
                return self._hold(self._hold_reason, current_pose)
            age_s = (int(now_ns) - chunk.stamp_ns) / NS_PER_S
            if age_s > config.max_age_s:
                return self._hold(
                    f'stale: the newest action chunk comes from an observation {age_s:.2f} s '
                    f'old (max_obs_age_s {config.max_age_s:g})',
                    current_pose,
                )
            if age_s < -config.max_age_s:
                return self._hold(
                    f'clock mismatch: the observation stamp is {-age_s:.2f} s in the future '
                    '(sensor and node clocks disagree; replaying a bag needs use_sim_time)',
                    current_pose,
                )
            step = max(0, int(math.floor(age_s / chunk.dt)))
            if step >= len(chunk.twists):
                return self._hold(
                    f'action chunk exhausted: all {len(chunk.twists)} steps are in the past '
                    'and no newer observation was processed',
                    current_pose,
                )
            pose = None
            if config.output_mode == 'pose':
                if chunk.poses is None:
                    return self._hold(
                        'pose output needs the end-effector pose at the observation '
                        '(nothing received on ee_pose)',
                        current_pose,
                    )
                pose = chunk.poses[step].copy()
                self._last_pose = pose
            gripper = float(chunk.grippers[step])
            self._last_gripper = gripper
            return Command(
                active=True,
                reason='ok',
                twist=chunk.twists[step].copy(),
                pose=pose,
                gripper=gripper,
                chunk_stamp_ns=chunk.stamp_ns,
                step=step,
            )

    def _build(
        self, chunk: np.ndarray, stamp_ns: int, dt: float, start_pose: Optional[np.ndarray]
    ) -> _Chunk:
        config = self._config
        poses = None
        if start_pose is not None:
            poses = chunk_to_pose_targets(chunk, dt, start_pose, config)
        return _Chunk(
            stamp_ns=stamp_ns,
            dt=dt,
            twists=chunk_to_twists(chunk, dt, config),
            poses=poses,
            grippers=gripper_commands(chunk, config),
        )

    def _hold(self, reason: str, current_pose: Optional[np.ndarray]) -> Command:
        pose = None
        if self._config.output_mode == 'pose':
            if current_pose is not None:
                pose = np.asarray(current_pose, dtype=np.float64).copy()
            elif self._last_pose is not None:
                pose = self._last_pose.copy()
        return Command(
            active=False,
            reason=reason,
            twist=np.zeros(6),
            pose=pose,
            gripper=self._last_gripper,
        )
