r"""
Pruned tokens: which of the named object's and zone's 3D groups a pruner keeps in closed loop.

Runs push episodes on heldout scenes as ``sim eval`` does, with one pruner at one budget, and
records per pruned policy step (full steps left out) how many of the 3D groups on the named
object and on the named zone the pruner kept to the end of the decoder. With ``--dense``
(a ``sim eval`` output of the dense policy on the same seeds) the episodes are split into those
the pruner lost (dense solved them), those both solved and the rest, so the kept shares of the
lost episodes can be set beside the others'.

    python tools/pruned_tokens.py models/default \
        --pruner tri_stage:stage1=false,semantic_layer=1,stage2_split=true,min_modality_share=0.5 \
        --budget 0.25 --episodes 100 --first-seed 0 --dense docs/results/heldout100_run47/dense
"""

import argparse
import json
from pathlib import Path

import numpy as np

from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import Budget
from vla_pruned_ros.pruning.spec import parse_pruner_spec
from vla_pruned_ros.sim.evaluate import run_policy_episode
from vla_pruned_ros.tokens.points_3d import observation_groups

# A group lies on the object within this horizontal distance of its centre and above the
# table by OBJECT_MIN_Z; on the zone within its radius and below ZONE_MAX_Z (metres).
OBJECT_RADIUS = 0.035
OBJECT_MIN_Z = 0.01
ZONE_MAX_Z = 0.015


class _Recorder:
    """Wraps ``policy.step``: per pruned step, named groups present and kept."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.step = policy, policy.step
        self.env = None
        self.rows: list[tuple[int, int, int, int]] = []
        policy.step = self

    def attach(self, env) -> None:
        """``on_reset`` hook of ``run_policy_episode``: a new episode."""
        self.env, self.rows = env, []

    def __call__(self, observation):
        actions, stats = self.step(observation)
        if stats.full_step:
            return actions, stats
        groups = observation_groups(observation, self.policy.config.points)
        to_world = self.env.camera_to_world()
        centres = groups.centres @ to_world[:3, :3].T + to_world[:3, 3]
        scene, task = self.env.scene, self.env.task
        target = scene.object_position(task.target_object.name)
        on_object = ((np.linalg.norm(centres[:, :2] - target[:2], axis=1) <= OBJECT_RADIUS)
                     & (centres[:, 2] >= OBJECT_MIN_Z))
        zone = task.target_zone
        on_zone = ((np.linalg.norm(centres[:, :2] - np.array([zone.x, zone.y]), axis=1)
                    <= zone.radius) & (centres[:, 2] <= ZONE_MAX_Z))
        kept = np.zeros(len(centres), bool)
        kept[np.asarray(stats.kept_3d, np.int64)] = True
        self.rows.append((int(on_object.sum()), int((on_object & kept).sum()),
                          int(on_zone.sum()), int((on_zone & kept).sum())))
        return actions, stats


def _share(kept: int, present: int) -> float:
    return kept / present if present else float('nan')


def _summary(episodes: list[dict]) -> dict:
    """Pooled kept shares and the share of pruned steps that kept none of a present thing."""
    rows = np.array([row for episode in episodes for row in episode['steps']]).reshape(-1, 4)
    object_steps, zone_steps = rows[:, 0] > 0, rows[:, 2] > 0
    return {
        'episodes': len(episodes),
        'pruned_steps': len(rows),
        'object_groups_per_step': float(rows[:, 0].mean()) if len(rows) else float('nan'),
        'zone_groups_per_step': float(rows[:, 2].mean()) if len(rows) else float('nan'),
        'object_groups_kept': _share(rows[:, 1].sum(), rows[:, 0].sum()),
        'zone_groups_kept': _share(rows[:, 3].sum(), rows[:, 2].sum()),
        'steps_without_object': _share(int((object_steps & (rows[:, 1] == 0)).sum()),
                                       int(object_steps.sum())),
        'steps_without_zone': _share(int((zone_steps & (rows[:, 3] == 0)).sum()),
                                     int(zone_steps.sum())),
    }


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('model', help='model directory')
    parser.add_argument('--pruner', required=True, help='pruner spec (name:key=value,...)')
    parser.add_argument('--budget', type=float, default=0.25, help='keep ratio')
    parser.add_argument('--episodes', type=int, default=100)
    parser.add_argument('--first-seed', type=int, default=0)
    parser.add_argument('--dense', help="a dense 'sim eval' output on the same push seeds")
    parser.add_argument('--out', help='write the per-episode records and summaries here (JSON)')
    args = parser.parse_args()
    policy = Policy.from_pretrained(args.model, device='cpu')
    spec = parse_pruner_spec(args.pruner)
    policy.configure(spec.name, Budget(keep_ratio=args.budget), spec.options)
    recorder = _Recorder(policy)
    dense_failed = None
    if args.dense:
        location = Path(args.dense)
        result = json.loads((location / 'results.json' if location.is_dir() else location)
                            .read_text(encoding='utf-8'))
        (cell,) = [c for c in result['cells'] if c['family'] == 'push' and c['pruner'] == 'dense']
        dense_failed = set(cell['seeds_failed'])
    episodes = []
    for seed in range(args.first_seed, args.first_seed + args.episodes):
        outcome = run_policy_episode(policy, 'push', seed, 'heldout', on_reset=recorder.attach)
        episode = {'seed': seed, 'success': outcome.success, 'steps': recorder.rows}
        if dense_failed is not None:
            episode['dense_success'] = seed not in dense_failed
        episodes.append(episode)
        summary = _summary([episode]) if recorder.rows else {}
        print(f"{seed} {'ok  ' if outcome.success else 'FAIL'} object kept "
              f"{summary.get('object_groups_kept', float('nan')):.2f}, zone kept "
              f"{summary.get('zone_groups_kept', float('nan')):.2f}", flush=True)
    groups = {'all': episodes}
    if dense_failed is not None:
        groups['lost'] = [e for e in episodes if e['dense_success'] and not e['success']]
        groups['both_solved'] = [e for e in episodes if e['dense_success'] and e['success']]
    summaries = {name: _summary(members) for name, members in groups.items() if members}
    print(json.dumps(summaries, indent=2))
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as stream:
            json.dump({'model': args.model, 'pruner': args.pruner, 'budget': args.budget,
                       'summaries': summaries, 'episodes': episodes}, stream, indent=2)


if __name__ == '__main__':
    main()
