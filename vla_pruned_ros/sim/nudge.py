"""
Object nudges: the named object is moved a few centimetres while the gripper works on it.

The shipped policy's push failures, traced with oracle pointers (docs/training.md, "Object
nudges"), are mostly of one kind: the gripper lowers or pushes a few centimetres beside the
line from the object to the zone, misses or loses the object, and carries on to the zone as
if it were pushing it. Demonstrations never show that state, because the expert lowers only on
the line and steers the object back before it drifts. Gripper detours
(:mod:`vla_pruned_ros.sim.excursion`) move the gripper off the line while the object stays
put; a nudge moves the object away from a gripper that is where the expert put it, the state
of an object that slipped or a pusher that came down beside it, and the expert labels what it
does next (push: back away and approach again; pick: align again over the object).

:class:`ObjectNudgeDriver` is a driver for :func:`vla_pruned_ros.sim.expert.run_episode`: it
executes the expert's actions unchanged and, now and then, teleports the target object
(:meth:`vla_pruned_ros.sim.scene.TabletopScene.displace_object`) before the step. The shape of
the perturbation is this project's choice, not a published recipe: a uniformly drawn direction,
a distance drawn uniformly in [``min_distance``, ``max_distance``], only while the gripper is
within ``near`` of the object horizontally and does not hold it between both fingers, at most
once every ``interval`` steps, and only to a place that keeps clear of the other objects, the
gripper's fingers and the edge of the object area (a draw that does not fit is skipped). Zone
marks are flat and do not count: a push target nudged into its zone ends the episode there.
"""

import math
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.scene import FINGER_HALF_SIZE, TCP_ABOVE_FINGERTIPS
from vla_pruned_ros.sim.tasks import OBJECT_AREA_HIGH, OBJECT_AREA_LOW

DEFAULT_MIN_DISTANCE = 0.015
DEFAULT_MAX_DISTANCE = 0.05
# A nudge only happens while the gripper works on the object: this close horizontally (m).
DEFAULT_NEAR = 0.08
DEFAULT_INTERVAL = 6
# Free space kept around the moved object, to other footprints and to the fingers (m).
CLEARANCE = 0.01
# How far a finger reaches horizontally from its own centre line (half its pad's diagonal).
FINGER_REACH = math.hypot(FINGER_HALF_SIZE[0], FINGER_HALF_SIZE[1])
# Draws tried per nudge before it is skipped.
ATTEMPTS = 8


class NudgeError(ValueError):
    """Out-of-range nudge settings, or a driver used before :meth:`ObjectNudgeDriver.bind`."""


class ObjectNudgeDriver:
    """
    Execute the expert's (perturbed) actions; now and then move the named object first.

    At each step where a nudge is allowed (the gripper within ``near`` of the object, not
    holding it between both fingers, ``interval`` steps since the last one) one happens with
    probability ``probability``. Draws come from ``seed``. :func:`run_episode` calls
    :meth:`reset` and :meth:`bind` at every episode start; ``nudges`` counts the current
    episode's nudges, ``nudge_steps`` their step indices and ``nudge_distances`` their
    lengths (m).
    """

    name = 'nudge'

    def __init__(
        self, probability: float = 0.1, min_distance: float = DEFAULT_MIN_DISTANCE,
        max_distance: float = DEFAULT_MAX_DISTANCE, near: float = DEFAULT_NEAR,
        interval: int = DEFAULT_INTERVAL, seed: Optional[int] = None,
    ) -> None:
        if not 0.0 <= float(probability) < 1.0:
            raise NudgeError(f'nudge probability must be in [0, 1), got {probability}')
        if not 0.0 < float(min_distance) <= float(max_distance) <= 0.15:
            raise NudgeError('nudge distances must satisfy 0 < min <= max <= 0.15 m, got '
                             f'{min_distance} .. {max_distance}')
        if float(near) <= 0.0:
            raise NudgeError(f'nudge range must be > 0 m, got {near}')
        if int(interval) < 1:
            raise NudgeError(f'nudge interval must be >= 1 step, got {interval}')
        self.probability = float(probability)
        self.min_distance = float(min_distance)
        self.max_distance = float(max_distance)
        self.near = float(near)
        self.interval = int(interval)
        self._rng = np.random.default_rng(seed)
        self._env: Optional[TabletopEnv] = None
        self.reset()

    def describe(self) -> dict[str, Any]:
        """What the recorder writes into each episode's metadata, after the episode."""
        return {'driver': self.name, 'nudge_probability': self.probability,
                'nudge_distance': [self.min_distance, self.max_distance],
                'nudge_near': self.near, 'nudge_interval': self.interval,
                'nudges': self.nudges}

    def reset(self) -> None:
        """Forget the episode's nudges (every episode start)."""
        self.nudges = 0
        self.nudge_steps: list[int] = []
        self.nudge_distances: list[float] = []
        self._step = -1
        self._since = self.interval

    def bind(self, env: TabletopEnv) -> None:
        """Act on ``env``, a reset environment (``run_episode`` binds it after each reset)."""
        self._env = env

    def __call__(self, observation: Observation, expert_action: np.ndarray) -> np.ndarray:
        """Return the expert's action, after maybe moving the object."""
        if self._env is None or self._env.scene is None:
            raise NudgeError('bind the driver to a reset environment first (run_episode does)')
        self._step += 1
        self._since += 1
        if self._allowed() and self._rng.random() < self.probability and self._nudge():
            self._since = 0
        return np.asarray(expert_action, np.float64)

    def _allowed(self) -> bool:
        if self.probability == 0.0 or self._since < self.interval:
            return False
        scene, target = self._env.scene, self._env.task.target_object
        centre = scene.object_position(target.name)
        if float(np.linalg.norm(scene.tcp_position()[:2] - centre[:2])) > self.near:
            return False
        # Held between both fingers: a grasp, which a nudge would tear open. A push touches one.
        return not (scene.touching(target.name, 'finger_left')
                    and scene.touching(target.name, 'finger_right'))

    def _nudge(self) -> bool:
        """Move the target to a free place a drawn distance away; False if none was found."""
        scene, task = self._env.scene, self._env.task
        target = task.target_object
        centre = scene.object_position(target.name)[:2]
        for _ in range(ATTEMPTS):
            angle = self._rng.uniform(-math.pi, math.pi)
            distance = self._rng.uniform(self.min_distance, self.max_distance)
            offset = distance * np.array([math.cos(angle), math.sin(angle)])
            if self._free(centre + offset):
                scene.displace_object(target.name, offset)
                self.nudges += 1
                self.nudge_steps.append(self._step)
                self.nudge_distances.append(float(distance))
                return True
        return False

    def _free(self, xy: np.ndarray) -> bool:
        """Whether the target fits at ``xy``: on the object area, clear of objects and fingers."""
        scene, task = self._env.scene, self._env.task
        target = task.target_object
        if np.any(xy < OBJECT_AREA_LOW) or np.any(xy > OBJECT_AREA_HIGH):
            return False
        for other in task.scene.objects:
            if other.name == target.name:
                continue
            gap = float(np.linalg.norm(scene.object_position(other.name)[:2] - xy))
            if gap < target.footprint_radius + other.footprint_radius + CLEARANCE:
                return False
        tcp = scene.tcp_position()
        # Fingers down at the object's height would end up inside it; above its top they are
        # out of the way.
        if tcp[2] - TCP_ABOVE_FINGERTIPS < 2 * target.half_height + CLEARANCE:
            fingers = float(np.max(scene.finger_opening())) + FINGER_REACH + CLEARANCE
            if float(np.linalg.norm(tcp[:2] - xy)) < target.footprint_radius + fingers:
                return False
        return True
