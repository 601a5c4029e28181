"""
Grounding probe: how fast can the named object be found from the 3D tokens.

A diagnostic for the reference policy (issue 5): behaviour cloning has to learn *grounding*,
which object the instruction names and where it is, before it can act on it. This probe
isolates that step. From the trainer's cached inputs it trains a small bidirectional
transformer that reads one token per 3D point group (centre, mean colour, spread of its
points), the instruction's words and the end-effector pose, and regresses the auxiliary label
of ``vla-pruned-ros train --aux-weight``: where the named object started, relative to the
gripper (world x, y, in units of 10 cm). Validation is every 20th episode, as in training.

It prints two baselines (the median label; a least-squares fit on the pose alone, which knows
no object) and the validation L1 as training goes. Variants test cheap ideas in minutes
instead of hour-long BC runs: ``film`` (the words' mean embedding scales and shifts every
point token), ``normalised`` (inputs standardised per feature) and ``pointer`` (no transformer:
each group is scored against the bag of words, the answer is the score-weighted mean of the
group centres). ``--group-weight`` adds, for the pointer, the per-token label of
``vla-pruned-ros train --ground-weight`` (binary cross-entropy on the scores against
``dataset.target_groups``): one label per token instead of one per frame.

Usage::

    python tools/grounding_probe.py runs/sim/cache --steps 1500 --variant plain --out probe.json
"""

import argparse
import json
from pathlib import Path
import re
import time

import numpy as np
import torch
from torch import nn

from vla_pruned_ros.train.dataset import (
    APPROACH_DISTANCE_M,
    Samples,
    concat_samples,
    read_cached_samples,
)
from vla_pruned_ros.train.trainer import AUX_SCALE_M, _split, group_bce

VARIANTS = ('plain', 'film', 'normalised', 'pointer')
MAX_WORDS = 16


def _word_ids(samples: Samples, vocabulary: dict[str, int]) -> np.ndarray:
    """Word ids [N, MAX_WORDS] (0 pads) per frame; new words are added to ``vocabulary``."""
    rows = []
    for text in samples.instructions:
        ids = [vocabulary.setdefault(w, len(vocabulary) + 1)
               for w in re.findall(r'[a-z]+', text.lower())][:MAX_WORDS]
        rows.append(ids + [0] * (MAX_WORDS - len(ids)))
    return np.asarray(rows, np.int64)[samples.instruction]


def _group_features(samples: Samples) -> np.ndarray:
    """Per group: centre (3), spread of the relative xyz (3), mean colour (3, if coloured)."""
    neighbourhoods = samples.neighbourhoods
    parts = [samples.centres, neighbourhoods[..., :3].std(axis=2)]
    if neighbourhoods.shape[-1] >= 6:
        parts.append(neighbourhoods[..., 3:6].mean(axis=2))
    return np.concatenate(parts, axis=-1).astype(np.float32)


class TransformerProbe(nn.Module):
    """Point-group, word, pose and query tokens through a small transformer encoder."""

    def __init__(self, vocabulary: int, variant: str, group_features: int, width: int = 128,
                 layers: int = 4) -> None:
        super().__init__()
        self.variant = variant
        self.words = nn.Embedding(vocabulary, width, padding_idx=0)
        self.groups = nn.Sequential(
            nn.Linear(group_features, width), nn.GELU(), nn.Linear(width, width))
        self.pose = nn.Linear(7, width)
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.film = nn.Linear(width, 2 * width) if variant == 'film' else None
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, 0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, 2)

    def forward(
        self, groups: torch.Tensor, words: torch.Tensor, pose: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        """Target offsets [B, 2] from groups [B, G, F], word ids [B, W] and poses [B, 7]."""
        group_tokens = self.groups(groups)
        word_tokens = self.words(words)
        if self.film is not None:
            present = (words > 0).float().unsqueeze(-1)
            mean = (word_tokens * present).sum(1) / present.sum(1).clamp(min=1)
            gamma, beta = self.film(mean).unsqueeze(1).chunk(2, dim=-1)
            group_tokens = group_tokens * (1 + gamma) + beta
        tokens = torch.cat([group_tokens, word_tokens, self.pose(pose).unsqueeze(1),
                            self.query.expand(len(groups), -1, -1)], dim=1)
        return self.out(self.encoder(tokens)[:, -1]), None


class PointerProbe(nn.Module):
    """Groups scored against the bag of words; the score-weighted centre, minus the pose."""

    def __init__(self, vocabulary: int, groups: torch.Tensor, width: int = 64) -> None:
        super().__init__()
        flat = groups.reshape(-1, groups.shape[-1])
        self.register_buffer('mean', flat.mean(0))
        self.register_buffer('std', flat.std(0) + 1e-6)
        self.words = nn.EmbeddingBag(vocabulary, width, mode='mean', padding_idx=0)
        self.groups = nn.Sequential(
            nn.Linear(groups.shape[-1], width), nn.GELU(), nn.Linear(width, width))
        self.score = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, 1))
        # Positions in AUX_SCALE_M units, so the affine maps need weights of order one.
        self.place = nn.Linear(3, 2)
        self.pose = nn.Linear(7, 2)

    def forward(
        self, groups: torch.Tensor, words: torch.Tensor, pose: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target offsets [B, 2] and the group scores (logits) [B, G]."""
        features = self.groups((groups - self.mean) / self.std)
        words_mean = self.words(words).unsqueeze(1).expand_as(features)
        logits = self.score(torch.cat([features, features * words_mean], -1)).squeeze(-1)
        centre = (logits.softmax(-1).unsqueeze(-1) * groups[..., :3]).sum(1)
        scaled_pose = torch.cat([pose[:, :3] / AUX_SCALE_M, pose[:, 3:]], dim=1)
        return self.place(centre / AUX_SCALE_M) - self.pose(scaled_pose), logits


def main() -> None:
    """Train the probe and print baselines and the validation curve."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('cache', help="a training run's cache directory (runs/sim/cache)")
    parser.add_argument('--variant', choices=VARIANTS, default='plain')
    parser.add_argument('--steps', type=int, default=1500)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=3e-4)
    parser.add_argument('--eval-every', type=int, default=250)
    parser.add_argument('--val-every', type=int, default=20,
                        help='every N-th episode is held out (as in training)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--approach-only', action='store_true',
                        help=f'only frames with the gripper >= {APPROACH_DISTANCE_M} m from the '
                             'target, where its start position is still where the cloud shows '
                             'it (the frames the grounding loss labels, dataset.target_groups)')
    parser.add_argument('--group-weight', type=float, default=0.0,
                        help='pointer only: weight of the per-group on-target loss')
    parser.add_argument('--out', help='write the curve as JSON here')
    args = parser.parse_args()
    if args.group_weight and args.variant != 'pointer':
        parser.error('--group-weight needs --variant pointer')
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    files = sorted(Path(args.cache).glob('*.npz'))
    if not files:
        parser.error(f'no cached samples (*.npz) in {args.cache}')
    samples = concat_samples([read_cached_samples(f) for f in files])
    known = np.isfinite(samples.target_xy).all(axis=1)
    if args.approach_only:
        with np.errstate(invalid='ignore'):
            known &= np.linalg.norm(samples.target_xy, axis=1) >= APPROACH_DISTANCE_M
    if not known.any():
        parser.error('these samples have no target labels (bags without /episode metadata)')
    samples = samples.subset(np.flatnonzero(known))
    train, val = _split(samples, val_every=args.val_every, val_frames=512)
    if val is None:
        parser.error('too few episodes for a validation split')
    vocabulary: dict[str, int] = {}

    def tensors(part: Samples) -> tuple[torch.Tensor, ...]:
        words = _word_ids(part, vocabulary)
        return (torch.from_numpy(_group_features(part)), torch.from_numpy(words),
                torch.from_numpy(part.proprio.astype(np.float32)),
                torch.from_numpy(part.target_xy / AUX_SCALE_M),
                torch.from_numpy(part.target_groups))

    train_t, val_t = tensors(train), tensors(val)
    if args.variant == 'normalised':
        for index in (0, 2):
            flat = train_t[index].reshape(-1, train_t[index].shape[-1])
            mean, std = flat.mean(0), flat.std(0) + 1e-6
            train_t = (*train_t[:index], (train_t[index] - mean) / std, *train_t[index + 1:])
            val_t = (*val_t[:index], (val_t[index] - mean) / std, *val_t[index + 1:])
    labels = train.target_xy / AUX_SCALE_M
    constant = float(np.abs(val.target_xy / AUX_SCALE_M - np.median(labels, 0)).mean())
    design = np.c_[train.proprio, np.ones(len(train))]
    fit = np.linalg.lstsq(design, labels, rcond=None)[0]
    linear = float(np.abs(np.c_[val.proprio, np.ones(len(val))] @ fit - val_t[3].numpy()).mean())
    print(f'{len(train)} training / {len(val)} validation frames, {len(vocabulary)} words; '
          f'validation L1 (10 cm units): median label {constant:.3f}, pose-only linear '
          f'{linear:.3f}', flush=True)
    families = {name: torch.from_numpy(val.family == index)
                for index, name in enumerate(val.families) if (val.family == index).any()}

    if args.variant == 'pointer':
        model: nn.Module = PointerProbe(len(vocabulary) + 1, train_t[0])
    else:
        model = TransformerProbe(len(vocabulary) + 1, args.variant, train_t[0].shape[-1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    curve = []
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = torch.randint(len(train_t[3]), (args.batch_size,), generator=generator)
        prediction, logits = model(*(t[rows] for t in train_t[:3]))
        loss = (prediction - train_t[3][rows]).abs().mean()
        if args.group_weight:
            loss = loss + args.group_weight * group_bce(logits, train_t[4][rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                errors = (model(*val_t[:3])[0] - val_t[3]).abs().mean(dim=1)
            curve.append({'step': step, 'train_loss': loss.item(), 'val_l1': float(errors.mean()),
                          'val_l1_by_family': {name: round(float(errors[mask].mean()), 4)
                                               for name, mask in families.items()},
                          'elapsed_s': round(time.perf_counter() - started, 1)})
            print(json.dumps(curve[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({
            'variant': args.variant, 'steps': args.steps, 'batch_size': args.batch_size,
            'lr': args.lr, 'seed': args.seed, 'approach_only': args.approach_only,
            'group_weight': args.group_weight,
            'frames': {'train': len(train), 'validation': len(val)},
            'baselines': {'median': constant, 'pose_linear': linear}, 'curve': curve,
        }, indent=2) + '\n', encoding='utf-8')


if __name__ == '__main__':
    main()
