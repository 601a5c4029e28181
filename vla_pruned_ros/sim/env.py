"""
The closed-loop tabletop environment: observations in, end-effector delta actions out.

Action convention (the whole project uses it): 7 values per control step,

====  =========================================================  ==============
 i    meaning                                                     limit / step
====  =========================================================  ==============
0-2   dx, dy, dz: TCP translation in the world (table) frame, m   +-0.05
3-4   droll, dpitch (rad): accepted and ignored, the gripper     +-0.3
      always points straight down
5     dyaw (rad) about world z                                    +-0.3
6     gripper: 0 = open, 1 = closed; > 0.5 closes                 [0, 1]
====  =========================================================  ==============

Values beyond the limits are clipped (``info['action']`` holds what was applied). The TCP
target also stays inside the reachable box of :mod:`vla_pruned_ros.sim.scene` and within
``MAX_TRACKING_ERROR`` of where the gripper really is, so a blocked gripper does not wind up.

Time: every step integrates ``control_dt`` seconds of physics, and ``stamp_ns`` advances by the
same amount from ``start_ns``. Everything is deterministic given (family, seed, split) and the
actions.
"""

from dataclasses import replace
import math
from typing import Optional

import numpy as np

from vla_pruned_ros.convert import depth_to_points
from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sim.scene import (
    TCP_HIGH,
    TCP_LOW,
    YAW_LIMIT,
    TabletopScene,
)
from vla_pruned_ros.sim.tasks import Task, is_success, make_task

ACTION_DIM = 7
ACTION_SPACE = 'eef_delta_xyz_rpy_gripper'
ACTION_NAMES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
ACTION_LOW = np.array([-0.05, -0.05, -0.05, -0.3, -0.3, -0.3, 0.0])
ACTION_HIGH = np.array([0.05, 0.05, 0.05, 0.3, 0.3, 0.3, 1.0])
GRIPPER_CLOSE_THRESHOLD = 0.5
MAX_TRACKING_ERROR = 0.06

# Episode length limits at the reference control period; other periods scale them.
REFERENCE_CONTROL_DT = 0.1
DEFAULT_MAX_STEPS = {'reach': 40, 'push': 80, 'pick': 60}
# Sim time starts here (2024-01-01T00:00:00Z) so stamps look like wall-clock stamps.
SIM_START_NS = 1_704_067_200 * 1_000_000_000
# Physics time before the first observation, so objects rest on the table.
SETTLE_SECONDS = 0.2
CAMERA_FRAME_ID = 'camera_color_optical_frame'
WORLD_FRAME_ID = 'world'


class EnvError(ValueError):
    """A bad argument or action, or stepping an episode that is over."""


class TabletopEnv:
    """
    One tabletop task, reset to the layout its seed draws, stepped with 7-D delta actions.

    ``image_size`` is (width, height). ``points_stride`` sets how densely ``Observation.points``
    samples the depth image (every n-th pixel in u and v); None leaves points out.
    Observations: camera data in the optical frame ``CAMERA_FRAME_ID``; ``ee_pose`` is the TCP
    in the world frame; ``joint_state`` is the two finger openings in metres.
    Privileged state for scripted experts and success checks: ``env.task`` and ``env.scene``.
    An unknown family or split, or a seed out of range, raises ``TaskError``.
    """

    def __init__(
        self,
        family: str,
        seed: int,
        split: str = 'train',
        image_size: tuple[int, int] = (224, 224),
        control_dt: float = REFERENCE_CONTROL_DT,
        max_steps: Optional[int] = None,
        points_stride: Optional[int] = 4,
        start_ns: int = SIM_START_NS,
    ) -> None:
        width, height = (int(v) for v in image_size)
        if width <= 0 or height <= 0:
            raise EnvError(f'image_size must be positive (width, height), got {image_size}')
        if not math.isfinite(control_dt) or control_dt <= 0:
            raise EnvError(f'control_dt must be a positive number of seconds, got {control_dt}')
        if points_stride is not None and int(points_stride) < 1:
            raise EnvError(f'points_stride must be a positive integer or None: {points_stride}')
        self.family = family
        self.split = split
        self.seed = int(seed)
        self.image_size = (width, height)
        self.control_dt = float(control_dt)
        self.points_stride = points_stride
        self.start_ns = int(start_ns)
        if max_steps is None:
            reference = DEFAULT_MAX_STEPS.get(family, 60)
            max_steps = math.ceil(reference * REFERENCE_CONTROL_DT / self.control_dt)
        if int(max_steps) < 1:
            raise EnvError(f'max_steps must be at least 1, got {max_steps}')
        self.max_steps = int(max_steps)
        # Check family/split/seed now rather than at the first reset.
        self.task: Task = make_task(family, self.seed, split)
        self.scene: Optional[TabletopScene] = None
        self.steps = 0
        self.done = True
        self.success = False
        self._target = np.zeros(4)
        self._closed = False

    # -- episode ---------------------------------------------------------------------------

    def reset(self, seed: Optional[int] = None) -> Observation:
        """Start an episode (of a new seed when given) and return its first observation."""
        if seed is not None and int(seed) != self.seed:
            self.task = make_task(self.family, int(seed), self.split)
            self.seed = int(seed)
        self.close()
        width, height = self.image_size
        spec = self.task.scene
        camera = replace(spec.camera, width=width, height=height)
        self.scene = TabletopScene(replace(spec, camera=camera))
        self.scene.advance(SETTLE_SECONDS)
        self.scene.data.time = 0.0
        self._target = np.array(spec.gripper_start, dtype=float)
        self._closed = False
        self.steps = 0
        self.done = False
        self.success = is_success(self.task, self.scene)
        return self.observe()

    def step(self, action: np.ndarray) -> tuple[Observation, bool, dict]:
        """
        Apply one 7-D action for ``control_dt`` seconds.

        Returns ``(observation, done, info)``; ``done`` is True on success or after
        ``max_steps`` steps. ``info`` holds ``success``, ``timeout``, ``step`` and the clipped
        ``action``. Raises ``EnvError`` for an action that is not 7 finite numbers, or when the
        episode is over (call :meth:`reset`).
        """
        if self.scene is None or self.done:
            raise EnvError('the episode is over (or never started): call reset() first')
        values = np.asarray(action, dtype=np.float64)
        if values.shape != (ACTION_DIM,):
            raise EnvError(
                f'action must have shape ({ACTION_DIM},) = {ACTION_NAMES}, got {values.shape}'
            )
        if not np.isfinite(values).all():
            raise EnvError(f'action has non-finite values: {values.tolist()}')
        applied = np.clip(values, ACTION_LOW, ACTION_HIGH)

        position = self._target[:3] + applied[:3]
        tcp = self.scene.tcp_position()
        position = np.clip(position, tcp - MAX_TRACKING_ERROR, tcp + MAX_TRACKING_ERROR)
        position = np.clip(position, TCP_LOW, TCP_HIGH)
        yaw = float(np.clip(self._target[3] + applied[5], -YAW_LIMIT, YAW_LIMIT))
        self._target = np.array([*position, yaw])
        self._closed = bool(applied[6] > GRIPPER_CLOSE_THRESHOLD)
        self.scene.set_targets(position, yaw, closed=self._closed)
        self.scene.advance(self.control_dt)
        self.steps += 1

        self.success = is_success(self.task, self.scene)
        timeout = self.steps >= self.max_steps
        self.done = self.success or timeout
        info = {
            'success': self.success,
            'timeout': timeout and not self.success,
            'step': self.steps,
            'action': applied,
        }
        return self.observe(), self.done, info

    # -- views -----------------------------------------------------------------------------

    @property
    def instruction(self) -> str:
        """The language instruction of the current task."""
        return self.task.instruction

    @property
    def stamp_ns(self) -> int:
        """Sim time of the current state, in nanoseconds since the epoch."""
        return self.start_ns + round(self.steps * self.control_dt * 1e9)

    @property
    def gripper_closed(self) -> bool:
        """True when the last action commanded the gripper closed."""
        return self._closed

    def observe(self) -> Observation:
        """Render the camera and return the observation of the current state."""
        if self.scene is None:
            raise EnvError('no scene yet: call reset() first')
        rgb, depth = self.scene.render()
        intrinsics = self.scene.intrinsics
        points = None
        if self.points_stride is not None and np.isfinite(depth).any():
            points = depth_to_points(depth, intrinsics, stride=int(self.points_stride))
        # Finger openings (m): on a closed gripper they tell whether something is held.
        joint_state = self.scene.finger_opening()
        return Observation(
            rgb=rgb,
            depth=depth,
            points=points,
            intrinsics=intrinsics,
            stamp_ns=self.stamp_ns,
            instruction=self.task.instruction,
            ee_pose=self.scene.tcp_pose(),
            joint_state=joint_state,
            frame_id=CAMERA_FRAME_ID,
        )

    def camera_to_world(self) -> np.ndarray:
        """Return the 4x4 transform from the camera optical frame to the world frame."""
        if self.scene is None:
            raise EnvError('no scene yet: call reset() first')
        return self.scene.camera_to_world()

    def close(self) -> None:
        """Free the renderer of the current scene."""
        if self.scene is not None:
            self.scene.close()
            self.scene = None

    def __enter__(self) -> 'TabletopEnv':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
