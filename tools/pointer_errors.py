"""
Pointer errors: where a model's pointers point in the first frame of simulator scenes.

Per family and seed: the horizontal distance from the object pointer's point to the named
object's centre, and when it is further than ``--tolerance`` the object nearest to the point
(a miss on another object is a grounding error, a point between objects a blend); for push
also the zone pointer's distance to the named zone's centre. A summary line per family counts
the misses. Seeds start at ``--first-seed`` (100 by default) so that choosing between models
on these scenes does not tune them to the evaluation's seeds (``sim eval`` uses 0..N-1).
``--template K`` words every instruction with the family's template K instead (the last one
is the heldout wording), to tell wording errors from grounding errors.

    python tools/pointer_errors.py models/default --episodes 40
    python tools/pointer_errors.py models/default --families push --episodes 20 --out errors.json
"""

import argparse
import json
from typing import Optional

import numpy as np

from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.evaluate import POINTS_STRIDE
from vla_pruned_ros.sim.tasks import FAMILIES, TEMPLATES


def first_frame_errors(
    policy: Policy, family: str, seed: int, split: str, template: Optional[int] = None
) -> dict:
    """Run the policy on the first observation of one scene; where its pointers point."""
    size = policy.config.vision.image_size
    with TabletopEnv(family, seed, split, image_size=(size, size),
                     points_stride=POINTS_STRIDE) as env:
        observation = env.reset()
        target, zone = env.task.target_object, env.task.target_zone
        if template is not None:
            observation.instruction = TEMPLATES[family][template].format(
                obj=target.phrase, zone=zone.colour if zone else '')
        policy.reset()
        policy.step(observation)
        to_world = env.camera_to_world()
        points = policy.last_pointer.points[0].float().cpu().numpy()
        world = points @ to_world[:3, :3].T + to_world[:3, 3]
        names = policy.config.pointers
        distances = {
            spec.phrase: float(np.linalg.norm(env.scene.object_position(spec.name)[:2]
                                              - world[names.index('object'), :2]))
            for spec in env.task.scene.objects
        }
        record = {'seed': seed, 'instruction': observation.instruction,
                  'object_error_m': distances[target.phrase],
                  'nearest': min(distances, key=distances.get)}
        if zone is not None and 'zone' in names:
            record['zone_error_m'] = float(np.linalg.norm(
                world[names.index('zone'), :2] - np.array([zone.x, zone.y])))
        return record


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('model', help='model directory')
    parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument('--episodes', type=int, default=20, help='scenes per family')
    parser.add_argument('--first-seed', type=int, default=100)
    parser.add_argument('--split', default='heldout', choices=('train', 'heldout'))
    parser.add_argument('--tolerance', type=float, default=0.03,
                        help='a point further than this from the named centre is a miss (m)')
    parser.add_argument('--template', type=int, default=None,
                        help="word every instruction with this index into the family's "
                             "templates (default: the scene's own instruction)")
    parser.add_argument('--out', default='', help='write every record and the summary as JSON')
    args = parser.parse_args()
    policy = Policy.from_pretrained(args.model, device='cpu', pruner='dense')
    if not policy.config.pointers:
        parser.error(f'{args.model} has no pointers')
    for family in args.families:
        if args.template is not None and not 0 <= args.template < len(TEMPLATES[family]):
            parser.error(f'{family} has templates 0..{len(TEMPLATES[family]) - 1}')
    report: dict = {'model': args.model, 'split': args.split, 'tolerance_m': args.tolerance,
                    'template': args.template, 'families': {}}
    for family in args.families:
        records = []
        for seed in range(args.first_seed, args.first_seed + args.episodes):
            record = first_frame_errors(policy, family, seed, args.split, args.template)
            records.append(record)
            line = f'{family} {seed} {record["instruction"]!r}: object off by ' \
                   f'{record["object_error_m"]:.3f} m'
            if record['object_error_m'] > args.tolerance:
                line += f' (nearest: {record["nearest"]})'
            if 'zone_error_m' in record:
                line += f', zone off by {record["zone_error_m"]:.3f} m'
            print(line, flush=True)
        misses = sum(r['object_error_m'] > args.tolerance for r in records)
        zone_misses = sum(r.get('zone_error_m', 0.0) > args.tolerance for r in records)
        summary = {'episodes': len(records), 'object_misses': misses,
                   'zone_misses': zone_misses,
                   'median_object_error_m': float(np.median([r['object_error_m']
                                                             for r in records]))}
        print(f'{family}: object pointer off by more than {args.tolerance} m in {misses} of '
              f'{len(records)} scenes (zone: {zone_misses}), median '
              f'{summary["median_object_error_m"]:.3f} m', flush=True)
        report['families'][family] = {'summary': summary, 'records': records}
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as stream:
            json.dump(report, stream, indent=1)


if __name__ == '__main__':
    main()
