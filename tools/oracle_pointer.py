"""
Oracle pointer: closed-loop success when the model's pointers are told where to point.

Runs the dense policy on the heldout scenes of ``sim eval`` (seeds ``--first-seed`` ..) with
the chosen pointers' scores replaced at every step by the truth
(:class:`vla_pruned_ros.sim.oracle.OraclePointer`). Everything else (decoder, head) is the
model's own. The difference to the model's own success is what grounding still costs; what
fails with the oracle is the policy's control.

    python tools/oracle_pointer.py models/default --episodes 20
    python tools/oracle_pointer.py models/default --pointers object --out oracle.json
"""

import argparse
import json

from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.evaluate import run_policy_episode
from vla_pruned_ros.sim.oracle import OracleError, OraclePointer
from vla_pruned_ros.sim.tasks import FAMILIES


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('model', help='model directory (a model with pointers)')
    parser.add_argument('--families', nargs='+', choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument('--episodes', type=int, default=20, help='scenes per family')
    parser.add_argument('--first-seed', type=int, default=0, help='0: the scenes of sim eval')
    parser.add_argument('--split', default='heldout', choices=('train', 'heldout'))
    parser.add_argument('--pointers', nargs='+', default=['object', 'zone'],
                        help='pointers the oracle replaces (default: object zone)')
    parser.add_argument('--out', help='write the per-seed outcomes as JSON here')
    args = parser.parse_args()
    policy = Policy.from_pretrained(args.model, device='cpu', pruner='dense')
    try:
        oracle = OraclePointer(policy, args.pointers).install(policy)
    except OracleError as err:
        raise SystemExit(f'{args.model}: {err}') from err
    report = {'model': args.model, 'split': args.split, 'pointers': args.pointers,
              'families': {}}
    for family in args.families:
        seeds = range(args.first_seed, args.first_seed + args.episodes)
        outcomes = {
            seed: run_policy_episode(policy, family, seed, args.split,
                                     on_reset=oracle.attach).success
            for seed in seeds}
        solved = sum(outcomes.values())
        report['families'][family] = {
            'successes': solved, 'episodes': len(outcomes),
            'failed_seeds': [seed for seed, ok in outcomes.items() if not ok]}
        print(f'{family}: {solved} / {len(outcomes)} with the oracle {"+".join(args.pointers)} '
              f'pointer', flush=True)
    if args.out:
        with open(args.out, 'w') as stream:
            json.dump(report, stream, indent=1)


if __name__ == '__main__':
    main()
