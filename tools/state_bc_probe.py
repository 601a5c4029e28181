"""
State BC probe: how well behaviour cloning of the scripted expert can do from exact state.

The shipped policy fails push episodes even with oracle pointers (docs/training.md, "Object
nudges"): its control, not its grounding, loses them. This probe asks whether that control is
learnable at all by the recipe the policy uses (regress the expert's clean 8-step action
chunk from the current state, execute the first 4): it records the expert on training-split
scenes (the noise of section 1's bags), fits a small MLP from the simulator's exact state to
the chunk, and runs it closed loop on the heldout scenes of ``sim eval`` through the same
harness (:func:`vla_pruned_ros.sim.evaluate.run_policy_episode`).

``--features pointer`` gives the MLP what the model's pointers and pose give its head: the
gripper pose, the named object's centre and the zone's centre. ``--features full`` adds what
the expert also reads: the object's yaw and its extent along and across the push line. The
expert's phase (approach, lower, push, retreat) is never given: a policy cannot see it. A
probe far above the model says the state the head is fed suffices and the model does not learn
to use it; a probe near the model says cloning this expert from the current state is the limit.

``--points`` says where the object and zone centres come from: ``truth`` the simulator's,
``oracle`` the mean of the 3D groups the oracle pointer puts its mass on
(:func:`vla_pruned_ros.sim.oracle.truth_labels`, the model's own grouping of each
observation's cloud: what ``tools/oracle_pointer.py`` feeds the model), ``model`` the points of
a trained model's own pointers (``--model``). With ``oracle`` or ``model`` the scenes are
rendered as ``sim eval`` renders them for that model, which is slower.

    python tools/state_bc_probe.py --families push --episodes 300 --eval-episodes 100
    python tools/state_bc_probe.py --families push --features full --out probe.json
    python tools/state_bc_probe.py --families push --points model --model models/default
"""

import argparse
import json
import math
import time
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
from torch import nn

from vla_pruned_ros.observation import Observation
from vla_pruned_ros.policy import Policy
from vla_pruned_ros.sim.env import TabletopEnv
from vla_pruned_ros.sim.evaluate import POINTS_STRIDE, run_policy_episode
from vla_pruned_ros.sim.expert import PushExpert, action_chunks, make_expert, run_episode
from vla_pruned_ros.sim.oracle import truth_labels
from vla_pruned_ros.sim.tasks import FAMILIES
from vla_pruned_ros.stats import StepStats
from vla_pruned_ros.tokens.points_3d import observation_groups

HORIZON = 8
# Section 1's bags: translation noise 0.004 m (--noise), the recorder's yaw noise.
TRANSLATION_NOISE = 0.004
YAW_NOISE = 0.015
# The probe reads no pixels: render small to save time.
IMAGE_SIZE = 32
FEATURES = ('pointer', 'full')
POINT_SOURCES = ('truth', 'oracle', 'model')


class PointSource:
    """Where the probe reads the object's and the zone's centres (world frame): ``--points``."""

    def __init__(self, kind: str, policy: Optional[Policy] = None) -> None:
        if kind != 'truth' and policy is None:
            raise ValueError(f'--points {kind} needs a model (--model)')
        self.kind, self.policy = kind, policy
        self.last: dict[str, np.ndarray] = {}
        # With 'model': per pointer, the horizontal distance of its point to the oracle's (m)
        # and whether it was an episode's first step.
        self.errors: dict[str, list[tuple[float, bool]]] = {'object': [], 'zone': []}

    @property
    def image_size(self) -> int:
        """The render size: the model's for the 3D groups, tiny for the truth (no pixels)."""
        return IMAGE_SIZE if self.policy is None else self.policy.config.vision.image_size

    @property
    def points_stride(self) -> int:
        """Cloud density: that of ``sim eval`` when the groups are read."""
        return 8 if self.policy is None else POINTS_STRIDE

    def reset(self) -> None:
        """Forget the last points (a new episode)."""
        self.last = {}

    def centres(self, env: TabletopEnv, observation: Observation) -> dict[str, np.ndarray]:
        """World-frame 'object' and 'zone' centres [3] for this step."""
        scene, task = env.scene, env.task
        truth = {'object': scene.object_position(task.target_object.name)}
        zone = task.target_zone
        truth['zone'] = (np.array([zone.x, zone.y, 0.0]) if zone is not None
                         else truth['object'].copy())
        if self.kind == 'truth':
            return truth
        groups = observation_groups(observation, self.policy.config.points)
        to_world = env.camera_to_world()
        world = groups.centres @ to_world[:3, :3].T + to_world[:3, 3]
        oracle = {}
        for name in ('object', 'zone'):
            on = truth_labels(env, name, world)
            if on.any():  # nothing visible: the last point stands, as with the oracle
                oracle[name] = world[on].mean(0)
        points = oracle
        if self.kind == 'model':
            input_ids = torch.tensor([self.policy.instructions.encode(observation.instruction)])
            with torch.no_grad():
                output, _ = self.policy._point(groups, input_ids, np.arange(len(world)))
            weights = torch.softmax(output.logits[0].float(), dim=-1).numpy()
            names = self.policy.config.pointers
            points = {name: weights[names.index(name)] @ world for name in ('object', 'zone')
                      if name in names}
            for name in set(points) & set(oracle):
                if name == 'object' or zone is not None:
                    gap = float(np.linalg.norm(points[name][:2] - oracle[name][:2]))
                    self.errors[name].append((gap, not self.last))
        for name in ('object', 'zone'):
            self.last[name] = points.get(name, self.last.get(name, world.mean(0)))
        if zone is None:  # no zone named: the zone features read the object, as with 'truth'
            self.last['zone'] = self.last['object']
        return dict(self.last)


# A point this far from the oracle's is on another thing, not a few groups beside it (m).
ELSEWHERE = 0.08


def error_summary(errors: list[tuple[float, bool]]) -> dict[str, float]:
    """Median, 90th percentile and shares over 2 cm / :data:`ELSEWHERE` of pointer errors."""
    gaps = np.array([gap for gap, _ in errors])
    first = np.array([is_first for _, is_first in errors])
    elsewhere = gaps > ELSEWHERE
    return {'median': float(np.median(gaps)), 'p90': float(np.quantile(gaps, 0.9)),
            'over_2cm': float(np.mean(gaps > 0.02)), 'steps': len(gaps),
            'elsewhere_first_step': float(np.mean(elsewhere[first])) if first.any() else 0.0,
            'elsewhere_later': float(np.mean(elsewhere[~first])) if (~first).any() else 0.0}


def state_features(env: TabletopEnv, features: str, points: dict[str, np.ndarray]) -> np.ndarray:
    """The probe's input: exact gripper state, ``points``' object and zone (no phase)."""
    scene, task = env.scene, env.task
    target = task.target_object
    tcp = scene.tcp_position()
    yaw = scene.gripper_yaw()
    centre = points['object']
    zone_xy = points['zone'][:2]
    parts = [tcp, [math.sin(yaw), math.cos(yaw)], np.asarray(scene.finger_opening(), float),
             centre - tcp, zone_xy - centre[:2], zone_xy - tcp[:2]]
    if features == 'full':
        object_yaw = scene.object_yaw(target.name)
        to_goal = zone_xy - centre[:2]
        direction = to_goal / max(float(np.linalg.norm(to_goal)), 1e-9)
        along = PushExpert._extent(target.shape, target.size, object_yaw, direction)
        across = PushExpert._extent(target.shape, target.size, object_yaw,
                                    direction[::-1] * (-1, 1))
        parts += [[math.sin(4 * object_yaw), math.cos(4 * object_yaw), along, across,
                   2 * target.half_height]]
    return np.concatenate([np.asarray(p, np.float64).ravel() for p in parts])


class _Recorder:
    """Expert driver that stores the state features before each executed action."""

    def __init__(self, env: TabletopEnv, features: str, source: PointSource) -> None:
        self.env, self.features, self.source, self.rows = env, features, source, []

    def reset(self) -> None:
        """A new episode (``run_episode`` calls it)."""
        self.source.reset()

    def __call__(self, observation: Observation, action: np.ndarray) -> np.ndarray:
        points = self.source.centres(self.env, observation)
        self.rows.append(state_features(self.env, self.features, points))
        return action


def collect(families: list[str], episodes: int, first_seed: int, features: str,
            source: PointSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expert rollouts on training scenes: features [N, F], chunks [N, 8, 7], family [N]."""
    inputs, chunks, family_index = [], [], []
    for index, family in enumerate(families):
        for seed in range(first_seed, first_seed + episodes):
            size = source.image_size
            with TabletopEnv(family, seed, 'train', image_size=(size, size),
                             points_stride=source.points_stride) as env:
                recorder = _Recorder(env, features, source)
                expert = make_expert(family, TRANSLATION_NOISE, YAW_NOISE, seed=seed)
                episode = run_episode(env, expert, keep_observations=False, driver=recorder)
                inputs.append(np.stack(recorder.rows))
                chunks.append(action_chunks(np.stack(episode.actions), HORIZON))
                family_index.append(np.full(len(recorder.rows), index))
    return np.concatenate(inputs), np.concatenate(chunks), np.concatenate(family_index)


class StateMLP(nn.Module):
    """Features (+ family one-hot) -> normalised action chunk."""

    def __init__(self, n_in: int, n_families: int, width: int) -> None:
        super().__init__()
        self.n_families = n_families
        self.net = nn.Sequential(
            nn.Linear(n_in + n_families, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
            nn.Linear(width, width), nn.GELU(), nn.Linear(width, HORIZON * 7))

    def forward(self, x: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
        """[B, F], [B] -> [B, 8, 7]."""
        onehot = nn.functional.one_hot(family, self.n_families).to(x.dtype)
        return self.net(torch.cat([x, onehot], dim=1)).view(-1, HORIZON, 7)


def fit(inputs: np.ndarray, chunks: np.ndarray, family: np.ndarray, n_families: int,
        steps: int, width: int, seed: int) -> tuple[StateMLP, dict]:
    """Fit the MLP (MSE on normalised chunks, as the model's loss); return it and its scales."""
    torch.manual_seed(seed)
    scales = {'x_mean': inputs.mean(0), 'x_std': inputs.std(0) + 1e-4,
              'a_mean': chunks.reshape(-1, 7).mean(0),
              'a_std': np.maximum(chunks.reshape(-1, 7).std(0), 1e-3)}
    x = torch.tensor((inputs - scales['x_mean']) / scales['x_std'], dtype=torch.float32)
    y = torch.tensor((chunks - scales['a_mean']) / scales['a_std'], dtype=torch.float32)
    f = torch.tensor(family, dtype=torch.long)
    model = StateMLP(x.shape[1], n_families, width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        rows = torch.randint(len(x), (256,), generator=generator)
        loss = nn.functional.mse_loss(model(x[rows], f[rows]), y[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 1000 == 0 or step == steps - 1:
            print(f'  step {step}: loss {loss.item():.4f}', flush=True)
    return model.eval(), scales


class StatePolicy:
    """The fitted MLP behind ``Policy``'s step interface, reading the attached environment."""

    def __init__(self, model: StateMLP, scales: dict, features: str, family: int,
                 source: PointSource) -> None:
        self.model, self.scales, self.features, self.family = model, scales, features, family
        self.source = source
        self.config = SimpleNamespace(vision=SimpleNamespace(image_size=source.image_size))
        self.env: Optional[TabletopEnv] = None

    def attach(self, env: TabletopEnv) -> None:
        """``on_reset`` hook of ``run_policy_episode``."""
        self.env = env

    def reset(self) -> None:
        """A new episode: the MLP reads only the current state, the point source forgets."""
        self.source.reset()

    def step(self, observation: Observation) -> tuple[np.ndarray, StepStats]:
        """Predict a chunk from the environment's current state."""
        started = time.perf_counter()
        points = self.source.centres(self.env, observation)
        features = state_features(self.env, self.features, points)
        x = (features - self.scales['x_mean']) / self.scales['x_std']
        with torch.no_grad():
            out = self.model(torch.tensor(x[None], dtype=torch.float32),
                             torch.tensor([self.family]))[0].numpy()
        actions = out * self.scales['a_std'] + self.scales['a_mean']
        stats = StepStats(pruner='state-mlp', budget=0, full_step=True, tokens_2d_in=0,
                          tokens_3d_in=0, tokens_2d_kept=0, tokens_3d_kept=0,
                          latency_ms=(time.perf_counter() - started) * 1e3)
        return actions, stats


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--families', nargs='+', choices=FAMILIES, default=['push'])
    parser.add_argument('--features', choices=FEATURES, default='pointer')
    parser.add_argument('--points', choices=POINT_SOURCES, default='truth',
                        help='where the object and zone centres come from (see above)')
    parser.add_argument('--model', help='model directory for --points oracle / model')
    parser.add_argument('--episodes', type=int, default=300, help='training scenes per family')
    parser.add_argument('--first-seed', type=int, default=0, help='first training-split seed')
    parser.add_argument('--eval-episodes', type=int, default=100,
                        help='heldout scenes per family (seeds 0.., those of sim eval)')
    parser.add_argument('--steps', type=int, default=6000, help='optimiser steps')
    parser.add_argument('--width', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', help='write the results as JSON here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = None
    if args.model is not None:
        policy = Policy.from_pretrained(args.model, device='cpu', pruner='dense')
    source = PointSource(args.points, policy)
    started = time.perf_counter()
    inputs, chunks, family = collect(args.families, args.episodes, args.first_seed,
                                     args.features, source)
    print(f'{len(inputs)} expert frames from {args.episodes} scenes per family '
          f'({time.perf_counter() - started:.0f} s)', flush=True)
    source.errors = {'object': [], 'zone': []}  # report the heldout closed loop's only
    model, scales = fit(inputs, chunks, family, len(args.families), args.steps, args.width,
                        args.seed)
    report = {'features': args.features, 'points': args.points, 'model': args.model,
              'training_scenes': args.episodes,
              'frames': int(len(inputs)), 'steps': args.steps, 'width': args.width,
              'seed': args.seed, 'split': 'heldout', 'families': {}}
    for index, name in enumerate(args.families):
        state_policy = StatePolicy(model, scales, args.features, index, source)
        outcomes = {seed: run_policy_episode(state_policy, name, seed, 'heldout',
                                             on_reset=state_policy.attach).success
                    for seed in range(args.eval_episodes)}
        solved = sum(outcomes.values())
        report['families'][name] = {
            'successes': solved, 'episodes': len(outcomes),
            'failed_seeds': [seed for seed, ok in outcomes.items() if not ok]}
        if args.points == 'model':
            # Over the heldout closed loop's steps, driven by the MLP.
            report['families'][name]['pointer_error_m'] = {
                pointer: error_summary(errors) for pointer, errors in source.errors.items()
                if errors}
            source.errors = {'object': [], 'zone': []}  # per family
            print(f'  pointer error against the oracle points: '
                  f'{report["families"][name]["pointer_error_m"]}', flush=True)
        print(f'{name}: {solved} / {len(outcomes)} heldout scenes with the state MLP '
              f'({args.features} features, {args.points} points)', flush=True)
    if args.out:
        with open(args.out, 'w') as stream:
            json.dump(report, stream, indent=1)


if __name__ == '__main__':
    main()
