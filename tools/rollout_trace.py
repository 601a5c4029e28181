"""
Rollout trace: one closed-loop episode, step by step, with where the policy's pointers point.

Prints per policy step the gripper position, the points of the model's pointers mapped to the
world frame (object and zone, for the ``sim`` preset), and the first action of the predicted
chunk (dx dy dz dyaw gripper), then the target's start position and the outcome. Use it to see
why an episode fails: a wrong point (grounding) or a right point the actions ignore.

With ``--teacher`` the scripted expert drives instead, one action per line, and each line shows
the expert's phase and action next to the first action the policy predicts there: how the
policy acts on the demonstrations' own states (no drift), phase by phase.

With ``--oracle`` the pointers point where the simulator says the named object and zone are
(:class:`vla_pruned_ros.sim.oracle.OraclePointer`): what the policy's control does with a right
point.

    python tools/rollout_trace.py models/default reach 1 --split heldout
    python tools/rollout_trace.py models/default pick 5 --split train --teacher
"""

import argparse

import numpy as np

from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import Budget
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.evaluate import EXECUTE_STEPS, POINTS_STRIDE
from vla_pruned_ros.sim.expert import make_expert
from vla_pruned_ros.sim.oracle import OraclePointer

# dx dy dz dyaw gripper: the dimensions the benchmark's tasks use
SHOWN = [0, 1, 2, 5, 6]


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('model', help='model directory')
    parser.add_argument('family', choices=('reach', 'push', 'pick'))
    parser.add_argument('seed', type=int)
    parser.add_argument('--split', default='heldout', choices=('train', 'heldout'))
    parser.add_argument('--pruner', default='dense', help='pruner spec, e.g. tri_stage')
    parser.add_argument('--keep-ratio', type=float, default=None)
    parser.add_argument('--oracle', action='store_true',
                        help="replace the pointers' scores with the simulator's truth")
    parser.add_argument('--teacher', action='store_true',
                        help="the expert drives; print its action next to the policy's")
    args = parser.parse_args()
    policy = Policy.from_pretrained(args.model, device='cpu', pruner=args.pruner)
    if args.keep_ratio is not None:
        policy.configure(budget=Budget(keep_ratio=args.keep_ratio))
    size = policy.config.vision.image_size
    names = policy.config.pointers
    oracle = OraclePointer(policy, list(names)).install(policy) if args.oracle else None
    policy.reset()
    with TabletopEnv(args.family, args.seed, args.split, image_size=(size, size),
                     points_stride=POINTS_STRIDE) as env:
        observation = env.reset()
        if oracle is not None:
            oracle.attach(env)
            print(f'oracle pointers: {", ".join(oracle.pointers)}')
        print(env.instruction)
        to_world = env.camera_to_world()
        expert = make_expert(args.family) if args.teacher else None
        done = env.success
        step = 0
        while not done:
            actions, _ = policy.step(observation)
            line = f'{step:3d} gripper {np.round(observation.ee_pose[:3], 3)}'
            if policy.last_pointer is not None:
                points = policy.last_pointer.points[0].float().cpu().numpy()
                world = points @ to_world[:3, :3].T + to_world[:3, 3]
                line += ''.join(f' {name} {np.round(world[i], 3)}' for i, name in enumerate(names))
            executed = actions[:EXECUTE_STEPS]
            if expert is not None:
                executed = [expert.act(env)]
                line += f' expert {expert.phase} {np.round(executed[0][SHOWN], 3)}'
            print(line + f' action {np.round(actions[0][SHOWN], 3)}', flush=True)
            for action in executed:
                observation, done, _ = env.step(action)
                if done:
                    break
            step += 1
        target = env.task.target_object
        print(f'target {target.phrase} started at ({target.x:.3f}, {target.y:.3f}); '
              f'success: {env.success}')


if __name__ == '__main__':
    main()
