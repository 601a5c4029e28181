"""
Shape probe: how well a 3D group's descriptor tells the shape of the object it lies on.

Reads cached training samples (the ``.npz`` files ``vla-pruned-ros train`` writes under
``OUT/cache``), takes the groups labelled as the instruction's target object, and fits a small
MLP probe to name the target's shape (cube, block, cylinder, sphere) from (a) the group's own
extent, as the pointer's ``group_descriptors`` gives it, (b) the object context of
``vla_pruned_ros.model.object_context`` and (c) both. Each colour is left out in turn (the
probe is fitted on the other colours' groups and scored on that colour's), so a probe that
learns colour-shape pairs instead of shapes scores low. Prints and saves the accuracies.

    python tools/shape_probe.py /tmp/vla_train/run9/cache/*.npz --frames 3000 \
        --out docs/results/shape_runs/shape_probe.json
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vla_pruned_ros.model.object_context import object_descriptors
from vla_pruned_ros.model.pointer import group_descriptors
from vla_pruned_ros.model.presets import preset_config
from vla_pruned_ros.sim.scene import COLOURS, SHAPES
from vla_pruned_ros.train.dataset import concat_samples, read_cached_samples

SHAPE_NAMES = list(SHAPES)
COLOUR_NAMES = list(COLOURS)


def _target_words(instruction: str) -> tuple[int, int]:
    """(shape, colour) indices of the first shape and colour word: the target's phrase."""
    words = instruction.split()
    shape = next(w for w in words if w in SHAPES)
    colour = next(w for w in words if w in COLOURS)
    return SHAPE_NAMES.index(shape), COLOUR_NAMES.index(colour)


def _fit_and_score(features: torch.Tensor, shapes: torch.Tensor, colours: torch.Tensor,
                   seed: int) -> list[float]:
    """Leave-one-colour-out accuracy of an MLP probe, one value per colour."""
    features = (features - features.mean(0)) / features.std(0).clamp_min(1e-6)
    scores = []
    for held_out in range(len(COLOUR_NAMES)):
        train, test = colours != held_out, colours == held_out
        if not test.any() or not train.any():
            continue
        torch.manual_seed(seed)
        probe = torch.nn.Sequential(torch.nn.Linear(features.shape[1], 64), torch.nn.GELU(),
                                    torch.nn.Linear(64, len(SHAPE_NAMES)))
        optimiser = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(probe(features[train]), shapes[train])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            scores.append(float((probe(features[test]).argmax(-1) == shapes[test]).float().mean()))
    return scores


def main() -> None:
    """Parse the arguments, run the three probes, print and save the accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('caches', nargs='+', help='cached sample files (.npz)')
    parser.add_argument('--frames', type=int, default=3000, help='frames drawn at random')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='write the accuracies here as JSON')
    args = parser.parse_args()

    samples = concat_samples([read_cached_samples(path) for path in args.caches])
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(samples), min(args.frames, len(samples)), replace=False)
    camera_to_base = torch.tensor(preset_config('sim').camera_to_base)
    extents, contexts, shapes, colours = [], [], [], []
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        neighbourhoods = torch.as_tensor(samples.neighbourhoods[chunk])
        centres = torch.as_tensor(samples.centres[chunk])
        context = object_descriptors(neighbourhoods, centres, camera_to_base)
        extent = group_descriptors(neighbourhoods, centres)[..., 3:6]  # after the centre
        labels = torch.as_tensor(np.nan_to_num(samples.target_groups[chunk])) > 0.5
        for i, row in enumerate(chunk):
            shape, colour = _target_words(samples.instructions[samples.instruction[row]])
            on_target = labels[i]
            extents.append(extent[i, on_target])
            contexts.append(context[i, on_target])
            shapes += [shape] * int(on_target.sum())
            colours += [colour] * int(on_target.sum())
    extent, context = torch.cat(extents), torch.cat(contexts)
    shape_index, colour_index = torch.tensor(shapes), torch.tensor(colours)
    result = {'frames': len(rows), 'groups': len(shape_index), 'chance': 1 / len(SHAPE_NAMES)}
    for name, features in (('group_extent', extent), ('object_context', context),
                           ('both', torch.cat([extent, context], dim=1))):
        accuracy = _fit_and_score(features, shape_index, colour_index, args.seed)
        result[name] = {'per_left_out_colour': accuracy, 'mean': float(np.mean(accuracy))}
        print(f'{name:15s} leave-one-colour-out shape accuracy {np.mean(accuracy):.3f} '
              f'({", ".join(f"{a:.2f}" for a in accuracy)})')
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
    main()
