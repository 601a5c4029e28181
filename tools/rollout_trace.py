"""
Rollout trace: one closed-loop episode, step by step, with where the policy's pointers point.

Prints per policy step the gripper position, the points of the model's pointers mapped to the
world frame (object and zone, for the ``sim`` preset), and the first action of the predicted
chunk (dx dy dz dyaw gripper), then the target's start position and the outcome. Use it to see
why an episode fails: a wrong point (grounding) or a right point the actions ignore.

    python tools/rollout_trace.py models/default reach 1 --split heldout
"""

import argparse

import numpy as np

from vla_pruned_ros.policy import Policy
from vla_pruned_ros.pruning import Budget
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.evaluate import EXECUTE_STEPS, POINTS_STRIDE


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('model', help='model directory')
    parser.add_argument('family', choices=('reach', 'push', 'pick'))
    parser.add_argument('seed', type=int)
    parser.add_argument('--split', default='heldout', choices=('train', 'heldout'))
    parser.add_argument('--pruner', default='dense', help='pruner spec, e.g. tri_stage')
    parser.add_argument('--keep-ratio', type=float, default=None)
    args = parser.parse_args()
    policy = Policy.from_pretrained(args.model, device='cpu', pruner=args.pruner)
    if args.keep_ratio is not None:
        policy.configure(budget=Budget(keep_ratio=args.keep_ratio))
    size = policy.config.vision.image_size
    names = policy.config.pointers
    policy.reset()
    with TabletopEnv(args.family, args.seed, args.split, image_size=(size, size),
                     points_stride=POINTS_STRIDE) as env:
        observation = env.reset()
        print(env.instruction)
        to_world = env.camera_to_world()
        done = env.success
        step = 0
        while not done:
            actions, _ = policy.step(observation)
            line = f'{step:3d} gripper {np.round(observation.ee_pose[:3], 3)}'
            if policy.last_pointer is not None:
                points = policy.last_pointer.points[0].float().cpu().numpy()
                world = points @ to_world[:3, :3].T + to_world[:3, 3]
                line += ''.join(f' {name} {np.round(world[i], 3)}' for i, name in enumerate(names))
            print(line + f' action {np.round(actions[0][[0, 1, 2, 5, 6]], 3)}', flush=True)
            for action in actions[:EXECUTE_STEPS]:
                observation, done, _ = env.step(action)
                if done:
                    break
            step += 1
        target = env.task.target_object
        print(f'target {target.phrase} started at ({target.x:.3f}, {target.y:.3f}); '
              f'success: {env.success}')


if __name__ == '__main__':
    main()
