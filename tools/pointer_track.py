"""
Pointer track: where the object pointer points at every step of closed-loop episodes.

Runs the dense policy on heldout scenes as ``sim eval`` does (seeds from ``--first-seed``, 1000
by default: the selection set) and records per policy step the horizontal distance from the
object pointer's point to the named object's current centre. Per episode it prints the
outcome, that distance at the first step, its maximum over the steps where the gripper is more
than ``NEAR`` from the object and over those where it is nearer (a grasped or pushed object is
partly hidden by the fingers), and a summary that sorts the failures: a wrong first point
(grounding), a point that jumped to another thing later (over ``ELSEWHERE``), or neither
(control).

    python tools/pointer_track.py models/default --family push --episodes 40
"""

import argparse
import json

import numpy as np

from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.evaluate import run_policy_episode
from vla_pruned_ros.sim.tasks import FAMILIES

# The gripper is "near" the object within this horizontal distance (m).
NEAR = 0.06
# A point this far from the named object is on another thing (m).
ELSEWHERE = 0.08


class _Tracer:
    """Wraps ``policy.step``: after each step, the object pointer's error and the gripper gap."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.step = policy, policy.step
        self.env = None
        self.rows: list[tuple[float, float]] = []
        policy.step = self

    def attach(self, env) -> None:
        """``on_reset`` hook of ``run_policy_episode``: a new episode."""
        self.env, self.rows = env, []

    def __call__(self, observation):
        result = self.step(observation)
        to_world = self.env.camera_to_world()
        points = self.policy.last_pointer.points[0].float().cpu().numpy()
        point = points[self.policy.config.pointers.index('object')]
        point = point @ to_world[:3, :3].T + to_world[:3, 3]
        centre = self.env.scene.object_position(self.env.task.target_object.name)
        gripper = self.env.scene.tcp_position()
        self.rows.append((float(np.linalg.norm(point[:2] - centre[:2])),
                          float(np.linalg.norm(gripper[:2] - centre[:2]))))
        return result


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('model', help='model directory (a model with an object pointer)')
    parser.add_argument('--family', choices=FAMILIES, default='push')
    parser.add_argument('--episodes', type=int, default=40)
    parser.add_argument('--first-seed', type=int, default=1000)
    parser.add_argument('--out', help='write the per-episode records as JSON here')
    args = parser.parse_args()
    policy = Policy.from_pretrained(args.model, device='cpu', pruner='dense')
    if 'object' not in policy.config.pointers:
        raise SystemExit(f'{args.model}: the model has no object pointer')
    tracer = _Tracer(policy)
    episodes = []
    for seed in range(args.first_seed, args.first_seed + args.episodes):
        result = run_policy_episode(policy, args.family, seed, 'heldout', on_reset=tracer.attach)
        errors = np.array([error for error, _ in tracer.rows])
        near = np.array([gap <= NEAR for _, gap in tracer.rows])
        record = {'seed': seed, 'success': result.success, 'first_m': float(errors[0]),
                  'max_far_m': float(errors[~near].max()) if (~near).any() else 0.0,
                  'max_near_m': float(errors[near].max()) if near.any() else 0.0}
        episodes.append(record)
        print(f"{seed} {'ok  ' if result.success else 'FAIL'} first "
              f"{record['first_m'] * 100:5.1f} cm, max far {record['max_far_m'] * 100:5.1f} cm, "
              f"max near {record['max_near_m'] * 100:5.1f} cm", flush=True)
    failures = [e for e in episodes if not e['success']]
    first = [e for e in failures if e['first_m'] > ELSEWHERE]
    jumped = [e for e in failures if e not in first
              and max(e['max_far_m'], e['max_near_m']) > ELSEWHERE]
    jumps_solved = sum(1 for e in episodes if e['success']
                       and max(e['first_m'], e['max_far_m'], e['max_near_m']) > ELSEWHERE)
    summary = {'episodes': len(episodes), 'solved': len(episodes) - len(failures),
               'failed_wrong_first_point': len(first), 'failed_point_jumped_later': len(jumped),
               'failed_point_on_the_object': len(failures) - len(first) - len(jumped),
               'solved_despite_a_jump': jumps_solved}
    print(json.dumps(summary))
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as stream:
            json.dump({'model': args.model, 'family': args.family, 'summary': summary,
                       'episodes': episodes}, stream, indent=2)


if __name__ == '__main__':
    main()
