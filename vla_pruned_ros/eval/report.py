"""
The evaluation's outputs: results.json, report.md, plots, overlay images, predictions MCAP.

results.json (``schema_version`` 1; SI units: metres, radians, milliseconds)::

    schema_version   1
    meta             command, model, device, device_name, dtype, torch, created_utc, seconds,
                     warmup (untimed first observations), slop_s, gripper_threshold,
                     twist_dt, action_names, action_units
    bags[]           path, storage, topics {role: topic or null}, action_type, points_from,
                     notes[], observations, unusable_observations, episodes[] {index,
                     start_ns, instruction, observations, metadata}, recorded_actions,
                     messages {topic: {read, decoded, undecodable, invalid, skipped,
                     errors[]}}, sync {complete, stale_refused, invalid, dropped_unmatched,
                     unmatched_at_end},
                     time_jumps, read_error, stopped_early
    observations     observations evaluated (all bags)
    configurations[] label, pruner, budget (<= 1 keep ratio, > 1 tokens, null dense),
                     options, steps, timed_steps, full_steps, tokens_in, tokens_2d_in,
                     tokens_3d_in, tokens_kept, tokens_2d_kept, tokens_3d_kept (means over
                     steps), flops_ratio (sum actual / sum dense), latency_ms_p50,
                     latency_ms_p95, speedup (dense p50 / this p50, same run),
                     vs_dense, vs_recorded (errors, below; vs_recorded null without
                     recorded actions)
    episode_rows[]   bag, episode, instruction, observations, label, tokens_kept,
                     latency_ms_p50, vs_dense, vs_recorded
    steps[]          observation, bag, episode, stamp_ns, recorded (H x 7 or null, NaN as
                     null), runs {label: {actions (H x 7), latency_ms, tokens_2d_kept,
                     tokens_3d_kept, full_step}}
    samples[]        observation, bag, stamp_ns, image, kept {label: {2d[], 3d[]}}
    live[]           recording, bag, topic, stats_topic, chunks, skipped_messages, matched,
                     unmatched, coverage, pruner, budget, latency_ms_p50, latency_ms_p95,
                     tokens_kept, vs_dense, vs_recorded
    files            report, plots[], overlays[], predictions (bag folder or null)

Errors (``vs_dense`` / ``vs_recorded``, see :mod:`.metrics`): mae[7] and mae_by_name,
translation_error (m), rotation_error (rad), gripper_agreement (0..1), observations, pairs;
a value is null when nothing could be compared.
"""

import json
import math
from pathlib import Path
import re
import shutil
from typing import Any, Optional
import uuid

import numpy as np

from vla_pruned_ros.eval.bag import recorded_for
from vla_pruned_ros.eval.errors import EvalError
from vla_pruned_ros.eval.metrics import ACTION_NAMES, ACTION_UNITS, action_errors
from vla_pruned_ros.eval.replay import ConfigurationRun, Replay, Sample

SCHEMA_VERSION = 1
RESULTS_FILE = 'results.json'
REPORT_FILE = 'report.md'
ERROR_PLOT = 'error_vs_tokens.png'
SPEEDUP_PLOT = 'speedup_vs_tokens.png'
OVERLAY_DIR = 'overlays'
PREDICTIONS_DIR = 'predictions'
OVERLAY_COLUMNS = 4
# Significant digits of actions in results.json (float32 values need no more).
ACTION_DIGITS = 7


# ------------------------------------------------------------------------------------ results
def _percentile(values: list[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


def _round(value: float) -> Optional[float]:
    return float(f'{value:.{ACTION_DIGITS}g}') if math.isfinite(value) else None


def _chunk(chunk: Optional[np.ndarray]) -> Optional[list]:
    if chunk is None:
        return None
    return [[_round(float(v)) for v in row] for row in np.asarray(chunk, dtype=np.float64)]


def references(replay: Replay, tolerance_ns: int) -> list[Optional[np.ndarray]]:
    """Return the recorded action of every evaluated observation (None where there is none)."""
    out: list[Optional[np.ndarray]] = []
    for bag_index, bag in enumerate(replay.bags):
        stamps = [o.stamp_ns for o in replay.observations if o.bag == bag_index]
        out += recorded_for(stamps, bag.recorded, tolerance_ns)
    return out


def _row(
    run: ConfigurationRun,
    dense: ConfigurationRun,
    recorded: list[Optional[np.ndarray]],
    rows: list[int],
    timed: list[int],
    gripper_threshold: float,
) -> dict[str, Any]:
    """Summary of one configuration over the observations ``rows`` (latency over ``timed``)."""
    stats = [run.stats[i] for i in rows]

    def mean(name: str) -> float:
        return float(np.mean([getattr(s, name) for s in stats]))

    latency = [run.stats[i].latency_ms for i in timed]
    dense_latency = [dense.stats[i].latency_ms for i in timed]
    p50, dense_p50 = _percentile(latency, 50), _percentile(dense_latency, 50)
    predicted = [run.actions[i] for i in rows]
    has_recorded = any(recorded[i] is not None for i in rows)
    return {
        'label': run.label,
        'pruner': run.configuration.pruner,
        'spec': run.configuration.spec,
        'budget': run.configuration.budget,
        'options': dict(run.configuration.options),
        'steps': len(stats),
        'timed_steps': len(latency),
        'full_steps': int(sum(s.full_step for s in stats)),
        'tokens_in': mean('tokens_2d_in') + mean('tokens_3d_in'),
        'tokens_2d_in': mean('tokens_2d_in'),
        'tokens_3d_in': mean('tokens_3d_in'),
        'tokens_kept': mean('tokens_2d_kept') + mean('tokens_3d_kept'),
        'tokens_2d_kept': mean('tokens_2d_kept'),
        'tokens_3d_kept': mean('tokens_3d_kept'),
        'flops_ratio': float(
            sum(s.flops_actual for s in stats) / max(sum(s.flops_dense for s in stats), 1e-30)
        ),
        'latency_ms_p50': p50,
        'latency_ms_p95': _percentile(latency, 95),
        'speedup': dense_p50 / p50 if p50 and dense_p50 else None,
        'vs_dense': action_errors(
            predicted, [dense.actions[i] for i in rows], gripper_threshold
        ).to_dict(),
        'vs_recorded': action_errors(
            predicted, [recorded[i] for i in rows], gripper_threshold
        ).to_dict() if has_recorded else None,
    }


def build_results(
    replay: Replay,
    meta: dict[str, Any],
    gripper_threshold: float = 0.5,
    tolerance_ns: int = 50_000_000,
) -> dict[str, Any]:
    """Return the results dict (schema in the module docstring) of a replay."""
    recorded = references(replay, tolerance_ns)
    everything = list(range(len(replay.observations)))
    timed = everything[replay.warmup:]
    configurations = [
        _row(run, replay.dense, recorded, everything, timed, gripper_threshold)
        for run in replay.runs
    ]
    episode_rows = []
    episodes = sorted({(o.bag, o.episode) for o in replay.observations})
    if len(episodes) > 1:
        for bag, episode in episodes:
            rows = [i for i, o in enumerate(replay.observations)
                    if (o.bag, o.episode) == (bag, episode)]
            info = replay.bags[bag].episodes[episode] if replay.bags[bag].episodes else None
            for run in replay.runs:
                row = _row(run, replay.dense, recorded, rows,
                           [i for i in rows if i >= replay.warmup], gripper_threshold)
                episode_rows.append({
                    'bag': bag,
                    'episode': episode,
                    'instruction': info.instruction if info else replay.observations[rows[0]]
                    .instruction,
                    'observations': len(rows),
                    'label': row['label'],
                    'tokens_kept': row['tokens_kept'],
                    'latency_ms_p50': row['latency_ms_p50'],
                    'vs_dense': row['vs_dense'],
                    'vs_recorded': row['vs_recorded'],
                })
    steps = []
    for i, info in enumerate(replay.observations):
        steps.append({
            'observation': i,
            'bag': info.bag,
            'episode': info.episode,
            'stamp_ns': info.stamp_ns,
            'recorded': _chunk(recorded[i]),
            'runs': {
                run.label: {
                    'actions': _chunk(run.actions[i]),
                    'latency_ms': run.stats[i].latency_ms,
                    'tokens_2d_kept': run.stats[i].tokens_2d_kept,
                    'tokens_3d_kept': run.stats[i].tokens_3d_kept,
                    'full_step': run.stats[i].full_step,
                }
                for run in replay.runs
            },
        })
    meta = {
        **meta,
        'warmup': replay.warmup,
        'gripper_threshold': gripper_threshold,
        'twist_dt': replay.twist_dt,
        'action_names': list(ACTION_NAMES),
        'action_units': list(ACTION_UNITS),
    }
    return {
        'schema_version': SCHEMA_VERSION,
        'meta': meta,
        'bags': [bag.to_dict() for bag in replay.bags],
        'observations': len(replay.observations),
        'configurations': configurations,
        'episode_rows': episode_rows,
        'steps': steps,
        'samples': [],
        'live': [],
        'files': {},
    }


# ----------------------------------------------------------------------------------- markdown
def _fmt(value: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return '-'
    return f'{value * scale:.{digits}f}'


def _percent(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.0f}%'


def _errors_cells(errors: Optional[dict]) -> list[str]:
    if not errors:
        return ['-', '-', '-']
    return [
        _fmt(errors['translation_error'], 1e3),
        _fmt(errors['rotation_error'], 180 / math.pi),
        _percent(errors['gripper_agreement']),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return lines


def _mae_table(configurations: list[dict], key: str) -> list[str]:
    # Millimetres and milliradians read better than metres and radians for one step.
    scales = [(1e3, 'mm'), (1e3, 'mm'), (1e3, 'mm'), (1e3, 'mrad'), (1e3, 'mrad'),
              (1e3, 'mrad'), (1.0, '')]
    header = ['configuration'] + [
        f'{name} {unit}'.strip() for name, (_, unit) in zip(ACTION_NAMES, scales)
    ]
    rows = []
    for row in configurations:
        errors = row[key]
        if not errors or (key == 'vs_dense' and row['pruner'] == 'dense'):
            continue
        rows.append([row['label']] + [
            _fmt(value, scale, 3) for value, (scale, _) in zip(errors['mae'], scales)
        ])
    return _table(header, rows) if rows else []


def markdown_report(results: dict[str, Any]) -> str:
    """Return report.md: summary, per-dimension errors, episodes, input, live run, figures."""
    meta = results['meta']
    configurations = results['configurations']
    has_recorded = any(row['vs_recorded'] for row in configurations)
    timed = configurations[0]['timed_steps'] if configurations else 0
    lines = [
        '# Bag evaluation',
        '',
        f"`{meta.get('command', 'vla-pruned-ros eval')}`",
        '',
        f"Model: {meta.get('model', '?')}, {meta.get('dtype', '?')} on "
        f"{meta.get('device_name') or meta.get('device', '?')}. "
        f"{results['observations']} observations from {len(results['bags'])} bag(s); latency "
        f"over {timed} steps per configuration after {meta['warmup']} warm-up observation(s), "
        'dense and pruned interleaved on each observation.',
        '',
        '## Summary',
        '',
        'Tokens kept are means over all steps, full (unpruned) steps included. Errors are per '
        'chunk step: translation in mm, rotation in degrees, gripper agreement in % of steps.'
        + ('' if has_recorded else ' The bag holds no recorded actions.'),
        '',
    ]
    header = ['configuration', 'visual tokens kept (2D + 3D)', 'full steps', 'FLOPs ratio',
              'p50 ms', 'p95 ms', 'speedup', 'vs dense: transl. mm', 'rot. deg', 'gripper']
    if has_recorded:
        header += ['vs recorded: transl. mm', 'rot. deg', 'gripper']
    rows = []
    for row in configurations:
        dense = row['pruner'] == 'dense'
        cells = [
            row['label'],
            f"{row['tokens_kept']:.1f} ({row['tokens_2d_kept']:.1f} + "
            f"{row['tokens_3d_kept']:.1f}) of {row['tokens_in']:.0f}",
            f"{row['full_steps']}/{row['steps']}",
            _fmt(row['flops_ratio'], digits=3),
            _fmt(row['latency_ms_p50'], digits=1),
            _fmt(row['latency_ms_p95'], digits=1),
            '-' if row['speedup'] is None else f"{row['speedup']:.2f}x",
        ]
        cells += ['(reference)', '', ''] if dense else _errors_cells(row['vs_dense'])
        if has_recorded:
            cells += _errors_cells(row['vs_recorded'])
        rows.append(cells)
    lines += _table(header, rows)
    for key, title in (('vs_dense', 'against dense'), ('vs_recorded', 'against recorded')):
        table = _mae_table(configurations, key)
        if table:
            lines += ['', f'### Mean absolute error per dimension, {title}', ''] + table
    if results['episode_rows']:
        lines += ['', '## Per episode', '']
        header = ['bag', 'episode', 'instruction', 'observations', 'configuration',
                  'tokens kept', 'p50 ms', 'vs dense: transl. mm']
        if has_recorded:
            header += ['vs recorded: transl. mm', 'gripper']
        rows = []
        for row in results['episode_rows']:
            dense = row['label'] == 'dense'
            cells = [str(row['bag']), str(row['episode']), row['instruction'],
                     str(row['observations']), row['label'], f"{row['tokens_kept']:.1f}",
                     _fmt(row['latency_ms_p50'], digits=1),
                     '-' if dense else _errors_cells(row['vs_dense'])[0]]
            if has_recorded:
                recorded = _errors_cells(row['vs_recorded'])
                cells += [recorded[0], recorded[2]]
            rows.append(cells)
        lines += _table(header, rows)
    if results['live']:
        lines += ['', '## Live run', '', 'Action chunks the node published while the bag was '
                  'replayed into it, matched to the offline observations by stamp.', '']
        header = ['recording', 'pruner', 'chunks', 'matched', 'coverage', 'p50 ms', 'p95 ms',
                  'tokens kept', 'vs dense: transl. mm', 'rot. deg', 'gripper']
        if has_recorded:
            header += ['vs recorded: transl. mm', 'rot. deg', 'gripper']
        rows = []
        for row in results['live']:
            cells = [Path(row['recording']).name, row['pruner'] or '?', str(row['chunks']),
                     str(row['matched']), _percent(row['coverage']),
                     _fmt(row['latency_ms_p50'], digits=1), _fmt(row['latency_ms_p95'], digits=1),
                     _fmt(row['tokens_kept'], digits=1)] + _errors_cells(row['vs_dense'])
            if has_recorded:
                cells += _errors_cells(row['vs_recorded'])
            rows.append(cells)
        lines += _table(header, rows)
    lines += ['', '## Input', '']
    for index, bag in enumerate(results['bags']):
        episodes = len(bag['episodes'])
        sync = bag['sync']
        unmatched = sync.get('dropped_unmatched', 0) + sync.get('unmatched_at_end', 0)
        lines += [
            f"Bag {index}: `{bag['path']}` ({bag['storage']}): {bag['observations']} "
            f'observations in {episodes} episode(s), {bag["recorded_actions"]} recorded '
            f"actions, 3D tokens from the {bag['points_from']}. Synchroniser: "
            f"{sync.get('complete', 0)} complete sets, {unmatched} rgb/depth/cloud messages "
            f"without a match, {sync.get('invalid', 0)} invalid sets; "
            f"{bag['unusable_observations']} observations refused by the policy.",
            '',
        ]
        rows = []
        roles = {topic: role for role, topic in bag['topics'].items() if topic}
        for topic, counts in bag['messages'].items():
            rows.append([roles.get(topic, ''), f'`{topic}`', str(counts['read']),
                         str(counts['decoded']), str(counts['undecodable']),
                         str(counts['invalid']), '; '.join(counts['errors'])[:160]])
        lines += _table(['role', 'topic', 'read', 'used', 'undecodable', 'invalid',
                         'problems'], rows)
        notes = list(bag['notes'])
        if bag['read_error']:
            notes.append(f"reading stopped early: {bag['read_error']}")
        if bag['time_jumps']:
            notes.append(f"time ran backwards {bag['time_jumps']} time(s); the synchroniser "
                         'was restarted')
        if bag['stopped_early']:
            notes.append('stopped at --max-observations')
        lines += [''] + [f'- {note}' for note in notes] + ([''] if notes else [])
    files = results['files']
    if files.get('plots'):
        lines += ['## Plots', ''] + [f'![{name}]({name})' for name in files['plots']] + ['']
    if results['samples']:
        lines += ['## Kept tokens on sample steps', '',
                  'Dimmed patches were pruned; dots are 3D group centres projected onto the '
                  'image (green kept, red pruned).', '']
        for sample in results['samples']:
            lines += [f"Observation {sample['observation']} (bag {sample['bag']}, stamp "
                      f"{sample['stamp_ns']}):", '', f"![observation {sample['observation']}]"
                      f"({sample['image']})", '']
    if files.get('predictions'):
        lines += [f"Predicted actions: `{files['predictions']}` (MCAP, one ActionChunk and "
                  'PruningStats topic per configuration under /eval).', '']
    return '\n'.join(lines).rstrip() + '\n'


# -------------------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _by_pruner(configurations: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in configurations:
        if row['pruner'] != 'dense':
            groups.setdefault(row.get('spec', row['pruner']), []).append(row)
    return {name: sorted(rows, key=lambda r: r['tokens_kept']) for name, rows in groups.items()}


def plot_errors(results: dict[str, Any], path: 'str | Path') -> None:
    """Translation error against visual tokens kept, per pruner (vs dense, vs recorded)."""
    plt = _pyplot()
    configurations = results['configurations']
    panels = [('vs_dense', 'against dense')]
    if any(row['vs_recorded'] for row in configurations):
        panels.append(('vs_recorded', 'against recorded actions'))
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    groups = _by_pruner(configurations)
    dense = next((row for row in configurations if row['pruner'] == 'dense'), None)
    for axis, (key, title) in zip(axes[0], panels):
        for name, rows in groups.items():
            points = [(r['tokens_kept'], r[key]['translation_error']) for r in rows
                      if r[key] and r[key]['translation_error'] is not None]
            if points:
                x, y = zip(*points)
                axis.plot(x, np.asarray(y) * 1e3, 'o-', label=name)
        if key == 'vs_recorded' and dense and dense[key] and dense[key]['translation_error']:
            axis.plot([dense['tokens_kept']], [dense[key]['translation_error'] * 1e3], 'k*',
                      markersize=10, label='dense')
        axis.set_xlabel('visual tokens kept (2D + 3D)')
        axis.set_ylabel('translation error per step (mm)')
        axis.set_title(f'action error {title}')
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_speedup(results: dict[str, Any], path: 'str | Path') -> None:
    """Measured speedup against visual tokens kept per pruner, with its FLOPs-ideal curve."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for name, mine in _by_pruner(results['configurations']).items():
        x = [r['tokens_kept'] for r in mine]
        line, = axis.plot(x, [r['speedup'] or np.nan for r in mine], 'o-',
                          label=f'{name} (measured)')
        # Each pruner prunes at its own layers, so each has its own FLOPs bound.
        axis.plot(x, [1 / r['flops_ratio'] for r in mine], '--', color=line.get_color(),
                  alpha=0.6, label=f'{name} (FLOPs-ideal)')
    axis.axhline(1.0, color='grey', linewidth=0.8)
    axis.set_xlabel('visual tokens kept (2D + 3D)')
    axis.set_ylabel('step speedup against dense')
    axis.set_title('speedup (same run, p50 latency)')
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def overlay_image(sample: Sample, labels: list[str], path: 'str | Path') -> None:
    """
    One panel per configuration: the rgb frame with pruned patches dimmed and 3D centres.

    Patch (r, c) covers rows r H / rows .. (r + 1) H / rows of the frame (the tower squashes
    the whole image onto its grid); centres are projected through the frame's intrinsics.
    """
    plt = _pyplot()
    height, width = sample.rgb.shape[:2]
    rows, cols = sample.grid
    pixels = None
    if sample.intrinsics is not None and len(sample.centres_3d):
        pixels = sample.intrinsics.project(sample.centres_3d)
    panel_cols = min(len(labels), OVERLAY_COLUMNS)
    panel_rows = -(-len(labels) // panel_cols)
    figure, axes = plt.subplots(panel_rows, panel_cols,
                                figsize=(2.8 * panel_cols, 3.0 * panel_rows), squeeze=False)
    for axis in axes.flat[len(labels):]:
        axis.axis('off')
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    for axis, label in zip(axes.flat, labels):
        kept_2d, kept_3d = sample.kept[label]
        pruned = np.ones(rows * cols, dtype=np.float32)
        pruned[np.asarray(kept_2d, dtype=np.int64)] = 0.0
        axis.imshow(sample.rgb, extent=extent, interpolation='nearest')
        shade = np.zeros((rows, cols, 4), dtype=np.float32)
        shade[..., 3] = 0.65 * pruned.reshape(rows, cols)
        axis.imshow(shade, extent=extent, interpolation='nearest')
        if pixels is not None:
            kept = np.zeros(len(pixels), dtype=bool)
            kept[np.asarray(kept_3d, dtype=np.int64)] = True
            axis.scatter(pixels[~kept, 0], pixels[~kept, 1], s=9, c='red', marker='x',
                         linewidths=0.8)
            axis.scatter(pixels[kept, 0], pixels[kept, 1], s=12, c='lime',
                         edgecolors='black', linewidths=0.4)
        axis.set_xlim(extent[0], extent[1])
        axis.set_ylim(extent[2], extent[3])
        axis.set_title(f'{label}\n2D {len(kept_2d)}/{rows * cols}, 3D {len(kept_3d)}/'
                       f'{len(sample.centres_3d)}', fontsize=8)
        axis.axis('off')
    figure.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(figure)


# ------------------------------------------------------------------------------------ outputs
def topic_name(label: str) -> str:
    """Return a configuration label as a valid ROS name token ('tri_stage@0.25' -> ...0_25)."""
    return re.sub('_+', '_', re.sub('[^A-Za-z0-9_]', '_', label)).strip('_')


def write_predictions(
    replay: Replay,
    path: 'str | Path',
    tolerance_ns: int,
    action_space: str,
    control_dt: float,
) -> Path:
    """
    Write every configuration's action chunks and step stats to an MCAP bag folder.

    Topics: /eval/<configuration>/action_chunk (ActionChunk) and .../pruning_stats
    (PruningStats, speedup = dense latency / this latency on the same observation), plus
    /eval/recorded/action_chunk when the bag has recorded actions; every message is stamped
    (header and bag time) with its observation's stamp.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from vla_pruned_ros.convert import ns_to_stamp, package_typestore, rosbags_types

    path = Path(path)
    typestore, types = package_typestore(), rosbags_types()
    chunk_type, stats_type = 'vla_pruned_ros/msg/ActionChunk', 'vla_pruned_ros/msg/PruningStats'

    def header(stamp_ns: int) -> Any:
        return types['std_msgs/msg/Header'](stamp=ns_to_stamp(stamp_ns), frame_id='')

    def chunk(actions: np.ndarray, stamp_ns: int) -> Any:
        actions = np.asarray(actions, dtype=np.float32)
        return types[chunk_type](
            header=header(stamp_ns), horizon=actions.shape[0], action_dim=actions.shape[1],
            dt=float(control_dt), action_space=action_space,
            dimension_names=list(ACTION_NAMES[:actions.shape[1]]),
            data=np.ascontiguousarray(actions.reshape(-1)),
        )

    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        connections = {}
        for run in replay.runs:
            base = f'/eval/{topic_name(run.label)}'
            connections[run.label] = (
                writer.add_connection(f'{base}/action_chunk', chunk_type, typestore=typestore),
                writer.add_connection(f'{base}/pruning_stats', stats_type, typestore=typestore),
            )
        recorded = references(replay, tolerance_ns)
        recorded_connection = None
        if any(r is not None for r in recorded):
            recorded_connection = writer.add_connection(
                '/eval/recorded/action_chunk', chunk_type, typestore=typestore
            )
        for i, info in enumerate(replay.observations):
            stamp = info.stamp_ns
            dense_latency = replay.dense.stats[i].latency_ms
            for run in replay.runs:
                chunk_connection, stats_connection = connections[run.label]
                writer.write(chunk_connection, stamp, typestore.serialize_cdr(
                    chunk(run.actions[i], stamp), chunk_type))
                stats = run.stats[i]
                message = types[stats_type](
                    header=header(stamp), pruner=stats.pruner, budget=stats.budget,
                    full_step=stats.full_step, tokens_2d_in=stats.tokens_2d_in,
                    tokens_3d_in=stats.tokens_3d_in, tokens_2d_kept=stats.tokens_2d_kept,
                    tokens_3d_kept=stats.tokens_3d_kept,
                    stage_names=[str(stage[0]) for stage in stats.stages],
                    stage_tokens_2d=np.asarray([s[1] for s in stats.stages], dtype=np.uint32),
                    stage_tokens_3d=np.asarray([s[2] for s in stats.stages], dtype=np.uint32),
                    latency_ms=stats.latency_ms, tokenize_ms=stats.tokenize_ms,
                    decoder_ms=stats.decoder_ms, pruning_overhead_ms=stats.pruning_overhead_ms,
                    action_head_ms=stats.action_head_ms, flops_dense=stats.flops_dense,
                    flops_actual=stats.flops_actual,
                    speedup=dense_latency / stats.latency_ms if stats.latency_ms else 0.0,
                    device=stats.device,
                )
                writer.write(stats_connection, stamp,
                             typestore.serialize_cdr(message, stats_type))
            if recorded_connection is not None and recorded[i] is not None:
                values = np.nan_to_num(recorded[i], nan=0.0)
                writer.write(recorded_connection, stamp,
                             typestore.serialize_cdr(chunk(values, stamp), chunk_type))
    finally:
        writer.close()
    return path


def results_json(results: dict[str, Any]) -> str:
    """Return results as indented JSON with one line per step (thousands of them)."""
    placeholder = f'steps-{uuid.uuid4().hex}'
    text = json.dumps({**results, 'steps': placeholder}, indent=1, allow_nan=False)
    steps = ',\n'.join(
        '  ' + json.dumps(step, separators=(',', ':'), allow_nan=False)
        for step in results['steps']
    )
    return text.replace(json.dumps(placeholder), f'[\n{steps}\n ]' if steps else '[]') + '\n'


def _is_our_predictions(path: Path) -> bool:
    return path.is_dir() and all(
        f.name == 'metadata.yaml' or f.suffix == '.mcap' for f in path.iterdir()
    )


def write_outputs(
    results: dict[str, Any],
    replay: Replay,
    out_dir: 'str | Path',
    predictions: bool = False,
    tolerance_ns: int = 50_000_000,
    action_space: str = 'eef_delta_xyz_rpy_gripper',
    control_dt: float = 0.1,
) -> list[Path]:
    """
    Write results.json, report.md, the plots, overlay images and (optionally) predictions.

    ``results`` gains its ``samples`` and ``files`` entries here. Returns the paths written.
    """
    out = Path(out_dir)
    (out / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
    written = []
    plots = [ERROR_PLOT, SPEEDUP_PLOT]
    plot_errors(results, out / ERROR_PLOT)
    plot_speedup(results, out / SPEEDUP_PLOT)
    written += [out / name for name in plots]
    labels = [run.label for run in replay.runs]
    overlays = []
    results['samples'] = []
    for sample in replay.samples:
        name = f'{OVERLAY_DIR}/observation_{sample.observation:05d}.png'
        overlay_image(sample, labels, out / name)
        overlays.append(name)
        results['samples'].append({
            'observation': sample.observation,
            'bag': sample.bag,
            'stamp_ns': sample.stamp_ns,
            'image': name,
            'kept': {label: {'2d': list(kept[0]), '3d': list(kept[1])}
                     for label, kept in sample.kept.items()},
        })
    written += [out / name for name in overlays]
    results['files'] = {
        'report': REPORT_FILE, 'plots': plots, 'overlays': overlays, 'predictions': None,
    }
    if predictions:
        target = out / PREDICTIONS_DIR
        if target.exists():
            if not _is_our_predictions(target):
                raise EvalError(f'{target} exists and is not an earlier predictions bag')
            shutil.rmtree(target)
        write_predictions(replay, target, tolerance_ns, action_space, control_dt)
        results['files']['predictions'] = PREDICTIONS_DIR
        written.append(target)
    with open(out / REPORT_FILE, 'w', encoding='utf-8') as stream:
        stream.write(markdown_report(results))
    with open(out / RESULTS_FILE, 'w', encoding='utf-8') as stream:
        stream.write(results_json(results))
    written += [out / REPORT_FILE, out / RESULTS_FILE]
    return written
