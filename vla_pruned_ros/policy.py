"""
``Policy.step(observation) -> (action chunk, stats)``: the one entry point every user shares.

The ROS node, the bag evaluation, the simulator and the benchmark all call this, so what is
measured is what is deployed. A step tokenizes the observation, lets the active pruner drop
visual tokens (before the 3D encoder and decoder, and between decoder layers), runs the
decoder layer by layer and regresses an action chunk. Pruner, budget and episode resets may be
requested at any time (e.g. from a ROS parameter callback thread); they take effect at the start
of the next step, never during one.
"""

from dataclasses import dataclass
import threading
import time
from typing import Any, Optional, Union
import weakref

import numpy as np
import torch

from vla_pruned_ros.device import resolve_device, resolve_dtype
from vla_pruned_ros.model.checkpoint import load_model, to_device
from vla_pruned_ros.model.config import MVLAConfig
from vla_pruned_ros.model.flops import FlopsModel
from vla_pruned_ros.model.kv_reuse import KVReuse, layout_signature, reuse_attention_flops
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.pointer import PointerOutput
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.model.runner import LayerRunner, RunState, synchronize
from vla_pruned_ros.model.text import InstructionEncoder, build_tokenizer
from vla_pruned_ros.observation import Observation
from vla_pruned_ros.pruning import (
    Budget,
    Pruner,
    StepContext,
    StepOutcome,
    StepPlan,
    create_pruner,
)
from vla_pruned_ros.stats import StepStats
from vla_pruned_ros.tokens.layout import TokenLayout
from vla_pruned_ros.tokens.points_3d import (
    PointGroups,
    observation_groups,
    project_centres_to_patches,
)


class PrunerContractError(RuntimeError):
    """A pruner returned an invalid selection (a bug in the pruner, not bad input)."""


class PrunerDepthError(ValueError):
    """A pruner set to read or cut at a decoder layer this model does not have."""


@dataclass
class _Pending:
    pruner: Optional[Pruner] = None
    budget: Optional[Budget] = None
    reset: bool = False


class Policy:
    """A 2D+3D VLA with a pruner and a budget, stepping on observations."""

    def __init__(
        self,
        model: MultiModalVLA,
        tokenizer: Any,
        device: str = 'auto',
        dtype: str = 'fp32',
        pruner: Union[str, Pruner] = 'dense',
        budget: Optional[Budget] = None,
        pruner_config: Optional[dict[str, Any]] = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        # Normalisation stats stay in fp32: bf16 would round them to 3 significant digits.
        self.model = to_device(model, self.device, self.dtype).eval()
        self.config = model.config
        self.tokenizer = tokenizer
        self.runner = LayerRunner(self.model.decoder)
        self.instructions = InstructionEncoder(tokenizer, self.config.instruction_tokens)
        self.flops = FlopsModel.from_model(self.model)
        self.pruner = self._make_pruner(pruner, pruner_config)
        self.budget = budget or Budget()
        # Steps since the episode start, per pruner instance: bench and eval interleave several
        # pruners on one policy, and each must see its own episode clock.
        self._episode_steps: weakref.WeakKeyDictionary[Pruner, int] = (
            weakref.WeakKeyDictionary()
        )
        self._pending = _Pending()
        self._lock = threading.Lock()
        # Where the model's pointers pointed in the last step of this episode (camera frame;
        # None without pointers or after a reset): what a tracking pointer starts from
        # (MVLAConfig.pointer_track_radius), and diagnostics such as tools/rollout_trace.py.
        self.last_pointer: Optional[PointerOutput] = None

    # ----------------------------------------------------------------------------- creation
    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> 'Policy':
        """Load a model directory written by :func:`vla_pruned_ros.model.checkpoint.save_model`."""
        model, tokenizer = load_model(path)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, **kwargs: Any) -> 'Policy':
        """A randomly initialised model of a named preset (latency work and tests)."""
        return cls.from_config(preset_config(name), seed=seed, **kwargs)

    @classmethod
    def from_config(cls, config: MVLAConfig, seed: int = 0, **kwargs: Any) -> 'Policy':
        """A randomly initialised model of any configuration, with the preset tokenizer."""
        tokenizer = build_tokenizer(vocab_size=config.vocab_size)
        config.vocab_size = len(tokenizer)
        torch.manual_seed(seed)
        device = resolve_device(kwargs.get('device', 'auto'))
        dtype = resolve_dtype(kwargs.get('dtype', 'fp32'))
        # Build directly on the target device and dtype: a 7B model in fp32 on the host would
        # need 28 GB before it could be cast down.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype if dtype != torch.float16 else torch.float32)
        try:
            with torch.device(device):
                model = MultiModalVLA(config)
        finally:
            torch.set_default_dtype(previous)
        return cls(model, tokenizer, **kwargs)

    @staticmethod
    def _make_pruner(pruner: Union[str, Pruner], config: Optional[dict[str, Any]]) -> Pruner:
        if isinstance(pruner, Pruner):
            if config:
                raise ValueError('pruner_config only applies when the pruner is given by name')
            return pruner
        return create_pruner(pruner, **(config or {}))

    # ------------------------------------------------------------------------ live changes
    def configure(
        self,
        pruner: Union[str, Pruner, None] = None,
        budget: Optional[Budget] = None,
        pruner_config: Optional[dict[str, Any]] = None,
    ) -> None:
        """
        Request a new pruner and/or budget for the next step (thread-safe).

        Invalid names or configs raise here, in the caller's thread, so a parameter callback can
        reject them; nothing changes for the step in progress.
        """
        new_pruner = self._make_pruner(pruner, pruner_config) if pruner is not None else None
        with self._lock:
            if new_pruner is not None:
                self._pending.pruner = new_pruner
            if budget is not None:
                self._pending.budget = budget

    def reset(self) -> None:
        """Start a new episode at the next step (clears the pruner's temporal state)."""
        with self._lock:
            self._pending.reset = True

    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, _Pending()
        if pending.pruner is not None:
            self.pruner = pending.pruner
        if pending.budget is not None:
            self.budget = pending.budget
        if pending.reset:
            self.pruner.reset()
            self._episode_steps[self.pruner] = 0
            self.last_pointer = None  # a new episode: nothing to track

    @property
    def step_index(self) -> int:
        """Steps the active pruner has taken since its episode started."""
        return self._episode_steps.get(self.pruner, 0)

    # --------------------------------------------------------------------------------- step
    def _timer(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def _proprio(self, observation: Observation) -> Optional[torch.Tensor]:
        if not self.model.n_proprio:
            return None
        if observation.ee_pose is None:
            raise ValueError('this model reads the end-effector pose but the observation has none')
        pose = np.asarray(observation.ee_pose, np.float32)[: self.config.proprio_dim]
        pose = torch.as_tensor(pose)
        return pose.unsqueeze(0).to(self.device)

    def _encode_3d(
        self, groups: PointGroups, keep_3d: torch.Tensor, reuse: Optional[KVReuse], n_2d: int,
        input_ids: torch.Tensor,
        pointed: Optional[tuple[Optional[PointerOutput], np.ndarray]] = None,
    ) -> tuple[torch.Tensor, Optional[PointerOutput], np.ndarray]:
        """
        Decoder tokens [1, n, width] of the kept groups, the pointer's output, the groups it saw.

        The pointer's output is None for a model without pointers; the last value holds the
        3D group index of each of its logits' columns (``StepContext.pointer_groups``).

        The pointer reads the kept groups plus those whose keys/values are reused from an
        earlier step: reuse saves decoder work, and the pointer has no cache to take them from
        (it reads the groups' descriptors, not their encoder tokens). ``pointed`` is the
        (output, groups) of pointers already run over every group (``pointer_first``).
        """
        if pointed is not None:
            centres, neighbourhoods = self._group_tensors(groups, keep_3d.numpy())
            return self.model.encode_3d(neighbourhoods, centres), pointed[0], pointed[1]
        seen = keep_3d
        if self.model.pointer is not None and reuse is not None:
            reused = reuse.positions.cpu()
            seen = torch.unique(torch.cat([keep_3d, reused[reused >= n_2d] - n_2d]))
        rows = seen.numpy()
        # One copy of the groups the pointers read; the encoder takes the kept ones from it.
        centres, neighbourhoods = self._group_tensors(groups, rows)
        pointer = self.model.point(input_ids, centres, neighbourhoods, self._previous_points())
        if seen.numel() != keep_3d.numel():  # seen is sorted (unique), keep_3d in plan order
            kept = torch.searchsorted(seen, keep_3d).to(self.device)
            centres, neighbourhoods = centres[:, kept], neighbourhoods[:, kept]
        return self.model.encode_3d(neighbourhoods, centres), pointer, rows

    def _group_tensors(self, groups: PointGroups, rows: np.ndarray) -> tuple:
        """Centres [1, n, 3] and neighbourhoods [1, n, k, c] of the given 3D groups."""
        centres = torch.as_tensor(groups.centres[rows]).to(self.device, self.dtype).unsqueeze(0)
        neighbourhoods = torch.as_tensor(groups.neighbourhoods[rows]).to(
            self.device, self.dtype).unsqueeze(0)
        return centres, neighbourhoods

    def _point(
        self, groups: PointGroups, input_ids: torch.Tensor, rows: np.ndarray
    ) -> tuple[Optional[PointerOutput], np.ndarray]:
        """The pointers' output over the given 3D groups, and those groups."""
        return self.model.point(input_ids, *self._group_tensors(groups, rows),
                                self._previous_points()), rows

    def _previous_points(self) -> Optional[torch.Tensor]:
        return None if self.last_pointer is None else self.last_pointer.points

    @torch.inference_mode()
    def step(self, observation: Observation) -> tuple[np.ndarray, StepStats]:
        """Predict an action chunk [horizon, action_dim] (physical units) and the step's stats."""
        self._apply_pending()
        observation.validate()
        model, config = self.model, self.config
        started = self._timer()
        overhead = 0.0

        pixel_values = model.vision.preprocess(observation.rgb).to(self.device, self.dtype)
        features_2d = model.encode_2d(pixel_values)[0]
        groups = observation_groups(observation, config.points)
        grid = model.vision.grid_size
        if observation.intrinsics is not None:
            patch_of_3d = project_centres_to_patches(groups.centres, observation.intrinsics, grid)
        else:
            patch_of_3d = np.full(len(groups.centres), -1, np.int64)
        input_ids = self.instructions.encode(observation.instruction)
        layout = TokenLayout(
            n_2d=features_2d.shape[0],
            n_3d=len(groups.centres),
            n_text=len(input_ids),
            n_proprio=model.n_proprio,
            n_action=config.horizon,
            grid_shape=tuple(grid),
            centres_3d=groups.centres,
            patch_of_3d=np.asarray(patch_of_3d, np.int64),
            instruction=observation.instruction,
        )
        target = self.budget.resolve(layout.n_2d, layout.n_3d)
        floor_2d, floor_3d = self.budget.floors(layout.n_2d, layout.n_3d)
        ctx = StepContext(
            step_index=self.step_index,
            layout=layout,
            target=target,
            floor_2d=floor_2d,
            floor_3d=floor_3d,
            features_2d=features_2d,
            pixel_values=pixel_values,
            generator=torch.Generator().manual_seed(self.step_index),
            rgb=observation.rgb,
            neighbourhoods_3d=groups.neighbourhoods[..., :3],  # geometry (colour follows)
            num_layers=self.runner.num_layers,
        )

        ids = torch.tensor([input_ids], device=self.device)
        mark = self._timer()
        ctx.plan = self.pruner.plan(ctx)
        self._check_depth(ctx.plan)
        pointed = None
        if ctx.plan.pointer_first and not ctx.plan.full_step and model.pointer is not None:
            overhead += self._timer() - mark  # the pointers are model work, not the pruner's
            pointed = self._point(groups, ids, np.arange(layout.n_3d))
            ctx.pointer_logits, ctx.pointer_groups = pointed[0].logits[0], pointed[1]
            mark = self._timer()
        keep = None if ctx.plan.full_step else self.pruner.before_llm(ctx)
        keep = self._check_keep(keep, torch.arange(layout.n_visual), layout)
        reuse = None if ctx.plan.full_step else self._check_reuse(ctx.plan.reuse, keep, layout)
        overhead += self._timer() - mark

        keep_2d = keep[keep < layout.n_2d]
        keep_3d = keep[keep >= layout.n_2d] - layout.n_2d
        tokens_2d = model.project_2d_tokens(features_2d[keep_2d.to(self.device)].unsqueeze(0))
        tokens_3d, pointer, ctx.pointer_groups = self._encode_3d(groups, keep_3d, reuse,
                                                                 layout.n_2d, ids, pointed)
        ctx.pointer_logits = None if pointer is None else pointer.logits[0]
        proprio = self._proprio(observation)
        self.last_pointer = pointer
        embeds = model.assemble(tokens_2d, tokens_3d, ids, proprio, pointer)
        positions = torch.cat([keep, torch.arange(layout.n_visual, layout.length)])
        decoder_start = self._timer()
        tokenize_s = decoder_start - started - overhead

        def on_prune(state: RunState) -> Optional[torch.Tensor]:
            chosen = self.pruner.at_layer(ctx, state)
            if chosen is None:
                return None
            return self._check_keep(chosen, state.visual_positions().cpu(), layout)

        run = self.runner.run(
            embeds,
            layout,
            probes=ctx.plan.probes,
            prune_layers=() if ctx.plan.full_step else ctx.plan.prune_layers,
            on_prune=on_prune,
            positions=positions,
            reuse=reuse,
            capture_kv=ctx.plan.capture_kv,
        )
        head_start = self._timer()
        decoder_s = head_start - decoder_start - run.overhead_s
        overhead += run.overhead_s
        normalised = model.head(run.normed[:, -config.horizon:], pointer, proprio)
        actions = model.denormalize(normalised)[0].cpu().numpy()
        head_end = self._timer()

        visual_rows = run.positions < layout.n_visual
        kept_visual = run.positions[visual_rows].cpu()
        expected = layout.n_visual if ctx.plan.full_step else target
        if kept_visual.numel() != expected:
            raise PrunerContractError(
                f'{self.pruner.name} kept {kept_visual.numel()} visual tokens, budget {expected}'
            )
        outcome = StepOutcome(
            kept_visual=kept_visual,
            final_hidden=run.last_hidden[0, visual_rows] if ctx.plan.final_hidden else None,
            probes=run.probes,
            actions=actions,
            kv=run.kv,
            reused_visual=reuse.positions if reuse is not None else None,
        )
        self.pruner.after_step(ctx, outcome)
        finished = self._timer()
        overhead += finished - head_end

        n_2d_kept, n_3d_kept = layout.count(kept_visual)
        flops_dense = self.flops.step(layout.n_2d, layout.n_3d, layout.n_2d, layout.n_3d,
                                      [layout.length] * self.runner.num_layers)
        # Probes and computed tokens also attend over the reused keys.
        keys_per_layer = [n + run.n_reused for n in run.tokens_per_layer]
        flops_actual = self.flops.step(
            layout.n_2d, layout.n_3d, int(keep_2d.numel()), int(keep_3d.numel()),
            run.tokens_per_layer, n_3d_pointed=len(ctx.pointer_groups),
        ) + self.flops.probes(ctx.plan.probes, keys_per_layer, layout)
        if run.n_reused:
            shape = self.flops.decoder
            flops_actual += reuse_attention_flops(
                shape.heads, shape.head_dim, run.tokens_per_layer, run.n_reused
            )
        stats = StepStats(
            pruner=self.pruner.name,
            budget=expected,
            full_step=ctx.plan.full_step,
            tokens_2d_in=layout.n_2d,
            tokens_3d_in=layout.n_3d,
            tokens_2d_kept=n_2d_kept,
            tokens_3d_kept=n_3d_kept,
            stages=list(ctx.stages),
            latency_ms=(finished - started) * 1e3,
            tokenize_ms=tokenize_s * 1e3,
            decoder_ms=decoder_s * 1e3,
            pruning_overhead_ms=overhead * 1e3,
            action_head_ms=(head_end - head_start) * 1e3,
            flops_dense=flops_dense,
            flops_actual=flops_actual,
            device=str(self.device),
            stamp_ns=int(observation.stamp_ns),
            step_index=self.step_index,
            kept_2d=kept_visual[kept_visual < layout.n_2d].tolist(),
            kept_3d=(kept_visual[kept_visual >= layout.n_2d] - layout.n_2d).tolist(),
            tokens_reused=run.n_reused,
        )
        self._episode_steps[self.pruner] = ctx.step_index + 1
        return actions, stats

    def _check_reuse(
        self, reuse: Optional[KVReuse], keep: torch.Tensor, layout: TokenLayout
    ) -> Optional[KVReuse]:
        """Validate a pruner's KV reuse: cached at every layer, same layout, not also kept."""
        if reuse is None:
            return None
        positions = torch.as_tensor(reuse.positions, dtype=torch.int64).cpu().flatten()
        name = self.pruner.name
        if reuse.cache.signature != layout_signature(layout):
            raise PrunerContractError(f'{name} reuses keys/values cached for another layout')
        if reuse.cache.num_layers != self.runner.num_layers:
            raise PrunerContractError(f'{name} reuses a cache that does not cover every layer')
        if positions.numel() > 1 and not bool((positions[1:] > positions[:-1]).all()):
            raise PrunerContractError(f'{name} reuses unsorted or repeated positions')
        if not bool(torch.isin(positions, reuse.cache.reusable_positions()).all()):
            raise PrunerContractError(f'{name} reuses positions missing from its cache')
        if bool(torch.isin(positions, keep).any()):
            raise PrunerContractError(f'{name} both computes and reuses a token')
        if not positions.numel():
            return None
        return KVReuse(positions, reuse.cache)

    def _check_depth(self, plan: StepPlan) -> None:
        """Refuse a plan that reads or cuts past the decoder's last layer, before any work."""
        # the runner refuses these too, but only after the pointers and stage 1 have run
        depth = self.runner.num_layers
        cuts = () if plan.full_step else sorted(plan.prune_layers)
        asked = [('cuts tokens before', layer) for layer in cuts]
        asked += [('reads attention at', probe.layer) for probe in plan.probes]
        for what, layer in asked:
            if not 0 <= layer < depth:
                raise PrunerDepthError(
                    f"{self.pruner.name} {what} decoder layer {layer}, but this model's decoder"
                    f" has {depth} layers (0..{depth - 1}): set the pruner's layer setting"
                    f' lower (tri_stage semantic_layer, fastv / ties / safe / vla_pruner layer)'
                )

    def _check_keep(
        self, keep: Optional[torch.Tensor], available: torch.Tensor, layout: TokenLayout
    ) -> torch.Tensor:
        """Validate a pruner's selection: sorted, unique, in range and still present."""
        if keep is None:
            return available
        keep = torch.as_tensor(keep, dtype=torch.int64).cpu().flatten()
        if keep.numel() and (keep.min() < 0 or keep.max() >= layout.n_visual):
            raise PrunerContractError(f'{self.pruner.name} returned visual indices out of range')
        if keep.numel() > 1 and not bool((keep[1:] > keep[:-1]).all()):
            raise PrunerContractError(f'{self.pruner.name} returned unsorted or repeated indices')
        if not bool(torch.isin(keep, available).all()):
            raise PrunerContractError(f'{self.pruner.name} kept a token already dropped')
        return keep
