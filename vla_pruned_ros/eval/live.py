"""
Score a live run: what the policy node published while a bag was replayed into it.

Record the node's outputs while playing the bag (``ros2 bag play BAG --clock`` or
``vla-pruned-ros play BAG --clock``, with ``use_sim_time:=true`` on the node, and ``ros2 bag
record`` its ``action_chunk`` and ``pruning_stats``). Every ActionChunk carries the stamp of
the observation it was computed from, so each chunk is matched to the offline observation with
the nearest stamp (within the synchroniser's slop) and scored like an offline configuration:
against the dense prediction on that observation and against the recorded actions. Coverage
tells how many of the bag's observations the node answered (a slow model skips frames on a
live graph); PruningStats, when recorded, give the node's own latency and tokens kept.
"""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.convert import ConversionError, package_typestore, stamp_to_ns
from vla_pruned_ros.eval.bag import (
    action_chunk_to_numpy,
    decode_errors,
    nearest_stamps,
    open_reader,
    recorded_for,
)
from vla_pruned_ros.eval.errors import EvalError
from vla_pruned_ros.eval.metrics import action_errors
from vla_pruned_ros.eval.replay import Replay
from vla_pruned_ros.eval.topics import ACTION_CHUNK, PRUNING_STATS, BagTopic, node_outputs


@dataclass
class LiveRecording:
    """The action chunks (by observation stamp) and step stats of a recorded live run."""

    path: str
    topic: str
    stats_topic: Optional[str]
    chunks: dict[int, np.ndarray] = field(default_factory=dict)
    stats: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def _namespace(topic: str) -> str:
    return topic.rsplit('/', 1)[0]


def _choose_chunk_topic(topics: dict[str, str], topic: Optional[str], path: Path) -> str:
    """The explicit topic, else the node's ActionChunk output, else the only ActionChunk."""
    chunks = sorted(name for name, msgtype in topics.items() if msgtype == ACTION_CHUNK)
    if topic:
        if topics.get(topic) != ACTION_CHUNK:
            raise EvalError(
                f'--live-topic {topic}: not an ActionChunk topic of {path} (ActionChunk topics '
                f'there: {", ".join(chunks) or "none"})'
            )
        return topic
    if not chunks:
        raise EvalError(f'live recording {path} has no {ACTION_CHUNK} topic')
    mine = node_outputs([BagTopic(name, msgtype) for name, msgtype in topics.items()])
    candidates = sorted(mine) or chunks
    if len(candidates) > 1:
        raise EvalError(
            f'live recording {path}: several ActionChunk topics ({", ".join(candidates)}); '
            'pass --live-topic NAME'
        )
    return candidates[0]


def read_live(path: 'str | Path', topic: Optional[str] = None) -> LiveRecording:
    """
    Read the node's ActionChunk messages (and PruningStats beside them) from a recording.

    Raises :class:`EvalError` when the recording has no usable action chunk.
    """
    path = Path(path)
    typestore = package_typestore()
    errors = decode_errors() + (ConversionError,)
    reader = open_reader(path)
    try:
        topics = {name: info.msgtype for name, info in reader.topics.items()}
        chunk_topic = _choose_chunk_topic(topics, topic, path)
        stats_topics = sorted(name for name, t in topics.items() if t == PRUNING_STATS)
        near = [name for name in stats_topics if _namespace(name) == _namespace(chunk_topic)]
        stats_topic = (near or stats_topics or [None])[0]
        recording = LiveRecording(str(path), chunk_topic, stats_topic)
        wanted = [c for c in reader.connections if c.topic in (chunk_topic, stats_topic)]
        for connection, _, raw in reader.messages(connections=wanted):
            try:
                msg = typestore.deserialize_cdr(raw, connection.msgtype)
                stamp = stamp_to_ns(msg.header.stamp)
                if connection.topic == chunk_topic:
                    recording.chunks[stamp] = action_chunk_to_numpy(msg)
                else:
                    recording.stats.append({
                        'stamp_ns': stamp,
                        'pruner': str(msg.pruner),
                        'budget': int(msg.budget),
                        'latency_ms': float(msg.latency_ms),
                        'tokens_kept': int(msg.tokens_2d_kept) + int(msg.tokens_3d_kept),
                    })
            except errors:
                recording.skipped += 1
    finally:
        reader.close()
    if not recording.chunks:
        raise EvalError(
            f'live recording {path}: no usable message on {chunk_topic} '
            f'({recording.skipped} undecodable)'
        )
    return recording


def score_live(
    recording: LiveRecording,
    replay: Replay,
    bag: int,
    tolerance_ns: int,
    gripper_threshold: float = 0.5,
) -> dict[str, Any]:
    """Score a live recording against the offline replay of bag number ``bag``."""
    rows = [i for i, o in enumerate(replay.observations) if o.bag == bag]
    stamps = np.asarray([replay.observations[i].stamp_ns for i in rows], dtype=np.int64)
    order = np.argsort(stamps, kind='stable')
    live_stamps = sorted(recording.chunks)
    nearest = nearest_stamps(np.asarray(live_stamps, np.int64), stamps[order], tolerance_ns)
    matched = [(stamp, rows[order[i]]) for stamp, i in zip(live_stamps, nearest) if i >= 0]
    predicted = [recording.chunks[stamp] for stamp, _ in matched]
    dense = [replay.dense.actions[row] for _, row in matched]
    recorded_all = recorded_for(stamps, replay.bags[bag].recorded, tolerance_ns)
    recorded = [recorded_all[rows.index(row)] for _, row in matched]
    latency = [s['latency_ms'] for s in recording.stats]
    pruners = Counter(s['pruner'] for s in recording.stats)
    return {
        'recording': recording.path,
        'bag': bag,
        'topic': recording.topic,
        'stats_topic': recording.stats_topic,
        'chunks': len(recording.chunks),
        'skipped_messages': recording.skipped,
        'matched': len(matched),
        'unmatched': len(recording.chunks) - len(matched),
        'coverage': len({row for _, row in matched}) / len(rows) if rows else None,
        'pruner': pruners.most_common(1)[0][0] if pruners else None,
        'budget': float(np.median([s['budget'] for s in recording.stats]))
        if recording.stats else None,
        'latency_ms_p50': float(np.percentile(latency, 50)) if latency else None,
        'latency_ms_p95': float(np.percentile(latency, 95)) if latency else None,
        'tokens_kept': float(np.mean([s['tokens_kept'] for s in recording.stats]))
        if recording.stats else None,
        'vs_dense': action_errors(predicted, dense, gripper_threshold).to_dict(),
        'vs_recorded': action_errors(predicted, recorded, gripper_threshold).to_dict()
        if any(r is not None for r in recorded) else None,
    }
