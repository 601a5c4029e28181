"""
Deterministic offline replay: dense and every pruned configuration on identical observations.

Each observation the bag yields (see :mod:`vla_pruned_ros.eval.bag`) is stepped through
``Policy.step`` by every configuration in turn, dense first, like ``bench``: the configurations
share machine conditions, so latency ratios compare like with like. Every configuration keeps
its own pruner instance (temporal pruners see the sequence in order) and is reset at every
episode start. The first ``warmup`` observations are stepped and scored but not timed.

Nothing random is left: pruners seed their generators at reset, tokenization is
deterministic, so two replays of a bag give the same action chunks.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.bench import BenchConfiguration
from vla_pruned_ros.camera import CameraIntrinsics
from vla_pruned_ros.eval.bag import BagReplay, BagSummary, list_topics, open_reader
from vla_pruned_ros.eval.errors import EvalError
from vla_pruned_ros.eval.topics import BagTopic, TopicPlan, plan_topics
from vla_pruned_ros.stats import StepStats


@dataclass
class ReplayOptions:
    """
    How bags are read and replayed.

    ``topics`` maps roles to topic names (or 'none', see :mod:`.topics`); ``instruction`` is
    used for bags without an instruction topic; ``twist_dt`` converts recorded TwistStamped
    velocities to per-step deltas (None: the model's control period); ``samples`` is how many
    observations keep their images for the overlay figures; ``max_observations`` caps each bag.
    """

    slop_s: float = 0.05
    queue_size: int = 10
    points_from: str = 'auto'
    topics: dict[str, Optional[str]] = field(default_factory=dict)
    instruction: str = ''
    twist_dt: Optional[float] = None
    warmup: int = 2
    samples: int = 3
    max_observations: Optional[int] = None
    progress: bool = True


@dataclass
class ObservationInfo:
    """Where an evaluated observation came from."""

    bag: int
    episode: int
    index: int
    stamp_ns: int
    instruction: str


@dataclass
class Sample:
    """An observation kept for the overlay figures, with what each configuration kept."""

    observation: int
    bag: int
    stamp_ns: int
    rgb: np.ndarray
    intrinsics: Optional[CameraIntrinsics]
    centres_3d: np.ndarray
    grid: tuple[int, int]
    kept: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)


@dataclass
class ConfigurationRun:
    """The action chunks and step statistics of one configuration, one per observation."""

    configuration: BenchConfiguration
    actions: list[np.ndarray] = field(default_factory=list)
    stats: list[StepStats] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Row label, e.g. 'dense' or 'tri_stage@0.25'."""
        return self.configuration.label


@dataclass
class Replay:
    """Everything a replay produced; :mod:`.report` turns it into results and files."""

    observations: list[ObservationInfo]
    runs: list[ConfigurationRun]
    bags: list[BagSummary]
    samples: list[Sample]
    warmup: int
    twist_dt: float

    @property
    def dense(self) -> ConfigurationRun:
        """The dense run (always the first)."""
        return self.runs[0]


def with_dense(configurations: Sequence[BenchConfiguration]) -> list[BenchConfiguration]:
    """Return the configurations with dense first and exactly once."""
    others = [c for c in configurations if c.pruner != 'dense']
    return [BenchConfiguration('dense'), *others]


def plan_bag(
    path: 'str | Path', options: ReplayOptions, needs_pose: bool
) -> tuple[list[BagTopic], TopicPlan]:
    """Return the topics of a bag and the plan of which topic plays which role."""
    reader = open_reader(path)
    try:
        topics = list_topics(reader)
    finally:
        reader.close()
    try:
        plan = plan_topics(topics, options.topics, options.points_from, needs_pose)
    except EvalError as err:
        raise EvalError(f'{path}: {err}') from None
    return topics, plan


def _sample_targets(expected: int, count: int) -> set[int]:
    """Observation indices spread over the run, away from the first (often a full step)."""
    if count <= 0 or expected <= 0:
        return set()
    return {min(expected - 1, (i + 1) * expected // (count + 1)) for i in range(count)}


def replay_bags(
    policy: Any,
    paths: Sequence['str | Path'],
    configurations: Sequence[BenchConfiguration],
    options: Optional[ReplayOptions] = None,
) -> Replay:
    """
    Replay every bag through every configuration (dense added first) and collect the results.

    All bags are planned before any step, so a bad topic fails fast. Raises
    :class:`EvalError` for an unusable bag and ``ValueError`` for an unknown pruner or bad
    pruner config.
    """
    from tqdm import tqdm

    options = options or ReplayOptions()
    configurations = with_dense(configurations)
    pruners = {c.label: c.make_pruner() for c in configurations}
    budgets = {c.label: c.make_budget() for c in configurations}
    runs = [ConfigurationRun(c) for c in configurations]
    needs_pose = bool(policy.model.n_proprio)
    plans = [plan_bag(path, options, needs_pose) for path in paths]
    twist_dt = options.twist_dt or float(policy.config.control_dt)

    expected = 0
    for topics, plan in plans:
        count = next(t.count for t in topics if t.name == plan.rgb)
        expected += min(count, options.max_observations or count)
    targets = _sample_targets(expected, options.samples)
    bar = tqdm(total=expected, disable=not options.progress, desc='eval', unit='frame')

    observations: list[ObservationInfo] = []
    samples: list[Sample] = []
    last = None
    summaries = []
    try:
        for bag_index, (path, (topics, plan)) in enumerate(zip(paths, plans)):
            replay = BagReplay(
                path, plan, topics, slop_s=options.slop_s, queue_size=options.queue_size,
                instruction=options.instruction, twist_dt=twist_dt,
                max_observations=options.max_observations, on_rgb=lambda: bar.update(1),
            )
            summaries.append(replay.summary)
            episode = None
            for frame in replay.frames():
                try:
                    kept = _step_all(policy, frame.observation, runs, pruners, budgets,
                                     new_episode=frame.episode != episode)
                except _Unusable as err:
                    replay.summary.unusable += 1
                    replay.summary.counts[plan.rgb].note(err)
                    continue
                # Only a stepped observation opens the episode: every pruner saw its reset.
                episode = frame.episode
                index = len(observations)
                observations.append(ObservationInfo(
                    bag_index, frame.episode, frame.index, int(frame.observation.stamp_ns),
                    frame.observation.instruction,
                ))
                last = (index, bag_index, frame.observation, kept)
                if index in targets:
                    samples.append(_sample(policy, *last))
                bar.set_postfix(observations=len(observations))
    finally:
        bar.close()
    if not observations:
        problems = [e for s in summaries for e in s.counts[s.plan.rgb].errors]
        raise EvalError(
            'the policy could not step any observation'
            + (f' (first problem: {problems[0]})' if problems else '')
        )
    if len(samples) < options.samples and last[0] not in {s.observation for s in samples}:
        samples.append(_sample(policy, *last))
    warmup = max(0, min(options.warmup, len(observations) - 1))
    return Replay(observations, runs, summaries, samples, warmup, twist_dt)


class _Unusable(Exception):
    """The dense step refused an observation (the message says why)."""


def _step_all(
    policy: Any,
    observation: Any,
    runs: list[ConfigurationRun],
    pruners: dict,
    budgets: dict,
    new_episode: bool,
) -> dict[str, tuple[list[int], list[int]]]:
    """
    Step every configuration on one observation; return what each kept, by label.

    An observation the dense step refuses (e.g. no 3D point inside the workspace, no pose for
    a model that reads one) raises ``_Unusable`` and is skipped for every configuration, so
    all of them are scored on the same observations. The same error in a pruned step, after
    dense accepted the observation, is a bug and propagates.
    """
    results = []
    for run in runs:
        label = run.label
        policy.configure(pruners[label], budgets[label])
        if new_episode:
            policy.reset()
        try:
            actions, stats = policy.step(observation)
        except ValueError as err:
            if run is runs[0]:
                stamp = observation.stamp_ns
                raise _Unusable(f'observation at {stamp} ns skipped: {err}') from None
            raise
        results.append((run, actions, stats))
    for run, actions, stats in results:
        run.actions.append(np.asarray(actions, dtype=np.float32))
        run.stats.append(stats)
    return {run.label: (list(stats.kept_2d), list(stats.kept_3d)) for run, _, stats in results}


def _sample(policy: Any, index: int, bag: int, observation: Any, kept: dict) -> Sample:
    from vla_pruned_ros.tokens.points_3d import observation_groups

    groups = observation_groups(observation, policy.config.points)
    return Sample(
        observation=index,
        bag=bag,
        stamp_ns=int(observation.stamp_ns),
        rgb=observation.rgb,
        intrinsics=observation.intrinsics,
        centres_3d=np.asarray(groups.centres),
        grid=tuple(int(v) for v in policy.model.vision.grid_size),
        kept=kept,
    )
