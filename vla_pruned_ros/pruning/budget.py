"""
The token budget: how many visual tokens a step keeps, and exact top-k selection under floors.

The budget is one number (visual tokens kept, 2D + 3D) or a keep ratio of the visual tokens
entering the step, plus optional per-modality floors. Instruction, proprio and action-query
tokens are never counted nor pruned.
"""

from dataclasses import dataclass
from typing import Optional

import torch


class BudgetError(ValueError):
    """An impossible or out-of-range budget (e.g. floors above the budget, ratio outside 0..1)."""


@dataclass(frozen=True)
class Budget:
    """
    Visual tokens to keep per step.

    Give ``tokens`` (absolute) or ``keep_ratio`` (fraction of the visual tokens entering the
    step); with neither the step is dense. ``floor_2d``/``floor_3d`` guarantee a minimum per
    modality (clipped to what the modality has).
    """

    tokens: Optional[int] = None
    keep_ratio: Optional[float] = None
    floor_2d: int = 0
    floor_3d: int = 0

    def __post_init__(self) -> None:
        if self.tokens is not None and self.keep_ratio is not None:
            raise BudgetError('give either tokens or keep_ratio, not both')
        if self.tokens is not None and self.tokens < 1:
            raise BudgetError(f'token budget must be at least 1, got {self.tokens}')
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            raise BudgetError(f'keep_ratio must be in (0, 1], got {self.keep_ratio}')
        if self.floor_2d < 0 or self.floor_3d < 0:
            raise BudgetError('modality floors cannot be negative')

    @property
    def is_dense(self) -> bool:
        """True when no budget is set."""
        return self.tokens is None and self.keep_ratio is None

    def resolve(self, n_2d: int, n_3d: int) -> int:
        """Visual tokens to keep out of ``n_2d + n_3d``; raises BudgetError if floors exceed it."""
        total = n_2d + n_3d
        if self.is_dense:
            return total
        if self.tokens is not None:
            target = min(self.tokens, total)
        else:
            target = min(total, max(1, int(round(self.keep_ratio * total))))
        floor_2d, floor_3d = self.floors(n_2d, n_3d)
        if floor_2d + floor_3d > target:
            raise BudgetError(
                f'modality floors ({floor_2d} 2D + {floor_3d} 3D) exceed the budget of {target}'
                ' visual tokens'
            )
        return target

    def floors(self, n_2d: int, n_3d: int) -> tuple:
        """Floors clipped to the tokens each modality has."""
        return min(self.floor_2d, n_2d), min(self.floor_3d, n_3d)


def select_top_k(
    scores: torch.Tensor,
    is_3d: torch.Tensor,
    k: int,
    floor_2d: int = 0,
    floor_3d: int = 0,
    candidates: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Exactly ``k`` indices with the highest scores, honouring per-modality floors.

    ``scores`` and ``is_3d`` are per visual token; ``candidates`` optionally restricts the
    choice (indices into them). Ties break towards the lower index, so the result is
    deterministic. Returns the chosen indices sorted ascending.
    """
    if candidates is None:
        candidates = torch.arange(scores.numel(), device=scores.device)
    n = candidates.numel()
    if not 0 <= k <= n:
        raise BudgetError(f'cannot keep {k} of {n} candidate tokens')
    cand_scores = scores[candidates].float()
    cand_3d = is_3d[candidates]
    # Stable descending order: sort by -score, ties keep index order.
    order = torch.sort(-cand_scores, stable=True).indices
    chosen = torch.zeros(n, dtype=torch.bool, device=scores.device)
    for want, modality_mask in ((floor_2d, ~cand_3d), (floor_3d, cand_3d)):
        if want <= 0:
            continue
        in_modality = order[modality_mask[order]]
        chosen[in_modality[: min(want, in_modality.numel())]] = True
    remaining = k - int(chosen.sum())
    if remaining < 0:
        raise BudgetError(f'floors ({floor_2d} + {floor_3d}) exceed k = {k}')
    if remaining:
        free = order[~chosen[order]]
        chosen[free[:remaining]] = True
    return torch.sort(candidates[chosen]).values
