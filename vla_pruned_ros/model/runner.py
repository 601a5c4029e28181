"""
Layer-by-layer decoder runner with pruning hook points and on-demand attention probes.

The runner drives the layers of a transformers decoder (Qwen2 / Llama family) itself, so that
tokens can be dropped between layers. Two rules keep the result exact:

- survivors keep their ORIGINAL rotary positions (RoPE is computed from the kept positions);
- the attention mask is rebuilt for the shorter sequence from its length alone: passing the
  gappy kept positions to ``create_causal_mask`` would be read as packed-sequence boundaries and
  silently give a block-diagonal mask (verified pitfall).

With ``reuse`` some visual tokens are not computed at all: their keys/values come from an
earlier step and the computed tokens attend over both (see :mod:`vla_pruned_ros.model.kv_reuse`);
``capture_kv`` returns the step's visual keys/values per layer for such later reuse. Without
either, layers run exactly as before.

Layers always run with SDPA. Where a pruner asks for attention probabilities (of a layer, from
some query rows), the runner captures that layer's query/key projections with forward hooks and
computes softmax(q k^T) for just those rows: no eager attention, no recomputed projections.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
import time
from typing import Optional

import torch
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from vla_pruned_ros.model.kv_reuse import KVCache, KVReuse, StepKV, layout_signature
from vla_pruned_ros.tokens.layout import TokenLayout

QUERY_KINDS = ('last_text', 'text', 'action', 'text_action', 'all')


@dataclass(frozen=True)
class AttentionProbe:
    """
    A request for head-averaged attention probabilities of one decoder layer.

    ``queries`` picks the query rows: 'last_text' (the last instruction token, FastV),
    'text' (all instruction tokens), 'action' (the action queries), 'text_action' (both) or
    'all' (every token, e.g. VLA-Pruner's mean prefill attention).
    """

    layer: int
    queries: str

    def __post_init__(self) -> None:
        if self.queries not in QUERY_KINDS:
            raise ValueError(f'unknown query kind {self.queries!r}; use one of {QUERY_KINDS}')


@dataclass
class ProbeResult:
    """Attention of ``query_positions`` rows over ``key_positions`` (original positions)."""

    weights: torch.Tensor  # [n_queries, n_keys] float32, rows sum to 1
    query_positions: torch.Tensor
    key_positions: torch.Tensor

    def received(self) -> torch.Tensor:
        """Mean attention each key received over the query rows, [n_keys]."""
        return self.weights.mean(dim=0)


@dataclass
class RunState:
    """What a pruning callback sees between layers."""

    layer: int  # the next layer to run
    hidden: torch.Tensor  # [1, n, width] input of that layer
    positions: torch.Tensor  # [n] original sequence positions of the current tokens
    layout: TokenLayout
    probes: dict[AttentionProbe, ProbeResult]
    input_embeddings: torch.Tensor  # [1, n, width] layer-0 input of the current tokens

    def visual_positions(self) -> torch.Tensor:
        """Original positions (= visual indices) of the visual tokens still present."""
        return self.positions[self.positions < self.layout.n_visual]


@dataclass
class RunOutput:
    """Result of one decoder pass."""

    last_hidden: torch.Tensor  # [1, n, width] output of the last layer, before the final norm
    normed: torch.Tensor  # [1, n, width] after the final norm (what the head reads)
    positions: torch.Tensor  # [n] original positions of the tokens that reached the end
    probes: dict[AttentionProbe, ProbeResult] = field(default_factory=dict)
    overhead_s: float = 0.0  # time in probes and pruning callbacks
    tokens_per_layer: list = field(default_factory=list)
    kv: Optional[KVCache] = None  # per-layer visual keys/values (with capture_kv or reuse)
    n_reused: int = 0  # visual tokens whose keys/values came from the cache


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timers measure it."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _capture(store: dict, key: str) -> Callable:
    """A forward hook storing a module's output under ``key``."""

    def hook(_module, _inputs, output):
        store[key] = output

    return hook


PruneCallback = Callable[[RunState], Optional[torch.Tensor]]


class LayerRunner:
    """Run a transformers decoder layer by layer with probes and token dropping."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.decoder = decoder
        self.config = decoder.config
        self.layers = decoder.layers
        self.num_heads = self.config.num_attention_heads
        self.num_kv_heads = self.config.num_key_value_heads
        self.head_dim = getattr(
            self.config, 'head_dim', None
        ) or self.config.hidden_size // self.num_heads

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    def _mask(self, hidden: torch.Tensor):
        return create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=None,
            past_key_values=None,
            position_ids=None,
        )

    @staticmethod
    def _query_rows(kind: str, positions: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Indices (into the current sequence) of the query rows of a probe kind."""
        text_start = layout.n_visual
        text_end = text_start + layout.n_text
        action_start = layout.length - layout.n_action
        if kind == 'all':
            return torch.arange(positions.numel(), device=positions.device)
        if kind == 'last_text':
            selected = positions == text_end - 1
        elif kind == 'text':
            selected = (positions >= text_start) & (positions < text_end)
        elif kind == 'action':
            selected = positions >= action_start
        else:  # text_action
            selected = ((positions >= text_start) & (positions < text_end)) | (
                positions >= action_start
            )
        return torch.nonzero(selected, as_tuple=False).flatten()

    def _attention(
        self,
        query_states: torch.Tensor,
        key_states: torch.Tensor,
        cos_sin: tuple,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Head-mean causal attention probabilities of ``rows`` over all keys, [rows, n]."""
        n = key_states.shape[1]
        cos, sin = cos_sin
        q = query_states[:, rows].view(1, rows.numel(), self.num_heads, self.head_dim)
        k = key_states.view(1, n, self.num_kv_heads, self.head_dim)
        q = q.transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos[:, rows], sin[:, rows])
        _, k = apply_rotary_pos_emb(k.transpose(1, 2), k.transpose(1, 2), cos, sin)
        groups = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.head_dim**-0.5
        # Causal: a query at current index i sees keys 0..i (current order = original order).
        key_index = torch.arange(n, device=scores.device)
        scores = scores.masked_fill(key_index[None, None, None, :] > rows[None, None, :, None],
                                    float('-inf'))
        return torch.softmax(scores, dim=-1).mean(dim=1)[0]

    def _attention_merged(
        self,
        query_states: torch.Tensor,
        cos_sin: tuple,
        rows: torch.Tensor,
        step_kv: StepKV,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Head-mean attention of ``rows`` over computed + reused keys (RoPE already applied)."""
        cos, sin = cos_sin
        q = query_states[:, rows].view(1, rows.numel(), self.num_heads, self.head_dim)
        q = q.transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos[:, rows], sin[:, rows])
        k = step_kv.last_keys.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.head_dim**-0.5
        future = step_kv.key_positions[None, :] > positions[rows][:, None]
        scores = scores.masked_fill(future[None, None], float('-inf'))
        return torch.softmax(scores, dim=-1).mean(dim=1)[0]

    def run(
        self,
        embeds: torch.Tensor,
        layout: TokenLayout,
        probes: Iterable[AttentionProbe] = (),
        prune_layers: Iterable[int] = (),
        on_prune: Optional[PruneCallback] = None,
        positions: Optional[torch.Tensor] = None,
        reuse: Optional[KVReuse] = None,
        capture_kv: bool = False,
    ) -> RunOutput:
        """
        Run all layers over ``embeds`` [1, n, width].

        ``positions`` are the original positions of the given tokens (default 0..n-1; pass the
        kept positions when tokens were removed before the decoder). Before each layer in
        ``prune_layers`` the callback gets a :class:`RunState` and may return the original
        positions of the visual tokens to keep; non-visual tokens are always kept.
        ``reuse`` names visual positions (absent from ``embeds``) whose keys/values come from
        a cache; ``capture_kv`` asks for this step's visual keys/values in ``RunOutput.kv``.
        """
        device = embeds.device
        if positions is None:
            positions = torch.arange(embeds.shape[1], device=device)
        positions = positions.to(device)
        probes = list(probes)
        prune_layers = set(prune_layers)
        # a cut past the last layer would silently never happen
        for layer in prune_layers:
            if not 0 <= layer < self.num_layers:
                raise ValueError(f'prune layer {layer} outside 0..{self.num_layers - 1}')
        probes_by_layer: dict[int, list] = {}
        for probe in probes:
            if not 0 <= probe.layer < self.num_layers:
                raise ValueError(f'probe layer {probe.layer} outside 0..{self.num_layers - 1}')
            probes_by_layer.setdefault(probe.layer, []).append(probe)
        results: dict[AttentionProbe, ProbeResult] = {}
        overhead = 0.0
        hidden = embeds
        input_embeddings = embeds
        tokens_per_layer = []
        mask = self._mask(hidden)
        cos_sin = self.decoder.rotary_emb(hidden, positions.unsqueeze(0))
        step_kv = None
        if reuse is not None or capture_kv:
            step_kv = StepKV(layout.n_visual, reuse, self.num_layers)
            step_kv.set_positions(positions)
        for index, layer in enumerate(self.layers):
            if index in prune_layers and on_prune is not None:
                synchronize(device)
                started = time.perf_counter()
                state = RunState(index, hidden, positions, layout, results, input_embeddings)
                keep_visual = on_prune(state)
                if keep_visual is not None:
                    keep = self._keep_rows(positions, keep_visual.to(device), layout)
                    hidden = hidden[:, keep]
                    input_embeddings = input_embeddings[:, keep]
                    positions = positions[keep]
                    mask = self._mask(hidden)
                    cos_sin = self.decoder.rotary_emb(hidden, positions.unsqueeze(0))
                    if step_kv is not None:
                        step_kv.set_positions(positions)
                synchronize(device)
                overhead += time.perf_counter() - started
            tokens_per_layer.append(int(positions.numel()))
            layer_probes = probes_by_layer.get(index)
            captured: dict[str, torch.Tensor] = {}
            handles = []
            if layer_probes:
                attn = layer.self_attn
                handles.append(attn.q_proj.register_forward_hook(_capture(captured, 'q')))
                handles.append(attn.k_proj.register_forward_hook(_capture(captured, 'k')))
            try:
                if step_kv is None:
                    hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin)
                else:
                    hidden = layer(
                        hidden,
                        attention_mask=step_kv.mask if step_kv.reusing else mask,
                        position_embeddings=cos_sin,
                        past_key_values=step_kv,
                    )
            finally:
                for handle in handles:
                    handle.remove()
            if isinstance(hidden, tuple):  # older transformers return (hidden, ...)
                hidden = hidden[0]
            if layer_probes:
                synchronize(device)
                started = time.perf_counter()
                for probe in layer_probes:
                    rows = self._query_rows(probe.queries, positions, layout)
                    if step_kv is not None and step_kv.reusing:
                        weights = self._attention_merged(
                            captured['q'], cos_sin, rows, step_kv, positions
                        )
                        keys = step_kv.key_positions.clone()
                    else:
                        weights = self._attention(captured['q'], captured['k'], cos_sin, rows)
                        keys = positions.clone()
                    results[probe] = ProbeResult(weights, positions[rows], keys)
                synchronize(device)
                overhead += time.perf_counter() - started
        normed = self.decoder.norm(hidden)
        output = RunOutput(hidden, normed, positions, results, overhead, tokens_per_layer)
        if step_kv is not None:
            output.kv = step_kv.cache(layout_signature(layout))
            output.n_reused = step_kv.n_reused
        return output

    @staticmethod
    def _keep_rows(
        positions: torch.Tensor, keep_visual: torch.Tensor, layout: TokenLayout
    ) -> torch.Tensor:
        """Indices into the current sequence of the kept visual tokens plus all others."""
        is_visual = positions < layout.n_visual
        keep_mask = ~is_visual | torch.isin(positions, keep_visual)
        kept_visual = int((keep_mask & is_visual).sum())
        if kept_visual != keep_visual.numel():
            raise ValueError(
                f'pruner kept {keep_visual.numel()} visual positions but only {kept_visual} of'
                ' them are still in the sequence (a token cannot come back once dropped)'
            )
        return torch.nonzero(keep_mask, as_tuple=False).flatten()
