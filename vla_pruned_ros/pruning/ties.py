"""
TIES: tau-guided inter-layer efficient selection (attention magnitude vs ranking consistency).

Paper: Liu et al., "Beyond Attention Magnitude: ... (TIES)", arXiv 2603.24941 (no code). Known
([P] abstract, [S] a secondary deep-read; see shared/research/pruning-methods.md section 2):

- high-attention tokens can hurt: whether attention can be trusted is task dependent [P];
- tau = Kendall tau-b between the top-k token rankings of adjacent layers, averaged over the
  layer pairs [S]; offline calibration over M = 100 frames stores the tau distribution and its
  median [S];
- online, tau is recomputed only when a frame-similarity detector finds the frame has moved
  away from an anchor frame (similarity < gamma; 0.7 in a worked example) [S];
- of the rho N kept tokens, N_top = floor(w_t rho N) come from attention magnitude and the rest
  from uniform (or DivPrune-style diverse) sampling of the others, with
  w_t = Interpolate(tau_cur, tau_med) (Soft-TIES) [S]; Hard-TIES switches outright to
  uniform/diverse sampling when tau exceeds a threshold [S];
- the secondary source contradicts itself on the direction (high tau = rankings "locked",
  attention untrustworthy, vs a worked example giving high tau MORE top-attention tokens), so
  the direction is the ``tau_direction`` flag, to be chosen on a validation split [G].

Reconstructed [G]: the layers (select before layer K = 3 by layer K-1 attention; tau over the
adjacent pairs of layers 0 .. K-1), the top-k of the ranking (the union of both layers' top-k,
k = the budget), the interpolation (piecewise linear through the calibrated 25 / 50 / 75 %
quantiles to w = 0 / 0.5 / 1) and the frame similarity (cosine of the vision tower's patch
features).

2D+3D: attention and tau rank all visual tokens together; frame similarity is the lower of
the 2D feature cosine and a 3D term exp(-chamfer distance of the group centres / scale), so a
change in either modality triggers a new tau; uniform sampling strides over the 2D-then-3D
token list (each modality gets its share); diverse sampling works on the decoder input
embeddings, shared by both modalities; the final cut is an exact top-k so floors hold.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from vla_pruned_ros.model.runner import AttentionProbe, ProbeResult, RunState
from vla_pruned_ros.pruning.base import (
    Pruner,
    PrunerConfig,
    StepContext,
    StepPlan,
    register_pruner,
)
from vla_pruned_ros.pruning.budget import select_top_k
from vla_pruned_ros.pruning.correspondence import squared_distances
from vla_pruned_ros.pruning.diversity import PICKED_BASE, diversity_scores

VARIANTS = ('soft', 'hard')
DIRECTIONS = ('high_unreliable', 'high_reliable')
FILLS = ('uniform', 'diverse')
QUERIES = ('last_text', 'text', 'action', 'text_action')


@dataclass
class TiesConfig(PrunerConfig):
    """Settings of TIES; [S] = from notes on the paper, [G] = our reconstruction."""

    # Tokens are selected before layer K using layer K-1 attention magnitude [G: K = 2-3].
    layer: int = 3
    # Layers whose adjacent pairs give tau; empty = 0 .. K-1 [G].
    tau_layers: tuple = ()
    # Query rows of the attention [G]: 'last_text' as FastV; 'action' = the action queries.
    queries: str = 'last_text'
    # Tokens in each layer's top-k ranking; 0 = the step's budget (at least 4) [G].
    rank_k: int = 0
    # JSON written by `vla-pruned-ros ties-calibrate` [S: calibrated tau median]; it replaces
    # tau_median / tau_low / tau_high. Without one the defaults below are used [G].
    calibration_file: str = ''
    tau_median: float = 0.5
    tau_low: float = 0.3
    tau_high: float = 0.7
    # Quantiles of the calibrated distribution used as tau_low / tau_high [G].
    low_quantile: float = 0.25
    high_quantile: float = 0.75
    # 'soft': continuous w_t; 'hard': all sampled when tau crosses the threshold, else all by
    # attention [S]. hard_threshold None = the (calibrated) median [G].
    variant: str = 'soft'
    hard_threshold: Optional[float] = None
    # 'high_unreliable': high tau -> fewer top-attention tokens (the paper's story);
    # 'high_reliable': the worked example's mapping [S, contradictory].
    tau_direction: str = 'high_unreliable'
    # How the rest of the budget is sampled: evenly strided or greedy max-min diverse [S].
    fill: str = 'uniform'
    # Recompute tau when the frame similarity to the anchor frame drops below this [S: 0.7].
    similarity_threshold: float = 0.7
    # Length scale of the 3D term of the frame similarity, metres [G].
    centre_scale_m: float = 0.05

    def __post_init__(self) -> None:
        for name, value, allowed in (('variant', self.variant, VARIANTS),
                                     ('tau_direction', self.tau_direction, DIRECTIONS),
                                     ('fill', self.fill, FILLS),
                                     ('queries', self.queries, QUERIES)):
            if value not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {value!r}')
        if self.layer < 1:
            raise ValueError('layer K must be at least 1 (it reads layer K-1)')
        self.tau_layers = tuple(int(layer) for layer in self.tau_layers)
        # tau is read at the cut, so its layers must have run by then
        if len(self.pair_layers()) < 2 or max(self.pair_layers()) >= self.layer:
            raise ValueError(f'tau compares two or more layers (one adjacent pair at least) below'
                             f' layer K = {self.layer}; got {self.pair_layers()} (K >= 2, a'
                             f' decoder of 3 layers or more)')
        if not -1.0 <= self.tau_low <= self.tau_median <= self.tau_high <= 1.0:
            raise ValueError('need -1 <= tau_low <= tau_median <= tau_high <= 1')
        if not 0.0 <= self.low_quantile <= 0.5 <= self.high_quantile <= 1.0:
            raise ValueError('need 0 <= low_quantile <= 0.5 <= high_quantile <= 1')
        if self.rank_k < 0 or self.centre_scale_m <= 0:
            raise ValueError('rank_k must be >= 0 and centre_scale_m > 0')

    def pair_layers(self) -> tuple:
        """The layers whose adjacent pairs give tau."""
        return self.tau_layers or tuple(range(self.layer))


def kendall_tau_b(x: torch.Tensor, y: torch.Tensor) -> float:
    """
    Kendall tau-b of two score vectors: (P - Q) / sqrt((P + Q + T)(P + Q + U)).

    P / Q count concordant / discordant pairs, T / U pairs tied only in x / only in y. 0 when
    either ranking is all ties or there are fewer than two items.
    """
    n = x.numel()
    if n < 2:
        return 0.0
    dx = torch.sign(x[:, None] - x[None, :]).double()
    dy = torch.sign(y[:, None] - y[None, :]).double()
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    agreement = float((dx * dy)[upper].sum())  # P - Q
    untied_x = float((dx != 0)[upper].sum())  # P + Q + U
    untied_y = float((dy != 0)[upper].sum())  # P + Q + T
    denominator = (untied_x * untied_y) ** 0.5
    return agreement / denominator if denominator > 0 else 0.0


def visual_received(probe: ProbeResult, n_visual: int) -> torch.Tensor:
    """Attention each visual token receives over the probe's rows ([n_visual], -inf if absent)."""
    scores = torch.full((n_visual,), float('-inf'))
    keys = probe.key_positions.cpu()
    visual = keys < n_visual
    scores[keys[visual]] = probe.received().cpu()[visual].float()
    return scores


def layer_pair_tau(first: torch.Tensor, second: torch.Tensor, k: int) -> float:
    """Tau-b of two layers' scores over the union of their top-k visual tokens."""
    present = torch.isfinite(first) & torch.isfinite(second)
    index = torch.nonzero(present).flatten()
    k = max(1, min(k, index.numel()))
    top = torch.unique(torch.cat([index[torch.topk(first[index], k).indices],
                                  index[torch.topk(second[index], k).indices]]))
    return kendall_tau_b(first[top], second[top])


def frame_tau(probes: dict, layers: tuple, queries: str, n_visual: int, k: int) -> float:
    """Mean tau-b over the adjacent pairs of ``layers`` (probes keyed by AttentionProbe)."""
    scores = [visual_received(probes[AttentionProbe(layer, queries)], n_visual)
              for layer in layers]
    pairs = [layer_pair_tau(a, b, k) for a, b in zip(scores[:-1], scores[1:])]
    return float(np.mean(pairs))


def rank_k(config: TiesConfig, target: int, n_visual: int) -> int:
    """Tokens in each ranking compared by tau."""
    return min(n_visual, config.rank_k or max(target, 4))


def top_attention_weight(tau: float, low: float, median: float, high: float,
                         direction: str) -> float:
    """
    Soft-TIES w_t: piecewise linear, 0 / 0.5 / 1 at tau = low / median / high, clipped.

    With 'high_unreliable' the result is mirrored (1 - w): a high tau gives fewer tokens by
    attention magnitude.
    """
    if tau >= median:
        position = 0.5 + 0.5 * (tau - median) / (high - median) if high > median else 1.0
    else:
        position = 0.5 - 0.5 * (median - tau) / (median - low) if median > low else 0.0
    position = float(np.clip(position, 0.0, 1.0))
    return 1.0 - position if direction == 'high_unreliable' else position


def uniform_picks(candidates: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly strided members of ``candidates`` (in their order), centred strides."""
    n = candidates.numel()
    if count <= 0 or n == 0:
        return candidates[:0]
    index = ((torch.arange(count, dtype=torch.float64) + 0.5) * n / count).long()
    return candidates[index.clamp_max(n - 1)]


@register_pruner
class TiesPruner(Pruner):
    """Top-attention tokens plus uniform/diverse ones, split by inter-layer rank consistency."""

    name = 'ties'
    config_class = TiesConfig

    def __init__(self, config: Optional[TiesConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.tau_median, self.tau_low, self.tau_high = cfg.tau_median, cfg.tau_low, cfg.tau_high
        self.calibration = None
        if cfg.calibration_file:
            from vla_pruned_ros.pruning.calibration import load_calibration

            self.calibration = load_calibration(cfg.calibration_file)
            self.calibration.check_matches(cfg)
            self.tau_median = self.calibration.tau_median
            self.tau_low = self.calibration.quantile(cfg.low_quantile)
            self.tau_high = self.calibration.quantile(cfg.high_quantile)

    def reset(self) -> None:
        """Forget the anchor frame and the last tau / weight."""
        self._anchor_features: Optional[torch.Tensor] = None
        self._anchor_centres: Optional[np.ndarray] = None
        self.tau: Optional[float] = None
        self.weight: float = 0.5
        self.recomputed = 0

    # ------------------------------------------------------------------ frame gate
    def frame_similarity(self, ctx: StepContext) -> float:
        """Similarity of this frame to the anchor: min of the 2D and 3D terms (1 = same)."""
        if self._anchor_features is None:
            return -1.0
        now = ctx.features_2d.float().flatten().cpu()
        before = self._anchor_features
        if now.shape != before.shape:
            return -1.0
        similarity = float(torch.nn.functional.cosine_similarity(now, before, dim=0))
        centres, anchor = ctx.layout.centres_3d, self._anchor_centres
        if len(centres) and anchor is not None and len(anchor):
            distance = np.sqrt(squared_distances(centres, anchor))
            chamfer = 0.5 * float(distance.min(axis=1).mean() + distance.min(axis=0).mean())
            similarity = min(similarity, float(np.exp(-chamfer / self.config.centre_scale_m)))
        return similarity

    def _magnitude_probe(self) -> AttentionProbe:
        return AttentionProbe(self.config.layer - 1, self.config.queries)

    def plan(self, ctx: StepContext) -> StepPlan:
        """Probe the tau layers only when the frame moved away from the anchor."""
        if ctx.target >= ctx.layout.n_visual:
            return StepPlan(full_step=True)
        similarity = self.frame_similarity(ctx)
        recompute = self.tau is None or similarity < self.config.similarity_threshold
        ctx.extras['frame_similarity'] = similarity
        ctx.extras['recompute_tau'] = recompute
        probes = {self._magnitude_probe()}
        if recompute:
            probes |= {AttentionProbe(layer, self.config.queries)
                       for layer in self.config.pair_layers()}
        return StepPlan(probes=probes, prune_layers={self.config.layer})

    # --------------------------------------------------------------------- selection
    def _update_weight(self, ctx: StepContext, state: RunState) -> None:
        cfg = self.config
        self.tau = frame_tau(state.probes, cfg.pair_layers(), cfg.queries, ctx.layout.n_visual,
                             rank_k(cfg, ctx.target, ctx.layout.n_visual))
        if cfg.variant == 'soft':
            self.weight = top_attention_weight(self.tau, self.tau_low, self.tau_median,
                                               self.tau_high, cfg.tau_direction)
        else:
            threshold = self.tau_median if cfg.hard_threshold is None else cfg.hard_threshold
            above = self.tau > threshold
            sample = above if cfg.tau_direction == 'high_unreliable' else not above
            self.weight = 0.0 if sample else 1.0
        self._anchor_features = ctx.features_2d.float().flatten().cpu().clone()
        self._anchor_centres = ctx.layout.centres_3d.copy()
        self.recomputed += 1

    def at_layer(self, ctx: StepContext, state: RunState) -> Optional[torch.Tensor]:
        """N_top tokens by attention magnitude, the rest sampled; exact top-k over the tiers."""
        if ctx.extras.get('recompute_tau'):
            self._update_weight(ctx, state)
        layout, target = ctx.layout, ctx.target
        attention = visual_received(state.probes[self._magnitude_probe()], layout.n_visual)
        present = state.visual_positions().cpu()
        n_top = int(np.floor(self.weight * target + 1e-9))
        top = select_top_k(attention, ctx.is_3d, n_top, candidates=present)
        rest = present[~torch.isin(present, top)]
        n_fill = target - n_top
        finite = torch.isfinite(attention[present])
        low = float(attention[present][finite].min()) if bool(finite.any()) else 0.0
        high = float(attention[present][finite].max()) if bool(finite.any()) else 0.0
        normalised = (attention - low) / max(high - low, 1e-12)
        if self.config.fill == 'uniform':
            # Unpicked tokens rank by attention, for a floor that must replace a pick.
            scores = torch.full((layout.n_visual,), float('-inf'))
            scores[rest] = normalised[rest]
            picks = uniform_picks(rest, n_fill)
            scores[picks] = PICKED_BASE + torch.arange(picks.numel(), 0, -1).float()
        else:
            rows = torch.searchsorted(state.positions.cpu(), torch.arange(layout.n_visual))
            rows = rows.clamp_max(state.positions.numel() - 1)
            embeddings = state.input_embeddings[0][rows.to(state.input_embeddings.device)]
            scores = diversity_scores(embeddings, n_fill, candidates=rest)
        scores[top] = 2 * PICKED_BASE + target + normalised[top]
        kept = ctx.top_k(scores, candidates=present)
        ctx.record_stage('ties', kept)
        ctx.extras.update({'tau': self.tau, 'weight': self.weight, 'n_top': n_top})
        return kept
