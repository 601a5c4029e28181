"""
Offline TIES calibration: the distribution of inter-layer rank consistency tau over frames.

TIES' phase 1 [S]: run the model on M (= 100) frames of the target data, compute tau per frame
and keep the distribution and its median; the online pruner maps the current tau through it.
The frames come from recorded rosbag2 files (read like ``vla-pruned-ros eval`` reads them:
topics found by type, synchronised as the node does) or any list of observations. The result
is a small JSON file the ``ties`` pruner loads (``calibration_file``).
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.observation import Observation

FORMAT = 'vla_pruned_ros.ties_calibration'
VERSION = 1
QUANTILE_GRID = tuple(round(0.05 * i, 2) for i in range(21))


class CalibrationError(ValueError):
    """A missing, malformed or mismatched calibration file, or no usable frames."""


@dataclass
class TiesCalibration:
    """The calibrated tau distribution and the settings it was measured with."""

    tau_median: float
    quantiles: dict[str, float]  # '0.25' -> tau at that quantile, on QUANTILE_GRID
    frames: int
    layer: int
    tau_layers: list[int]
    queries: str
    rank_k: int
    keep_ratio: float
    model: str = ''
    sources: list[str] = field(default_factory=list)
    taus: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        """Tau at quantile ``q`` (linear interpolation on the stored grid)."""
        grid = sorted((float(key), value) for key, value in self.quantiles.items())
        return float(np.interp(q, [g for g, _ in grid], [v for _, v in grid]))

    def check_matches(self, config: Any) -> None:
        """Raise CalibrationError when the pruner reads other layers or queries than measured."""
        wanted = (config.layer, list(config.pair_layers()), config.queries)
        measured = (self.layer, list(self.tau_layers), self.queries)
        if wanted != measured:
            raise CalibrationError(
                f'calibration measured layer K={measured[0]}, tau layers {measured[1]}, queries '
                f'{measured[2]!r}; the pruner uses K={wanted[0]}, {wanted[1]}, {wanted[2]!r}'
            )

    def save(self, path: str) -> None:
        """Write the calibration as JSON."""
        data = {'format': FORMAT, 'version': VERSION, **asdict(self)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'w', encoding='utf-8') as stream:
            json.dump(data, stream, indent=2)
            stream.write('\n')


def load_calibration(path: str) -> TiesCalibration:
    """Read a calibration file; raises CalibrationError when it is missing or malformed."""
    try:
        with open(path, encoding='utf-8') as stream:
            data = json.load(stream)
    except OSError as err:
        raise CalibrationError(f'cannot read TIES calibration {path}: {err}') from None
    except json.JSONDecodeError as err:
        raise CalibrationError(f'{path} is not JSON: {err}') from None
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise CalibrationError(f'{path} is not a TIES calibration file (format {FORMAT})')
    if data.get('version') != VERSION:
        raise CalibrationError(f'{path} has version {data.get("version")}, expected {VERSION}')
    data = {key: value for key, value in data.items() if key not in ('format', 'version')}
    try:
        calibration = TiesCalibration(**data)
    except TypeError as err:
        raise CalibrationError(f'{path}: {err}') from None
    values = [calibration.tau_median, *calibration.quantiles.values()]
    if not calibration.quantiles or not all(-1.0 <= float(v) <= 1.0 for v in values):
        raise CalibrationError(f'{path}: tau values must lie in [-1, 1]')
    return calibration


def summarise(taus: Sequence[float], **settings: Any) -> TiesCalibration:
    """A calibration from per-frame taus: median and the quantile grid."""
    values = np.asarray(taus, np.float64)
    if not values.size:
        raise CalibrationError('no frames to calibrate on')
    quantiles = {f'{q:g}': float(np.quantile(values, q)) for q in QUANTILE_GRID}
    return TiesCalibration(tau_median=float(np.median(values)), quantiles=quantiles,
                           frames=int(values.size), taus=[float(v) for v in values], **settings)


def calibrate_ties(
    policy: Any,
    observations: Sequence[Observation],
    keep_ratio: float = 56 / 256,
    layer: int = 3,
    tau_layers: Sequence[int] = (),
    queries: str = 'last_text',
    rank_k: int = 0,
    model: str = '',
    sources: Sequence[str] = (),
) -> TiesCalibration:
    """
    Measure tau on every observation with unpruned steps and summarise the distribution.

    ``keep_ratio`` fixes the top-k of the rankings when ``rank_k`` is 0 (as the pruner does
    at that budget; 56/256 is TIES' operating point [S]).
    """
    from vla_pruned_ros.model.runner import AttentionProbe
    from vla_pruned_ros.pruning.base import Pruner, StepContext, StepOutcome, StepPlan
    from vla_pruned_ros.pruning.budget import Budget
    from vla_pruned_ros.pruning.ties import TiesConfig, frame_tau
    from vla_pruned_ros.pruning.ties import rank_k as ranking_size

    config = TiesConfig(layer=layer, tau_layers=tuple(tau_layers), queries=queries,
                        rank_k=rank_k)
    layers = config.pair_layers()
    taus: list[float] = []

    class TauProbe(Pruner):
        """Runs full steps with the tau probes and records each frame's tau."""

        name = 'ties_calibration'

        def plan(self, ctx: StepContext) -> StepPlan:
            return StepPlan(probes={AttentionProbe(i, queries) for i in layers}, full_step=True)

        def after_step(self, ctx: StepContext, outcome: StepOutcome) -> None:
            n_visual = ctx.layout.n_visual
            target = Budget(keep_ratio=keep_ratio).resolve(ctx.layout.n_2d, ctx.layout.n_3d)
            taus.append(frame_tau(outcome.probes, layers, queries, n_visual,
                                  ranking_size(config, target, n_visual)))

    policy.configure(TauProbe(), Budget())
    policy.reset()
    for observation in observations:
        policy.step(observation)
    return summarise(taus, layer=layer, tau_layers=list(layers), queries=queries,
                     rank_k=rank_k, keep_ratio=keep_ratio, model=model, sources=list(sources))


def bag_observations(
    paths: Sequence[str],
    frames: int,
    topics: Optional[dict[str, Optional[str]]] = None,
    points_from: str = 'auto',
    needs_pose: bool = True,
    instruction: str = '',
) -> list[Observation]:
    """
    About ``frames`` observations spread evenly over the rosbag2 recordings ``paths``.

    Topics are found and observations synchronised exactly as ``vla-pruned-ros eval`` does
    (:mod:`vla_pruned_ros.eval.bag`); ``topics`` overrides roles ('rgb', 'depth',
    'camera_info', 'cloud', 'instruction', 'pose', ...). Raises ``EvalError`` for unusable bags.
    """
    from vla_pruned_ros.eval.bag import BagReplay, list_topics, open_reader
    from vla_pruned_ros.eval.topics import plan_topics

    plans = []
    for path in paths:
        reader = open_reader(path)
        try:
            found = list_topics(reader)
        finally:
            reader.close()
        plan = plan_topics(found, topics or {}, points_from, needs_pose)
        count = next((t.count for t in found if t.name == plan.rgb), 0)
        plans.append((path, found, plan, count))
    every = max(1, sum(count for *_, count in plans) // max(frames, 1))
    observations: list[Observation] = []
    for path, found, plan, _ in plans:
        replay = BagReplay(path, plan, found, instruction=instruction)
        observations += [frame.observation for i, frame in enumerate(replay.frames())
                         if i % every == 0]
    return observations[:frames]
