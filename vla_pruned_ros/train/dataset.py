"""
Recorded demonstrations -> training samples, through the conversion code the policy node uses.

A bag written by ``vla-pruned-ros sim record`` is replayed in time order: sensor messages are
converted with :mod:`vla_pruned_ros.convert` and fed to an
:class:`~vla_pruned_ros.sync.ObservationSynchronizer`, exactly as the node's callbacks would,
and every synchronised :class:`~vla_pruned_ros.observation.Observation` that has an expert
``ActionChunk`` with the same stamp becomes one sample. The 3D input is the recorded
``PointCloud2`` (``use_cloud``), the one the simulator evaluation also feeds the policy.

Model inputs are deterministic per frame, so :func:`load_samples` computes them once
(``model.vision.preprocess``, :func:`~vla_pruned_ros.tokens.points_3d.sample_groups`) and caches
them per bag in an ``.npz`` file keyed by the bag's files and the model's input configuration.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.convert import (
    camera_info_to_intrinsics,
    image_to_rgb,
    package_typestore,
    pointcloud2_to_numpy,
    stamp_to_ns,
)
from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sync import ObservationSynchronizer

RGB_TOPIC = '/camera/color/image_raw'
INFO_TOPIC = '/camera/color/camera_info'
CLOUD_TOPIC = '/camera/depth/points'
POSE_TOPIC = '/ee_pose'
INSTRUCTION_TOPIC = '/instruction'
EPISODE_TOPIC = '/episode'
CHUNK_TOPIC = '/expert/action_chunk'
TOPICS = (RGB_TOPIC, INFO_TOPIC, CLOUD_TOPIC, POSE_TOPIC, INSTRUCTION_TOPIC, EPISODE_TOPIC,
          CHUNK_TOPIC)
# Messages of one frame share a stamp; the recorder spaces frames by the control period.
SYNC_SLOP_S = 0.01
CACHE_VERSION = 2


class DatasetError(ValueError):
    """No bag at a path, a bag without the demonstration topics, or unusable frames."""


@dataclass
class DemoFrame:
    """One synchronised observation and the expert's action chunk [horizon, 7] at its stamp."""

    observation: Observation
    chunk: np.ndarray


@dataclass
class DemoEpisode:
    """The frames of one recorded episode and its ``/episode`` metadata (family, seed, ...)."""

    metadata: dict
    frames: list[DemoFrame] = field(default_factory=list)

    @property
    def family(self) -> str:
        """Task family from the metadata ('' when the bag has no ``/episode`` topic)."""
        return str(self.metadata.get('family', ''))


def target_position(metadata: dict) -> np.ndarray:
    """
    World (x, y) where the episode's target object started, from ``/episode`` metadata.

    The recorder stores the target as 'colour shape' and every object's colour, shape and
    position; NaN when the metadata lacks them or no object matches.
    """
    target = str(metadata.get('target') or '')
    for item in metadata.get('objects') or []:
        if f"{item.get('colour')} {item.get('shape')}" == target:
            return np.array([item['x'], item['y']], np.float32)
    return np.full(2, np.nan, np.float32)


def find_bags(paths: Iterable['str | Path']) -> list[Path]:
    """
    Expand bag folders and folders of bag folders into a sorted list of bag folders.

    A bag folder holds ``metadata.yaml``. Raises ``DatasetError`` for a path that is neither.
    """
    bags: list[Path] = []
    for item in paths:
        path = Path(item)
        if (path / 'metadata.yaml').is_file():
            bags.append(path)
            continue
        inner = sorted(p.parent for p in path.glob('*/metadata.yaml')) if path.is_dir() else []
        if not inner:
            raise DatasetError(f'{path} is not a rosbag2 folder nor a folder of rosbag2 folders')
        bags.extend(inner)
    return bags


def _chunk_array(msg: Any) -> np.ndarray:
    data = np.asarray(msg.data, dtype=np.float32)
    if data.size != int(msg.horizon) * int(msg.action_dim):
        raise DatasetError(
            f'ActionChunk holds {data.size} values, not horizon {msg.horizon} x '
            f'action_dim {msg.action_dim}'
        )
    return data.reshape(int(msg.horizon), int(msg.action_dim))


def _pose_array(msg: Any) -> np.ndarray:
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float64)


def read_episodes(bag_path: 'str | Path') -> Iterator[DemoEpisode]:
    """
    Replay a demonstration bag and yield its episodes with their labelled frames, in time order.

    Raises ``DatasetError`` when the bag lacks rgb, point cloud, instruction or action chunks.
    """
    from rosbags.rosbag2 import Reader

    typestore = package_typestore()
    with Reader(Path(bag_path)) as reader:
        present = {c.topic for c in reader.connections}
        missing = [t for t in (RGB_TOPIC, CLOUD_TOPIC, INSTRUCTION_TOPIC, CHUNK_TOPIC)
                   if t not in present]
        if missing:
            raise DatasetError(f'{bag_path} lacks the demonstration topics {missing}')
        connections = [c for c in reader.connections if c.topic in TOPICS]
        sync = ObservationSynchronizer(
            slop_s=SYNC_SLOP_S, max_age_s=1.0, use_depth=False, use_cloud=True
        )
        episode = DemoEpisode(metadata={})
        chunks: dict[int, np.ndarray] = {}
        group_ns: Optional[int] = None

        def flush() -> None:
            # Every message of the frame at group_ns is in: pop it like an inference tick would.
            if group_ns is None:
                return
            result = sync.pop_latest(group_ns)
            if result.ok and result.observation.stamp_ns in chunks:
                stamp = result.observation.stamp_ns
                episode.frames.append(DemoFrame(result.observation, chunks.pop(stamp)))

        for connection, timestamp, raw in reader.messages(connections=connections):
            if group_ns is not None and timestamp > group_ns:
                flush()
            group_ns = timestamp
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            topic = connection.topic
            if topic == EPISODE_TOPIC:
                if episode.frames:
                    yield episode
                episode = DemoEpisode(metadata=json.loads(msg.data))
                chunks.clear()
                sync.reset()
            elif topic == INSTRUCTION_TOPIC:
                sync.set_instruction(msg.data)
            elif topic == RGB_TOPIC:
                sync.add_rgb(stamp_to_ns(msg.header.stamp), image_to_rgb(msg), msg.header.frame_id)
            elif topic == INFO_TOPIC:
                sync.add_camera_info(
                    stamp_to_ns(msg.header.stamp), camera_info_to_intrinsics(msg)
                )
            elif topic == CLOUD_TOPIC:
                sync.add_cloud(stamp_to_ns(msg.header.stamp), pointcloud2_to_numpy(msg)[0])
            elif topic == POSE_TOPIC:
                sync.add_ee_pose(stamp_to_ns(msg.header.stamp), _pose_array(msg))
            elif topic == CHUNK_TOPIC:
                chunks[stamp_to_ns(msg.header.stamp)] = _chunk_array(msg)
        flush()
        if episode.frames:
            yield episode


@dataclass
class Samples:
    """
    Precomputed model inputs and labels of many frames (row i of every array is frame i).

    ``pixel_values`` [N, 3, S, S] float16, ``neighbourhoods`` [N, G, k, 3] and ``centres``
    [N, G, 3] float32, ``proprio`` [N, 7], ``actions`` [N, horizon, 7] (physical units),
    ``instruction`` [N] indices into ``instructions``, ``episode`` [N] a global episode number,
    ``family`` [N] indices into ``families``. ``target_xy`` [N, 2] is where the instruction's
    target object started (world x, y) relative to the end effector at that frame, from the
    recorder's ``/episode`` metadata, or NaN when the bag does not say (the label of the
    auxiliary localisation loss, see :func:`target_position`).
    """

    pixel_values: np.ndarray
    neighbourhoods: np.ndarray
    centres: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    instruction: np.ndarray
    episode: np.ndarray
    family: np.ndarray
    target_xy: np.ndarray
    instructions: list[str]
    families: list[str]

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        """Number of distinct episodes."""
        return len(np.unique(self.episode))

    def subset(self, rows: np.ndarray) -> 'Samples':
        """Return the samples at ``rows``."""
        return Samples(
            self.pixel_values[rows], self.neighbourhoods[rows], self.centres[rows],
            self.proprio[rows], self.actions[rows], self.instruction[rows], self.episode[rows],
            self.family[rows], self.target_xy[rows], list(self.instructions),
            list(self.families),
        )


_ARRAYS = ('pixel_values', 'neighbourhoods', 'centres', 'proprio', 'actions', 'instruction',
           'episode', 'family', 'target_xy')


def _concat(parts: Sequence[Samples]) -> Samples:
    """Concatenate samples, remapping string indices and renumbering episodes."""
    instructions: list[str] = []
    families: list[str] = []
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in _ARRAYS}
    episode_offset = 0
    for part in parts:
        for name in ('pixel_values', 'neighbourhoods', 'centres', 'proprio', 'actions',
                     'target_xy'):
            arrays[name].append(getattr(part, name))
        for names, key, values in ((instructions, 'instruction', part.instructions),
                                   (families, 'family', part.families)):
            for value in values:
                if value not in names:
                    names.append(value)
            remap = np.array([names.index(v) for v in values], dtype=np.int32)
            arrays[key].append(remap[getattr(part, key)] if len(values) else getattr(part, key))
        arrays['episode'].append(part.episode + episode_offset)
        episode_offset += int(part.episode.max()) + 1 if len(part) else 0
    return Samples(**{k: np.concatenate(v) for k, v in arrays.items()},
                   instructions=instructions, families=families)


def _cache_key(bag: Path, model: Any) -> str:
    files = sorted(f for f in bag.rglob('*') if f.is_file())
    signature = {
        'version': CACHE_VERSION,
        'bag': str(bag.resolve()),
        'files': [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        'vision': [model.config.vision.image_size, model.config.vision.patch_size,
                   list(model.config.vision.image_mean), list(model.config.vision.image_std)],
        'points': model.config.points.to_dict(),
        'horizon': model.config.horizon,
    }
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]


def encode_bag(bag: 'str | Path', model: Any) -> Samples:
    """
    Read a bag and compute every labelled frame's model inputs with ``model``'s preprocessing.

    Raises ``DatasetError`` when the bag has no labelled frame or its chunks are shorter than
    the model's horizon.
    """
    from vla_pruned_ros.tokens.points_3d import observation_groups

    config = model.config
    rows: dict[str, list] = {name: [] for name in _ARRAYS}
    instructions: list[str] = []
    families: list[str] = []
    for number, episode in enumerate(read_episodes(bag)):
        if episode.family not in families:
            families.append(episode.family)
        target = target_position(episode.metadata)
        for frame in episode.frames:
            obs = frame.observation
            if frame.chunk.shape[0] < config.horizon or frame.chunk.shape[1] != config.action_dim:
                raise DatasetError(
                    f'{bag}: action chunks of shape {frame.chunk.shape} do not cover the '
                    f"model's horizon {config.horizon} x {config.action_dim}"
                )
            if obs.ee_pose is None:
                raise DatasetError(f'{bag}: frame at {obs.stamp_ns} ns has no end-effector pose')
            if obs.instruction not in instructions:
                instructions.append(obs.instruction)
            groups = observation_groups(obs, config.points)
            rows['pixel_values'].append(model.vision.preprocess(obs.rgb)[0].numpy())
            rows['neighbourhoods'].append(groups.neighbourhoods)
            rows['centres'].append(groups.centres)
            rows['proprio'].append(np.asarray(obs.ee_pose, np.float32)[:config.proprio_dim])
            rows['actions'].append(frame.chunk[:config.horizon])
            rows['instruction'].append(instructions.index(obs.instruction))
            rows['episode'].append(number)
            rows['family'].append(families.index(episode.family))
            rows['target_xy'].append(target - np.asarray(obs.ee_pose[:2], np.float32))
    if not rows['actions']:
        raise DatasetError(f'{bag} holds no observation with an expert action chunk')
    return Samples(
        pixel_values=np.stack(rows['pixel_values']).astype(np.float16),
        neighbourhoods=np.stack(rows['neighbourhoods']).astype(np.float32),
        centres=np.stack(rows['centres']).astype(np.float32),
        proprio=np.stack(rows['proprio']).astype(np.float32),
        actions=np.stack(rows['actions']).astype(np.float32),
        instruction=np.asarray(rows['instruction'], np.int32),
        episode=np.asarray(rows['episode'], np.int32),
        family=np.asarray(rows['family'], np.int32),
        target_xy=np.stack(rows['target_xy']).astype(np.float32),
        instructions=instructions,
        families=families,
    )


def load_samples(
    paths: Iterable['str | Path'], model: Any, cache_dir: Optional['str | Path'] = None,
    progress: bool = False,
) -> Samples:
    """
    Encode every bag under ``paths`` (see :func:`find_bags`) for ``model``, using a cache.

    With ``cache_dir`` each bag's samples are stored there as ``.npz`` and reused while the
    bag and the model's input configuration are unchanged.
    """
    bags = find_bags(paths)
    parts = []
    iterator: Iterable[Path] = bags
    if progress:
        from tqdm import tqdm

        iterator = tqdm(bags, desc='reading bags', unit='bag')
    for bag in iterator:
        cache = Path(cache_dir) / f'{bag.name}-{_cache_key(bag, model)}.npz' if cache_dir else None
        if cache is not None and cache.is_file():
            with np.load(cache) as data:
                strings = json.loads(str(data['strings']))
                parts.append(Samples(**{k: data[k] for k in _ARRAYS}, **strings))
            continue
        samples = encode_bag(bag, model)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix('.partial.npz')
            strings = {'instructions': samples.instructions, 'families': samples.families}
            np.savez(partial, strings=json.dumps(strings),
                     **{k: getattr(samples, k) for k in _ARRAYS})
            partial.replace(cache)
        parts.append(samples)
    return _concat(parts)
