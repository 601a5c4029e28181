"""
Baseline pruners: ``dense`` (nothing pruned), ``random`` (seeded) and ``fastv``.

FastV (Chen et al., ECCV 2024) scores visual tokens by the head-mean attention they receive at
layer K-1 and drops the rest from layer K on. VLA re-implementations (VLA-Pruner, SAFE-Pruner
code) read the attention row of the last prompt token and use K = 3; the original used K = 2.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from vla_pruned_ros.model.runner import AttentionProbe, RunState
from vla_pruned_ros.pruning.base import (
    Pruner,
    PrunerConfig,
    StepContext,
    StepPlan,
    register_pruner,
)


@dataclass
class DenseConfig(PrunerConfig):
    """The dense policy has nothing to configure."""


@register_pruner
class DensePruner(Pruner):
    """Keep every token: the reference every other pruner is measured against."""

    name = 'dense'
    config_class = DenseConfig


@dataclass
class RandomConfig(PrunerConfig):
    """
    Uniform random selection before the decoder.

    ``seed`` seeds a generator at every episode reset, so a run is reproducible.
    """

    seed: int = 0


@register_pruner
class RandomPruner(Pruner):
    """Keep a uniformly random subset of visual tokens (floors honoured)."""

    name = 'random'
    config_class = RandomConfig

    def reset(self) -> None:
        """Restart the random stream."""
        self._generator = torch.Generator().manual_seed(self.config.seed)

    def plan(self, ctx: StepContext) -> StepPlan:
        """Prune before the decoder whenever the budget is below the visual tokens."""
        return StepPlan(full_step=ctx.target >= ctx.layout.n_visual)

    def before_llm(self, ctx: StepContext) -> Optional[torch.Tensor]:
        """Random scores, then exact top-k under the floors."""
        if ctx.plan.full_step:
            return None
        scores = torch.rand(ctx.layout.n_visual, generator=self._generator)
        kept = ctx.top_k(scores)
        ctx.record_stage('random', kept)
        return kept


@dataclass
class FastVConfig(PrunerConfig):
    """
    FastV settings.

    ``layer`` is K: attention is read at layer K-1 and tokens are dropped before layer K
    (K = 3 as in the VLA-Pruner and SAFE-Pruner code; FastV's paper used 2). ``queries``
    is the attention row used: 'last_text' (official) or 'text' (mean over instruction tokens).
    """

    layer: int = 3
    queries: str = 'last_text'


@register_pruner
class FastVPruner(Pruner):
    """Drop the visual tokens the last instruction token attends to least, at layer K."""

    name = 'fastv'
    config_class = FastVConfig

    def _probe(self) -> AttentionProbe:
        return AttentionProbe(self.config.layer - 1, self.config.queries)

    def plan(self, ctx: StepContext) -> StepPlan:
        """Ask for layer K-1 attention and a hook before layer K."""
        if ctx.target >= ctx.layout.n_visual:
            return StepPlan(full_step=True)
        if self.config.layer < 1:
            raise ValueError('fastv layer K must be at least 1 (it reads layer K-1)')
        return StepPlan(probes={self._probe()}, prune_layers={self.config.layer})

    def at_layer(self, ctx: StepContext, state: RunState) -> Optional[torch.Tensor]:
        """Top-k visual tokens by attention received from the query rows."""
        probe = state.probes[self._probe()]
        received = probe.received()
        scores = torch.full((ctx.layout.n_visual,), float('-inf'))
        visual = probe.key_positions < ctx.layout.n_visual
        scores[probe.key_positions[visual].cpu()] = received[visual].cpu()
        kept = ctx.top_k(scores)
        ctx.record_stage('fastv', kept)
        return kept
