"""
The pruner interface, the per-step context it works in, and the registry of pruners by name.

A step runs: ``plan`` (declare what the step needs) -> ``before_llm`` (drop whole tokens before
any decoder layer; for 3D tokens even before the point encoder, since only the group geometry
exists at that point) -> decoder layers, with ``at_layer`` called before each layer the plan
named -> ``after_step`` (update temporal state from final features and probes).

A pruner declares the attention it needs as :class:`AttentionProbe` s in its plan, and whether it
wants the final hidden states; the runner computes only that. Each pruner has a config dataclass
with documented defaults and keeps per-episode state that ``reset`` clears.

Two extensions serve temporal methods. KV reuse: a plan may ask for the step's per-layer visual
keys/values (``capture_kv``, returned in ``StepOutcome.kv``) and, on a pruned step, name visual
tokens whose keys/values come from such a cache instead of being computed (``reuse``, set in
``plan`` or ``before_llm``, disjoint from the tokens kept). The budget then counts the computed
visual tokens; reused ones are reported separately. Keyframes decided mid-step: ``at_layer`` may
set ``ctx.plan.full_step = True`` and return None to run the rest of the step unpruned (the
budget check then expects every visual token).
"""

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from vla_pruned_ros.model.kv_reuse import KVCache, KVReuse
from vla_pruned_ros.model.runner import AttentionProbe, ProbeResult, RunState
from vla_pruned_ros.pruning.budget import select_top_k
from vla_pruned_ros.tokens.layout import TokenLayout


@dataclass
class PrunerConfig:
    """Base of every pruner's configuration (each pruner subclasses it with its own fields)."""

    def updated(self, **overrides: Any) -> 'PrunerConfig':
        """A copy with some fields replaced; unknown names raise ``ValueError``."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(
                f'unknown {type(self).__name__} fields: {sorted(unknown)}; known: {sorted(known)}'
            )
        return replace(self, **overrides)


@dataclass
class StepPlan:
    """What a pruner needs from the coming step."""

    probes: set[AttentionProbe] = field(default_factory=set)
    prune_layers: set[int] = field(default_factory=set)
    final_hidden: bool = False
    full_step: bool = False  # run unpruned (episode start, keyframe, segment boundary)
    capture_kv: bool = False  # return this step's per-layer visual keys/values
    reuse: Optional[KVReuse] = None  # visual tokens taken from a cache (pruned steps only)
    # Score every 3D group with the model's instruction pointers before ``before_llm`` (models
    # with pointers; pruned steps), so a pruner can keep what the instruction names this step.
    # The pointers' output then covers every group; the decoder still reads only what is kept.
    pointer_first: bool = False


@dataclass
class StepContext:
    """
    Everything a pruner may read during one step.

    ``features_2d`` are the vision tower's patch features and ``pixel_values`` the
    preprocessed image; both exist before the decoder, like ``rgb`` (the observation's raw
    H x W x 3 uint8 image) and ``neighbourhoods_3d`` (G x k x 3 points of each 3D group,
    relative to its centre). ``num_layers`` is the decoder depth. ``stages`` records how many
    2D/3D tokens each pruning stage left (pruners append to it through :meth:`record_stage`).
    ``pointer_logits`` [pointers, scored groups] and ``pointer_groups`` (the 3D group index of
    each scored column) are set once the kept 3D groups are encoded, so from ``at_layer`` on,
    for a model with instruction pointers (from ``before_llm`` on, over every group, when the
    plan asks for ``pointer_first``); :meth:`pointer_mass` reads them.
    """

    step_index: int
    layout: TokenLayout
    target: int
    floor_2d: int
    floor_3d: int
    features_2d: torch.Tensor
    pixel_values: torch.Tensor
    generator: torch.Generator
    plan: StepPlan = field(default_factory=StepPlan)
    stages: list[tuple] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    rgb: Optional[np.ndarray] = None
    neighbourhoods_3d: Optional[np.ndarray] = None
    num_layers: int = 0
    pointer_logits: Optional[torch.Tensor] = None
    pointer_groups: Optional[np.ndarray] = None
    _pointer_mass: Optional[np.ndarray] = field(default=None, repr=False)

    def pointer_mass(self) -> Optional[np.ndarray]:
        """
        Probability the pointers put on each 3D group, summed over pointers [n_3d], or None.

        0 for groups they did not score; None for a model without pointers (or before the
        groups are encoded). Computed on first use (a device sync on a GPU), then kept.
        """
        if self.pointer_logits is None or self.pointer_groups is None:
            return None
        if self._pointer_mass is None:
            mass = np.zeros(self.layout.n_3d)
            if len(self.pointer_groups):
                probabilities = torch.softmax(self.pointer_logits.float(), dim=-1)
                mass[self.pointer_groups] = probabilities.sum(dim=0).cpu().numpy()
            self._pointer_mass = mass
        return self._pointer_mass

    @property
    def is_3d(self) -> torch.Tensor:
        """Bool per visual token: True for 3D tokens."""
        return self.layout.is_3d()

    def record_stage(self, name: str, kept_visual: torch.Tensor) -> None:
        """Log the 2D/3D counts a stage kept (for PruningStats)."""
        n_2d, n_3d = self.layout.count(kept_visual)
        self.stages.append((name, n_2d, n_3d))

    def top_k(
        self,
        scores: torch.Tensor,
        k: Optional[int] = None,
        candidates: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Exactly ``k`` (default: the step's target) best visual tokens, floors honoured."""
        return select_top_k(
            scores,
            self.is_3d.to(scores.device),
            self.target if k is None else k,
            self.floor_2d,
            self.floor_3d,
            candidates,
        )


@dataclass
class StepOutcome:
    """What ``after_step`` learns from the finished step."""

    kept_visual: torch.Tensor  # original visual indices that reached the last layer
    final_hidden: Optional[torch.Tensor]  # [n_kept_visual, width] last-layer output (pre-norm)
    probes: dict[AttentionProbe, ProbeResult]
    actions: np.ndarray  # [horizon, action_dim] in physical units
    kv: Optional[KVCache] = None  # per-layer visual keys/values (plan.capture_kv or reuse)
    reused_visual: Optional[torch.Tensor] = None  # visual indices whose keys/values were reused


class Pruner:
    """
    Base class: a pruner that prunes nothing.

    Subclasses set ``name`` and ``config_class`` and override the hooks they need. Hooks
    return the ORIGINAL visual indices (0 .. n_visual-1, sorted) to keep, or None to keep all.
    """

    name: ClassVar[str] = 'base'
    config_class: ClassVar[type[PrunerConfig]] = PrunerConfig

    def __init__(self, config: Optional[PrunerConfig] = None, **overrides: Any) -> None:
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f'{self.name} needs a {self.config_class.__name__}')
        self.config = config.updated(**overrides) if overrides else config
        self.reset()

    def reset(self) -> None:
        """Clear per-episode state (call at every episode start)."""

    def plan(self, ctx: StepContext) -> StepPlan:
        """Declare probes, prune layers and whether the step runs unpruned."""
        return StepPlan(full_step=True)

    def before_llm(self, ctx: StepContext) -> Optional[torch.Tensor]:
        """Visual tokens to keep before the decoder (and before the 3D encoder), or None."""
        return None

    def at_layer(self, ctx: StepContext, state: RunState) -> Optional[torch.Tensor]:
        """Visual tokens to keep from layer ``state.layer`` on, or None."""
        return None

    def after_step(self, ctx: StepContext, outcome: StepOutcome) -> None:
        """Update temporal state from the finished step."""


def resolve_layer(layer: Optional[int], num_layers: int, fraction: float = 15 / 32) -> int:
    """
    A decoder layer index from a config value: negative counts from the end (-1 = last).

    None picks the layer at ``fraction`` of the depth (default 15/32: layer 15 of LLaMA-2-7B's
    32, where VLA-Cache and VLA-Pruner read attention). Raises ``ValueError`` when outside.
    """
    index = int(num_layers * fraction) if layer is None else layer
    index = index + num_layers if index < 0 else index
    if not 0 <= index < num_layers:
        raise ValueError(f'layer {layer} outside a decoder of {num_layers} layers')
    return index


PRUNERS: dict[str, type[Pruner]] = {}


def register_pruner(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator adding a pruner to the registry under ``cls.name``."""
    if cls.name in PRUNERS and PRUNERS[cls.name] is not cls:
        raise ValueError(f'a pruner named {cls.name!r} is already registered')
    PRUNERS[cls.name] = cls
    return cls


def available_pruners() -> list[str]:
    """Registered pruner names, sorted."""
    return sorted(PRUNERS)


def create_pruner(name: str, **config: Any) -> Pruner:
    """Instantiate a registered pruner by name with config overrides."""
    try:
        cls = PRUNERS[name]
    except KeyError:
        raise ValueError(
            f'unknown pruner {name!r}; available: {", ".join(available_pruners())}'
        ) from None
    return cls(**config)
