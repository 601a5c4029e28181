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
still sees all tokens), and it is documented with the results in ``docs/training.md``.

Output directory::

    model/               the latest checkpoint (a model directory: Policy.from_pretrained)
    training_state.pt    optimiser, step, generators, for --resume
    log.jsonl            one JSON line per logged step (train loss, validation loss, lr)
    cache/               precomputed per-bag inputs (safe to delete)
"""

from dataclasses import asdict, dataclass
import json
import math
import os
from pathlib import Path
import shutil
import time
from typing import Any, Optional

import numpy as np
import torch
from transformers.masking_utils import create_causal_mask

from vla_pruned_ros.model.checkpoint import load_model, save_model
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.model.text import InstructionEncoder, build_tokenizer
from vla_pruned_ros.train.dataset import Samples, load_samples

STATE_FILE = 'training_state.pt'
LOG_FILE = 'log.jsonl'
MODEL_DIR = 'model'
# Dimensions the expert never moves (droll, dpitch) have std 0: keep them unscaled.
MIN_ACTION_STD = 1e-4


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
    grad_clip: float = 1.0
    threads: int = 0
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise ``TrainError`` for values that cannot train."""
        if self.steps < 1 or self.batch_size < 1:
            raise TrainError(f'steps and batch size must be >= 1: {self.steps}, {self.batch_size}')
        if not self.lr > 0:
            raise TrainError(f'learning rate must be positive, got {self.lr}')
        if not 0 <= self.token_drop_prob <= 1 or not 0 < self.min_keep <= 1:
            raise TrainError('token_drop_prob must lie in [0, 1] and min_keep in (0, 1]')
        if self.val_every < 2:
            raise TrainError(f'val_every must be >= 2 (1 would hold out everything): '
                             f'{self.val_every}')


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
        mean, std = model.action_mean.cpu(), model.action_std.cpu()
        self.targets = (torch.from_numpy(samples.actions) - mean) / std

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.pixel_values[rows].float(), self.neighbourhoods[rows], self.centres[rows],
                self.input_ids[rows], self.proprio[rows], self.targets[rows])


def action_statistics(actions: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-dimension mean and std over every step of every chunk (std floored, see above)."""
    flat = actions.reshape(-1, actions.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std = np.where(std < MIN_ACTION_STD, 1.0, std)
    return mean.tolist(), std.tolist()


def _random_subset(batch: int, total: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted random indices [batch, keep] of ``total`` tokens, independently per row."""
    order = torch.rand(batch, total, generator=generator).argsort(dim=1)[:, :keep]
    return order.sort(dim=1).values


def forward(
    model: MultiModalVLA,
    pixel_values: torch.Tensor,
    neighbourhoods: torch.Tensor,
    centres: torch.Tensor,
    input_ids: torch.Tensor,
    proprio: torch.Tensor,
    keep_2d: Optional[torch.Tensor] = None,
    keep_3d: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Normalised action chunks [B, horizon, 7], optionally from a subset of the visual tokens.

    ``keep_2d`` [B, n2] / ``keep_3d`` [B, n3] are sorted patch / group indices. Kept tokens
    keep their original rotary positions and the causal mask is built from the length alone,
    as in :class:`vla_pruned_ros.model.runner.LayerRunner`; with no subset this equals
    :meth:`MultiModalVLA.forward_dense`.
    """
    batch = pixel_values.shape[0]
    features = model.encode_2d(pixel_values)
    n_2d, n_3d = features.shape[1], centres.shape[1]
    if keep_2d is None:
        keep_2d = torch.arange(n_2d).expand(batch, -1)
    if keep_3d is None:
        keep_3d = torch.arange(n_3d).expand(batch, -1)
    features = torch.gather(features, 1, keep_2d[..., None].expand(-1, -1, features.shape[2]))
    tokens_2d = model.project_2d_tokens(features)
    rows = torch.arange(batch)[:, None]
    tokens_3d = model.encode_3d(neighbourhoods[rows, keep_3d], centres[rows, keep_3d])
    embeds = model.assemble(tokens_2d, tokens_3d, input_ids, proprio)
    rest = embeds.shape[1] - keep_2d.shape[1] - keep_3d.shape[1]
    positions = torch.cat([
        keep_2d, keep_3d + n_2d, (n_2d + n_3d + torch.arange(rest)).expand(batch, -1)
    ], dim=1)
    decoder = model.decoder
    mask = create_causal_mask(config=decoder.config, inputs_embeds=embeds, attention_mask=None,
                              past_key_values=None, position_ids=None)
    cos_sin = decoder.rotary_emb(embeds, positions)
    hidden = embeds
    for layer in decoder.layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
    hidden = decoder.norm(hidden)
    return model.head(hidden[:, -model.config.horizon:])


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


@torch.no_grad()
def validation_loss(model: MultiModalVLA, batches: _Batches, batch_size: int = 64) -> float:
    """Mean L1 loss of normalised chunks over ``batches`` with every visual token."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(batches), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(batches)))
        *inputs, targets = batches.get(rows)
        prediction = forward(model, *inputs)
        total += float((prediction - targets).abs().mean(dim=(1, 2)).sum())
        count += len(rows)
    model.train(was_training)
    return total / max(count, 1)


def _save_checkpoint(
    out: Path, model: MultiModalVLA, tokenizer: Any, optimizer: torch.optim.Optimizer,
    step: int, config: TrainConfig, generators: dict[str, Any],
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
    torch.save(state, out / f'{STATE_FILE}.partial')
    os.replace(out / f'{STATE_FILE}.partial', out / STATE_FILE)


def _log(out: Path, record: dict) -> None:
    with open(out / LOG_FILE, 'a', encoding='utf-8') as stream:
        stream.write(json.dumps(record) + '\n')


def train(config: TrainConfig) -> TrainResult:
    """
    Run (or resume) behaviour cloning as ``config`` says and return the final checkpoint.

    Raises ``TrainError`` for bad settings, an existing checkpoint without ``resume`` or a
    resume without one, and ``DatasetError`` for unusable bags.
    """
    config.validate()
    started = time.perf_counter()
    out = Path(config.out)
    state_path = out / STATE_FILE
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.resume:
        if not state_path.is_file():
            raise TrainError(f'nothing to resume: {state_path} does not exist')
        model, tokenizer = load_model(str(out / MODEL_DIR))
        state = torch.load(state_path, weights_only=False)
        step = int(state['step'])
    else:
        if state_path.exists() or (out / MODEL_DIR).exists():
            raise TrainError(f'{out} already holds a training run: pass --resume or a new --out')
        torch.manual_seed(config.seed)
        model = MultiModalVLA(preset_config(config.preset))
        state, step, tokenizer = None, 0, None
    out.mkdir(parents=True, exist_ok=True)

    samples = load_samples(config.data, model, cache_dir=out / 'cache', progress=config.progress)
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

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
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
        print(f'training {model.config.preset}: {len(train_batches)} frames '
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
    val_loss: Optional[float] = None
    try:
        while step < config.steps:
            rows = torch.randint(len(train_batches), (config.batch_size,), generator=batch_rng)
            *inputs, targets = train_batches.get(rows)
            keep_2d = keep_3d = None
            if drop_rng.random() < config.token_drop_prob:
                count_2d = int(drop_rng.integers(math.ceil(config.min_keep * n_2d), n_2d + 1))
                count_3d = int(drop_rng.integers(math.ceil(config.min_keep * n_3d), n_3d + 1))
                keep_2d = _random_subset(len(rows), n_2d, count_2d, batch_rng)
                keep_3d = _random_subset(len(rows), n_3d, count_3d, batch_rng)
            lr = _learning_rate(config, step)
            for group in optimizer.param_groups:
                group['lr'] = lr
            prediction = forward(model, *inputs, keep_2d=keep_2d, keep_3d=keep_3d)
            loss = (prediction - targets).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
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
                if checkpoint and val_batches is not None:
                    val_loss = validation_loss(model, val_batches)
                    record['val_loss'] = val_loss
                _log(out, record)
                if bar is not None and checkpoint:
                    bar.write(json.dumps(record))
            if checkpoint:
                _save_checkpoint(out, model, tokenizer, optimizer, step, config, generators())
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
