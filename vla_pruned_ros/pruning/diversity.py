"""
Greedy max-min diversity selection (DivPrune's solver), shared by TIES and VLA-Pruner.

DivPrune (Alvar et al., CVPR 2025) casts token selection as a Max-Min Diversity Problem on
cosine distance D = 1 - cos between token features and solves it greedily: the first pick is the
token whose second-smallest distance (the smallest is its distance to itself) is largest; each
next pick is the token farthest from everything picked so far, argmax_j min_{s in S} D[s, j].
VLA-Pruner uses the same solver as its "min-redundancy" filter on the layer-0 input embeddings.
"""

from typing import Optional

import torch

# Picked tokens score above every unpicked one (whose score is a distance in [0, 2]).
PICKED_BASE = 10.0


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """Pairwise 1 - cos between the rows of ``features`` [n, d] (float32), [n, n]."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    return (1.0 - unit @ unit.T).clamp_min(0.0)


def max_min_order(features: torch.Tensor, count: int) -> tuple:
    """
    The first ``count`` greedy max-min picks among the rows of ``features``.

    Returns (picks, min_distance): the row indices in pick order, and each row's distance to
    the nearest pick (0 for picks). Ties break towards the lower row index.
    """
    n = features.shape[0]
    count = max(0, min(count, n))
    if count == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(n)
    distance = cosine_distance(features).cpu()
    if n == 1:
        return torch.zeros(1, dtype=torch.int64), torch.zeros(1)
    second_smallest = torch.sort(distance, dim=0).values[1]
    first = int(torch.argmax(second_smallest))
    picks = [first]
    nearest = distance[first].clone()
    nearest[first] = -1.0
    for _ in range(count - 1):
        chosen = int(torch.argmax(nearest))
        picks.append(chosen)
        nearest = torch.minimum(nearest, distance[chosen])
        nearest[torch.tensor(picks)] = -1.0
    nearest = nearest.clamp_min(0.0)
    return torch.tensor(picks, dtype=torch.int64), nearest


def diversity_scores(
    features: torch.Tensor, count: int, candidates: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """
    Scores that rank the greedy max-min picks first, in pick order, for exact top-k.

    ``features`` has one row per visual token; ``candidates`` (visual indices) restricts the
    problem. The first ``count`` picks score PICKED_BASE + (count - rank); every other
    candidate scores its distance to the nearest pick (so a per-modality floor that must
    replace a pick takes the next most diverse token); non-candidates score -inf. Feed the result
    to ``StepContext.top_k(scores, count)``.
    """
    n = features.shape[0]
    if candidates is None:
        candidates = torch.arange(n)
    candidates = candidates.cpu()
    scores = torch.full((n,), float('-inf'))
    picks, nearest = max_min_order(features[candidates.to(features.device)], count)
    scores[candidates] = nearest
    scores[candidates[picks]] = PICKED_BASE + torch.arange(picks.numel(), 0, -1).float()
    return scores
