"""
VLA-Pruner: dual-level (semantic + action) token selection with temporal smoothing.

Paper: Liu et al., "VLA-Pruner: Temporal-Aware Dual-Level Visual Token Pruning", arXiv
2511.16449; code github.com/MINT-SJTU/VLA-Pruner. Known from the code [C] (see
shared/research/pruning-methods.md section 3):

- tokens are dropped before decoder layer K = 3, scored from layer K-1's head-mean attention;
- semantic score: the last prompt token's attention row (FastV style, recommended) or the mean
  over all query rows ("use_prefil_attention");
- action score: attention of the action tokens at layer 15 (of 32), measured after each step
  and smoothed over a window of w = 3 previous steps with decay 0.8; pruned positions enter the
  history as zeros. The code weights the NEWEST step 0.64 and the oldest 1.0 (weights
  [g^(w-1) .. g^0] applied newest first), the reverse of the paper's "recent = heavier";
  ``weight_order`` picks either;
- no pruning until the history holds w entries (warm-up);
- selection: top-k by each score, union, then DivPrune's greedy max-min diversity on the
  layer-0 input embeddings (the projected visual tokens) down to k.

Here the action tokens are this model's action queries, which run in the same pass as the
prompt (like VLA-Pruner's OpenVLA-OFT variant), so their attention at the action layer is read
by a probe on the same step and enters the history for the next steps.

2D+3D: both scores cover every visual token; 3D entries of the history follow their group
to the nearest centre of the next step (groups are re-sampled each step); the diversity
filter works in the decoder's input space, where 2D and 3D tokens share one width; the final
cut is an exact top-k over the diversity ranking so the per-modality floors hold.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from vla_pruned_ros.model.runner import AttentionProbe, RunState
from vla_pruned_ros.pruning.base import (
    Pruner,
    PrunerConfig,
    StepContext,
    StepOutcome,
    StepPlan,
    register_pruner,
    resolve_layer,
)
from vla_pruned_ros.pruning.budget import select_top_k
from vla_pruned_ros.pruning.correspondence import carry_visual
from vla_pruned_ros.pruning.diversity import diversity_scores

SEMANTIC_QUERIES = {'last_text': 'last_text', 'mean_prefill': 'all'}
WEIGHT_ORDERS = ('code', 'paper')


@dataclass
class VLAPrunerConfig(PrunerConfig):
    """Settings of VLA-Pruner; [C] = as in the released code, [G] = our choice."""

    # Prune before layer K, semantic attention from layer K-1 [C: fastv_k = 3].
    layer: int = 3
    # 'last_text' (FastV style, the authors' recommendation) or 'mean_prefill' (mean over all
    # query rows, use_prefil_attention) [C].
    semantic: str = 'last_text'
    # Layer of the action queries' attention (None = 15/32 of the depth) [C: layer 15 of 32].
    action_layer: Optional[int] = None
    # Temporal smoothing of the action score [C: temporal_w = 3, temporal_gamma = 0.8].
    window: int = 3
    decay: float = 0.8
    # 'code': newest step weighted decay^(w-1), oldest 1 (released code); 'paper': newest 1,
    # older decay^i (the paper's formula) [C/P].
    weight_order: str = 'code'
    # Steps without pruning at episode start (None = until the history is full) [C].
    warmup_steps: Optional[int] = None
    # Pruned positions enter the history as zero attention [C]; False carries their last value.
    zero_pruned: bool = True
    # Greedy max-min diversity down to the budget [C]; False keeps the best union members by
    # the mean of both normalised scores (ablation) [G].
    diversity: bool = True

    def __post_init__(self) -> None:
        if self.semantic not in SEMANTIC_QUERIES:
            raise ValueError(f'semantic must be one of {list(SEMANTIC_QUERIES)}')
        if self.weight_order not in WEIGHT_ORDERS:
            raise ValueError(f'weight_order must be one of {WEIGHT_ORDERS}')
        if self.layer < 1:
            raise ValueError('layer K must be at least 1 (it reads layer K-1)')
        if self.window < 1 or not 0.0 < self.decay <= 1.0:
            raise ValueError('window must be >= 1 and decay in (0, 1]')
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError('warmup_steps must be >= 0')


def history_weights(count: int, window: int, decay: float, order: str) -> list[float]:
    """
    Weights of the ``count`` newest history entries, NEWEST FIRST.

    'paper': 1, decay, decay^2, ... ; 'code': decay^(window-1), decay^(window-2), ... (the
    released code's [g^i for i in (w-1 .. 0)] applied to av_hist[-1 - i]).
    """
    if order == 'paper':
        return [decay**i for i in range(count)]
    return [decay ** (window - 1 - i) for i in range(count)]


def _normalised(values: torch.Tensor) -> torch.Tensor:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else torch.zeros_like(values)


@register_pruner
class VLAPruner(Pruner):
    """Semantic (prefill) + smoothed action attention, union, max-min diversity to the budget."""

    name = 'vla_pruner'
    config_class = VLAPrunerConfig

    def reset(self) -> None:
        """Clear the action-attention history (warm-up starts again)."""
        self._history: list[tuple[np.ndarray, np.ndarray]] = []  # (per token, 3D centres)
        self.last_action_score: Optional[torch.Tensor] = None

    @property
    def warmup(self) -> int:
        """Number of unpruned steps at the start of an episode."""
        cfg = self.config
        return cfg.window if cfg.warmup_steps is None else cfg.warmup_steps

    def _semantic_probe(self) -> AttentionProbe:
        return AttentionProbe(self.config.layer - 1, SEMANTIC_QUERIES[self.config.semantic])

    def _action_probe(self, ctx: StepContext) -> AttentionProbe:
        return AttentionProbe(resolve_layer(self.config.action_layer, ctx.num_layers), 'action')

    def plan(self, ctx: StepContext) -> StepPlan:
        """Action attention every step; semantic attention and the cut at layer K after warm-up."""
        action = self._action_probe(ctx)
        if ctx.target >= ctx.layout.n_visual or len(self._history) < self.warmup:
            return StepPlan(probes={action}, full_step=True)
        return StepPlan(probes={action, self._semantic_probe()},
                        prune_layers={self.config.layer})

    def smoothed_action(self, ctx: StepContext) -> torch.Tensor:
        """S_act over the current visual tokens: weighted history sum, normalised to sum 1."""
        layout = ctx.layout
        entries = list(reversed(self._history))  # newest first
        weights = history_weights(len(entries), self.config.window, self.config.decay,
                                  self.config.weight_order)
        total = np.zeros(layout.n_visual)
        for weight, (values, centres) in zip(weights, entries):
            carried = carry_visual(values, layout.n_2d, layout.centres_3d, centres)
            if carried is not None:
                total += weight * carried
        mass = total.sum()
        return torch.as_tensor(total / mass if mass > 0 else total, dtype=torch.float32)

    def at_layer(self, ctx: StepContext, state: RunState) -> Optional[torch.Tensor]:
        """Top-k of each score, union, greedy max-min diversity down to the budget."""
        layout, k = ctx.layout, ctx.target
        present = state.visual_positions().cpu()
        semantic = torch.full((layout.n_visual,), float('-inf'))
        probe = state.probes[self._semantic_probe()]
        keys = probe.key_positions.cpu()
        visual = keys < layout.n_visual
        semantic[keys[visual]] = probe.received().cpu()[visual]
        action = torch.full((layout.n_visual,), float('-inf'))
        action[present] = self.smoothed_action(ctx)[present]
        self.last_action_score = action
        is_3d = ctx.is_3d
        union = torch.unique(torch.cat([
            select_top_k(semantic, is_3d, k, candidates=present),
            select_top_k(action, is_3d, k, candidates=present),
        ]))
        # Outside the union, the mean of both normalised scores ranks tokens a floor may need.
        fallback = torch.full((layout.n_visual,), float('-inf'))
        fallback[present] = 0.5 * (_normalised(semantic[present]) + _normalised(action[present]))
        if self.config.diversity:
            rows = torch.searchsorted(state.positions.cpu(), torch.arange(layout.n_visual))
            rows = rows.clamp_max(state.positions.numel() - 1)
            embeddings = state.input_embeddings[0][rows.to(state.input_embeddings.device)]
            scores = diversity_scores(embeddings, k, candidates=union)
        else:
            scores = torch.full((layout.n_visual,), float('-inf'))
            scores[union] = 10.0 + fallback[union]
        outside = torch.ones(layout.n_visual, dtype=torch.bool)
        outside[union] = False
        scores[outside] = fallback[outside] - 3.0
        kept = ctx.top_k(scores, candidates=present)
        ctx.record_stage('vla_pruner', kept)
        ctx.extras['union_size'] = int(union.numel())
        return kept

    def after_step(self, ctx: StepContext, outcome: StepOutcome) -> None:
        """Append this step's action-query attention (zeros where pruned) to the history."""
        layout = ctx.layout
        probe = outcome.probes[self._action_probe(ctx)]
        keys = probe.key_positions.cpu()
        visual = keys < layout.n_visual
        if self.config.zero_pruned or not self._history:
            values = np.zeros(layout.n_visual)
        else:
            values, centres = self._history[-1]
            values = carry_visual(values, layout.n_2d, layout.centres_3d, centres)
        values = np.array(values, np.float64)
        values[keys[visual].numpy()] = probe.received().cpu()[visual].double().numpy()
        self._history = (self._history + [(values, layout.centres_3d.copy())])[
            -self.config.window:
        ]
