"""
Observations from a rosbag2 (MCAP or SQLite3, a bag folder or one file), as the node sees them.

Messages are read in bag order, converted with :mod:`vla_pruned_ros.convert` and fed to the
node's :class:`~vla_pruned_ros.sync.ObservationSynchronizer`. Offline nothing is late, so a
complete set is taken every time it can be: before each new rgb image, before an instruction or
episode change and at the end of the bag (the set's age is not checked). Sensors at different
rates therefore give observations at the rate of the slowest required stream, as on the robot.

A message that cannot be deserialised (corrupted bytes) or converted (bad encoding, wrong data
length, uncalibrated camera_info) is skipped and counted per topic; a bag with no observation
at all raises :class:`EvalError`. A read error part-way (a truncated recording) ends the bag
there and is reported.

Episodes start at every message of the episode topic, or, without one, whenever the
instruction changes. Recorded actions (ActionChunk, or TwistStamped times ``twist_dt``) are
collected by header stamp for the metrics.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
import json
from pathlib import Path
import struct
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.convert import (
    ConversionError,
    camera_info_to_intrinsics,
    image_to_depth,
    image_to_rgb,
    package_typestore,
    pointcloud2_to_numpy,
    stamp_to_ns,
)
from vla_pruned_ros.eval.errors import EvalError
from vla_pruned_ros.eval.topics import (
    ACTION_CHUNK,
    CAMERA_INFO,
    IMAGE,
    TWIST,
    BagTopic,
    TopicPlan,
)
from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sync import ObservationSynchronizer

ACTION_DIM = 7
# Messages tried per Image/CameraInfo topic to learn its encoding and size.
PEEK_MESSAGES = 5
# Distinct error messages kept per topic for the report.
ERRORS_KEPT = 3
OFFLINE_MAX_AGE_S = 3600.0


def decode_errors() -> tuple:
    """Return the exception types deserialising a corrupted message may raise."""
    from rosbags.serde import SerdeError

    # Deserialising arbitrary bytes can fail in the CDR reader or in numpy/struct below it.
    return (SerdeError, ValueError, IndexError, KeyError, struct.error)


def open_reader(path: 'str | Path') -> Any:
    """
    Open a rosbag2 bag folder, ``.mcap`` or ``.db3`` file with ``rosbags``; return the reader.

    Raises :class:`EvalError` when the path is missing or not a readable rosbag2.
    """
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise EvalError(f'bag {path} does not exist')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags raises many types for foreign or damaged files
        raise EvalError(
            f'{path} is not a readable rosbag2 (a bag folder with metadata.yaml, an .mcap or a '
            f'.db3 file): {err}'
        ) from None
    return reader


def storage_of(path: 'str | Path') -> str:
    """Return 'mcap' or 'sqlite3' for a bag folder or file (by its storage files)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.iterdir())
    suffixes = {f.suffix for f in files}
    if '.mcap' in suffixes:
        return 'mcap'
    if '.db3' in suffixes:
        return 'sqlite3'
    return 'unknown'


def list_topics(reader: Any) -> list[BagTopic]:
    """
    Return the bag's topics with the encoding and size of Image and CameraInfo topics.

    Up to ``PEEK_MESSAGES`` messages per such topic are read to find one that decodes.
    """
    typestore = package_typestore()
    topics = []
    for name, info in sorted(reader.topics.items()):
        msgtype = info.msgtype or ''
        encoding, size = '', None
        if msgtype in (IMAGE, CAMERA_INFO):
            encoding, size = _peek(reader, typestore, info.connections, msgtype)
        topics.append(BagTopic(name, msgtype, int(info.msgcount), encoding, size))
    return topics


def _peek(reader: Any, typestore: Any, connections: list, msgtype: str) -> tuple:
    errors = decode_errors()
    for count, (_, _, raw) in enumerate(reader.messages(connections=connections)):
        if count >= PEEK_MESSAGES:
            break
        try:
            msg = typestore.deserialize_cdr(raw, msgtype)
            if msgtype == IMAGE:
                return str(msg.encoding), (int(msg.width), int(msg.height))
            intrinsics = camera_info_to_intrinsics(msg)
            return '', (intrinsics.width, intrinsics.height)
        except errors:
            continue
    return '', None


@dataclass
class TopicCounts:
    """Messages of one topic: read, used, and skipped because they could not be used."""

    read: int = 0
    decoded: int = 0
    undecodable: int = 0  # corrupted bytes: CDR deserialisation failed
    invalid: int = 0  # deserialised but refused by the conversion
    errors: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Messages skipped (undecodable + invalid)."""
        return self.undecodable + self.invalid

    def note(self, error: Exception) -> None:
        """Keep the first few distinct error messages."""
        text = str(error)
        if len(self.errors) < ERRORS_KEPT and text not in self.errors:
            self.errors.append(text)

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return {
            'read': self.read,
            'decoded': self.decoded,
            'undecodable': self.undecodable,
            'invalid': self.invalid,
            'skipped': self.skipped,
            'errors': list(self.errors),
        }


@dataclass
class Episode:
    """One episode of a bag: its first stamp, instruction and marker metadata."""

    index: int
    start_ns: int
    instruction: str = ''
    metadata: dict = field(default_factory=dict)
    observations: int = 0

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return {
            'index': self.index,
            'start_ns': self.start_ns,
            'instruction': self.instruction,
            'observations': self.observations,
            'metadata': self.metadata,
        }


@dataclass
class Frame:
    """One synchronised observation and where it sits in the bag."""

    observation: Observation
    episode: int
    index: int


@dataclass
class BagSummary:
    """What reading one bag found: topics, counts, episodes and recorded actions."""

    path: str
    storage: str
    plan: TopicPlan
    topics: list[BagTopic]
    counts: dict[str, TopicCounts]
    episodes: list[Episode] = field(default_factory=list)
    recorded: dict[int, np.ndarray] = field(default_factory=dict)  # stamp -> (H, 7)
    sync: dict[str, int] = field(default_factory=dict)
    observations: int = 0
    unusable: int = 0  # observations the policy refused (their errors go to the rgb topic)
    time_jumps: int = 0
    read_error: str = ''
    stopped_early: bool = False

    def to_dict(self) -> dict:
        """JSON-friendly dict (recorded actions are summarised by count)."""
        return {
            'path': self.path,
            'storage': self.storage,
            'topics': self.plan.roles(),
            'action_type': self.plan.action_type,
            'points_from': self.plan.points_from,
            'notes': list(self.plan.notes),
            'observations': self.observations,
            'unusable_observations': self.unusable,
            'episodes': [episode.to_dict() for episode in self.episodes],
            'recorded_actions': len(self.recorded),
            'messages': {topic: counts.to_dict() for topic, counts in self.counts.items()},
            'sync': dict(self.sync),
            'time_jumps': self.time_jumps,
            'read_error': self.read_error,
            'stopped_early': self.stopped_early,
        }


class BagReplay:
    """
    Stream the observations of one bag through the node's synchroniser.

    ``plan`` names the topics (see :func:`vla_pruned_ros.eval.topics.plan_topics`);
    ``instruction`` is used when the bag has no instruction topic; ``twist_dt`` turns a
    recorded TwistStamped into a per-step action; ``max_observations`` stops early;
    ``on_rgb`` is called for every rgb message read (progress). After :meth:`frames` is
    exhausted, :attr:`summary` holds the counts, episodes and recorded actions.
    """

    def __init__(
        self,
        path: 'str | Path',
        plan: TopicPlan,
        topics: list[BagTopic],
        slop_s: float = 0.05,
        queue_size: int = 10,
        instruction: str = '',
        twist_dt: float = 0.1,
        max_observations: Optional[int] = None,
        on_rgb: Optional[Callable[[], None]] = None,
    ) -> None:
        self.path = Path(path)
        self.plan = plan
        self.instruction = instruction
        self.twist_dt = float(twist_dt)
        self.max_observations = max_observations
        self.on_rgb = on_rgb
        self.sync = ObservationSynchronizer(
            slop_s=slop_s,
            # Offline nothing is stale: every complete set counts, however slow the model.
            max_age_s=OFFLINE_MAX_AGE_S,
            use_depth=plan.points_from == 'depth',
            use_cloud=plan.points_from == 'cloud',
            queue_size=queue_size,
        )
        roles = {topic: role for role, topic in plan.roles().items() if topic}
        self._role_of = {topic: roles[topic] for topic in plan.used_topics()}
        self.summary = BagSummary(
            path=str(path),
            storage=storage_of(path),
            plan=plan,
            topics=topics,
            counts={topic: TopicCounts() for topic in self._role_of},
        )
        # Rectified images (image_rect*) use P, raw ones K, as image_geometry does.
        self._rectified = 'rect' in plan.rgb.lower()
        self._current_instruction = ''
        self._latest_info: Optional[tuple[int, Any]] = None
        self._last_rgb_ns: Optional[int] = None
        self._episode: Optional[Episode] = None
        self._pending_rgb = False

    # ------------------------------------------------------------------------------- frames
    def frames(self) -> Iterator[Frame]:
        """Yield every observation of the bag in time order (see the module docstring)."""
        typestore = package_typestore()
        errors = decode_errors()
        if self.instruction and not self.plan.instruction:
            self._set_instruction(self.instruction)
        reader = open_reader(self.path)
        try:
            connections = [c for c in reader.connections if c.topic in self._role_of]
            messages = reader.messages(connections=connections)
            while True:
                try:
                    connection, log_ns, raw = next(messages)
                except StopIteration:
                    break
                except Exception as err:  # a damaged chunk or file ends the bag here
                    self.summary.read_error = f'{type(err).__name__}: {err}'
                    break
                topic = connection.topic
                counts = self.summary.counts[topic]
                counts.read += 1
                role = self._role_of[topic]
                if role == 'rgb' and self.on_rgb is not None:
                    self.on_rgb()
                try:
                    msg = typestore.deserialize_cdr(raw, connection.msgtype)
                except errors as err:
                    counts.undecodable += 1
                    counts.note(err)
                    continue
                try:
                    yield from self._handle(role, msg, int(log_ns))
                except ConversionError as err:
                    counts.invalid += 1
                    counts.note(err)
                    continue
                counts.decoded += 1
                if self._done():
                    self.summary.stopped_early = True
                    break
            if not self._done():
                yield from self._drain()
        finally:
            reader.close()
        self.summary.sync = self.sync.counters
        # Messages still queued at the end never found a partner either.
        self.summary.sync['unmatched_at_end'] = sum(self.sync.queued.values())
        if self.summary.observations == 0:
            raise EvalError(self._nothing_usable())

    def _done(self) -> bool:
        return (
            self.max_observations is not None
            and self.summary.observations >= self.max_observations
        )

    def _nothing_usable(self) -> str:
        used = ', '.join(
            f'{topic}: {c.decoded}/{c.read} usable' for topic, c in self.summary.counts.items()
        )
        first = next((c.errors[0] for c in self.summary.counts.values() if c.errors), '')
        reason = f'; first problem: {first}' if first else ''
        if self.summary.read_error:
            reason += f'; read error: {self.summary.read_error}'
        if not self._current_instruction:
            reason += '; no instruction (pass --instruction TEXT or --instruction-topic NAME)'
        return f'no observation could be built from {self.path} ({used}){reason}'

    # ----------------------------------------------------------------------------- messages
    def _stamp(self, msg: Any, log_ns: int) -> int:
        """Header stamp; the bag time when a driver left the stamp at zero."""
        stamp = stamp_to_ns(msg.header.stamp)
        return stamp if stamp > 0 else log_ns

    def _handle(self, role: str, msg: Any, log_ns: int) -> Iterator[Frame]:
        if role == 'rgb':
            stamp = self._stamp(msg, log_ns)
            rgb = image_to_rgb(msg)
            yield from self._drain()
            if self._last_rgb_ns is not None and stamp <= self._last_rgb_ns:
                self._time_jump()
            self._last_rgb_ns = stamp
            self.sync.add_rgb(stamp, rgb, str(msg.header.frame_id))
            self._pending_rgb = True
        elif role == 'depth':
            self.sync.add_depth(self._stamp(msg, log_ns), image_to_depth(msg))
        elif role == 'camera_info':
            stamp = self._stamp(msg, log_ns)
            intrinsics = self._intrinsics(msg)
            self._latest_info = (stamp, intrinsics)
            self.sync.add_camera_info(stamp, intrinsics)
        elif role == 'cloud':
            points, _ = pointcloud2_to_numpy(msg)
            self.sync.add_cloud(self._stamp(msg, log_ns), points)
        elif role == 'pose':
            pose = msg.pose
            values = [pose.position.x, pose.position.y, pose.position.z, pose.orientation.x,
                      pose.orientation.y, pose.orientation.z, pose.orientation.w]
            self.sync.add_ee_pose(self._stamp(msg, log_ns), np.asarray(values, np.float64))
        elif role == 'actions':
            self.summary.recorded[self._stamp(msg, log_ns)] = self._action(msg)
        elif role == 'instruction':
            text = str(msg.data).strip()
            if text and text != self._current_instruction:
                yield from self._drain()
                if not self.plan.episode:
                    self._start_episode(log_ns)
                self._set_instruction(text)
        elif role == 'episode':
            yield from self._drain()
            self._start_episode(log_ns, _metadata(str(msg.data)))

    def _intrinsics(self, msg: Any) -> Any:
        if self._rectified:
            try:
                return camera_info_to_intrinsics(msg, rectified=True)
            except ConversionError:
                pass  # an unset P: the camera was not rectified after all
        return camera_info_to_intrinsics(msg)

    def _action(self, msg: Any) -> np.ndarray:
        if self.plan.action_type == ACTION_CHUNK:
            return action_chunk_to_numpy(msg)
        if self.plan.action_type == TWIST:
            return twist_to_action(msg, self.twist_dt)
        raise ConversionError(f'unsupported action type {self.plan.action_type}')

    def _set_instruction(self, text: str) -> None:
        self._current_instruction = text
        self.sync.set_instruction(text)
        if self._episode is not None and not self._episode.observations:
            self._episode.instruction = text

    def _start_episode(self, stamp_ns: int, metadata: Optional[dict] = None) -> None:
        """Open a new episode, or relabel the current one while it has no observation."""
        if self._episode is None or self._episode.observations:
            self._episode = Episode(index=len(self.summary.episodes), start_ns=stamp_ns)
            self.summary.episodes.append(self._episode)
        if metadata:
            self._episode.metadata = metadata
            self._episode.instruction = str(metadata.get('instruction', ''))

    def _time_jump(self) -> None:
        """Time ran backwards (a new recording or a sim reset): restart the synchroniser."""
        self.summary.time_jumps += 1
        self.sync.reset()
        if self._latest_info is not None:
            self.sync.add_camera_info(*self._latest_info)

    def _drain(self) -> Iterator[Frame]:
        """Take the complete set of the pending rgb image, if there is one."""
        if not self._pending_rgb or self._last_rgb_ns is None:
            return
        result = self.sync.pop_latest(self._last_rgb_ns)
        if not result.ok:
            if result.reason.startswith('invalid'):
                self._pending_rgb = False
            return
        self._pending_rgb = False
        if self._episode is None:
            self._start_episode(result.observation.stamp_ns)
        episode = self._episode
        if not episode.instruction:
            episode.instruction = result.observation.instruction
        frame = Frame(result.observation, episode.index, self.summary.observations)
        episode.observations += 1
        self.summary.observations += 1
        yield frame


def _metadata(text: str) -> dict:
    """Episode marker payload: a JSON object (the simulator's) or free text."""
    try:
        data = json.loads(text)
    except ValueError:
        return {'text': text} if text else {}
    return data if isinstance(data, dict) else {'value': data}


def action_chunk_to_numpy(msg: Any) -> np.ndarray:
    """
    Return an ActionChunk's data as a (horizon, action_dim) float64 array.

    Raises ``ConversionError`` when the data length is not horizon x action_dim.
    """
    horizon, dim = int(msg.horizon), int(msg.action_dim)
    data = np.asarray(msg.data, dtype=np.float64).reshape(-1)
    if horizon < 1 or dim < 1 or data.size != horizon * dim:
        raise ConversionError(
            f'ActionChunk data has {data.size} values, expected horizon x action_dim = '
            f'{horizon} x {dim}'
        )
    return data.reshape(horizon, dim)


def twist_to_action(msg: Any, dt: float) -> np.ndarray:
    """
    Return a TwistStamped as a (1, 7) action: velocities x ``dt``, gripper unknown (NaN).

    The linear part gives dx dy dz (m), the angular part droll dpitch dyaw (rad); for the small
    rotation of one control step the rotation vector and roll-pitch-yaw agree.
    """
    twist = msg.twist
    velocity = [twist.linear.x, twist.linear.y, twist.linear.z,
                twist.angular.x, twist.angular.y, twist.angular.z]
    action = np.full((1, ACTION_DIM), np.nan)
    action[0, :6] = np.asarray(velocity, dtype=np.float64) * float(dt)
    if not np.isfinite(action[0, :6]).all():
        raise ConversionError('TwistStamped holds a non-finite velocity')
    return action


def nearest_stamps(query: np.ndarray, reference: np.ndarray, tolerance_ns: int) -> np.ndarray:
    """
    Return, for each stamp in ``query``, the index of the nearest stamp in sorted ``reference``.

    -1 where the nearest one is farther than ``tolerance_ns``.
    """
    query = np.asarray(query, dtype=np.int64)
    reference = np.asarray(reference, dtype=np.int64)
    if reference.size == 0:
        return np.full(query.shape, -1, np.int64)
    right = np.clip(np.searchsorted(reference, query), 0, reference.size - 1)
    left = np.clip(right - 1, 0, reference.size - 1)
    use_left = np.abs(reference[left] - query) <= np.abs(reference[right] - query)
    index = np.where(use_left, left, right)
    return np.where(np.abs(reference[index] - query) <= tolerance_ns, index, -1)


def recorded_for(
    stamps: 'list[int] | np.ndarray', recorded: dict[int, np.ndarray], tolerance_ns: int
) -> list[Optional[np.ndarray]]:
    """Return the recorded action nearest in time to each stamp (None beyond the tolerance)."""
    keys = np.asarray(sorted(recorded), dtype=np.int64)
    index = nearest_stamps(np.asarray(stamps, dtype=np.int64), keys, tolerance_ns)
    return [recorded[int(keys[i])] if i >= 0 else None for i in index]
