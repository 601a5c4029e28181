"""
Which token of an earlier step is "the same" as a token now, for pruners with temporal state.

2D tokens are image patches: patch i now is patch i before. 3D tokens are point groups whose
centres are re-sampled every step (farthest point sampling restarts on each cloud), so group i
now is matched to the earlier group with the nearest centre. SAFE-Pruner matches by content
instead: the earlier token whose embedding is most cosine-similar.
"""

from typing import Optional

import numpy as np
import torch


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """
    Squared distances between the points of ``a`` [..., n, 3] and ``b`` [..., m, 3].

    Plain numpy broadcasting: for the few hundred points here it is faster than torch.cdist,
    whose threaded kernel stalls on a busy CPU.
    """
    difference = np.asarray(a, np.float32)[..., :, None, :] - np.asarray(b, np.float32)[
        ..., None, :, :]
    return np.einsum('...i,...i->...', difference, difference)


def nearest_centre(centres_now: np.ndarray, centres_before: np.ndarray) -> np.ndarray:
    """Index of the nearest earlier centre for every current centre (n_now,)."""
    if not len(centres_now) or not len(centres_before):
        return np.zeros(len(centres_now), np.int64)
    return squared_distances(centres_now, centres_before).argmin(axis=1)


def carry_visual(
    values: Optional[np.ndarray],
    n_2d: int,
    centres_now: np.ndarray,
    centres_before: Optional[np.ndarray],
) -> Optional[np.ndarray]:
    """
    A per-visual-token quantity of an earlier step mapped onto the current tokens.

    ``values`` holds the earlier 2D values then the earlier 3D values (one per earlier centre).
    2D values keep their patch; 3D values follow the nearest earlier centre. None when there is
    nothing to carry or the 2D grid changed.
    """
    if values is None or centres_before is None or len(values) != n_2d + len(centres_before):
        return None
    if not len(centres_before):
        return np.concatenate([values[:n_2d], np.zeros(len(centres_now), values.dtype)])
    matched = nearest_centre(centres_now, centres_before)
    return np.concatenate([values[:n_2d], values[n_2d:][matched]])


def match_by_cosine(
    now: torch.Tensor,
    before: torch.Tensor,
    is_3d_now: torch.Tensor,
    is_3d_before: torch.Tensor,
) -> torch.Tensor:
    """
    For each current token, the earlier token with the most cosine-similar embedding.

    Matches stay within a modality (a 2D token maps to an earlier 2D token, a 3D token to an
    earlier 3D token); a modality absent before falls back to all earlier tokens. Returns
    indices into ``before``.
    """
    unit_now = torch.nn.functional.normalize(now.float(), dim=-1)
    unit_before = torch.nn.functional.normalize(before.float(), dim=-1)
    similarity = unit_now @ unit_before.T
    same = is_3d_now[:, None] == is_3d_before[None, :]
    has_match = same.any(dim=1, keepdim=True)
    similarity = torch.where(same | ~has_match, similarity, torch.full_like(similarity, -2.0))
    return similarity.argmax(dim=1)
