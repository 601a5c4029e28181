"""
Pointer placement: how far each way of placing a point from the same pointer scores lands.

On the first frame of heldout scenes (seeds from ``--first-seed``, 100 by default so that
choosing a setting here does not tune it to ``sim eval``'s seeds), the model's pointer scores
its 3D groups once; the point is then placed from those logits several ways
(:func:`vla_pruned_ros.model.pointer.place_points`): softmax at sharpness 1, 3, 10 and 30, and
refined (only the groups within 4-10 cm of the best-scoring one) at sharpness 1 and 3; the
oracle's point is the mean of the groups the simulator marks (what ``tools/oracle_pointer.py``
feeds the model). Printed per placement: the median and mean horizontal distance to the named
thing's centre and the share of scenes over 2 and 3 cm.

    python tools/pointer_placement.py models/default --families push pick --episodes 40
    python tools/pointer_placement.py models/default --families push --pointer zone
"""

import argparse
import json

import numpy as np
import torch

from vla_pruned_ros.model.pointer import place_points
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.evaluate import POINTS_STRIDE
from vla_pruned_ros.sim.oracle import truth_labels
from vla_pruned_ros.sim.tasks import FAMILIES

SHARPNESS = (1.0, 3.0, 10.0, 30.0)
RADII = (0.04, 0.06, 0.08, 0.10)


def placements(logits: torch.Tensor, centres: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each placement's point [3] from one pointer's ``logits`` [G] over ``centres`` [G, 3]."""
    row, grid = logits[None, None], centres[None]
    points = {f'sharpness {k:g}': place_points(row, grid, k) for k in SHARPNESS}
    for radius in RADII:
        for k in (1.0, 3.0):
            points[f'refined {radius * 100:g} cm, sharpness {k:g}'] = place_points(
                row, grid, k, radius)
    return {name: point[0, 0] for name, point in points.items()}


def scene_errors(policy: Policy, family: str, seed: int, pointer: str) -> dict[str, float]:
    """Horizontal distance (m) of every placement's point to the named thing, one scene."""
    captured = {}
    point = policy.model.point

    def capture(input_ids, centres, neighbourhoods, previous=None):
        output = point(input_ids, centres, neighbourhoods, previous)
        captured['centres'], captured['logits'] = centres[0].float(), output.logits[0].float()
        return output

    size = policy.config.vision.image_size
    policy.model.point = capture
    try:
        with TabletopEnv(family, seed, 'heldout', image_size=(size, size),
                         points_stride=POINTS_STRIDE) as env:
            observation = env.reset()
            policy.reset()
            policy.step(observation)
            to_world = env.camera_to_world()
            if pointer == 'object':
                truth = env.scene.object_position(env.task.target_object.name)[:2]
            else:
                truth = np.array([env.task.target_zone.x, env.task.target_zone.y])
            centres = captured['centres']
            world = centres.numpy() @ to_world[:3, :3].T + to_world[:3, 3]
            logits = captured['logits'][policy.config.pointers.index(pointer)]
            errors = {}
            marked = truth_labels(env, pointer, world)
            if marked.any():
                errors['oracle'] = float(np.linalg.norm(world[marked].mean(0)[:2] - truth))
            for name, placed in placements(logits, centres).items():
                in_world = placed.numpy() @ to_world[:3, :3].T + to_world[:3, 3]
                errors[name] = float(np.linalg.norm(in_world[:2] - truth))
            return errors
    finally:
        policy.model.point = point


def summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, mean and the shares over 2 and 3 cm per placement."""
    table = {}
    for name in rows[0]:
        gaps = np.array([row[name] for row in rows if name in row])
        table[name] = {'median_cm': float(np.median(gaps) * 100),
                       'mean_cm': float(np.mean(gaps) * 100),
                       'over_2cm': float(np.mean(gaps > 0.02)),
                       'over_3cm': float(np.mean(gaps > 0.03))}
    return table


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('model', help='model directory (a model with pointers)')
    parser.add_argument('--families', nargs='+', choices=FAMILIES, default=['push', 'pick'])
    parser.add_argument('--episodes', type=int, default=40, help='scenes per family')
    parser.add_argument('--first-seed', type=int, default=100)
    parser.add_argument('--pointer', choices=('object', 'zone'), default='object')
    parser.add_argument('--out', help='write the per-family summaries as JSON here')
    args = parser.parse_args()
    policy = Policy.from_pretrained(args.model, device='cpu', pruner='dense')
    report = {'model': args.model, 'pointer': args.pointer, 'first_seed': args.first_seed}
    for family in args.families:
        if args.pointer == 'zone' and family != 'push':
            continue  # only push names a zone
        rows = [scene_errors(policy, family, seed, args.pointer)
                for seed in range(args.first_seed, args.first_seed + args.episodes)]
        report[family] = summary(rows)
        print(f'{family} ({args.episodes} scenes, {args.pointer} pointer)')
        for name, values in report[family].items():
            print(f"  {name:32s} median {values['median_cm']:5.2f} cm  mean "
                  f"{values['mean_cm']:5.2f} cm  >2 cm {values['over_2cm']:.2f}  "
                  f">3 cm {values['over_3cm']:.2f}")
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as stream:
            json.dump(report, stream, indent=2)


if __name__ == '__main__':
    main()
