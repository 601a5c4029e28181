"""
Excursion recording: short random detours off the expert's path, labelled by the expert.

Behaviour cloning sees only the states an expert visits. Per-step Gaussian noise on the executed
actions (DART, Laskey et al., 2017; ``sim record --noise``) widens that tube by millimetres,
while a policy that errs once finds itself centimetres off it: low and far from the object,
or above a distractor, states no demonstration shows (docs/training.md, section 4, traces such
as reach seed 8). :class:`ExcursionDriver` is a driver for
:func:`vla_pruned_ros.sim.expert.run_episode` that now and then replaces the executed action
by a random move held for a few steps; the expert keeps labelling every state, so the bag holds
its recovery from each detour. Unlike DAgger (:mod:`vla_pruned_ros.sim.dagger`) it needs no
trained policy and records at the expert's speed.

The detour's shape is this project's choice, not a published recipe: a uniformly drawn
direction in 3D at ``speed`` metres per step, a constant yaw rate, the expert's gripper
command kept (a detour does not open a closed grasp on purpose), for 1 .. ``max_steps``
steps, started with probability ``probability`` at any step outside a detour.
"""

from typing import Any, Optional

import numpy as np

from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sim.env import ACTION_HIGH, ACTION_LOW

# Translation per step of a detour (m): near the expert's own travel speed.
DEFAULT_EXCURSION_SPEED = 0.03
# Largest yaw step of a detour (rad), drawn uniformly in +- this.
EXCURSION_MAX_YAW = 0.2


class ExcursionError(ValueError):
    """Out-of-range excursion settings."""


class ExcursionDriver:
    """
    Execute the expert's (perturbed) actions, broken by random detours.

    At each step outside a detour one starts with probability ``probability``; it lasts a
    uniformly drawn 1 .. ``max_steps`` steps, each moving ``speed`` metres in one drawn
    direction and turning by one drawn yaw step, with the expert's gripper command. Draws come
    from ``seed``. Call :meth:`reset` at every episode start; ``detour_steps`` counts the
    detour steps of the current episode.
    """

    name = 'excursion'

    def __init__(
        self, probability: float = 0.1, max_steps: int = 3,
        speed: float = DEFAULT_EXCURSION_SPEED, seed: Optional[int] = None,
    ) -> None:
        if not 0.0 <= float(probability) < 1.0:
            raise ExcursionError(f'excursion probability must be in [0, 1), got {probability}')
        if int(max_steps) < 1:
            raise ExcursionError(f'excursion steps must be >= 1, got {max_steps}')
        if not 0.0 < float(speed) <= float(ACTION_HIGH[0]):
            raise ExcursionError(f'excursion speed must be in (0, {ACTION_HIGH[0]}] m per step, '
                                 f'got {speed}')
        self.probability = float(probability)
        self.max_steps = int(max_steps)
        self.speed = float(speed)
        self._rng = np.random.default_rng(seed)
        self._left = 0
        self._move = np.zeros(6)
        self.detour_steps = 0

    def describe(self) -> dict[str, Any]:
        """What the recorder writes into each episode's metadata, after the episode."""
        return {'driver': self.name, 'excursion_probability': self.probability,
                'excursion_steps': self.max_steps, 'excursion_speed': self.speed,
                'detour_steps': self.detour_steps}

    def reset(self) -> None:
        """End any detour (every episode start)."""
        self._left = 0
        self.detour_steps = 0

    def __call__(self, observation: Observation, expert_action: np.ndarray) -> np.ndarray:
        """Return the action to execute: the expert's, or the current detour's move."""
        expert_action = np.asarray(expert_action, np.float64)
        if self._left == 0 and self.probability > 0 and self._rng.random() < self.probability:
            direction = self._rng.normal(size=3)
            direction /= max(float(np.linalg.norm(direction)), 1e-9)
            self._move = np.zeros(6)
            self._move[:3] = direction * self.speed
            self._move[5] = self._rng.uniform(-EXCURSION_MAX_YAW, EXCURSION_MAX_YAW)
            self._left = int(self._rng.integers(1, self.max_steps + 1))
        if self._left == 0:
            return expert_action
        self._left -= 1
        self.detour_steps += 1
        action = expert_action.copy()
        action[:6] = self._move
        return np.clip(action, ACTION_LOW, ACTION_HIGH)
