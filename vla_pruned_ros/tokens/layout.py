"""
Token layout: what each position of the decoder sequence holds, travelling with the tokens.

The sequence order is fixed: 2D patch tokens, 3D point-group tokens, instruction tokens, an
optional proprioception token, then the action queries. Visual tokens come first, so a visual
index (0 .. n_2d + n_3d - 1) is also the token's original sequence position, and text and action
queries sit after the visual tokens, where a causal decoder lets them attend to every visual
token (the FastV / OpenVLA arrangement that attention-based pruners rely on).
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

MODALITY_2D = 0
MODALITY_3D = 1
MODALITY_TEXT = 2
MODALITY_PROPRIO = 3
MODALITY_ACTION = 4

MODALITY_NAMES = {
    MODALITY_2D: '2d',
    MODALITY_3D: '3d',
    MODALITY_TEXT: 'text',
    MODALITY_PROPRIO: 'proprio',
    MODALITY_ACTION: 'action',
}


@dataclass
class TokenLayout:
    """
    Metadata of one step's token sequence before any pruning.

    Attributes
    ----------
    n_2d, n_3d, n_text, n_proprio, n_action:
        Token counts per segment, in sequence order.
    grid_shape:
        (rows, cols) of the 2D patch grid; 2D token i is patch (i // cols, i % cols).
    centres_3d:
        (n_3d, 3) float32 group centres in the camera frame (metres).
    patch_of_3d:
        (n_3d,) int64 index of the 2D patch each 3D centre projects into, -1 if none.
    instruction:
        The instruction text the text tokens encode.

    """

    n_2d: int
    n_3d: int
    n_text: int
    n_proprio: int
    n_action: int
    grid_shape: tuple = (0, 0)
    centres_3d: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    patch_of_3d: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    instruction: str = ''

    def __post_init__(self) -> None:
        rows, cols = self.grid_shape
        if self.n_2d and rows * cols != self.n_2d:
            raise ValueError(f'grid {self.grid_shape} does not hold {self.n_2d} 2D tokens')
        if len(self.centres_3d) != self.n_3d or len(self.patch_of_3d) != self.n_3d:
            raise ValueError('centres_3d and patch_of_3d must have one row per 3D token')

    @property
    def n_visual(self) -> int:
        """Visual tokens (2D + 3D): the only tokens a pruner may remove."""
        return self.n_2d + self.n_3d

    @property
    def length(self) -> int:
        """Full sequence length."""
        return self.n_visual + self.n_text + self.n_proprio + self.n_action

    @property
    def text_positions(self) -> torch.Tensor:
        """Sequence positions of the instruction tokens."""
        start = self.n_visual
        return torch.arange(start, start + self.n_text)

    @property
    def action_positions(self) -> torch.Tensor:
        """Sequence positions of the action queries (always the last tokens)."""
        return torch.arange(self.length - self.n_action, self.length)

    @property
    def non_visual_positions(self) -> torch.Tensor:
        """Positions of every token that is never pruned."""
        return torch.arange(self.n_visual, self.length)

    def modality(self) -> torch.Tensor:
        """(length,) int64 modality code of every token."""
        codes = [
            (MODALITY_2D, self.n_2d),
            (MODALITY_3D, self.n_3d),
            (MODALITY_TEXT, self.n_text),
            (MODALITY_PROPRIO, self.n_proprio),
            (MODALITY_ACTION, self.n_action),
        ]
        return torch.cat([torch.full((n,), code, dtype=torch.int64) for code, n in codes])

    def is_3d(self, visual_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Bool mask: which of the given visual indices (default: all) are 3D tokens."""
        if visual_indices is None:
            visual_indices = torch.arange(self.n_visual)
        return visual_indices >= self.n_2d

    def grid_coords(self) -> np.ndarray:
        """(n_2d, 2) int64 (row, col) of each 2D token."""
        cols = max(self.grid_shape[1], 1)
        index = np.arange(self.n_2d)
        return np.stack([index // cols, index % cols], axis=1)

    def count(self, visual_indices: torch.Tensor) -> tuple:
        """(n_2d, n_3d) among the given visual indices."""
        n_3d = int((visual_indices >= self.n_2d).sum())
        return int(visual_indices.numel()) - n_3d, n_3d
