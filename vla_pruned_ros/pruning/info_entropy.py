"""
VLA-InfoEntropy: entropy-guided choice of the tokens to recompute, with KV reuse for the rest.

Paper: Liu et al., "VLA-InfoEntropy", arXiv 2604.05323 (no code). Known ([P] abstract, [S]
secondary notes; see shared/research/pruning-methods.md section 4): image entropy of each
visual token's grayscale distribution [P]; attention entropy over the task text [P]; timestep
information drives a transition from global visual features to attention-guided local regions
[P] with hyperparameters k1, k2, T [S]; built on VLA-Cache's path, where non-critical tokens
reuse the previous step's keys/values [S]. Everything else is reconstructed [G] and is a
:class:`InfoEntropyConfig` field.

What a pruned step does:

1. Scores. ``e``: per-patch grayscale histogram entropy; for a 3D token, the geometric
   entropy of its point group (eigenentropy of the neighbourhood covariance, or the entropy of
   its distance-to-centre histogram). ``a``: attention relevance from the previous step's
   instruction-token attention at a middle layer: the attention mass a token receives times
   (1 - the normalised entropy of that mass over the instruction tokens), i.e. much attention
   from few specific words. Both are min-max normalised per modality, so neither modality's
   scale dominates, and mixed as ``(1 - alpha) e + alpha a`` with ``alpha = min(t / T, 1)``.
2. Critical tokens: the best ``k(t) = target ((1 - alpha) k1 + alpha k2)`` by that score.
3. Static tokens: a patch whose pixels have cosine similarity >= 0.996 [C VLA-Cache] with the
   pixels its cached keys were computed from; a 3D group whose centre moved less than
   ``static_centre_m`` and whose neighbourhood changed less than ``static_shape_m`` (mean
   symmetric nearest-point distance) since then [G]. Groups are re-sampled by farthest point
   sampling every step, so on a changing cloud few 3D tokens pass.
4. Budget = tokens computed this step (exactly ``target``, floors honoured): critical tokens
   first, then changed (dynamic) tokens, then static ones, each by score. Static tokens not
   computed reuse their cached keys/values at every layer (``tokens_reused``); the remaining
   dynamic tokens are dropped, since stale keys would misrepresent them.

The first step of an episode, any step after the instruction or layout changed, and steps
with a budget of every token run in full and refresh the cache. A token's attention relevance
is measured whenever it is computed or reused; a dropped token keeps its last measured value.
VLA-Cache's layer-wise reuse ratio is not implemented: a reused token is reused at every
layer.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from vla_pruned_ros.model.kv_reuse import KVCache, KVReuse, layout_signature
from vla_pruned_ros.model.runner import AttentionProbe, ProbeResult
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
from vla_pruned_ros.pruning.correspondence import carry_visual, squared_distances

ENTROPY_3D = ('eigen', 'distance')
RELEVANCE = ('mass_focus', 'focus', 'mass')


@dataclass
class InfoEntropyConfig(PrunerConfig):
    """Settings of VLA-InfoEntropy; [C] = from VLA-Cache's code, [S] secondary, [G] guessed."""

    # Grayscale histogram bins per patch [G: 256 or 32] and the patch side in pixels when the
    # image is resampled onto the token grid [G: OpenVLA's 14].
    bins: int = 32
    patch_pixels: int = 14
    # 3D counterpart of image entropy [G]: 'eigen' = eigenentropy of the neighbourhood
    # covariance (flat, linear, scattered shapes), 'distance' = entropy of the histogram of
    # neighbour distances to the centre (with ``bins`` bins).
    entropy_3d: str = 'eigen'
    # Attention relevance [G]: decoder layer of the instruction-token attention (None = 15/32
    # of the depth, VLA-Cache's layer 15 of 32 [C]) and the score: 'mass_focus' = mass x
    # (1 - normalised entropy), 'focus' = 1 - normalised entropy, 'mass' = mass alone.
    attention_layer: Optional[int] = None
    relevance: str = 'mass_focus'
    # Timestep schedule [S: k1, k2, T exist; meaning G]: alpha = min(t / T, 1) moves the score
    # from image entropy to attention relevance; k1 / k2 are the shares of the budget given to
    # critical tokens at t = 0 / t >= T (the rest goes to changed tokens, then static ones).
    k1: float = 0.75
    k2: float = 0.5
    transition_steps: int = 10
    # Static test: patch pixel cosine similarity [C VLA-Cache: 0.996]; 3D centre displacement
    # and neighbourhood change in metres [G].
    static_similarity: float = 0.996
    static_centre_m: float = 0.005
    static_shape_m: float = 0.005
    # KV reuse on/off (off: non-selected tokens are simply dropped) [G, for ablation].
    reuse: bool = True
    # Full refresh every N steps (0 = only when needed) [G], bounding how stale a key can get.
    refresh_interval: int = 0

    def __post_init__(self) -> None:
        if self.entropy_3d not in ENTROPY_3D:
            raise ValueError(f'entropy_3d must be one of {ENTROPY_3D}, got {self.entropy_3d!r}')
        if self.relevance not in RELEVANCE:
            raise ValueError(f'relevance must be one of {RELEVANCE}, got {self.relevance!r}')
        if self.bins < 2 or self.patch_pixels < 1 or self.transition_steps < 1:
            raise ValueError('bins must be >= 2, patch_pixels >= 1 and transition_steps >= 1')
        for name in ('k1', 'k2', 'static_similarity'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {getattr(self, name)}')
        if self.refresh_interval < 0:
            raise ValueError('refresh_interval must be >= 0')


def patch_pixels(rgb: np.ndarray, grid: tuple, side: int) -> np.ndarray:
    """The image resampled onto the token grid: (n_2d, side * side, 3) uint8 per patch."""
    import cv2

    rows, cols = grid
    resized = cv2.resize(np.ascontiguousarray(rgb), (cols * side, rows * side),
                         interpolation=cv2.INTER_AREA)
    patches = resized.reshape(rows, side, cols, side, 3).transpose(0, 2, 1, 3, 4)
    return patches.reshape(rows * cols, side * side, 3)


def _histogram_entropy(index: np.ndarray, bins: int) -> np.ndarray:
    """Entropy in bits of each row's histogram of bin indices (n, m) in 0..bins-1."""
    n, m = index.shape
    flat = (index + np.arange(n)[:, None] * bins).ravel()
    counts = np.bincount(flat, minlength=n * bins).reshape(n, bins)
    p = counts / float(m)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=1)


def gray_entropy(patches: np.ndarray, bins: int) -> np.ndarray:
    """Grayscale histogram entropy (bits) per patch, from (n, pixels, 3) uint8 RGB."""
    gray = patches.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    index = np.clip((gray * bins / 256.0).astype(np.int64), 0, bins - 1)
    return _histogram_entropy(index, bins)


def geometric_entropy(neighbourhoods: np.ndarray, kind: str, bins: int) -> np.ndarray:
    """
    Entropy (bits) of each point group's shape, from (G, k, 3) points relative to the centre.

    'eigen': -sum(l log2 l) over the normalised covariance eigenvalues (0 for a line, 1 for a
    plane, log2 3 for an isotropic blob). 'distance': histogram entropy of neighbour distances
    to the centre, bins spanning 0 .. the largest distance of the step.
    """
    points = neighbourhoods.astype(np.float64)
    if kind == 'eigen':
        centred = points - points.mean(axis=1, keepdims=True)
        covariance = np.einsum('gki,gkj->gij', centred, centred) / max(points.shape[1], 1)
        eigen = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)
        eigen = eigen / np.maximum(eigen.sum(axis=1, keepdims=True), 1e-12)
        logs = np.log2(eigen, out=np.zeros_like(eigen), where=eigen > 0)
        return -(eigen * logs).sum(axis=1)
    distance = np.linalg.norm(points, axis=-1)
    scale = max(float(distance.max()), 1e-9) if distance.size else 1.0
    index = np.clip((distance / scale * bins).astype(np.int64), 0, bins - 1)
    return _histogram_entropy(index, bins)


def attention_relevance(probe: ProbeResult, n_visual: int, kind: str) -> tuple:
    """
    Relevance of each visual key from instruction-token attention rows.

    Returns (positions, relevance): the visual key positions present and their score, where the
    mass is the mean attention a token receives over the rows and the focus is 1 - entropy of
    its attention column over the rows / log(rows).
    """
    keys = probe.key_positions.cpu()
    visual = keys < n_visual
    column = probe.weights.cpu()[:, visual].double()  # [rows, visual keys]
    mass = column.mean(dim=0)
    share = column / column.sum(dim=0, keepdim=True).clamp_min(1e-30)
    logs = torch.where(share > 0, share.log(), torch.zeros_like(share))
    entropy = -(share * logs).sum(dim=0)
    rows = column.shape[0]
    focus = 1.0 - entropy / np.log(rows) if rows > 1 else torch.ones_like(entropy)
    score = {'mass_focus': mass * focus, 'focus': focus, 'mass': mass}[kind]
    return keys[visual].numpy(), score.float().numpy()


def _minmax_per_modality(values: np.ndarray, n_2d: int) -> np.ndarray:
    """Min-max normalise the 2D and the 3D part separately to [0, 1]."""
    out = np.zeros(len(values), np.float64)
    for part in (slice(0, n_2d), slice(n_2d, len(values))):
        segment = values[part].astype(np.float64)
        if segment.size:
            span = segment.max() - segment.min()
            out[part] = (segment - segment.min()) / span if span > 0 else 0.0
    return out


def _chamfer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean symmetric nearest-point distance between matching groups, (G, k, 3) each."""
    distance = np.sqrt(squared_distances(a, b))
    return 0.5 * (distance.min(axis=2).mean(axis=1) + distance.min(axis=1).mean(axis=1))


@register_pruner
class InfoEntropyPruner(Pruner):
    """Image/geometric entropy, then attention entropy over the instruction; reuse static KV."""

    name = 'info_entropy'
    config_class = InfoEntropyConfig

    def reset(self) -> None:
        """Forget the cache, its anchors, the relevance history and the step counter."""
        self.t = 0
        self._cache: Optional[KVCache] = None
        self._anchor_pixels: Optional[np.ndarray] = None  # patch pixels the keys came from
        self._anchor_centres: Optional[np.ndarray] = None
        self._anchor_shapes: Optional[np.ndarray] = None
        self._relevance: Optional[np.ndarray] = None  # per visual token of the last step
        self._centres: Optional[np.ndarray] = None
        self._since_refresh = 0
        self._pixels: Optional[np.ndarray] = None
        self.last_static: Optional[torch.Tensor] = None  # per visual token, last pruned step
        self.last_critical: Optional[torch.Tensor] = None
        self.last_reused: Optional[torch.Tensor] = None

    def _probe(self, ctx: StepContext) -> AttentionProbe:
        return AttentionProbe(resolve_layer(self.config.attention_layer, ctx.num_layers), 'text')

    def _cache_valid(self, ctx: StepContext) -> bool:
        return self._cache is not None and self._cache.signature == layout_signature(ctx.layout)

    def plan(self, ctx: StepContext) -> StepPlan:
        """Full step (and fresh cache) when there is no usable cache; else select pre-decoder."""
        cfg = self.config
        # The first step measures every token's attention (and fills the cache).
        full = ctx.target >= ctx.layout.n_visual or self._relevance is None
        if cfg.reuse:
            refresh = cfg.refresh_interval and self._since_refresh >= cfg.refresh_interval
            full = full or not self._cache_valid(ctx) or bool(refresh)
        return StepPlan(probes={self._probe(ctx)}, capture_kv=cfg.reuse, full_step=full)

    # ------------------------------------------------------------------------ scores
    def _entropy(self, ctx: StepContext) -> np.ndarray:
        cfg, layout = self.config, ctx.layout
        self._pixels = patch_pixels(ctx.rgb, layout.grid_shape, cfg.patch_pixels)
        image = gray_entropy(self._pixels, cfg.bins)
        geometry = geometric_entropy(ctx.neighbourhoods_3d, cfg.entropy_3d, cfg.bins)
        return _minmax_per_modality(np.concatenate([image, geometry]), layout.n_2d)

    def _static(self, ctx: StepContext) -> np.ndarray:
        """Per visual token: cached keys exist and its input has not changed since."""
        layout, cfg = ctx.layout, self.config
        static = np.zeros(layout.n_visual, bool)
        if not cfg.reuse or not self._cache_valid(ctx):
            return static
        cached = self._cache.reusable_positions().numpy()
        now = self._pixels.reshape(layout.n_2d, -1).astype(np.float64)
        before = self._anchor_pixels.reshape(layout.n_2d, -1).astype(np.float64)
        cosine = (now * before).sum(1) / np.maximum(
            np.linalg.norm(now, axis=1) * np.linalg.norm(before, axis=1), 1e-12)
        static[: layout.n_2d] = cosine >= cfg.static_similarity
        if layout.n_3d:
            moved = np.linalg.norm(layout.centres_3d - self._anchor_centres, axis=1)
            reshaped = _chamfer(ctx.neighbourhoods_3d, self._anchor_shapes)
            static[layout.n_2d:] = (moved < cfg.static_centre_m) & (reshaped < cfg.static_shape_m)
        in_cache = np.zeros(layout.n_visual, bool)
        in_cache[cached] = True
        return static & in_cache

    def before_llm(self, ctx: StepContext) -> Optional[torch.Tensor]:
        """Choose the computed tokens (exactly the budget) and the reused ones."""
        cfg, layout = self.config, ctx.layout
        entropy = self._entropy(ctx)
        relevance = carry_visual(self._relevance, layout.n_2d, layout.centres_3d, self._centres)
        relevance = (
            _minmax_per_modality(relevance, layout.n_2d) if relevance is not None
            else np.zeros(layout.n_visual)
        )
        alpha = min(self.t / cfg.transition_steps, 1.0)
        score = torch.as_tensor((1.0 - alpha) * entropy + alpha * relevance, dtype=torch.float32)
        k_critical = int(round(ctx.target * ((1.0 - alpha) * cfg.k1 + alpha * cfg.k2)))
        critical = select_top_k(score, ctx.is_3d, k_critical)
        static = torch.as_tensor(self._static(ctx))
        tiers = score.clone()
        tiers[critical] += 4.0
        tiers[~static] += 2.0  # a changed token cannot be reused: compute it before a static one
        kept = ctx.top_k(tiers)
        ctx.record_stage('info_entropy', kept)
        reused = static.clone()
        reused[kept] = False
        self.last_static, self.last_critical = static, critical
        self.last_reused = torch.nonzero(reused).flatten()
        if cfg.reuse and self.last_reused.numel():
            ctx.plan.reuse = KVReuse(self.last_reused, self._cache)
        return kept

    # ------------------------------------------------------------------- temporal state
    def after_step(self, ctx: StepContext, outcome: StepOutcome) -> None:
        """Keep the step's keys/values, the anchors they came from and attention relevance."""
        layout = ctx.layout
        if self._pixels is None or ctx.plan.full_step:
            self._pixels = patch_pixels(ctx.rgb, layout.grid_shape, self.config.patch_pixels)
        positions, relevance = attention_relevance(
            outcome.probes[self._probe(ctx)], layout.n_visual, self.config.relevance
        )
        carried = carry_visual(self._relevance, layout.n_2d, layout.centres_3d, self._centres)
        merged = carried if carried is not None else np.zeros(layout.n_visual, np.float32)
        merged = merged.astype(np.float32).copy()
        merged[positions] = relevance
        self._relevance, self._centres = merged, layout.centres_3d.copy()
        if outcome.kv is not None:
            computed = outcome.kept_visual.numpy()
            fresh = self._anchor_pixels is None or ctx.plan.full_step
            pixels = self._pixels.copy() if fresh else self._anchor_pixels.copy()
            centres = layout.centres_3d.copy() if fresh else self._anchor_centres.copy()
            shapes = ctx.neighbourhoods_3d.copy() if fresh else self._anchor_shapes.copy()
            in_2d, in_3d = computed[computed < layout.n_2d], computed[computed >= layout.n_2d]
            pixels[in_2d] = self._pixels[in_2d]
            centres[in_3d - layout.n_2d] = layout.centres_3d[in_3d - layout.n_2d]
            shapes[in_3d - layout.n_2d] = ctx.neighbourhoods_3d[in_3d - layout.n_2d]
            self._anchor_pixels, self._anchor_centres = pixels, centres
            self._anchor_shapes = shapes
            self._cache = outcome.kv
        self._since_refresh = 0 if ctx.plan.full_step else self._since_refresh + 1
        self._pixels = None
        self.t += 1
