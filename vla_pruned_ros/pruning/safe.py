"""
SAFE-Pruner: early action-query attention plus a forecast of deep-layer saliency, by keyframes.

Paper: Ma et al., "SAFE-Pruner", arXiv 2605.29662 (ECCV 2026); code github.com/msssl/SAFE-Pruner
(OpenVLA-OFT). Known from the code [C] (see shared/research/pruning-methods.md section 5):

1. Keyframe cache: at a keyframe the step runs unpruned and stores, over the visual tokens,
   the layer-0 attention of the last prompt token ("avoids the uniform layer-0 attention of
   other rows"), the deepest layer's attention averaged over the action-query rows, and the
   projected token embeddings (the decoder's input). The first step is a keyframe.
2. Correspondence: each current visual token is matched to the keyframe token with the most
   cosine-similar embedding ("semantic attention consistency": attention stays on the same
   entity as it moves), giving forecasts F_0(i) and F_deep(i) of its saliency.
3. Subtask division at layer 1: c = cos(F_0, the current layer-0 last-token attention). If
   c < 0.92 (run_eval.sh; the code default is 0.95) the step becomes a keyframe: nothing is
   pruned and the cache is refreshed after the pass.
4. Otherwise tokens are dropped before layer K = 3 by
   s(i) = mean over action queries of layer-2 attention + lambda * (F_0(i) + F_deep(i)) / 2,
   lambda = 1 in run_eval.sh (code default 0.5), top-k.

This model's action queries are SAFE's action placeholders (same single-pass layout as
OpenVLA-OFT). The keyframe test needs this step's layer-0 attention, so the decision is made
inside the pass: a keyframe promotes the step to a full one from layer K on (the framework's
``ctx.plan.full_step``); the layers before K are unpruned either way.

2D+3D: saliencies cover every visual token; correspondence stays within a modality (a patch
maps to a keyframe patch, a point group to a keyframe group); the final top-k honours the
per-modality floors.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from vla_pruned_ros.model.runner import AttentionProbe, ProbeResult, RunState
from vla_pruned_ros.pruning.base import (
    Pruner,
    PrunerConfig,
    StepContext,
    StepOutcome,
    StepPlan,
    register_pruner,
    resolve_layer,
)
from vla_pruned_ros.pruning.correspondence import match_by_cosine


@dataclass
class SafeConfig(PrunerConfig):
    """Settings of SAFE-Pruner; [C] = as in the released code / run_eval.sh, [G] = our choice."""

    # Prune before layer K, early score from layer K-1's action-query attention [C: FASTV_K=3].
    layer: int = 3
    # Layers whose stored saliency forms the forecast [C: AVG_LAYERS="0,31"]: layer 0 (last
    # prompt token row) and the deepest layer (None = last; action-query rows).
    deep_layer: Optional[int] = None
    # Weight of the forecast [C: LAMBDA = 1 in run_eval.sh, 0.5 code default].
    forecast_weight: float = 1.0
    # New keyframe when cos(forecast, current layer-0 attention) falls below this [C: 0.92 in
    # run_eval.sh, 0.95 code default].
    keyframe_similarity: float = 0.92
    # Force a keyframe after this many pruned steps (0 = never) [G, off as in the code].
    max_keyframe_interval: int = 0

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError('layer K must be at least 1 (scores read layer K-1)')
        if self.forecast_weight < 0 or not -1.0 <= self.keyframe_similarity <= 1.0:
            raise ValueError('forecast_weight must be >= 0 and keyframe_similarity in [-1, 1]')
        if self.max_keyframe_interval < 0:
            raise ValueError('max_keyframe_interval must be >= 0')


def _visual_attention(probe: ProbeResult, n_visual: int) -> tuple:
    """(visual key positions, attention they receive averaged over the probe's rows)."""
    keys = probe.key_positions.cpu()
    visual = keys < n_visual
    return keys[visual], probe.received().cpu()[visual].float()


@register_pruner
class SafePruner(Pruner):
    """Early action-query attention plus deep saliency forecast from the last keyframe."""

    name = 'safe'
    config_class = SafeConfig

    def reset(self) -> None:
        """Forget the keyframe: the next step is one."""
        self._key_embeddings: Optional[torch.Tensor] = None  # [n_visual, width] float32
        self._key_is_3d: Optional[torch.Tensor] = None
        self._key_shallow: Optional[torch.Tensor] = None  # layer-0 saliency per keyframe token
        self._key_deep: Optional[torch.Tensor] = None
        self._pruned_since_keyframe = 0
        self.last_similarity: Optional[float] = None
        self.keyframes = 0

    def _probes(self, ctx: StepContext) -> tuple:
        deep = resolve_layer(
            -1 if self.config.deep_layer is None else self.config.deep_layer, ctx.num_layers
        )
        return (AttentionProbe(0, 'last_text'), AttentionProbe(self.config.layer - 1, 'action'),
                AttentionProbe(deep, 'action'))

    def plan(self, ctx: StepContext) -> StepPlan:
        """Probe every step; whether it is a keyframe is decided at layer K."""
        probes = set(self._probes(ctx))
        if ctx.target >= ctx.layout.n_visual:
            return StepPlan(probes=probes, full_step=True)
        return StepPlan(probes=probes, prune_layers={self.config.layer})

    def at_layer(self, ctx: StepContext, state: RunState) -> Optional[torch.Tensor]:
        """Keyframe test on layer-0 attention; else early attention + lambda x forecast."""
        cfg, layout = self.config, ctx.layout
        shallow_probe, early_probe, _ = self._probes(ctx)
        visual_rows = torch.nonzero(state.positions < layout.n_visual).flatten()
        present = state.positions[visual_rows].cpu()
        embeddings = state.input_embeddings[0, visual_rows].float().cpu()
        keyframe = self._key_embeddings is None or bool(
            cfg.max_keyframe_interval
            and self._pruned_since_keyframe >= cfg.max_keyframe_interval
        )
        if not keyframe:
            # Forecast: keyframe saliency of the most similar keyframe token.
            match = match_by_cosine(embeddings, self._key_embeddings, ctx.is_3d[present],
                                    self._key_is_3d)
            forecast_shallow, forecast_deep = self._key_shallow[match], self._key_deep[match]
            keys, shallow_now = _visual_attention(state.probes[shallow_probe], layout.n_visual)
            now = torch.zeros(layout.n_visual)
            now[keys] = shallow_now
            similarity = float(torch.nn.functional.cosine_similarity(
                forecast_shallow, now[present], dim=0, eps=1e-12))
            self.last_similarity = similarity
            ctx.extras['keyframe_similarity'] = similarity
            keyframe = similarity < cfg.keyframe_similarity
        if keyframe:
            # A new subtask: run the rest unpruned and refresh the cache after the pass.
            if present.numel() == layout.n_visual:
                ctx.extras['keyframe_embeddings'] = embeddings
            ctx.plan.full_step = True
            return None
        keys, early = _visual_attention(state.probes[early_probe], layout.n_visual)
        scores = torch.full((layout.n_visual,), float('-inf'))
        scores[keys] = early
        forecast = 0.5 * (forecast_shallow + forecast_deep)
        scores[present] = scores[present] + cfg.forecast_weight * forecast
        kept = ctx.top_k(scores, candidates=present)
        ctx.record_stage('safe', kept)
        return kept

    def after_step(self, ctx: StepContext, outcome: StepOutcome) -> None:
        """At a keyframe, store layer-0 and deepest saliency and the projected embeddings."""
        embeddings = ctx.extras.get('keyframe_embeddings')
        if embeddings is None:
            self._pruned_since_keyframe += 0 if ctx.plan.full_step else 1
            return
        shallow_probe, _, deep_probe = self._probes(ctx)
        layout = ctx.layout
        saliency = []
        for probe in (shallow_probe, deep_probe):
            keys, values = _visual_attention(outcome.probes[probe], layout.n_visual)
            full = torch.zeros(layout.n_visual)
            full[keys] = values
            saliency.append(full)
        self._key_shallow, self._key_deep = saliency
        self._key_embeddings = embeddings
        self._key_is_3d = ctx.is_3d.clone()
        self._pruned_since_keyframe = 0
        self.keyframes += 1

