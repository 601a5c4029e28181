"""
The geometry branch: an action chunk from the pointed positions and the pose.

The state BC probe (``tools/state_bc_probe.py``, docs/training.md) cloned the push expert from
a handful of numbers (the gripper's pose, the object's and the zone's centres) far better than
the policy's head did from the same points plus the decoder's action-query states: 93 heldout
push episodes of 100 against 59 with oracle points. The head reads the points only as a vector
added to every action-query state, next to the decoder's hundreds of values, and behaviour
cloning fits the states. This branch is the probe's MLP inside the policy: it regresses the
whole chunk from :meth:`InstructionPointer.head_features` and a narrow linear summary of the
final action-query states (``summary`` values: which task the instruction names and what the
camera shows of the gripper, which the points do not carry), so what it can learn from the
decoder is bounded by that width.

``mode`` 'add' adds its chunk to the head's (a residual the head stage learns from zero), 'only'
makes it the whole head (the decoder reaches the actions through the summary alone). Both are
this package's construction, not a published method; docs/training.md gives the runs.
"""

import torch
from torch import nn

BRANCH_MODES = ('add', 'only')


class GeometryBranch(nn.Module):
    """MLP from (pointer and pose features, summary of the action-query states) to a chunk."""

    def __init__(
        self, features: int, width: int, hidden: int, summary: int, horizon: int,
        action_dim: int,
    ) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.summary = nn.Linear(width, summary) if summary else None
        self.layers = nn.Sequential(
            nn.Linear(features + summary, hidden), nn.GELU(), nn.Linear(hidden, hidden),
            nn.GELU(), nn.Linear(hidden, horizon * action_dim),
        )
        # Zero output: a model warm-started from one without the branch acts as it did.
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, features: torch.Tensor, action_states: torch.Tensor) -> torch.Tensor:
        """
        Normalised chunk [B, horizon, action_dim].

        ``features`` [B, F] from :meth:`InstructionPointer.head_features`, ``action_states``
        [B, horizon, width] the decoder's final action-query states.
        """
        dtype = self.layers[0].weight.dtype
        parts = [features.to(dtype)]
        if self.summary is not None:
            parts.append(self.summary(action_states.to(dtype).mean(dim=1)))
        chunk = self.layers(torch.cat(parts, dim=-1))
        return chunk.view(-1, self.horizon, self.action_dim)
