"""
Behaviour cloning of the reference VLA on recorded expert demonstrations.

The model regresses the expert's normalised action chunk (L1 loss; ``action_mean``/
``action_std`` are set from the training frames and saved with the model). Every step draws a
batch with a seeded generator; ``--resume`` restores weights, optimiser, schedule and the
generators, so an interrupted run continues the same sequence of batches.

Augmentation, visual-token dropout: with probability ``token_drop_prob`` a batch keeps only a
random subset of its 2D patch tokens and of its 3D point groups (each between
``min_keep`` and all of them, drawn per batch; the subset itself per sample), at their original
rotary positions, which is what the policy does when a pruner drops tokens before the decoder.
The model thus learns to act from partial views; this helps every pruner alike (the dense policy
still sees all tokens), and it is documented with the results in ``docs/training.md``. With
``cut_share`` some of those subsets are cut inside the decoder instead (:func:`draw_cut`), where
the attention-ranking pruners cut.

Stages: ``stage='all'`` trains every weight. ``stage='head'`` trains only the action head
(:meth:`MultiModalVLA.head_parameters`) of an existing model (``init_from`` or ``resume``): the
frozen trunk runs once per training frame and view (view 0 with every token, the others with the
token dropout above, and ``head_cut_views`` more with tokens cut inside the decoder, where the
attention-ranking pruners cut) and the head is fitted on those outputs, a few milliseconds a step
instead of a second. That is how a new head (such as the geometry-reading one) is put on a trained
policy without retraining it. ``stage='pointer'`` trains only the weights that decide where the
pointers point (:meth:`MultiModalVLA.pointer_parameters`) on the pointer loss, from the cached 3D
groups and the instruction alone (no image, no decoder; the 3D token dropout above applies), a few
milliseconds a step; validation is then the pointer loss. A new pointer changes the points the
trunk and head read: follow it with a head stage.

Output directory::

    model/               the latest checkpoint (a model directory: Policy.from_pretrained)
    training_state.pt    optimiser, step, generators, for --resume
    log.jsonl            one JSON line per logged step (train loss, validation loss, lr)
    cache/               precomputed per-bag inputs and, for a head stage, the frozen trunk's
                         outputs (safe to delete; ``cache_dir`` puts them elsewhere, so head
                         stages on the same trunk and data share them)
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass
import hashlib
import json
import math
import os
from pathlib import Path
import shutil
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from vla_pruned_ros.device import resolve_device
from vla_pruned_ros.model.checkpoint import load_model, save_model
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.pointer import (
    POINTER_TARGETS,
    PointerOutput,
    attribute_loss,
    pointer_loss,
)
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.model.text import InstructionEncoder, build_tokenizer
from vla_pruned_ros.train.dataset import OBJECT_LABELS, Samples, load_samples
from vla_pruned_ros.train.word_noise import add_word_noise, unseen_ids

STATE_FILE = 'training_state.pt'
LOG_FILE = 'log.jsonl'
MODEL_DIR = 'model'
# Dimensions the expert never moves (droll, dpitch) have std 0: keep them unscaled.
MIN_ACTION_STD = 1e-4
# Unit of the auxiliary localisation targets: offsets of a few decimetres become O(1).
AUX_SCALE_M = 0.1
STAGES = ('all', 'head', 'pointer')


class TrainError(ValueError):
    """Bad training arguments, or a resume that does not match the output directory."""


@dataclass
class TrainConfig:
    """
    Everything that defines a training run (saved in the training state).

    Every ``val_every``-th episode (by global episode number) is held out for the validation
    loss, which is computed on at most ``val_frames`` evenly spaced frames of those episodes.
    ``warmup`` steps ramp the learning rate up, then it follows a cosine to ``lr * final_lr``.
    """

    data: list[str]
    out: str
    preset: str = 'sim'
    steps: int = 3000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 100
    final_lr: float = 0.1
    seed: int = 0
    val_every: int = 20
    val_frames: int = 512
    log_every: int = 50
    checkpoint_every: int = 250
    token_drop_prob: float = 0.5
    min_keep: float = 0.125
    # Share of the token-dropout batches whose subset is cut inside the decoder instead, before
    # a random layer from the second on (draw_cut; 0 = every subset before the decoder): the
    # decoder's later layers and the head then learn from what the attention-ranking pruners
    # leave. Stage 'all' (the head stage has head_cut_views).
    cut_share: float = 0.0
    grad_clip: float = 1.0
    threads: int = 0
    # 'auto' trains on CUDA when a GPU is present, else on the CPU; the batches stay in host
    # memory and only the drawn rows are copied to the device.
    device: str = 'auto'
    resume: bool = False
    progress: bool = True
    # Start from this model directory's weights and tokenizer (see warm_start) instead of a
    # random initialisation; the architecture comes from ``preset``.
    init_from: str = ''
    # Weight of the auxiliary localisation loss (0 = off): from the final action-query states
    # a linear probe predicts where the named target object is relative to the gripper (see
    # dataset.target_position), in units of AUX_SCALE_M. Meant to teach grounding (which
    # object the words name, where it is) directly; on the shipped runs it did not yet (see
    # docs/training.md). The probe is not part of the saved model and costs nothing at
    # inference.
    aux_weight: float = 0.0
    # Weight of the grounding loss (0 = off): from the final states, a bilinear probe scores
    # every kept 3D token against the mean action-query state, trained (binary cross-entropy)
    # to mark the point groups on the named object (dataset.target_groups). The localisation
    # loss above only says where the object is; this one says which tokens it is, a signal per
    # token instead of one per frame (see docs/training.md for why that matters). The probe is
    # not part of the saved model.
    ground_weight: float = 0.0
    # Weight of the pointer loss of a model with pointers (model.pointer): every pointer is
    # trained to put its probability mass on the point groups of what it names
    # (dataset.target_groups / zone_groups). Part of the model, unlike the probes above.
    pointer_weight: float = 1.0
    # Share of training frames whose end-effector pose input is zeroed (0 = off): a policy that
    # can read its phase from the pose alone learns to ignore the cameras (a shortcut seen in
    # the shipped model); without the pose half the time it has to look.
    proprio_drop_prob: float = 0.0
    # 'all' trains every weight; 'head' only the action head, on precomputed trunk outputs of
    # ``head_views`` views per frame; 'pointer' only the pointers, on the pointer loss (see the
    # module docstring).
    stage: str = 'all'
    head_views: int = 2
    # Head stage: further views per frame whose visual tokens are cut inside the decoder
    # (a random subset, as ``min_keep`` above, before a random layer from 1 on: draw_cut), as
    # FastV, VLA-Pruner, TIES and tri_stage's stage 2 prune; the pre-decoder views above do
    # not show the head the states such a cut leaves (0 = none).
    head_cut_views: int = 0
    # Head stage: dropout rate on the decoder's action-query states the head reads (0 = off),
    # so that the head leans on the pointer and pose features, which carry over to unseen
    # scenes, rather than on decoder states it can fit frame by frame (docs/training.md,
    # run 41). Inference reads the states whole.
    head_state_dropout: float = 0.0
    # Share of drawn instructions that get runs of token ids no training instruction holds
    # inserted (word_noise.add_word_noise; 0 = off), so that unseen wording reads as noise.
    # The pointer and all stages; the head stage's trunk is fixed.
    word_noise: float = 0.0
    # With init_from: the pointer's scoring weights (MultiModalVLA.pointer_parameters) keep
    # their fresh initialisation instead of the source's (for a pointer of another kind).
    fresh_pointer: bool = False
    # The object pointer's labels (dataset.OBJECT_LABELS): from the object's start position
    # ('start', as every shipped model) or its recorded position at each frame ('tracked').
    object_labels: str = 'start'
    # Where the per-bag input caches and the head stage's trunk outputs go ('' = OUT/cache).
    cache_dir: str = ''

    def validate(self) -> None:
        """Raise ``TrainError`` for values that cannot train."""
        if self.steps < 1 or self.batch_size < 1:
            raise TrainError(f'steps and batch size must be >= 1: {self.steps}, {self.batch_size}')
        if not self.lr > 0:
            raise TrainError(f'learning rate must be positive, got {self.lr}')
        if self.resume and self.init_from:
            raise TrainError('--init-from starts a new run; it cannot be combined with --resume')
        for name in ('aux_weight', 'ground_weight', 'pointer_weight'):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise TrainError(f'{name} must be a finite number >= 0, got {value}')
        if self.fresh_pointer and not self.init_from:
            raise TrainError('fresh_pointer re-initialises the pointer of an --init-from model: '
                             'pass --init-from (a new run from scratch is fresh anyway)')
        if self.object_labels not in OBJECT_LABELS:
            raise TrainError(f'object_labels must be one of {OBJECT_LABELS}, got '
                             f'{self.object_labels!r}')
        if not 0 <= self.word_noise <= 1:
            raise TrainError(f'word_noise must lie in [0, 1], got {self.word_noise}')
        if self.stage == 'head' and self.word_noise:
            raise TrainError('the head stage reads fixed trunk outputs: word_noise must be 0')
        if not 0 <= self.proprio_drop_prob <= 1:
            raise TrainError(f'proprio_drop_prob must lie in [0, 1], got {self.proprio_drop_prob}')
        if not 0 <= self.token_drop_prob <= 1 or not 0 < self.min_keep <= 1:
            raise TrainError('token_drop_prob must lie in [0, 1] and min_keep in (0, 1]')
        if not 0 <= self.cut_share <= 1:
            raise TrainError(f'cut_share must lie in [0, 1], got {self.cut_share}')
        if self.cut_share and self.stage != 'all':
            raise TrainError('cut_share acts on the decoder, which only stage all trains (the '
                             'head stage has head_cut_views)')
        if self.val_every < 2:
            raise TrainError(f'val_every must be >= 2 (1 would hold out everything): '
                             f'{self.val_every}')
        if self.stage not in STAGES:
            raise TrainError(f'stage must be one of {STAGES}, got {self.stage!r}')
        if self.stage != 'all':
            if not (self.init_from or self.resume):
                raise TrainError(f'the {self.stage} stage trains part of a trained model: pass '
                                 '--init-from MODEL_DIR (or --resume)')
            if self.aux_weight or self.ground_weight or self.proprio_drop_prob:
                raise TrainError(f'the {self.stage} stage trains the {self.stage} alone: the '
                                 'probes and proprio dropout act on the frozen trunk (set them '
                                 'to 0)')
        if self.stage == 'pointer' and not self.pointer_weight > 0:
            raise TrainError('the pointer stage trains on the pointer loss: pointer_weight must '
                             'be > 0')
        if self.stage == 'head' and self.head_views < 1:
            raise TrainError(f'head_views must be >= 1, got {self.head_views}')
        if self.head_cut_views < 0:
            raise TrainError(f'head_cut_views must be >= 0, got {self.head_cut_views}')
        if self.head_cut_views and self.stage != 'head':
            raise TrainError('head_cut_views are views of the head stage: pass --stage head')
        if not 0 <= self.head_state_dropout < 1:
            raise TrainError(f'head_state_dropout must lie in [0, 1), got '
                             f'{self.head_state_dropout}')
        if self.head_state_dropout and self.stage != 'head':
            raise TrainError("head_state_dropout acts on the head stage's trunk outputs: pass "
                             '--stage head')


@dataclass
class TrainResult:
    """Where the model went and how training ended."""

    model_dir: Path
    step: int
    train_loss: float
    val_loss: Optional[float]
    seconds: float


class _Batches:
    """Training tensors in memory, with instruction ids from the model's tokenizer."""

    def __init__(self, samples: Samples, encoder: InstructionEncoder, model: MultiModalVLA):
        self.pixel_values = torch.from_numpy(samples.pixel_values)
        self.neighbourhoods = torch.from_numpy(samples.neighbourhoods)
        self.centres = torch.from_numpy(samples.centres)
        self.proprio = torch.from_numpy(samples.proprio)
        ids = np.array([encoder.encode(text) for text in samples.instructions], np.int64)
        self.input_ids = torch.from_numpy(ids[samples.instruction])
        tokenizer = encoder.tokenizer
        self.pad_id = tokenizer.pad_token_id
        # ids the instructions never use (for word noise); special tokens are not words
        vocabulary = min(model.config.vocab_size, len(tokenizer))  # ids the tokenizer can give
        self.unseen_ids = unseen_ids(self.input_ids, vocabulary, set(tokenizer.all_special_ids))
        mean, std = model.action_mean.cpu(), model.action_std.cpu()
        self.targets = (torch.from_numpy(samples.actions) - mean) / std
        self.target_xy = torch.from_numpy(samples.target_xy) / AUX_SCALE_M
        self.pointer_labels = {name: torch.from_numpy(samples.group_labels(name))
                               for name in POINTER_TARGETS}
        self.named_attributes = torch.from_numpy(samples.named_attributes)
        self.group_colour = torch.from_numpy(samples.group_colour)
        self.group_kind = torch.from_numpy(samples.group_kind)

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs and targets of ``rows``, in host memory."""
        return (self.pixel_values[rows].float(), self.neighbourhoods[rows], self.centres[rows],
                self.input_ids[rows], self.proprio[rows], self.targets[rows])

    def pointer_inputs(
        self, rows: torch.Tensor, keep_3d: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Instruction ids, group centres and neighbourhoods of ``rows`` (kept groups only)."""
        centres, neighbourhoods = self.centres[rows], self.neighbourhoods[rows]
        if keep_3d is not None:
            index = torch.arange(len(rows))[:, None]
            centres, neighbourhoods = centres[index, keep_3d], neighbourhoods[index, keep_3d]
        return self.input_ids[rows], centres, neighbourhoods

    def aux_labels(self, rows: torch.Tensor) -> torch.Tensor:
        """Target offsets [B, 2] in AUX_SCALE_M units (NaN where unknown)."""
        return self.target_xy[rows]

    def group_labels(self, rows: torch.Tensor, target: str = 'object') -> torch.Tensor:
        """
        Marks [B, G] of the point groups on the named ``target`` (NaN rows where unknown).

        ``target`` is one of ``POINTER_TARGETS``: the named object or the named zone.
        """
        if target not in self.pointer_labels:
            raise TrainError(f'no group labels for {target!r}; known: {POINTER_TARGETS}')
        return self.pointer_labels[target][rows]


def aux_loss(probe: nn.Module, action_states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L1 of the probe's target offsets from the mean action-query state; 0 without labels."""
    known = torch.isfinite(labels).all(dim=1)
    if not known.any():
        return action_states.sum() * 0.0
    prediction = probe(action_states[known].mean(dim=1).float())
    return (prediction - labels[known]).abs().mean()


class GroundingProbe(nn.Module):
    """Bilinear scores [B, n3] of 3D token states against the mean action-query state."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.scale = width ** -0.5

    def forward(self, query_states: torch.Tensor, token_states: torch.Tensor) -> torch.Tensor:
        """Logits that each token lies on the object the instruction names."""
        query = self.query(query_states.mean(dim=1).float())
        keys = self.key(token_states.float())
        return torch.einsum('bd,bnd->bn', query, keys) * self.scale


def group_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of per-group scores [B, G] over the rows with labels; 0 without."""
    known = torch.isfinite(labels).all(dim=1)
    if not known.any():
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known])


def grounding_loss(probe: GroundingProbe, query_states: torch.Tensor,
                   token_states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`group_bce` of the probe's scores of ``token_states``."""
    return group_bce(probe(query_states, token_states), labels)


def _pointer_losses(
    pointer: PointerOutput, names: list[str], batches: '_Batches', rows: torch.Tensor,
    keep_3d: Optional[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """
    :func:`pointer_loss` of every pointer of the model against its labels (kept groups).

    With the attribute score also its class loss (:func:`attribute_loss`), as 'attributes'.
    """
    losses = {}
    for index, name in enumerate(names):
        labels = batches.group_labels(rows, name)
        if keep_3d is not None:
            labels = torch.gather(labels, 1, keep_3d)
        losses[name] = pointer_loss(pointer.logits[:, index],
                                    labels.to(pointer.logits.device))
    if pointer.attributes is not None:
        named = batches.named_attributes[rows][:, [POINTER_TARGETS.index(n) for n in names]]
        colour, kind = batches.group_colour[rows], batches.group_kind[rows]
        if keep_3d is not None:
            colour = torch.gather(colour, 1, keep_3d)
            kind = torch.gather(kind, 1, keep_3d)
        losses['attributes'] = attribute_loss(pointer.attributes, named, colour, kind)
    return losses


def action_statistics(actions: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-dimension mean and std over every step of every chunk (std floored, see above)."""
    flat = actions.reshape(-1, actions.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std = np.where(std < MIN_ACTION_STD, 1.0, std)
    return mean.tolist(), std.tolist()


def drop_proprio(proprio: torch.Tensor, prob: float, rng: np.random.Generator) -> torch.Tensor:
    """Zero the pose input of each row with probability ``prob`` (a copy; 0 = unchanged)."""
    if prob <= 0:
        return proprio
    dropped = torch.from_numpy(rng.random(len(proprio)) < prob)
    return proprio.masked_fill(dropped[:, None], 0.0)


def _random_subset(batch: int, total: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted random indices [batch, keep] of ``total`` tokens, independently per row."""
    order = torch.rand(batch, total, generator=generator).argsort(dim=1)[:, :keep]
    return order.sort(dim=1).values


def drop_tokens(
    batch: int, n_2d: int, n_3d: int, min_keep: float, draw_count: Callable[[int, int], int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Token dropout: sorted kept 2D and 3D indices [batch, count] for one batch.

    Each count is ``draw_count(low, high)`` in [ceil(min_keep * n), n] (one per batch), the
    subsets are drawn per row with ``generator``.
    """
    count_2d = draw_count(math.ceil(min_keep * n_2d), n_2d + 1)
    count_3d = draw_count(math.ceil(min_keep * n_3d), n_3d + 1)
    return (_random_subset(batch, n_2d, count_2d, generator),
            _random_subset(batch, n_3d, count_3d, generator))


@dataclass
class DecoderCut:
    """
    Visual tokens dropped inside the decoder (:func:`forward`'s ``cut``).

    Before decoder layer ``layer`` (>= 1) only the 2D rows ``keep_2d`` [B, m2] and 3D rows
    ``keep_3d`` [B, m3] stay, sorted indices into the visual tokens that entered the decoder
    (after any pre-decoder subset); text, pose and action queries always stay.
    """

    layer: int
    keep_2d: torch.Tensor
    keep_3d: torch.Tensor

    def rows(self, n_2d: int, n_3d: int, rest: int) -> torch.Tensor:
        """Sequence rows [B, m2 + m3 + rest] that go on to layer ``layer``."""
        batch = self.keep_2d.shape[0]
        after = (n_2d + n_3d + torch.arange(rest)).expand(batch, -1)
        return torch.cat([self.keep_2d, self.keep_3d + n_2d, after], dim=1)


def draw_cut(
    batch: int, n_2d: int, n_3d: int, num_layers: int, min_keep: float,
    draw_count: Callable[[int, int], int], generator: torch.Generator,
) -> DecoderCut:
    """A random :class:`DecoderCut`: a layer in 1..num_layers-1, counts as :func:`drop_tokens`."""
    if num_layers < 2:
        raise TrainError('cutting tokens inside the decoder needs at least two decoder layers')
    layer = draw_count(1, num_layers)
    keep_2d, keep_3d = drop_tokens(batch, n_2d, n_3d, min_keep, draw_count, generator)
    return DecoderCut(layer, keep_2d, keep_3d)


@dataclass
class ForwardResult:
    """What :func:`forward` returns with ``return_states``."""

    prediction: torch.Tensor
    states: torch.Tensor
    pointer: Optional[PointerOutput]


def forward(
    model: MultiModalVLA,
    pixel_values: torch.Tensor,
    neighbourhoods: torch.Tensor,
    centres: torch.Tensor,
    input_ids: torch.Tensor,
    proprio: torch.Tensor,
    keep_2d: Optional[torch.Tensor] = None,
    keep_3d: Optional[torch.Tensor] = None,
    return_states: bool = False,
    cut: Optional['DecoderCut'] = None,
) -> 'torch.Tensor | ForwardResult':
    """
    Normalised action chunks [B, horizon, 7], optionally from a subset of the visual tokens.

    With ``return_states`` a :class:`ForwardResult`: also the final hidden states of the whole
    sequence [B, L, width] (kept 2D tokens, kept 3D tokens, text, proprio, action queries) and
    the pointer's output over the kept 3D tokens (None for a model without pointers).

    ``keep_2d`` [B, n2] / ``keep_3d`` [B, n3] are sorted patch / group indices. Kept tokens
    keep their original rotary positions and the causal mask is built from the length alone,
    as in :class:`vla_pruned_ros.model.runner.LayerRunner`; with no subset this equals
    :meth:`MultiModalVLA.forward_dense`.

    ``cut`` drops visual tokens inside the decoder, before layer ``cut.layer``, as the pruners
    that rank tokens by decoder attention do (the dropped tokens still shape every state up to
    that layer); with ``return_states`` the states are then those of the tokens that remain.
    """
    if cut is not None and not 1 <= cut.layer < len(model.decoder.layers):
        raise ValueError(f'a cut inside the decoder goes before layer 1..'
                         f'{len(model.decoder.layers) - 1}, not {cut.layer}')
    batch = pixel_values.shape[0]
    features = model.encode_2d(pixel_values)
    device = features.device
    n_2d, n_3d = features.shape[1], centres.shape[1]
    keep_2d = (torch.arange(n_2d).expand(batch, -1) if keep_2d is None else keep_2d).to(device)
    keep_3d = (torch.arange(n_3d).expand(batch, -1) if keep_3d is None else keep_3d).to(device)
    features = torch.gather(features, 1, keep_2d[..., None].expand(-1, -1, features.shape[2]))
    tokens_2d = model.project_2d_tokens(features)
    rows = torch.arange(batch, device=device)[:, None]
    kept_centres, kept_neighbourhoods = centres[rows, keep_3d], neighbourhoods[rows, keep_3d]
    tokens_3d = model.encode_3d(kept_neighbourhoods, kept_centres)
    pointer = model.point(input_ids, kept_centres, kept_neighbourhoods)
    embeds = model.assemble(tokens_2d, tokens_3d, input_ids, proprio, pointer)
    rest = embeds.shape[1] - keep_2d.shape[1] - keep_3d.shape[1]
    after_visual = n_2d + n_3d + torch.arange(rest, device=device)
    positions = torch.cat([keep_2d, keep_3d + n_2d, after_visual.expand(batch, -1)], dim=1)
    decoder = model.decoder
    mask = create_causal_mask(config=decoder.config, inputs_embeds=embeds, attention_mask=None,
                              past_key_values=None, position_ids=None)
    cos_sin = decoder.rotary_emb(embeds, positions)
    hidden = embeds
    for index, layer in enumerate(decoder.layers):
        if cut is not None and index == cut.layer:
            rows_kept = cut.rows(keep_2d.shape[1], keep_3d.shape[1], rest).to(device)
            hidden = torch.gather(hidden, 1, rows_kept[..., None].expand(-1, -1, hidden.shape[2]))
            positions = torch.gather(positions, 1, rows_kept)
            mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden,
                                      attention_mask=None, past_key_values=None,
                                      position_ids=None)
            cos_sin = decoder.rotary_emb(hidden, positions)
        hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
    hidden = decoder.norm(hidden)
    prediction = model.head(hidden[:, -model.config.horizon:], pointer, proprio)
    return ForwardResult(prediction, hidden, pointer) if return_states else prediction


@dataclass
class HeadFeatures:
    """What the head reads, per frame and view: the frozen trunk's outputs (stage 'head')."""

    states: torch.Tensor
    points: Optional[torch.Tensor]
    proprio: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    @staticmethod
    def concatenate(parts: 'list[HeadFeatures]') -> 'HeadFeatures':
        """One set of the rows of ``parts``, in order."""
        if len(parts) == 1:
            return parts[0]
        points = [part.points for part in parts]
        return HeadFeatures(
            states=torch.cat([part.states for part in parts]),
            points=None if points[0] is None else torch.cat(points),
            proprio=torch.cat([part.proprio for part in parts]),
            targets=torch.cat([part.targets for part in parts]),
        )

    def get(self, rows: torch.Tensor, device: torch.device) -> tuple[
            torch.Tensor, Optional[PointerOutput], torch.Tensor, torch.Tensor]:
        """Action-query states, pointer output, pose and normalised targets of ``rows``."""
        pointer = None
        if self.points is not None:
            points = self.points[rows].to(device)
            pointer = PointerOutput(logits=points.new_zeros(len(rows), points.shape[1], 0),
                                    points=points)
        states, proprio, targets = _to([self.states[rows], self.proprio[rows],
                                        self.targets[rows]], device)
        return states, pointer, proprio, targets


# Model settings a head stage may change without changing what the trunk computes for it
# (tracking needs a previous step, which training frames do not have).
HEAD_ONLY_SETTINGS = ('preset', 'head_hidden', 'head_branch', 'head_branch_summary',
                      'head_branch_mode', 'pointer_track_radius', 'pointer_track_margin')


def _trunk_fingerprint(model: MultiModalVLA, batches: '_Batches', config: 'TrainConfig',
                       views: str) -> str:
    """
    A digest of what the head stage's trunk outputs depend on (not the pixels: see below).

    ``views`` names the view set ('2': two pre-decoder views, 'cut 2': two cut views).
    """
    head = {id(p) for p in model.head_parameters()}
    digest = hashlib.sha1()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in head:
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    # The frames' point groups, poses, instructions and targets identify the recordings;
    # hashing the images too would cost seconds for nothing they do not already pin down.
    for tensor in (batches.centres, batches.proprio, batches.input_ids, batches.targets):
        digest.update(tensor.numpy().tobytes())
    # Settings that are not weights but move the points (sharpness, refine radius) count too.
    settings = {key: value for key, value in model.config.to_dict().items()
                if key not in HEAD_ONLY_SETTINGS}
    # Where the towers were loaded from is not what they compute (their weights are hashed
    # above): a resumed stage loads them from its own output, the first run from init_from.
    for tower in ('vision', 'decoder'):
        if isinstance(settings.get(tower), dict):
            settings[tower] = {key: value for key, value in settings[tower].items()
                               if key != 'pretrained_dir'}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(f'{views} {config.min_keep} {config.seed}'.encode())
    return digest.hexdigest()[:16]


def cached_head_features(
    model: MultiModalVLA, batches: '_Batches', config: 'TrainConfig', device: torch.device,
    cache_dir: Path,
) -> 'HeadFeatures':
    """
    :func:`head_features` of ``config``'s views, from ``cache_dir`` when computed before.

    Each file is keyed by the frozen trunk's weights, the frames and the views' settings, so
    two head stages (other heads, other steps) on the same trunk and data share one pass; the
    views cut inside the decoder have their own file, so adding them reuses the others.
    """
    view_sets = [(str(config.head_views), config.head_views, False)]
    if config.head_cut_views:
        view_sets.append((f'cut {config.head_cut_views}', config.head_cut_views, True))
    parts = []
    for key, views, inside in view_sets:
        path = cache_dir / f'head_features_{_trunk_fingerprint(model, batches, config, key)}.pt'
        if path.is_file():
            parts.append(HeadFeatures(**torch.load(path, weights_only=True)))
            continue
        features = head_features(model, batches, views, config.min_keep, config.seed, device,
                                 progress=config.progress, inside_decoder=inside)
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix('.partial')
        torch.save(asdict(features), partial)
        partial.replace(path)  # never a half-written file under the final name
        parts.append(features)
    return HeadFeatures.concatenate(parts)


@torch.no_grad()
def head_features(
    model: MultiModalVLA, batches: '_Batches', views: int, min_keep: float, seed: int,
    device: torch.device, batch_size: int = 64, progress: bool = False,
    inside_decoder: bool = False,
) -> HeadFeatures:
    """
    Run the frozen trunk over every frame of ``batches``, ``views`` times.

    View 0 sees every visual token, each further
    view a random subset of the 2D and 3D tokens (between ``min_keep`` and all, drawn per
    batch, as training's token dropout), so the head also learns from what a pruner leaves.
    With ``inside_decoder`` every view cuts its subset inside the decoder instead
    (:func:`draw_cut`), where the attention-ranking pruners cut.

    Deterministic for a ``seed`` (a resumed head stage recomputes the same features).
    """
    # Another stream for the cut views: their subsets are not the dropout views' again.
    generator = torch.Generator().manual_seed(seed + (1 if inside_decoder else 0))

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=generator))

    n_2d, n_3d = model.vision.num_tokens, model.config.points.num_groups
    horizon = model.config.horizon
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {'states': [], 'points': [], 'proprio': [],
                                            'targets': []}
    chunks = [(view, start) for view in range(views) for start in range(0, len(batches),
                                                                           batch_size)]
    iterator: Any = chunks
    if progress:
        from tqdm import tqdm

        iterator = tqdm(chunks, desc='trunk outputs for the head', unit='batch')
    for view, start in iterator:
        rows = torch.arange(start, min(start + batch_size, len(batches)))
        *inputs, targets = batches.get(rows)
        keep_2d = keep_3d = cut = None
        if inside_decoder:
            cut = draw_cut(len(rows), n_2d, n_3d, len(model.decoder.layers), min_keep, draw,
                           generator)
        elif view > 0:
            keep_2d, keep_3d = drop_tokens(len(rows), n_2d, n_3d, min_keep, draw, generator)
        result = forward(model, *_to(inputs, device), keep_2d=keep_2d, keep_3d=keep_3d,
                         return_states=True, cut=cut)
        parts['states'].append(result.states[:, -horizon:].float().cpu())
        if result.pointer is not None:
            parts['points'].append(result.pointer.points.float().cpu())
        parts['proprio'].append(inputs[4])
        parts['targets'].append(targets)
    model.train(was_training)
    return HeadFeatures(
        states=torch.cat(parts['states']),
        points=torch.cat(parts['points']) if parts['points'] else None,
        proprio=torch.cat(parts['proprio']),
        targets=torch.cat(parts['targets']),
    )


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    floor = config.lr * config.final_lr
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _split(
    samples: Samples, val_every: int, val_frames: int
) -> tuple[Samples, Optional[Samples]]:
    is_val = samples.episode % val_every == val_every - 1
    if not is_val.any() or is_val.all():
        return samples, None
    val_rows = np.flatnonzero(is_val)
    if len(val_rows) > val_frames:
        val_rows = val_rows[np.linspace(0, len(val_rows) - 1, val_frames).astype(np.int64)]
    return samples.subset(np.flatnonzero(~is_val)), samples.subset(val_rows)


def _to(tensors: 'list[torch.Tensor] | tuple[torch.Tensor, ...]',
        device: torch.device) -> list[torch.Tensor]:
    return [tensor.to(device, non_blocking=True) for tensor in tensors]


@torch.no_grad()
def validation_pointer_loss(
    model: MultiModalVLA, batches: _Batches, batch_size: int = 256
) -> float:
    """Sum over the pointers of the mean pointer loss over ``batches``, every group given."""
    device = next(model.parameters()).device
    totals = {name: [] for name in model.config.pointers}
    for start in range(0, len(batches), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(batches)))
        pointer = model.point(*_to(batches.pointer_inputs(rows), device))
        for name, value in _pointer_losses(pointer, model.config.pointers, batches, rows,
                                           None).items():
            if name in totals:  # (the pointers' own losses, comparable across scores)
                totals[name].append((float(value), len(rows)))
    return sum(sum(v * n for v, n in values) / sum(n for _, n in values)
               for values in totals.values() if values)


@torch.no_grad()
def validation_loss(model: MultiModalVLA, batches: _Batches, batch_size: int = 64) -> float:
    """Mean L1 loss of normalised chunks over ``batches`` with every visual token."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(batches), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(batches)))
        *inputs, targets = _to(batches.get(rows), device)
        prediction = forward(model, *inputs)
        total += float((prediction - targets).abs().mean(dim=(1, 2)).sum())
        count += len(rows)
    model.train(was_training)
    return total / max(count, 1)


def _save_checkpoint(
    out: Path, model: MultiModalVLA, tokenizer: Any, optimizer: torch.optim.Optimizer,
    step: int, config: TrainConfig, generators: dict[str, Any],
    probes: Optional[dict[str, nn.Module]] = None,
) -> None:
    # Write next to the old checkpoint, then swap: an interrupted save leaves a usable model.
    staging = out / f'{MODEL_DIR}.partial'
    if staging.exists():
        shutil.rmtree(staging)
    save_model(model, tokenizer, str(staging))
    final = out / MODEL_DIR
    old = out / f'{MODEL_DIR}.old'
    if final.exists():
        final.rename(old)
    staging.rename(final)
    if old.exists():
        shutil.rmtree(old)
    state = {
        'step': step,
        'optimizer': optimizer.state_dict(),
        'config': asdict(config),
        'generators': generators,
    }
    for key, probe in (probes or {}).items():
        state[key] = probe.state_dict()
    torch.save(state, out / f'{STATE_FILE}.partial')
    os.replace(out / f'{STATE_FILE}.partial', out / STATE_FILE)


def _train_only(model: MultiModalVLA, parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze every weight of ``model`` but ``parameters`` (a stage's); return them."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def _log(out: Path, record: dict) -> None:
    with open(out / LOG_FILE, 'a', encoding='utf-8') as stream:
        stream.write(json.dumps(record) + '\n')


@torch.no_grad()
def warm_start(model: MultiModalVLA, source: MultiModalVLA) -> dict[str, list[str]]:
    """
    Copy ``source``'s weights into ``model`` wherever they fit; return what happened to each.

    Same-shaped tensors are copied ('copied'). A weight that only grew along its last (input)
    dimension, such as the first layer of a point encoder that now also reads colour, gets the
    old columns and zeros in the new ones, so the model starts out computing exactly what the
    source did ('widened'). Anything else keeps its fresh initialisation ('skipped').
    """
    report: dict[str, list[str]] = {'copied': [], 'widened': [], 'skipped': []}
    old = source.state_dict()
    for name, tensor in model.state_dict().items():
        before = old.get(name)
        if before is not None and before.shape == tensor.shape:
            tensor.copy_(before)
            report['copied'].append(name)
        elif (before is not None and before.ndim == tensor.ndim >= 2
              and before.shape[:-1] == tensor.shape[:-1] and before.shape[-1] < tensor.shape[-1]):
            tensor.zero_()
            tensor[..., :before.shape[-1]] = before
            report['widened'].append(name)
        else:
            report['skipped'].append(name)
    return report


def _pointer_parameter_names(model: MultiModalVLA) -> set[str]:
    """State-dict names of :meth:`MultiModalVLA.pointer_parameters`."""
    wanted = {id(p) for p in model.pointer_parameters()}
    return {name for name, p in model.named_parameters() if id(p) in wanted}


def train(config: TrainConfig) -> TrainResult:
    """
    Run (or resume) behaviour cloning as ``config`` says and return the final checkpoint.

    Raises ``TrainError`` for bad settings, an existing checkpoint without ``resume`` or a
    resume without one, and ``DatasetError`` for unusable bags.
    """
    config.validate()
    device = resolve_device(config.device)
    started = time.perf_counter()
    out = Path(config.out)
    state_path = out / STATE_FILE
    if config.threads:
        torch.set_num_threads(config.threads)
    warm_record: dict[str, Any] = {}
    if config.resume:
        if not state_path.is_file():
            raise TrainError(f'nothing to resume: {state_path} does not exist')
        model, tokenizer = load_model(str(out / MODEL_DIR))
        state = torch.load(state_path, weights_only=False, map_location='cpu')
        step = int(state['step'])
        trained_stage = state['config'].get('stage', 'all')
        if trained_stage != config.stage:
            raise TrainError(f'this run is a {trained_stage!r} stage: resume it with '
                             f'--stage {trained_stage}')
    else:
        if state_path.exists() or (out / MODEL_DIR).exists():
            raise TrainError(f'{out} already holds a training run: pass --resume or a new --out')
        torch.manual_seed(config.seed)
        model = MultiModalVLA(preset_config(config.preset))
        state, step, tokenizer = None, 0, None
        if config.init_from:
            # Keep the source's tokenizer (token ids) and action normalisation (head outputs).
            source, tokenizer = load_model(config.init_from)
            model.config.vocab_size = source.config.vocab_size
            model.config.action_mean = list(source.config.action_mean)
            model.config.action_std = list(source.config.action_std)
            torch.manual_seed(config.seed)
            model = MultiModalVLA(model.config)
            fresh = {}
            if config.fresh_pointer:
                # start the pointer's scoring over: its fresh initialisation, not the source's
                names = _pointer_parameter_names(model)
                fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()
                         if name in names}
            report = warm_start(model, source)
            if fresh:
                model.load_state_dict(fresh, strict=False)
                report['copied'] = [n for n in report['copied'] if n not in fresh]
                report['widened'] = [n for n in report['widened'] if n not in fresh]
                report['skipped'] = sorted(set(report['skipped']) | set(fresh))
            if not report['copied']:
                raise TrainError(f'{config.init_from} shares no weights with preset '
                                 f'{config.preset!r}')
            warm_record = {'init_from': config.init_from, 'copied': len(report['copied']),
                           'widened': report['widened'], 'skipped': report['skipped']}
    out.mkdir(parents=True, exist_ok=True)
    if warm_record:
        _log(out, warm_record)

    cache_dir = Path(config.cache_dir) if config.cache_dir else out / 'cache'
    samples = load_samples(config.data, model, cache_dir=cache_dir, progress=config.progress,
                           object_labels=config.object_labels)
    train_samples, val_samples = _split(samples, config.val_every, config.val_frames)
    if tokenizer is None:
        # The tokenizer learns only the instructions training can see (the train split's);
        # unseen words still encode through byte-level pieces.
        tokenizer = build_tokenizer(train_samples.instructions, model.config.vocab_size)
        model.config.vocab_size = len(tokenizer)
        torch.manual_seed(config.seed)
        model = MultiModalVLA(model.config)
        mean, std = action_statistics(train_samples.actions)
        model.config.action_mean, model.config.action_std = mean, std
        model.action_mean.copy_(torch.tensor(mean))
        model.action_std.copy_(torch.tensor(std))
    encoder = InstructionEncoder(tokenizer, model.config.instruction_tokens)
    train_batches = _Batches(train_samples, encoder, model)
    val_batches = _Batches(val_samples, encoder, model) if val_samples is not None else None

    model.to(device)
    model.train()
    width = model.config.decoder.hidden_size
    parameters = list(model.parameters())
    head_data: Optional[HeadFeatures] = None
    if config.stage == 'head':
        parameters = _train_only(model, model.head_parameters())
        head_data = cached_head_features(model, train_batches, config, device, cache_dir)
    elif config.stage == 'pointer':
        if model.pointer is None:
            raise TrainError(f'preset {config.preset!r} has no pointers to train')
        parameters = _train_only(model, model.pointer_parameters())
    # Training-only heads of the auxiliary losses, kept in the training state for --resume.
    probes: dict[str, nn.Module] = {}
    for key, weight, module, flag in (
        ('aux_probe', config.aux_weight, nn.Linear(width, 2), '--aux-weight'),
        ('ground_probe', config.ground_weight, GroundingProbe(width), '--ground-weight'),
    ):
        if weight > 0:
            if state is not None and key not in state:
                raise TrainError(f'this run was trained without {flag}: resume it with {flag} 0')
            if state is not None:
                module.load_state_dict(state[key])
            probes[key] = module.to(device)
            parameters += list(module.parameters())
        elif state is not None and key in state:
            raise TrainError(f'this run was trained with {flag}: resume it with the same {flag}')
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    batch_rng = torch.Generator().manual_seed(config.seed)
    drop_rng = np.random.default_rng(config.seed)
    if state is not None:
        optimizer.load_state_dict(state['optimizer'])
        batch_rng.set_state(state['generators']['batch'])
        drop_rng.bit_generator.state = state['generators']['drop']
        torch.set_rng_state(state['generators']['torch'])

    def generators() -> dict[str, Any]:
        return {'batch': batch_rng.get_state(), 'drop': drop_rng.bit_generator.state,
                'torch': torch.get_rng_state()}

    if config.progress:
        print(f'training {model.config.preset} on {device}: {len(train_batches)} frames '
              f'({train_samples.num_episodes} episodes), validation '
              f'{len(val_batches) if val_batches else 0} frames; '
              f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters', flush=True)
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=step, unit='step', desc='training')
    n_2d = model.vision.num_tokens
    n_3d = model.config.points.num_groups
    running: list[float] = []
    running_aux: list[float] = []
    running_ground: list[float] = []
    running_pointer: dict[str, list[float]] = {}
    val_loss: Optional[float] = None
    if config.stage == 'pointer' and step == 0 and val_batches is not None:
        # Cheap here, and the pointer starts from a trained one: where it started from.
        _log(out, {'step': 0, 'val_loss': validation_pointer_loss(model, val_batches)})
    try:
        while step < config.steps:
            lr = _learning_rate(config, step)
            for group in optimizer.param_groups:
                group['lr'] = lr
            if head_data is not None:
                rows = torch.randint(len(head_data), (config.batch_size,), generator=batch_rng)
                states, pointer, proprio, targets = head_data.get(rows, device)
                states = nn.functional.dropout(states, config.head_state_dropout)
                loss = (model.head(states, pointer, proprio) - targets).abs().mean()
                total = loss
            elif config.stage == 'pointer':
                rows = torch.randint(len(train_batches), (config.batch_size,), generator=batch_rng)
                keep_3d = None
                if drop_rng.random() < config.token_drop_prob:
                    _, keep_3d = drop_tokens(
                        len(rows), n_2d, n_3d, config.min_keep,
                        lambda low, high: int(drop_rng.integers(low, high)), batch_rng)
                input_ids, *groups = train_batches.pointer_inputs(rows, keep_3d)
                input_ids = add_word_noise(input_ids, train_batches.unseen_ids,
                                           config.word_noise, train_batches.pad_id, drop_rng)
                pointer = model.point(*_to([input_ids, *groups], device))
                pointing = _pointer_losses(pointer, model.config.pointers, train_batches, rows,
                                           keep_3d)
                for name, value in pointing.items():
                    running_pointer.setdefault(name, []).append(value.item())
                loss = total = sum(pointing.values())
            else:
                rows = torch.randint(len(train_batches), (config.batch_size,), generator=batch_rng)
                *inputs, targets = train_batches.get(rows)
                inputs[4] = drop_proprio(inputs[4], config.proprio_drop_prob, drop_rng)
                inputs[3] = add_word_noise(inputs[3], train_batches.unseen_ids,
                                           config.word_noise, train_batches.pad_id, drop_rng)
                *inputs, targets = _to([*inputs, targets], device)
                keep_2d = keep_3d = cut = None
                if drop_rng.random() < config.token_drop_prob:
                    def draw(low: int, high: int) -> int:
                        return int(drop_rng.integers(low, high))

                    # no extra draw without cuts: earlier runs' batches stay as they were
                    if config.cut_share and drop_rng.random() < config.cut_share:
                        cut = draw_cut(len(rows), n_2d, n_3d, len(model.decoder.layers),
                                       config.min_keep, draw, batch_rng)
                    else:
                        keep_2d, keep_3d = drop_tokens(len(rows), n_2d, n_3d, config.min_keep,
                                                       draw, batch_rng)
                result = forward(model, *inputs, keep_2d=keep_2d, keep_3d=keep_3d,
                                 return_states=True, cut=cut)
                states = result.states
                loss = (result.prediction - targets).abs().mean()
                total = loss
                query_states = states[:, -model.config.horizon:]
                if result.pointer is not None and config.pointer_weight > 0:
                    pointing = _pointer_losses(result.pointer, model.config.pointers,
                                               train_batches, rows, keep_3d)
                    total = total + config.pointer_weight * sum(pointing.values())
                    for name, value in pointing.items():
                        running_pointer.setdefault(name, []).append(value.item())
                if 'aux_probe' in probes:
                    labels = train_batches.aux_labels(rows).to(device)
                    localisation = aux_loss(probes['aux_probe'], query_states, labels)
                    total = total + config.aux_weight * localisation
                    running_aux.append(localisation.item())
                if 'ground_probe' in probes:
                    # the 3D tokens whose final states there are: after the cut, if any
                    final_3d = keep_3d if cut is None else cut.keep_3d
                    kept_2d = n_2d if keep_2d is None else keep_2d.shape[1]
                    if cut is not None:
                        kept_2d = cut.keep_2d.shape[1]
                    kept_3d = n_3d if final_3d is None else final_3d.shape[1]
                    group_labels = train_batches.group_labels(rows)
                    if final_3d is not None:
                        group_labels = torch.gather(group_labels, 1, final_3d)
                    grounding = grounding_loss(probes['ground_probe'], query_states,
                                               states[:, kept_2d:kept_2d + kept_3d],
                                               group_labels.to(device))
                    total = total + config.ground_weight * grounding
                    running_ground.append(grounding.item())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            step += 1
            running.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f'{np.mean(running[-20:]):.4f}', lr=f'{lr:.1e}')
            checkpoint = step % config.checkpoint_every == 0 or step == config.steps
            if step % config.log_every == 0 or checkpoint:
                record = {'step': step, 'train_loss': float(np.mean(running[-config.log_every:])),
                          'lr': lr, 'elapsed_s': round(time.perf_counter() - started, 1)}
                if running_aux:
                    record['aux_loss'] = float(np.mean(running_aux[-config.log_every:]))
                if running_ground:
                    record['ground_loss'] = float(np.mean(running_ground[-config.log_every:]))
                for name, values in running_pointer.items():
                    record[f'pointer_{name}_loss'] = float(np.mean(values[-config.log_every:]))
                if checkpoint and val_batches is not None:
                    validate = (validation_pointer_loss if config.stage == 'pointer'
                                else validation_loss)
                    val_loss = validate(model, val_batches)
                    record['val_loss'] = val_loss
                _log(out, record)
                if bar is not None and checkpoint:
                    bar.write(json.dumps(record))
            if checkpoint:
                _save_checkpoint(out, model, tokenizer, optimizer, step, config, generators(),
                                 probes)
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(
        model_dir=out / MODEL_DIR,
        step=step,
        train_loss=float(np.mean(running[-config.log_every:])) if running else float('nan'),
        val_loss=val_loss,
        seconds=time.perf_counter() - started,
    )
