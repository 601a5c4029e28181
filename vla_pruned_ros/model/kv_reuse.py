"""
Key/value reuse across control steps (the VLA-Cache path), for the layer runner.

A step may take the keys and values of some visual tokens from an earlier step instead of
computing them: those tokens are not in the sequence at all (no projector, no 3D encoder, no
Q/K/V projection, no MLP). At every layer the tokens that are computed attend over
[computed + reused] keys with a causal mask by ORIGINAL position. Cached keys already carry
RoPE at their original positions, and within an episode the layout (hence every visual
position) stays the same, so the reused keys of an unchanged token are exactly what computing
it again would give: reuse only approximates where a reused token's input has changed.

The runner also records, per layer, the visual keys and values a step used (computed and
reused alike) as a :class:`KVCache` that the next step can reuse from.
"""

from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class LayerKV:
    """Keys and values of some visual tokens at one layer, ordered by original position."""

    positions: torch.Tensor  # [n] original positions, ascending
    keys: torch.Tensor  # [1, kv_heads, n, head_dim], RoPE applied
    values: torch.Tensor  # [1, kv_heads, n, head_dim]

    def select(self, wanted: torch.Tensor) -> 'LayerKV':
        """The rows of ``wanted`` positions (sorted, all present), in that order."""
        wanted = wanted.to(self.positions.device)
        rows = torch.searchsorted(self.positions, wanted)
        if rows.numel() and (
            int(rows.max()) >= self.positions.numel()
            or not bool(torch.equal(self.positions[rows], wanted))
        ):
            raise ValueError('asked to reuse positions the cache does not hold at every layer')
        return LayerKV(wanted, self.keys.index_select(2, rows), self.values.index_select(2, rows))


class KVCache:
    """
    Per-layer visual keys/values of one finished step.

    ``signature`` identifies the layout the keys were computed for (token counts and
    instruction): keys are only valid for a step with the same signature, since positions and
    the causal context depend on it.
    """

    def __init__(self, layers: list[LayerKV], signature: tuple = ()) -> None:
        self.layers = layers
        self.signature = signature

    @property
    def num_layers(self) -> int:
        """Number of decoder layers covered."""
        return len(self.layers)

    def reusable_positions(self) -> torch.Tensor:
        """Positions with keys/values at every layer (a token dropped mid-stack has not)."""
        if not self.layers:
            return torch.zeros(0, dtype=torch.int64)
        common = self.layers[0].positions
        for layer in self.layers[1:]:
            common = common[torch.isin(common, layer.positions)]
        return common.cpu()

    def nbytes(self) -> int:
        """Memory held by the cached tensors."""
        return sum(
            layer.keys.numel() * layer.keys.element_size()
            + layer.values.numel() * layer.values.element_size()
            for layer in self.layers
        )


@dataclass
class KVReuse:
    """Original visual positions whose keys/values a step takes from ``cache``."""

    positions: torch.Tensor  # sorted, unique
    cache: KVCache


def layout_signature(layout: Any) -> tuple:
    """What must not change between two steps for keys of one to serve the other."""
    return (layout.n_2d, layout.n_3d, layout.n_text, layout.n_proprio, layout.n_action,
            layout.instruction)


class StepKV:
    """
    The ``past_key_values`` object the runner gives every decoder layer during one pass.

    transformers' attention calls ``update(keys, values, layer_idx)`` after RoPE and attends
    over what it returns. Here ``update`` merges the reused keys of that layer with the
    computed ones in original-position order (so probes read a sorted key axis), and keeps
    the visual part as this step's cache. Without reuse it returns its inputs unchanged.
    """

    def __init__(self, n_visual: int, reuse: Optional[KVReuse], num_layers: int) -> None:
        self.n_visual = n_visual
        self.reused = (
            [reuse.cache.layers[i].select(reuse.positions) for i in range(num_layers)]
            if reuse is not None and reuse.positions.numel()
            else None
        )
        self.captured: list[Optional[LayerKV]] = [None] * num_layers
        self.key_positions: Optional[torch.Tensor] = None
        self.mask: Optional[torch.Tensor] = None
        self.last_keys: Optional[torch.Tensor] = None
        self._order: Optional[torch.Tensor] = None
        self._visual_keys = 0

    @property
    def reusing(self) -> bool:
        """True when some tokens' keys/values come from the cache."""
        return self.reused is not None

    @property
    def n_reused(self) -> int:
        """Number of reused tokens."""
        return int(self.reused[0].positions.numel()) if self.reused else 0

    def set_positions(self, positions: torch.Tensor) -> None:
        """Original positions of the computed tokens (at the start and after each drop)."""
        if not self.reusing:
            self.key_positions = positions
        else:
            merged = torch.cat([self.reused[0].positions.to(positions.device), positions])
            self._order = torch.argsort(merged)
            self.key_positions = merged[self._order]
            # Causal by original position; True = may attend. Shared by heads and batch.
            self.mask = (self.key_positions[None, :] <= positions[:, None])[None, None]
        # Visual tokens come first in position order, so they are a leading slice of the keys.
        self._visual_keys = int((self.key_positions < self.n_visual).sum())

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
        *args: Any, **kwargs: Any,
    ) -> tuple:
        """Merge cached and computed keys/values of ``layer_idx`` and record the visual part."""
        if self.reusing:
            cached = self.reused[layer_idx]
            dtype = key_states.dtype
            keys = torch.cat([cached.keys.to(dtype), key_states], dim=2).index_select(
                2, self._order)
            values = torch.cat([cached.values.to(dtype), value_states], dim=2).index_select(
                2, self._order)
        else:
            keys, values = key_states, value_states
        n_visual = self._visual_keys
        self.captured[layer_idx] = LayerKV(
            self.key_positions[:n_visual], keys[:, :, :n_visual], values[:, :, :n_visual]
        )
        self.last_keys = keys
        return keys, values

    def cache(self, signature: tuple) -> KVCache:
        """The visual keys/values of every layer of this pass."""
        layers = [layer for layer in self.captured if layer is not None]
        return KVCache(layers, signature)


def reuse_attention_flops(
    heads: int, head_dim: int, tokens_per_layer: list[int], n_reused: int
) -> float:
    """Extra attention FLOPs (scores and weighted values) of computed tokens over reused keys."""
    return sum(2 * 2.0 * n * n_reused * heads * head_dim for n in tokens_per_layer)
