"""
Policy-driven recording for DAgger: the policy acts, the scripted expert labels every state.

Behaviour cloning learns only the states the expert visits; a policy that drifts off them meets
states no demonstration shows, and its errors compound. DAgger (Ross, Gordon and Bagnell, 2011)
rolls out the learner, asks the expert what it would do in each state the learner reached and
adds those labels to the training data. :class:`PolicyDriver` is the learner side for
:func:`vla_pruned_ros.sim.expert.run_episode`: it steps the policy every ``execute_steps`` actions
(as ``sim eval`` does) and hands out the chunk's actions one per control step. With
``expert_share`` > 0 a drawn share of the chunks is executed by the expert instead (the paper's
mixing coefficient beta), so the rollouts stay nearer the expert's states.
"""

from collections import deque
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.observation import Observation


class DriverError(ValueError):
    """Out-of-range driver settings."""


class PolicyDriver:
    """
    Execute a policy's action chunks one control step at a time (a learner for DAgger).

    ``policy`` is a :class:`vla_pruned_ros.policy.Policy` (anything with ``step`` and ``reset``).
    Every ``execute_steps`` control steps it predicts a new chunk from the current observation;
    with probability ``expert_share`` (drawn per chunk from ``seed``) that span is executed by
    the expert's own (perturbed) actions instead. Call :meth:`reset` at every episode start.
    """

    name = 'policy'

    def __init__(
        self, policy: Any, execute_steps: int = 4, expert_share: float = 0.0,
        seed: Optional[int] = None,
    ) -> None:
        if int(execute_steps) < 1:
            raise DriverError(f'execute_steps must be >= 1, got {execute_steps}')
        if not 0.0 <= float(expert_share) <= 1.0:
            raise DriverError(f'expert_share must be in [0, 1], got {expert_share}')
        self.policy = policy
        self.execute_steps = int(execute_steps)
        self.expert_share = float(expert_share)
        self._rng = np.random.default_rng(seed)
        self._queue: deque = deque()
        self._expert_span = 0
        self.policy_steps = 0

    def describe(self) -> dict[str, Any]:
        """What the recorder writes into each episode's metadata, after the episode."""
        return {'driver': self.name, 'execute_steps': self.execute_steps,
                'expert_share': self.expert_share, 'policy_steps': self.policy_steps}

    def reset(self) -> None:
        """Forget the current chunk and reset the policy (every episode start)."""
        self._queue.clear()
        self._expert_span = 0
        self.policy_steps = 0
        self.policy.reset()

    def __call__(self, observation: Observation, expert_action: np.ndarray) -> np.ndarray:
        """Return the action to execute in the state ``observation`` shows."""
        if not self._queue and self._expert_span == 0:
            if self.expert_share > 0 and self._rng.random() < self.expert_share:
                self._expert_span = self.execute_steps
            else:
                chunk, _ = self.policy.step(observation)
                self.policy_steps += 1
                self._queue.extend(np.asarray(chunk, np.float64)[:self.execute_steps])
        if self._expert_span > 0:
            self._expert_span -= 1
            return np.asarray(expert_action, np.float64)
        return self._queue.popleft()
