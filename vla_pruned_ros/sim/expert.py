"""
Scripted experts that solve each task family from privileged simulator state.

An expert reads the true object poses from ``env.scene`` and returns actions in the project's
7-D convention (see :mod:`vla_pruned_ros.sim.env`). Each is a small state machine that
re-plans from the current state every step, so it recovers from its own noise and from
objects that slip or turn.

Noise for data diversity follows DART (Laskey et al., 2017): :func:`run_episode` executes
``expert.perturb(action)`` but records the clean action as the label, so demonstrations visit
states slightly off the expert's path and show how to get back.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
import math
from typing import Optional

import numpy as np

from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sim.env import ACTION_DIM, ACTION_HIGH, ACTION_LOW, TabletopEnv
from vla_pruned_ros.sim.scene import FINGER_HALF_SIZE, SHAPES, TCP_LOW, YAW_LIMIT
from vla_pruned_ros.sim.tasks import FAMILIES, LIFT_HEIGHT

# Expert speeds per control step (inside the action limits).
MAX_STEP = 0.04
PUSH_STEP = 0.02
MAX_YAW_STEP = 0.25
# Height at which the gripper travels over other objects (TCP z, metres).
TRAVEL_Z = 0.10
OPEN, CLOSED = 0.0, 1.0


# Alignment tolerances: 'strict' (the class constants below) ends each approach with the
# precision a state-based controller reaches; 'loose' starts the descent / the lowering from
# a few centimetres and degrees off (the descent and the push correct the rest), the
# precision a policy that perceives the object can match. The experts solve every episode
# either way (docs/training.md, section 4).
TOLERANCES = ('strict', 'loose')
LOOSE_TOLERANCES: dict[str, dict[str, float]] = {
    'pick': {'HOVER_TOLERANCE': 0.015, 'YAW_TOLERANCE': 0.15},
    'push': {'START_TOLERANCE': 0.025, 'YAW_TOLERANCE': 0.15},
}


class ExpertError(ValueError):
    """An unknown family, or an expert used on another family's environment."""


def _limit_norm(vector: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector if norm <= limit else vector * (limit / norm)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _action(translation: np.ndarray, dyaw: float = 0.0, gripper: float = OPEN) -> np.ndarray:
    action = np.zeros(ACTION_DIM)
    action[:3] = translation
    action[5] = dyaw
    action[6] = gripper
    return np.clip(action, ACTION_LOW, ACTION_HIGH)


def _travel(tcp: np.ndarray, goal: np.ndarray, step: float = MAX_STEP) -> np.ndarray:
    """
    Return a translation towards ``goal`` that keeps clear of objects on the way.

    Far from the goal (horizontally) the gripper first rises to ``TRAVEL_Z`` and travels at
    that height; above the goal it goes straight down.
    """
    horizontal = float(np.linalg.norm(goal[:2] - tcp[:2]))
    waypoint = goal.copy()
    if horizontal > 0.02:
        waypoint[2] = max(goal[2], TRAVEL_Z)
        if tcp[2] < TRAVEL_Z - 0.02:
            waypoint[:2] = tcp[:2]  # lift before moving sideways
    return _limit_norm(waypoint - tcp, step)


def grasp_yaw(shape: str, object_yaw: float, current_yaw: float) -> float:
    """
    Return the gripper yaw that grasps an object of ``shape`` turned by ``object_yaw``.

    Fingers close along the gripper's y axis, so they must meet a box's faces: a block across
    its short side (symmetric under a half turn), a cube on any side (quarter turn). Round
    objects accept any yaw, so the gripper keeps ``current_yaw``. Of the equivalent angles the
    one nearest ``current_yaw`` (and inside the yaw limit) is returned.
    """
    if SHAPES[shape] != 'box':
        return current_yaw
    period = math.pi if shape == 'block' else math.pi / 2
    best = object_yaw + round((current_yaw - object_yaw) / period) * period
    while best > YAW_LIMIT:
        best -= period
    while best < -YAW_LIMIT:
        best += period
    return best


class ScriptedExpert:
    """
    Base class: ``act(env)`` returns the clean action, ``perturb(action)`` a noisy copy.

    ``translation_noise`` (m) and ``yaw_noise`` (rad) are the standard deviations of the
    Gaussian noise ``perturb`` adds per step; the gripper command is never perturbed.
    ``tolerance`` is one of :data:`TOLERANCES`.
    """

    family = ''

    def __init__(
        self, translation_noise: float = 0.0, yaw_noise: float = 0.0, seed: Optional[int] = None,
        tolerance: str = 'strict',
    ) -> None:
        if translation_noise < 0 or yaw_noise < 0:
            raise ExpertError(
                f'noise must be >= 0, got translation {translation_noise}, yaw {yaw_noise}'
            )
        if tolerance not in TOLERANCES:
            raise ExpertError(f'unknown tolerance {tolerance!r}; choose one of {TOLERANCES}')
        self.tolerance = tolerance
        if tolerance == 'loose':
            for name, value in LOOSE_TOLERANCES.get(self.family, {}).items():
                setattr(self, name, value)
        self.translation_noise = float(translation_noise)
        self.yaw_noise = float(yaw_noise)
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """Forget the state machine's phase (call at every episode start)."""
        self.phase = 'start'
        self.phase_steps = 0

    def _enter(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.phase_steps = 0

    def act(self, env: TabletopEnv) -> np.ndarray:
        """Return the expert's action for the current state of ``env``."""
        if env.task.family != self.family:
            raise ExpertError(f'{type(self).__name__} solves {self.family!r}, not '
                              f'{env.task.family!r}')
        action = self._act(env)
        self.phase_steps += 1
        return action

    def _act(self, env: TabletopEnv) -> np.ndarray:
        raise NotImplementedError

    def perturb(self, action: np.ndarray) -> np.ndarray:
        """Return ``action`` with Gaussian noise on dx, dy, dz and dyaw, clipped to limits."""
        noisy = np.array(action, dtype=np.float64)
        if self.translation_noise > 0:
            noisy[:3] += self._rng.normal(0.0, self.translation_noise, 3)
        if self.yaw_noise > 0:
            noisy[5] += self._rng.normal(0.0, self.yaw_noise)
        return np.clip(noisy, ACTION_LOW, ACTION_HIGH)


class ReachExpert(ScriptedExpert):
    """Travel above the target and stop with the TCP 3.5 cm over its top."""

    family = 'reach'

    def _act(self, env: TabletopEnv) -> np.ndarray:
        target = env.task.target_object
        centre = env.scene.object_position(target.name)
        goal = centre + (0.0, 0.0, target.half_height + 0.035)
        return _action(_travel(env.scene.tcp_position(), goal))


class PickExpert(ScriptedExpert):
    """
    Hover, align yaw, descend around the object, close, lift.

    Phases: approach -> descend -> close -> lift; a grasp that misses or slips sends it back
    to approach with the gripper open.
    """

    family = 'pick'
    CLOSE_STEPS = 3
    # How well the hover must match before descending: horizontal and vertical offset (m), yaw
    # error (rad). The descent keeps correcting position and yaw on the way down.
    HOVER_TOLERANCE = 0.006
    HOVER_HEIGHT_TOLERANCE = 0.015
    YAW_TOLERANCE = 0.04

    def _act(self, env: TabletopEnv) -> np.ndarray:
        scene = env.scene
        target = env.task.target_object
        centre = scene.object_position(target.name)
        tcp = scene.tcp_position()
        yaw = scene.gripper_yaw()
        goal_yaw = grasp_yaw(target.shape, scene.object_yaw(target.name), yaw)
        dyaw = float(np.clip(_wrap(goal_yaw - yaw), -MAX_YAW_STEP, MAX_YAW_STEP))
        top = centre[2] + target.half_height
        hover = np.array([centre[0], centre[1], max(top + 0.04, TRAVEL_Z)])
        grasp = np.array([centre[0], centre[1], max(centre[2], TCP_LOW[2] + 0.004)])

        if self.phase in ('start', 'approach'):
            self._enter('approach')
            aligned = (
                np.linalg.norm(hover[:2] - tcp[:2]) < self.HOVER_TOLERANCE
                and abs(_wrap(goal_yaw - yaw)) < self.YAW_TOLERANCE
                and abs(hover[2] - tcp[2]) < self.HOVER_HEIGHT_TOLERANCE
            )
            if not aligned:
                return _action(_travel(tcp, hover), dyaw, OPEN)
            self._enter('descend')
        if self.phase == 'descend':
            if self.phase_steps > 15:  # blocked on the way down: try again from above
                self._enter('approach')
                return _action(_travel(tcp, hover), dyaw, OPEN)
            if np.linalg.norm(grasp - tcp) > 0.005:
                return _action(_limit_norm(grasp - tcp, MAX_STEP), dyaw, OPEN)
            self._enter('close')
        if self.phase == 'close':
            if self.phase_steps < self.CLOSE_STEPS:
                return _action(np.zeros(3), 0.0, CLOSED)
            self._enter('lift')
        # lift
        if np.linalg.norm(centre - tcp) > 0.04:  # the object is not between the fingers
            self._enter('approach')
            return _action(np.array([0.0, 0.0, MAX_STEP]), 0.0, OPEN)
        lifted = np.array([tcp[0], tcp[1], target.half_height + LIFT_HEIGHT + 0.05])
        return _action(_limit_norm(lifted - tcp, MAX_STEP), 0.0, CLOSED)


class PushExpert(ScriptedExpert):
    """
    Put the closed fingers behind the object, on the line to the zone, and push along it.

    The finger pads face the push direction, a flat 4 cm pusher that keeps round objects from
    squirting sideways. Phases: approach (above the start point, yaw aligned) -> lower -> push;
    drifting off the line sends it back (retreat, then approach).
    """

    family = 'push'
    PUSH_Z = 0.022
    # How well the start point above the line must be reached before lowering (m, rad).
    START_TOLERANCE = 0.01
    YAW_TOLERANCE = 0.05
    # Thickness of the closed finger pair in front of the TCP, plus a gap.
    FINGER_REACH = 2 * FINGER_HALF_SIZE[1] + 0.004

    @staticmethod
    def _extent(shape: str, size: tuple, object_yaw: float, direction: np.ndarray) -> float:
        """Return how far the object reaches from its centre along ``direction``."""
        if SHAPES[shape] != 'box':
            return size[0]
        angle = math.atan2(direction[1], direction[0]) - object_yaw
        return abs(size[0] * math.cos(angle)) + abs(size[1] * math.sin(angle))

    def _act(self, env: TabletopEnv) -> np.ndarray:
        scene = env.scene
        target = env.task.target_object
        zone = env.task.target_zone
        centre = scene.object_position(target.name)
        tcp = scene.tcp_position()
        yaw = scene.gripper_yaw()
        to_goal = np.array([zone.x, zone.y]) - centre[:2]
        distance = float(np.linalg.norm(to_goal))
        direction = to_goal / max(distance, 1e-9)
        object_yaw = scene.object_yaw(target.name)
        extent = self._extent(target.shape, target.size, object_yaw, direction)
        side = self._extent(target.shape, target.size, object_yaw, direction[::-1] * (-1, 1))
        # Pads face the push: the closing axis (gripper y) along the push direction.
        pad_yaw = grasp_yaw('block', math.atan2(direction[1], direction[0]) - math.pi / 2, yaw)
        dyaw = float(np.clip(_wrap(pad_yaw - yaw), -MAX_YAW_STEP, MAX_YAW_STEP))
        behind = centre[:2] - direction * (extent + self.FINGER_REACH)
        offset = tcp[:2] - centre[:2]
        along = float(offset @ direction)
        lateral = offset - along * direction
        on_line = np.linalg.norm(lateral) < max(0.012, 0.5 * side) and along < 0
        low = tcp[2] < TRAVEL_Z - 0.02

        if self.phase == 'retreat':
            # Back away before lifting: lifting while touching can tip the object over.
            if low and np.linalg.norm(offset) < extent + self.FINGER_REACH + 0.03:
                away = offset / max(np.linalg.norm(offset), 1e-9) * 0.02
                return _action(np.array([*away, 0.005]), 0.0, CLOSED)
            self._enter('approach')
        if self.phase in ('start', 'approach'):
            self._enter('approach')
            start = np.array([*(behind - direction * 0.03), TRAVEL_Z])
            if (np.linalg.norm(start - tcp) > self.START_TOLERANCE
                    or abs(_wrap(pad_yaw - yaw)) > self.YAW_TOLERANCE):
                return _action(_travel(tcp, start), dyaw, CLOSED)
            self._enter('lower')
        if self.phase == 'lower':
            if not on_line:
                self._enter('approach')
                return _action(_travel(tcp, np.array([*behind, TRAVEL_Z])), dyaw, CLOSED)
            if tcp[2] - self.PUSH_Z > 0.005:
                down = np.array([0.0, 0.0, self.PUSH_Z - tcp[2]])
                return _action(_limit_norm(down, MAX_STEP), dyaw, CLOSED)
            self._enter('push')
        # push: move along the line to the zone, steering back onto it when the object drifts.
        if not on_line or along < -(extent + self.FINGER_REACH + 0.05):
            self._enter('retreat')
            return _action(np.array([0.0, 0.0, 0.005]), 0.0, CLOSED)
        push = direction * min(PUSH_STEP, distance) - lateral * 0.5
        return _action(np.array([*push, self.PUSH_Z - tcp[2]]), dyaw, CLOSED)


EXPERTS: dict[str, type] = {
    expert.family: expert for expert in (ReachExpert, PushExpert, PickExpert)
}


def make_expert(
    family: str, translation_noise: float = 0.0, yaw_noise: float = 0.0,
    seed: Optional[int] = None, tolerance: str = 'strict',
) -> ScriptedExpert:
    """Return the scripted expert of ``family``; raises ``ExpertError`` for an unknown one."""
    if family not in EXPERTS:
        raise ExpertError(f'no expert for family {family!r}; known: {list(FAMILIES)}')
    return EXPERTS[family](translation_noise, yaw_noise, seed, tolerance)


@dataclass
class Episode:
    """
    One rolled-out episode.

    ``observations`` has one more entry than ``actions``: observation t was followed by
    ``actions[t]`` (the clean expert label) and ``executed[t]`` (what was applied, with noise).
    ``target_positions[t]`` is where the named object's centre was (world frame) when
    observation t was taken: privileged simulator state, recorded for the pointer's labels.
    """

    task_metadata: dict
    observations: list[Observation] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    executed: list[np.ndarray] = field(default_factory=list)
    target_positions: list[np.ndarray] = field(default_factory=list)
    success: bool = False

    @property
    def steps(self) -> int:
        """Number of actions taken."""
        return len(self.actions)


def run_episode(
    env: TabletopEnv, expert: ScriptedExpert, keep_observations: bool = True,
    driver: Optional[Callable[[Observation, np.ndarray], np.ndarray]] = None,
) -> Episode:
    """
    Reset ``env`` and let ``expert`` act until the episode ends.

    With ``keep_observations=False`` only the first and last observation are kept (for quick
    success-rate measurements). With a ``driver`` (e.g. :class:`vla_pruned_ros.sim.dagger.
    PolicyDriver`, reset here) the driver decides what is executed, from the observation and
    the expert's perturbed action, while the expert still labels every state (DAgger). A driver
    with a ``bind`` method gets ``env`` after the reset (one that acts on the scene, such as
    :class:`vla_pruned_ros.sim.nudge.ObjectNudgeDriver`).
    """
    observation = env.reset()
    expert.reset()
    if driver is not None and hasattr(driver, 'reset'):
        driver.reset()
    if driver is not None and hasattr(driver, 'bind'):
        driver.bind(env)  # drivers that act on the scene (sim.nudge)
    episode = Episode(task_metadata=env.task.metadata(), observations=[observation],
                      target_positions=[env.scene.object_position(env.task.target)])
    done = False
    while not done:
        action = expert.act(env)
        executed = expert.perturb(action)
        if driver is not None:
            executed = driver(observation, executed)
        observation, done, info = env.step(executed)
        episode.actions.append(action)
        episode.executed.append(info['action'])
        if keep_observations or done:
            episode.observations.append(observation)
            episode.target_positions.append(env.scene.object_position(env.task.target))
    episode.success = bool(info['success'])
    return episode


def action_chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """
    Return (T, horizon, D) chunks: chunk t holds actions t .. t + horizon - 1.

    Past the end of the episode the last action is repeated.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or len(actions) == 0:
        raise ExpertError(f'actions must be a non-empty (T, D) array, got {actions.shape}')
    if horizon < 1:
        raise ExpertError(f'horizon must be at least 1, got {horizon}')
    index = np.minimum(np.arange(len(actions))[:, None] + np.arange(horizon), len(actions) - 1)
    return actions[index]
