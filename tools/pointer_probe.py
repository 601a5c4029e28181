"""
Pointer probe: how fast a preset's pointers learn to find what the words name.

Trains only the pointers of a preset (``vla_pruned_ros.model.pointer``) with the training
loss (``pointer_loss``) on a training run's cached inputs, in a minute or two on a CPU instead
of the hour a behaviour-cloning run takes, and prints, per pointer and task family, the mean
probability mass the pointer puts on the labelled groups of held-out episodes (every
``--val-every``-th, as in training) next to the mass an uninformed pointer would put there.
Use it to check a pointer design or a new dataset before a long run.

    python tools/pointer_probe.py runs/sim/cache --model models/default --steps 800
"""

import argparse
import json
from pathlib import Path
import sys
import time

import numpy as np
import torch

from vla_pruned_ros.model.checkpoint import load_model
from vla_pruned_ros.model.mvla import MultiModalVLA
from vla_pruned_ros.model.pointer import pointer_loss
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.model.text import InstructionEncoder, build_tokenizer
from vla_pruned_ros.train.dataset import Samples, concat_samples, read_cached_samples


def evaluate(model: MultiModalVLA, samples: Samples, input_ids: torch.Tensor) -> dict:
    """Mean mass on the labelled groups (and the uninformed share) per pointer and family."""
    with torch.no_grad():
        output = model.point(input_ids, torch.from_numpy(samples.centres),
                             torch.from_numpy(samples.neighbourhoods))
    result = {}
    for index, name in enumerate(model.config.pointers):
        labels = samples.group_labels(name)
        known = np.isfinite(labels).all(axis=1) & (np.nan_to_num(labels).sum(axis=1) > 0)
        probs = torch.softmax(output.logits[:, index], dim=-1).numpy()
        for family_index, family in enumerate(samples.families):
            rows = known & (samples.family == family_index)
            if rows.any():
                result[f'{name}/{family}'] = {
                    'mass': round(float((probs[rows] * labels[rows]).sum(axis=1).mean()), 3),
                    'uninformed': round(float(labels[rows].mean(axis=1).mean()), 3),
                    'frames': int(rows.sum()),
                }
    return result


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('cache', help="a training run's cache directory (runs/sim/cache)")
    parser.add_argument('--model', default='',
                        help='take the tokenizer from this model directory (default: one '
                             "trained on the cache's instructions)")
    parser.add_argument('--preset', default='sim')
    parser.add_argument('--steps', type=int, default=800)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--eval-every', type=int, default=200)
    parser.add_argument('--val-every', type=int, default=20)
    parser.add_argument('--val-frames', type=int, default=512)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', default='', help='write the curve as JSON here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(Path(args.cache).glob('*.npz'))
    if not files:
        sys.exit(f'no cached bags (*.npz) in {args.cache}')
    samples = concat_samples([read_cached_samples(path) for path in files])
    config = preset_config(args.preset)
    if not config.pointers:
        sys.exit(f'preset {args.preset!r} has no pointers')
    if args.model:
        _, tokenizer = load_model(args.model)
    else:
        tokenizer = build_tokenizer(samples.instructions, config.vocab_size)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(args.seed)
    model = MultiModalVLA(config)
    encoder = InstructionEncoder(tokenizer, config.instruction_tokens)
    ids = torch.tensor(np.array([encoder.encode(text) for text in samples.instructions]))
    ids = ids[samples.instruction]
    is_val = samples.episode % args.val_every == args.val_every - 1
    train_rows = np.flatnonzero(~is_val)
    val_rows = np.flatnonzero(is_val)
    val_rows = val_rows[np.linspace(0, len(val_rows) - 1, min(args.val_frames, len(val_rows)))
                        .astype(np.int64)]
    val = samples.subset(val_rows)
    labels = {name: torch.from_numpy(samples.group_labels(name)) for name in config.pointers}
    centres = torch.from_numpy(samples.centres)
    neighbourhoods = torch.from_numpy(samples.neighbourhoods)
    optimiser = torch.optim.AdamW(model.pointer.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    curve = [{'step': 0, **evaluate(model, val, ids[val_rows])}]
    print(json.dumps(curve[-1]), flush=True)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = torch.from_numpy(train_rows)[
            torch.randint(len(train_rows), (args.batch_size,), generator=generator)]
        output = model.point(ids[rows], centres[rows], neighbourhoods[rows])
        loss = sum(pointer_loss(output.logits[:, index], labels[name][rows])
                   for index, name in enumerate(config.pointers))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({'step': step, 'elapsed_s': round(time.perf_counter() - started, 1),
                          **evaluate(model, val, ids[val_rows])})
            print(json.dumps(curve[-1]), flush=True)
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as stream:
            json.dump({'args': vars(args), 'curve': curve}, stream, indent=1)


if __name__ == '__main__':
    main()
