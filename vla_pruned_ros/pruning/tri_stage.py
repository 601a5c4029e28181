"""
Tri-stage modality-aware token pruning for 2D+3D VLAs (reconstruction).

Paper: Zheng et al., "2D or 3D: Who Governs Salience in VLA Models? Tri-Stage Token Pruning
Framework with Modality Salience Awareness", arXiv 2604.09244 (code not released). What is
known ([P] paper abstract, [S] secondary notes, [G] our guess; see
shared/research/pruning-methods.md section 1):

- Stage 1, data pre-processing [S]: modality salience from L1 norms of final-layer features,
  separately for 2D and 3D tokens; the shares set different pruning thresholds per modality.
  Final-layer features do not exist before the step, so salience is carried over from
  previous steps [S: "reuse historical salience"]; tokens are dropped before the decoder
  (3D groups even before the point encoder) [G].
- Stage 2, semantic synthesis [S]: attention-based grouping of tokens into background, robot
  and object sets; 3D attention split into the part overlapping 2D and a unique part. How the
  groups are found, labelled and budgeted is [G] (k-means on attention columns, below).
- Stage 3, action iteration [S]: window + EMA smoothing of modality and region salience across
  control steps, temporal segmentation, the first step keeps the full input, and the order
  smooth -> threshold into candidates -> fuse. The segmentation trigger is [G].
- Ablation [S]: S1+S3 alone fell below the unpruned baseline (62.2 vs 70) while S2+S3 rose
  above it (71.5): temporal reuse without semantic protection propagates pruning mistakes.

Every reconstructed choice is a :class:`TriStageConfig` field whose comment says [S] or [G].

Extension, off by default (``pointer_protect``) [G]: a policy with instruction pointers
(``model/pointer.py``) says directly which 3D groups show what the instruction names, which is
what stage 2's object grouping estimates from attention. With it on, those groups are kept
first in stage 1 (from the previous step's pointer, as stage 3 carries salience) and stage 2
(this step's). With ``pointer_first`` as well, the pointers score every 3D group before
stage 1 (they read group descriptors, not decoder features, so this costs only the pointers'
own FLOPs on the dropped groups), and stage 1 keeps this step's named groups: the carried
pointer only ever sees what the previous step kept, so one wrong step can lose the object.
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
    StepOutcome,
    StepPlan,
    register_pruner,
)
from vla_pruned_ros.pruning.budget import select_top_k

BACKGROUND, ROBOT, OBJECT = 0, 1, 2
REGION_NAMES = ('background', 'robot', 'object')


@dataclass
class TriStageConfig(PrunerConfig):
    """
    Settings of the tri-stage pruner; [S] = from notes on the paper, [G] = our reconstruction.

    Stage switches (the paper's ablation): ``stage1``, ``stage2``, ``stage3``; at least one of
    stage 1 and stage 2 must be on, since stage 3 only steers them.
    """

    stage1: bool = True
    stage2: bool = True
    stage3: bool = True
    # Stage 1. Budget split K_2d = K * S2^gamma / (S2^gamma + S3^gamma) [G]; gamma = 1 gives
    # the salience share itself [S: shares like 90/10 set per-modality thresholds].
    gamma: float = 1.0
    # Each modality keeps at least this share of the stage's budget [G] (the 50 % 2D-pruning
    # collapse in the paper's Close Box study argues against starving a modality).
    min_modality_share: float = 0.1
    # With stage 2 on, stage 1 keeps budget * (1 + slack) tokens so stage 2 has a choice [G].
    stage2_slack: float = 0.5
    # Stage 2. Tokens are pruned before this decoder layer using layer-1 attention [G] (shallow,
    # like FastV/VLA-Pruner's K = 3; MLA aligns modalities in its first 8 layers [S]).
    semantic_layer: int = 2
    # Background / robot / object grouping by k-means on attention columns [G].
    kmeans_iterations: int = 8
    # Share of the budget reserved for robot + object tokens of both modalities [G].
    protect_fraction: float = 0.5
    # How strongly a 3D token's overlap with an already kept 2D patch lowers its score [G].
    overlap_discount: float = 1.0
    # Stage 2 keeps per modality the split stage 1 uses (smoothed salience shares, at least
    # min_modality_share each) instead of ranking both modalities by attention together [G]:
    # attention favours 2D patches, and a policy that acts on its 3D groups loses them.
    stage2_split: bool = False
    # Stage 3. EMA factor beta (S_t = beta S_{t-1} + (1 - beta) s_t) [S: EMA; value G] and the
    # window of raw values averaged before the EMA [S: window; length G].
    ema_beta: float = 0.6
    window: int = 3
    # New segment (one full, unpruned step) when the region x modality salience distribution
    # moves more than this total-variation distance from its smoothed value [G].
    shift_threshold: float = 0.25
    # A shift only opens a new segment once the current one has run this many pruned steps
    # [G]: without it a policy whose attention keeps moving (a weak or random one) runs most
    # steps unpruned; 1 = every shift counts.
    min_segment_steps: int = 3
    # Force a full step after this many pruned steps (0 = never) [G].
    max_segment_steps: int = 0
    # Extension [G]: keep first the 3D groups on which the policy's pointers put at least
    # pointer_min_mass of their probability (models with pointers; ignored without).
    pointer_protect: bool = False
    pointer_min_mass: float = 0.05
    # Extension [G], with pointer_protect: stage 1 reads this step's pointers, run over every
    # 3D group before the decoder (StepPlan.pointer_first), instead of the carried ones.
    pointer_first: bool = False

    def __post_init__(self) -> None:
        if not (self.stage1 or self.stage2):
            raise ValueError('tri_stage needs stage1 or stage2 on (stage3 only steers them)')
        if self.min_segment_steps < 1 or self.max_segment_steps < 0:
            raise ValueError('min_segment_steps must be >= 1 and max_segment_steps >= 0')
        if self.semantic_layer < 1:
            raise ValueError('semantic_layer must be >= 1 (it reads the previous layer)')
        for name in ('min_modality_share', 'protect_fraction', 'ema_beta', 'pointer_min_mass'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {value}')
        if self.pointer_first and not self.pointer_protect:
            raise ValueError('pointer_first needs pointer_protect (it feeds its protection)')
        if self.window < 1 or self.stage2_slack < 0 or self.gamma <= 0:
            raise ValueError('window must be >= 1, stage2_slack >= 0 and gamma > 0')


def _region_distribution(
    modality: np.ndarray, region: np.ndarray, attention: np.ndarray
) -> np.ndarray:
    """Attention mass per (modality, region) cell, normalised to sum to 1 (2 x 3)."""
    sigma = np.zeros((2, 3))
    np.add.at(sigma, (modality, region), attention)
    return sigma / max(sigma.sum(), 1e-12)


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Pairwise squared distances (numpy: at these sizes torch's thread start-up dominates)."""
    return (
        (points * points).sum(axis=1, keepdims=True)
        - 2.0 * points @ centres.T
        + (centres * centres).sum(axis=1)[None, :]
    )


def nearest_indices(points: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Index of the nearest reference point for every point (brute force, small sets)."""
    return _squared_distances(
        points.astype(np.float64), references.astype(np.float64)
    ).argmin(axis=1)


def kmeans(features: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """
    Deterministic k-means (farthest-point initialisation) returning a label per row.

    Small and dependency-free on purpose: it runs every step on a few hundred tokens.
    """
    features = np.asarray(features, dtype=np.float64)
    n = features.shape[0]
    k = min(k, n)
    centres = [features.mean(axis=0)]
    for _ in range(k - 1):
        distance = _squared_distances(features, np.stack(centres)).min(axis=1)
        centres.append(features[int(np.argmax(distance))])
    centres = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        labels = _squared_distances(features, centres).argmin(axis=1)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, features)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return labels


class _Smoother:
    """Window average followed by an EMA, the stage-3 smoothing of a salience vector."""

    def __init__(self, beta: float, window: int, enabled: bool) -> None:
        self.beta, self.window, self.enabled = beta, window, enabled
        self.history: list = []
        self.value: Optional[np.ndarray] = None

    def update(self, raw: np.ndarray) -> np.ndarray:
        if not self.enabled or self.value is None:
            self.history = [raw]
            self.value = raw.copy()
            return self.value
        self.history = (self.history + [raw])[-self.window:]
        windowed = np.mean(self.history, axis=0)
        self.value = self.beta * self.value + (1.0 - self.beta) * windowed
        return self.value


@register_pruner
class TriStagePruner(Pruner):
    """2D/3D modality-aware budget (S1), semantic protection (S2), temporal adaptation (S3)."""

    name = 'tri_stage'
    config_class = TriStageConfig

    def reset(self) -> None:
        """Forget all salience: the next step is a full one (the paper's reference step)."""
        cfg = self.config
        self._share = _Smoother(cfg.ema_beta, cfg.window, cfg.stage3)  # [2D share, 3D share]
        self._salience_2d: Optional[np.ndarray] = None  # per patch
        self._salience_3d: Optional[np.ndarray] = None  # per previous 3D group
        self._centres_3d: Optional[np.ndarray] = None
        self._labels_2d: Optional[np.ndarray] = None  # region label per patch
        self._labels_3d: Optional[np.ndarray] = None
        self._attention_2d: Optional[np.ndarray] = None
        self._attention_3d: Optional[np.ndarray] = None
        self._new_segment = True
        self._pruned_steps = 0
        self._previous_of_3d: Optional[np.ndarray] = None  # current group -> previous group
        self._pointer_3d: Optional[np.ndarray] = None  # pointer mass per previous 3D group
        self.last_shift = 0.0

    # ------------------------------------------------------------------------------ plan
    def _probe(self) -> AttentionProbe:
        return AttentionProbe(self.config.semantic_layer - 1, 'text_action')

    def plan(self, ctx: StepContext) -> StepPlan:
        """Full step at segment starts; else stage 1 before the decoder, stage 2 at layer K."""
        cfg = self.config
        # Map this step's 3D groups to the previous step's once; every carried quantity uses it.
        self._previous_of_3d = None
        if self._centres_3d is not None and len(self._centres_3d) and ctx.layout.n_3d:
            self._previous_of_3d = nearest_indices(ctx.layout.centres_3d, self._centres_3d)
        probes = {self._probe()} if cfg.stage2 else set()
        forced = cfg.max_segment_steps and self._pruned_steps >= cfg.max_segment_steps
        if ctx.target >= ctx.layout.n_visual or self._new_segment or forced:
            return StepPlan(probes=probes, final_hidden=True, full_step=True)
        layers = {cfg.semantic_layer} if cfg.stage2 else set()
        return StepPlan(probes=probes, prune_layers=layers, final_hidden=True,
                        pointer_first=cfg.pointer_first and cfg.stage1)

    # ---------------------------------------------------------------------------- stage 1
    def _carried_3d(self, values: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """Transfer a per-group quantity from the previous step's groups by nearest centre."""
        if values is None or self._previous_of_3d is None:
            return None
        return values[self._previous_of_3d]

    def _modality_split(self, ctx: StepContext, count: int) -> tuple:
        """Split ``count`` tokens between 2D and 3D from the smoothed salience shares."""
        n_2d, n_3d = ctx.layout.n_2d, ctx.layout.n_3d
        share_2d, share_3d = self._share.value if self._share.value is not None else (0.5, 0.5)
        gamma = self.config.gamma
        weight_2d = share_2d**gamma / max(share_2d**gamma + share_3d**gamma, 1e-12)
        minimum = int(round(self.config.min_modality_share * count))
        low_2d = max(ctx.floor_2d, min(minimum, n_2d), count - n_3d)
        high_2d = min(n_2d, count - max(ctx.floor_3d, min(minimum, n_3d)))
        k_2d = int(np.clip(round(count * weight_2d), low_2d, max(low_2d, high_2d)))
        return k_2d, count - k_2d

    def _present_split(self, ctx: StepContext, present_2d: int, present_3d: int) -> tuple:
        """Stage 1's split of this step's budget, moved to the other modality where short."""
        k_2d, k_3d = self._modality_split(ctx, ctx.target)
        if k_3d > present_3d:
            k_2d, k_3d = k_2d + k_3d - present_3d, present_3d
        if k_2d > present_2d:
            k_2d, k_3d = present_2d, k_3d + k_2d - present_2d
        return k_2d, k_3d

    def before_llm(self, ctx: StepContext) -> Optional[torch.Tensor]:
        """Stage 1 (+ stage-3 fusion): per-modality thresholds on carried salience."""
        if not self.config.stage1:
            return None
        layout = ctx.layout
        count = ctx.target
        if self.config.stage2:
            count = min(layout.n_visual, int(round(ctx.target * (1 + self.config.stage2_slack))))
        if count >= layout.n_visual:
            return None
        salience_3d = self._carried_3d(self._salience_3d)
        if self._salience_2d is None or salience_3d is None:
            return None
        k_2d, k_3d = self._modality_split(ctx, count)
        # Smooth (already done in after_step) -> threshold per modality -> fuse with protection.
        scores = torch.as_tensor(
            np.concatenate([self._salience_2d, salience_3d]), dtype=torch.float32
        )
        scores = scores + self._protection_bonus(ctx, k_2d, k_3d)
        mass = ctx.pointer_mass() if self.config.pointer_first else None
        if mass is None:  # the previous step's pointers, carried to this step's groups
            mass = self._carried_3d(self._pointer_3d)
        named = self._pointer_bonus(mass)
        if named is not None:
            scores[layout.n_2d:] += named
        is_3d = ctx.is_3d
        keep_2d = select_top_k(scores[: layout.n_2d], is_3d[: layout.n_2d], k_2d)
        keep_3d = select_top_k(scores[layout.n_2d:], is_3d[layout.n_2d:], k_3d) + layout.n_2d
        kept = torch.cat([keep_2d, keep_3d])
        ctx.extras['stage1_split'] = (k_2d, k_3d)
        ctx.record_stage('stage1_modality', kept)
        return kept

    def _protection_bonus(self, ctx: StepContext, k_2d: int, k_3d: int) -> torch.Tensor:
        """
        Stage-3 fusion: robot/object tokens from the smoothed stage-2 labels come first.

        Up to ``protect_fraction`` of each modality's quota goes to protected tokens ranked by
        their carried attention; the bonus puts them above every salience score.
        """
        layout = ctx.layout
        bonus = torch.zeros(layout.n_visual)
        if not (self.config.stage2 and self.config.stage3) or self._labels_2d is None:
            return bonus
        labels_3d = self._carried_3d(self._labels_3d)
        attention_3d = self._carried_3d(self._attention_3d)
        if labels_3d is None:
            return bonus
        for offset, labels, attention, quota in (
            (0, self._labels_2d, self._attention_2d, k_2d),
            (layout.n_2d, labels_3d, attention_3d, k_3d),
        ):
            protected = np.flatnonzero(labels != BACKGROUND)
            take = int(round(self.config.protect_fraction * quota))
            best = protected[np.argsort(-attention[protected], kind='stable')[:take]]
            bonus[torch.as_tensor(best + offset, dtype=torch.int64)] = 1e6
        return bonus

    def _pointer_bonus(self, mass: Optional[np.ndarray]) -> Optional[torch.Tensor]:
        """
        Per 3D group: 2e6 + its pointer mass where that reaches ``pointer_min_mass``, else 0.

        Above the protection bonus (1e6), so named groups come first, the most named first;
        None when the extension is off or there is no pointer mass.
        """
        if not self.config.pointer_protect or mass is None:
            return None
        named = mass >= self.config.pointer_min_mass
        return torch.as_tensor(np.where(named, 2e6 + mass, 0.0), dtype=torch.float32)

    # ---------------------------------------------------------------------------- stage 2
    def _semantic_analysis(self, ctx: StepContext, probe: ProbeResult) -> dict[str, np.ndarray]:
        """
        Group the present visual tokens into background/robot/object from attention.

        Descriptor of a token = the attention column it receives from every instruction and
        action-query row (rows renormalised to the visual keys, then log-scaled). k-means with
        k = 3; the cluster the instruction rows attend to most is 'object', of the other two the
        one the action queries attend to most is 'robot', the last is 'background' [G].
        """
        layout = ctx.layout
        keys = probe.key_positions.cpu().numpy()
        visual = keys < layout.n_visual
        weights = probe.weights.float().cpu().numpy()[:, visual].astype(np.float64)
        weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        labels = kmeans(np.log(weights.T + 1e-6), 3, self.config.kmeans_iterations)
        text_rows = probe.query_positions.cpu().numpy() < layout.n_visual + layout.n_text
        from_text = weights[text_rows].mean(axis=0) if text_rows.any() else weights.mean(axis=0)
        from_action = weights[~text_rows].mean(axis=0) if (~text_rows).any() else from_text
        clusters = [c for c in range(int(labels.max()) + 1) if (labels == c).any()]
        region = np.full_like(labels, BACKGROUND)
        object_cluster = max(clusters, key=lambda c: float(from_text[labels == c].mean()))
        region[labels == object_cluster] = OBJECT
        rest = [c for c in clusters if c != object_cluster]
        if len(rest) > 1:
            robot_cluster = max(rest, key=lambda c: float(from_action[labels == c].mean()))
            region[labels == robot_cluster] = ROBOT
        return {'positions': keys[visual], 'region': region, 'received': weights.mean(axis=0)}

    def at_layer(self, ctx: StepContext, state: RunState) -> Optional[torch.Tensor]:
        """Stage 2: protect robot/object tokens, drop 3D tokens a kept 2D patch covers."""
        layout = ctx.layout
        analysis = self._semantic_analysis(ctx, state.probes[self._probe()])
        ctx.extras['semantic'] = analysis
        positions = torch.as_tensor(analysis['positions'])
        received = torch.as_tensor(analysis['received'], dtype=torch.float32)
        region = torch.as_tensor(analysis['region'])
        n_present = positions.numel()
        if n_present <= ctx.target:
            return None
        full_scores = torch.zeros(layout.n_visual)
        full_scores[positions] = received
        # Overlap of each 3D token with its linked 2D patch (0 when the patch is absent).
        is_3d = positions >= layout.n_2d
        patch = torch.full((n_present,), -1, dtype=torch.int64)
        patch[is_3d] = torch.as_tensor(layout.patch_of_3d)[positions[is_3d] - layout.n_2d]
        present = torch.zeros(layout.n_visual, dtype=torch.bool)
        present[positions] = True
        linked = is_3d & (patch >= 0)
        linked[linked.clone()] = present[patch[linked]]
        overlap = torch.zeros(n_present)
        overlap[linked] = torch.minimum(received[linked], full_scores[patch[linked]])
        # Protected quota: robot and object tokens of both modalities, best attended first.
        scores = received.clone()
        quota = int(round(self.config.protect_fraction * ctx.target))
        protected = torch.nonzero(region != BACKGROUND).flatten()
        order = torch.sort(-received[protected], stable=True).indices
        chosen_protected = protected[order[:quota]]
        scores[chosen_protected] += 1e6
        named = self._pointer_bonus(ctx.pointer_mass()) if self.config.pointer_protect else None
        if named is not None:
            scores[is_3d] += named[positions[is_3d] - layout.n_2d]
        floor_2d, floor_3d = ctx.floor_2d, ctx.floor_3d
        if self.config.stage2_split:
            floor_2d, floor_3d = self._present_split(ctx, int((~is_3d).sum()), int(is_3d.sum()))
        # First pass without overlap; then 3D tokens whose patch made the cut lose the overlap.
        kept = select_top_k(scores, is_3d, ctx.target, floor_2d, floor_3d)
        kept_2d_patches = torch.zeros(layout.n_visual, dtype=torch.bool)
        kept_2d_patches[positions[kept[~is_3d[kept]]]] = True
        covered = linked.clone()
        covered[linked.clone()] = kept_2d_patches[patch[linked]]
        scores = scores - self.config.overlap_discount * overlap * covered.float()
        kept = select_top_k(scores, is_3d, ctx.target, floor_2d, floor_3d)
        kept_visual = positions[kept]
        ctx.record_stage('stage2_semantic', kept_visual)
        return kept_visual

    # ---------------------------------------------------------------------------- stage 3
    def after_step(self, ctx: StepContext, outcome: StepOutcome) -> None:
        """Update carried salience, smoothed shares and region state; detect segment shifts."""
        layout = ctx.layout
        kept = outcome.kept_visual
        # Per-token salience: L1 norm of the final-layer feature, per hidden unit [S].
        salience = outcome.final_hidden.float().abs().mean(dim=-1).cpu().numpy()
        is_3d = (kept >= layout.n_2d).numpy()
        previous_3d = self._carried_3d(self._salience_3d)
        token_2d = self._salience_2d.copy() if self._salience_2d is not None else None
        token_3d = previous_3d.copy() if previous_3d is not None else None
        if token_2d is None or token_3d is None:
            fill = float(salience.mean()) if salience.size else 0.0
            token_2d = np.full(layout.n_2d, fill, np.float64)
            token_3d = np.full(layout.n_3d, fill, np.float64)
        beta = self.config.ema_beta if self.config.stage3 and not ctx.plan.full_step else 0.0
        index_2d = kept[~torch.as_tensor(is_3d)].numpy()
        index_3d = kept[torch.as_tensor(is_3d)].numpy() - layout.n_2d
        token_2d[index_2d] = beta * token_2d[index_2d] + (1 - beta) * salience[~is_3d]
        token_3d[index_3d] = beta * token_3d[index_3d] + (1 - beta) * salience[is_3d]
        self._salience_2d, self._salience_3d = token_2d, token_3d
        # Modality share of the whole input, estimated from the survivors' mean salience.
        mean_2d = salience[~is_3d].mean() if (~is_3d).any() else token_2d.mean()
        mean_3d = salience[is_3d].mean() if is_3d.any() else token_3d.mean()
        total = layout.n_2d * mean_2d + layout.n_3d * mean_3d
        raw_share = np.array([layout.n_2d * mean_2d, layout.n_3d * mean_3d]) / max(total, 1e-12)
        self._share.update(raw_share)
        ctx.extras['modality_share'] = raw_share
        self._update_regions(ctx, outcome)
        pointer_mass = ctx.pointer_mass() if self.config.pointer_protect else None
        if pointer_mass is not None:
            # Groups the pointer did not see this step keep their carried mass.
            carried = self._carried_3d(self._pointer_3d)
            mass = np.zeros(layout.n_3d) if carried is None else carried.copy()
            mass[ctx.pointer_groups] = pointer_mass[ctx.pointer_groups]
            self._pointer_3d = mass
        self._centres_3d = layout.centres_3d.copy()
        if ctx.plan.full_step:
            self._new_segment = False
            self._pruned_steps = 0
        else:
            self._pruned_steps += 1

    def _update_regions(self, ctx: StepContext, outcome: StepOutcome) -> None:
        """Carry region labels/attention and test for an abrupt salience shift (new segment)."""
        if not self.config.stage2:
            return
        layout = ctx.layout
        analysis = ctx.extras.get('semantic')
        if analysis is None:  # full step: at_layer did not run, analyse the probe now
            analysis = self._semantic_analysis(ctx, outcome.probes[self._probe()])
        positions, region = analysis['positions'], analysis['region']
        received = analysis['received']
        labels_2d = self._labels_2d if self._labels_2d is not None else np.zeros(layout.n_2d, int)
        attention_2d = (
            self._attention_2d if self._attention_2d is not None else np.zeros(layout.n_2d)
        )
        labels_3d = self._carried_3d(self._labels_3d)
        attention_3d = self._carried_3d(self._attention_3d)
        if labels_3d is None:
            labels_3d, attention_3d = np.zeros(layout.n_3d, int), np.zeros(layout.n_3d)
        is_3d = positions >= layout.n_2d
        # Shift: region x modality salience of the present tokens now, against the same tokens'
        # carried labels and attention (same support, so pruning itself reads as no shift).
        present_2d, present_3d = positions[~is_3d], positions[is_3d] - layout.n_2d
        carried_region = np.concatenate([labels_2d[present_2d], labels_3d[present_3d]])
        carried_attention = np.concatenate([attention_2d[present_2d], attention_3d[present_3d]])
        modality = np.concatenate([np.zeros(len(present_2d), int), np.ones(len(present_3d), int)])
        order = np.concatenate([np.flatnonzero(~is_3d), np.flatnonzero(is_3d)])
        sigma = _region_distribution(modality, region[order], received[order])
        if self._labels_2d is None:
            self.last_shift = 0.0
        else:
            before = _region_distribution(modality, carried_region, carried_attention)
            self.last_shift = 0.5 * float(np.abs(sigma - before).sum())
        ctx.extras['region_shift'] = self.last_shift
        settled = self._pruned_steps + 1 >= self.config.min_segment_steps  # this step counts
        if self.config.stage3 and self.last_shift > self.config.shift_threshold and settled:
            self._new_segment = True
        labels_2d, attention_2d = labels_2d.copy(), attention_2d.copy()
        labels_3d, attention_3d = labels_3d.copy(), attention_3d.copy()
        # Region attention is smoothed like the modality shares (EMA over steps) [S].
        beta = self.config.ema_beta if self.config.stage3 and self._labels_2d is not None else 0.0
        labels_2d[present_2d] = region[~is_3d]
        attention_2d[present_2d] = beta * attention_2d[present_2d] + (1 - beta) * received[~is_3d]
        labels_3d[present_3d] = region[is_3d]
        attention_3d[present_3d] = beta * attention_3d[present_3d] + (1 - beta) * received[is_3d]
        self._labels_2d, self._attention_2d = labels_2d, attention_2d
        self._labels_3d, self._attention_3d = labels_3d, attention_3d
