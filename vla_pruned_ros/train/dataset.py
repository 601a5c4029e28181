"""
Recorded demonstrations -> training samples, through the node's and the bag evaluation's code.

A bag written by ``vla-pruned-ros sim record`` is replayed in time order by
:class:`vla_pruned_ros.eval.bag.BagReplay`: messages are converted with
:mod:`vla_pruned_ros.convert` and synchronised by the node's
:class:`~vla_pruned_ros.sync.ObservationSynchronizer`, and every synchronised
:class:`~vla_pruned_ros.observation.Observation` that has an expert ``ActionChunk`` with the
same stamp becomes one sample. The 3D input is the recorded ``PointCloud2``, the one the
simulator evaluation also feeds the policy.

Model inputs are deterministic per frame, so :func:`load_samples` computes them once
(``model.vision.preprocess``, :func:`~vla_pruned_ros.tokens.points_3d.observation_groups`) and
caches them per bag in an ``.npz`` file keyed by the bag's files and the model's input
configuration.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
import hashlib
import json
from pathlib import Path
from typing import Any, Optional
import warnings

import numpy as np

from vla_pruned_ros.observation import Observation

# Messages of one frame share a stamp; the recorder spaces frames by the control period.
SYNC_SLOP_S = 0.01
CACHE_VERSION = 5
# A 3D point group is labelled 'on the target' when its centre lies within this horizontal
# distance (world frame) of where the named object is (or, without a tracked position, started).
GROUND_RADIUS_M = 0.03
# With a tracked position, groups up to this far above the object's top still count as on it;
# higher ones are the fingers over it.
TOP_MARGIN_M = 0.01
# While the gripper is at least this far (horizontally) from that start position nothing can
# have moved the object and no finger is within GROUND_RADIUS_M of it, so the groups there are
# the object's; nearer frames get no grounding label (a pushed or lifted object has left its
# start, and the push expert lowers its fingers about 7 cm behind the object).
APPROACH_DISTANCE_M = 0.10
# A group is on the named zone (a flat disc painted on the table) when its centre lies inside
# the disc and no higher than this above the table: higher groups are objects or fingers.
ZONE_MAX_HEIGHT_M = 0.01
# Where the object pointer's labels come from: 'start' (the object's start position, frames
# near the gripper unlabelled; every shipped model was trained so) or 'tracked' (its position
# at each frame, /sim/target_position, where the bag has it; else as 'start').
OBJECT_LABELS = ('start', 'tracked')


class DatasetError(ValueError):
    """No bag at a path, a bag without the demonstration topics, or unusable frames."""


@dataclass
class DemoFrame:
    """
    One synchronised observation and the expert's action chunk [horizon, 7] at its stamp.

    ``target_position`` is where the named object's centre was then (world frame), when the
    bag records it (``/sim/target_position``, bags written since the recorder has it).
    """

    observation: Observation
    chunk: np.ndarray
    target_position: Optional[np.ndarray] = None


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
    item = _target_item(metadata)
    if item is None:
        return np.full(2, np.nan, np.float32)
    return np.array([item['x'], item['y']], np.float32)


def _target_item(metadata: dict) -> Optional[dict]:
    """The ``/episode`` metadata's entry of the object the instruction names, None if none."""
    target = str(metadata.get('target') or '')
    return next((item for item in metadata.get('objects') or []
                 if f"{item.get('colour')} {item.get('shape')}" == target), None)


def target_groups(
    centres: np.ndarray, camera_to_world: Optional[np.ndarray], target_xy: np.ndarray,
    ee_xy: np.ndarray,
) -> np.ndarray:
    """
    Which point groups lie on the named object: 1.0 / 0.0 per group, or all NaN when unknown.

    ``centres`` [G, 3] are camera-frame group centres, ``camera_to_world`` the 4x4 transform
    from the ``/episode`` metadata, ``target_xy`` the world (x, y) where the target started
    and ``ee_xy`` the gripper's. NaN when the transform or the target is unknown, or the
    gripper is nearer than ``APPROACH_DISTANCE_M`` (see there). The label of the grounding loss
    (``vla-pruned-ros train --ground-weight``).
    """
    unknown = np.full(len(centres), np.nan, np.float32)
    if camera_to_world is None or not np.isfinite(target_xy).all():
        return unknown
    if np.linalg.norm(np.asarray(target_xy) - np.asarray(ee_xy)) < APPROACH_DISTANCE_M:
        return unknown
    world = _to_world(centres, camera_to_world)
    distance = np.linalg.norm(world[:, :2] - np.asarray(target_xy, np.float64), axis=1)
    return (distance <= GROUND_RADIUS_M).astype(np.float32)


def tracked_target_groups(
    centres: np.ndarray, camera_to_world: Optional[np.ndarray], position: np.ndarray,
    half_height: float,
) -> np.ndarray:
    """
    Which point groups lie on the named object where it is now: 1.0 / 0.0 per group.

    ``position`` is the object's current centre (world frame, from ``/sim/target_position``)
    and ``half_height`` its centre's height above the table at rest. A group counts when its
    centre (``centres`` [G, 3], camera frame) lies within ``GROUND_RADIUS_M`` of it horizontally
    and at most ``TOP_MARGIN_M`` above its top, so every frame is labelled, also while the
    gripper pushes or lifts the object (:func:`target_groups` has to leave those out). All NaN
    when the transform or the position is unknown.
    """
    if camera_to_world is None or not np.isfinite(position).all():
        return np.full(len(centres), np.nan, np.float32)
    return object_groups(_to_world(centres, camera_to_world), position, half_height)


def object_groups(world: np.ndarray, position: np.ndarray, half_height: float) -> np.ndarray:
    """The rule of :func:`tracked_target_groups` on world-frame centres [G, 3]: 1.0 / 0.0."""
    position = np.asarray(position, np.float64)
    near = np.linalg.norm(world[:, :2] - position[:2], axis=1) <= GROUND_RADIUS_M
    below_top = world[:, 2] <= position[2] + half_height + TOP_MARGIN_M
    return (near & below_top).astype(np.float32)


def target_half_height(metadata: dict) -> float:
    """Height of the named object's centre above the table at rest (m), NaN when unknown."""
    item = _target_item(metadata)
    if item is None or not item.get('size'):
        return float('nan')
    return _half_height(item)


def _half_height(item: dict) -> float:
    """Height of a metadata object's centre above the table at rest (m)."""
    # sim.scene.ObjectSpec.half_height's rule (that module needs MuJoCo): spheres are sized by
    # their radius, boxes and cylinders by their half height last.
    size = item['size']
    return float(size[0] if item.get('shape') == 'sphere' else size[-1])


def named_zone(metadata: dict) -> np.ndarray:
    """World (x, y, radius) of the zone the instruction names (push), NaN when none."""
    colour = metadata.get('zone')
    for item in metadata.get('zones') or []:
        if colour and item.get('colour') == colour:
            return np.array([item['x'], item['y'], item['radius']], np.float32)
    return np.full(3, np.nan, np.float32)


def zone_groups(
    centres: np.ndarray, camera_to_world: Optional[np.ndarray], zone: np.ndarray
) -> np.ndarray:
    """
    Which point groups lie on the named zone: 1.0 / 0.0 per group, or all NaN when unknown.

    ``zone`` is :func:`named_zone`'s (x, y, radius). A group counts when its centre (camera
    frame, mapped to the world by ``camera_to_world``) is inside the disc and at most
    ``ZONE_MAX_HEIGHT_M`` above the table. The label of the 'zone' pointer.
    """
    if camera_to_world is None or not np.isfinite(zone).all():
        return np.full(len(centres), np.nan, np.float32)
    return _on_zone(_to_world(centres, camera_to_world), zone).astype(np.float32)


def _on_zone(world: np.ndarray, zone: 'np.ndarray | Sequence[float]') -> np.ndarray:
    """Which world-frame centres [G, 3] lie on the flat disc ``zone`` (x, y, radius)."""
    inside = np.linalg.norm(world[:, :2] - np.asarray(zone[:2]), axis=1) <= zone[2]
    return inside & (world[:, 2] <= ZONE_MAX_HEIGHT_M)


# A group lies on an object when its centre is within this of the object's footprint (m).
FOOTPRINT_MARGIN_M = 0.01
# Shapes drawn as boxes (their metadata size is three half-extents, the footprint a rectangle).
BOX_SHAPES = ('cube', 'block')
ZONE_KIND = 'zone'


def _on_object(world: np.ndarray, item: dict, centre: np.ndarray) -> np.ndarray:
    """Which world-frame centres [G, 3] lie on the object ``item`` whose centre is ``centre``."""
    size = item['size']
    offset = world[:, :2] - centre[:2]
    if item.get('shape') in BOX_SHAPES:
        cos, sin = np.cos(item.get('yaw', 0.0)), np.sin(item.get('yaw', 0.0))
        along = np.abs(offset[:, 0] * cos + offset[:, 1] * sin)
        across = np.abs(-offset[:, 0] * sin + offset[:, 1] * cos)
        margin = FOOTPRINT_MARGIN_M
        inside = (along <= size[0] + margin) & (across <= size[1] + margin)
    else:
        inside = np.linalg.norm(offset, axis=1) <= size[0] + FOOTPRINT_MARGIN_M
    return inside & (world[:, 2] <= centre[2] + _half_height(item) + TOP_MARGIN_M)


def attribute_groups(
    centres: np.ndarray, camera_to_world: Optional[np.ndarray], metadata: dict,
    colours: Sequence[str], kinds: Sequence[str], target_now: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    What each point group lies on, as class indices: (colour [G], kind [G]) int8.

    The labels of the attribute score (``pointer_score='attribute'``): an object of the
    ``/episode`` metadata (its colour, its shape as the kind) when the group's centre
    (``centres`` [G, 3], camera frame) lies over its footprint and below its top; a zone
    (its colour, kind 'zone') when inside the disc on the table; else the 'none' class of
    each (index ``len(colours)`` / ``len(kinds)``). Objects stand where they started, the
    named one where ``target_now`` (world frame, the recorded track) says when given. -1
    where unknown: no transform, two objects claim the group, or a class outside
    ``colours`` / ``kinds``.
    """
    unknown = np.full(len(centres), -1, np.int8)
    if camera_to_world is None or not metadata.get('objects'):
        return unknown, unknown.copy()
    world = _to_world(centres, camera_to_world)
    colour = np.full(len(centres), len(colours), np.int8)
    kind = np.full(len(centres), len(kinds), np.int8)
    claims = np.zeros(len(centres), np.int32)
    named = _target_item(metadata)

    def claim(mask: np.ndarray, colour_name: str, kind_name: Optional[str]) -> None:
        claims[mask] += 1
        colour[mask] = colours.index(colour_name) if colour_name in colours else -1
        kind[mask] = kinds.index(kind_name) if kind_name in kinds else -1

    for item in metadata['objects']:
        if not item.get('size'):
            continue
        centre = np.array([item['x'], item['y'], _half_height(item)], np.float64)
        if item is named and target_now is not None and np.isfinite(target_now).all():
            centre = np.asarray(target_now, np.float64)
        claim(_on_object(world, item, centre), item.get('colour'), item.get('shape'))
    for zone in metadata.get('zones') or []:
        claim(_on_zone(world, (zone['x'], zone['y'], zone['radius'])), zone.get('colour'),
              ZONE_KIND)
    colour[claims > 1] = -1
    kind[claims > 1] = -1
    return colour, kind


def named_attributes(
    metadata: dict, colours: Sequence[str], kinds: Sequence[str]
) -> np.ndarray:
    """
    The class indices of the colour and the kind the instruction names, per pointer target.

    [2, 2] int8 in ``POINTER_TARGETS`` order (object, zone); -1 where unknown or nothing is
    named (no zone outside push).
    """
    named = np.full((2, 2), -1, np.int8)
    item = _target_item(metadata)
    if item is not None:
        named[0] = [colours.index(item['colour']) if item.get('colour') in colours else -1,
                    kinds.index(item['shape']) if item.get('shape') in kinds else -1]
    zone = metadata.get('zone')
    if zone:
        named[1] = [colours.index(zone) if zone in colours else -1,
                    kinds.index(ZONE_KIND) if ZONE_KIND in kinds else -1]
    return named


def _to_world(centres: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    transform = np.asarray(camera_to_world, np.float64)
    return np.asarray(centres, np.float64) @ transform[:3, :3].T + transform[:3, 3]


def _camera_to_world(metadata: dict) -> Optional[np.ndarray]:
    transform = metadata.get('camera_to_world')
    if transform is None:
        return None
    transform = np.asarray(transform, np.float64)
    return transform if transform.shape == (4, 4) and np.isfinite(transform).all() else None


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


def read_episodes(bag_path: 'str | Path') -> Iterator[DemoEpisode]:
    """
    Replay a demonstration bag and yield its episodes with their labelled frames, in time order.

    The bag is read by :class:`vla_pruned_ros.eval.bag.BagReplay`, the reader the bag
    evaluation uses (topics found by type, messages converted and synchronised as the node
    does, bad messages skipped and counted), with the 3D input from the recorded PointCloud2.
    Every observation with an expert ``ActionChunk`` of the same stamp is a frame. Raises
    ``DatasetError`` when the bag lacks rgb, point cloud, pose, instruction or action chunks.
    """
    from vla_pruned_ros.eval.bag import BagReplay
    from vla_pruned_ros.eval.errors import EvalError
    from vla_pruned_ros.eval.replay import ReplayOptions, plan_bag
    from vla_pruned_ros.eval.topics import ACTION_CHUNK

    try:
        topics, plan = plan_bag(bag_path, ReplayOptions(points_from='cloud'), needs_pose=True)
    except EvalError as err:
        raise DatasetError(f'{bag_path} lacks the demonstration topics: {err}') from None
    if plan.action_type != ACTION_CHUNK or not plan.instruction:
        raise DatasetError(f'{bag_path} lacks the demonstration topics: expert ActionChunk and '
                           f'instruction topics are needed (found {plan.roles()})')
    replay = BagReplay(bag_path, plan, topics, slop_s=SYNC_SLOP_S)
    track = read_target_track(bag_path)
    episode: Optional[DemoEpisode] = None
    number = -1
    try:
        for frame in replay.frames():
            if frame.episode != number:
                if episode is not None and episode.frames:
                    yield episode
                number = frame.episode
                episode = DemoEpisode(metadata=dict(replay.summary.episodes[number].metadata))
            # The chunk of a frame's stamp is read with the frame's other messages.
            chunk = replay.summary.recorded.pop(frame.observation.stamp_ns, None)
            if chunk is not None:
                position = track.get(frame.observation.stamp_ns)
                episode.frames.append(DemoFrame(frame.observation, chunk, position))
    except EvalError as err:  # nothing usable in the bag
        raise DatasetError(str(err)) from None
    skipped = {topic: counts.skipped for topic, counts in replay.summary.counts.items()
               if counts.skipped}
    if skipped:
        warnings.warn(f'{bag_path}: unusable messages skipped per topic: {skipped}',
                      stacklevel=2)
    if episode is not None and episode.frames:
        yield episode


def read_target_track(bag_path: 'str | Path') -> dict[int, np.ndarray]:
    """
    The named object's recorded centre per stamp: {stamp_ns: world xyz}; empty when not recorded.

    Read from ``/sim/target_position`` (``sim record`` writes it for every observation);
    messages that do not decode are skipped.
    """
    from vla_pruned_ros.convert import package_typestore, stamp_to_ns
    from vla_pruned_ros.eval.bag import decode_errors, open_reader
    from vla_pruned_ros.eval.topics import POINT, TARGET_POSITION_TOPIC

    typestore = package_typestore()
    track: dict[int, np.ndarray] = {}
    reader = open_reader(bag_path)
    try:
        connections = [c for c in reader.connections
                       if c.topic == TARGET_POSITION_TOPIC and c.msgtype == POINT]
        if not connections:  # rosbags reads every topic when given none
            return track
        for connection, _, raw in reader.messages(connections=connections):
            try:
                msg = typestore.deserialize_cdr(raw, connection.msgtype)
            except decode_errors():
                continue
            point = msg.point
            xyz = (point.x, point.y, point.z)
            track[stamp_to_ns(msg.header.stamp)] = np.array(xyz, np.float64)
    finally:
        reader.close()
    return track


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
    auxiliary localisation loss, see :func:`target_position`). ``target_groups`` [N, G] marks
    the point groups on that object (1/0, NaN rows where unknown; see :func:`target_groups`),
    ``zone_groups`` [N, G] those on the zone a push instruction names (:func:`zone_groups`).
    For a model with the attribute score, ``named_attributes`` [N, 2, 2] and ``group_colour``
    / ``group_kind`` [N, G] hold its class labels (:func:`named_attributes`,
    :func:`attribute_groups`; -1 throughout for other models).
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
    target_groups: np.ndarray
    zone_groups: np.ndarray
    instructions: list[str]
    families: list[str]
    named_attributes: Optional[np.ndarray] = None
    group_colour: Optional[np.ndarray] = None
    group_kind: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        # Samples cached before the attribute labels existed: unknown throughout.
        count, groups = self.target_groups.shape
        if self.named_attributes is None:
            self.named_attributes = np.full((count, 2, 2), -1, np.int8)
        if self.group_colour is None:
            self.group_colour = np.full((count, groups), -1, np.int8)
        if self.group_kind is None:
            self.group_kind = np.full((count, groups), -1, np.int8)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        """Number of distinct episodes."""
        return len(np.unique(self.episode))

    def group_labels(self, target: str) -> np.ndarray:
        """The per-group labels [N, G] of a pointer target: 'object' or 'zone'."""
        if target == 'object':
            return self.target_groups
        if target == 'zone':
            return self.zone_groups
        raise DatasetError(f"no group labels for {target!r}; known: 'object', 'zone'")

    def subset(self, rows: np.ndarray) -> 'Samples':
        """Return the samples at ``rows``."""
        return Samples(
            self.pixel_values[rows], self.neighbourhoods[rows], self.centres[rows],
            self.proprio[rows], self.actions[rows], self.instruction[rows], self.episode[rows],
            self.family[rows], self.target_xy[rows], self.target_groups[rows],
            self.zone_groups[rows], list(self.instructions), list(self.families),
            self.named_attributes[rows], self.group_colour[rows], self.group_kind[rows],
        )


_ARRAYS = ('pixel_values', 'neighbourhoods', 'centres', 'proprio', 'actions', 'instruction',
           'episode', 'family', 'target_xy', 'target_groups', 'zone_groups', 'named_attributes',
           'group_colour', 'group_kind')
# Arrays a cache written before they existed may lack (Samples fills them in).
_OPTIONAL_ARRAYS = ('named_attributes', 'group_colour', 'group_kind')
# Arrays of indices that concatenation has to remap or renumber.
_INDEX_ARRAYS = ('instruction', 'family', 'episode')


def concat_samples(parts: Sequence[Samples]) -> Samples:
    """Concatenate samples, remapping string indices and renumbering episodes."""
    instructions: list[str] = []
    families: list[str] = []
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in _ARRAYS}
    episode_offset = 0
    for part in parts:
        for name in _ARRAYS:
            if name not in _INDEX_ARRAYS:
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


def _cache_key(bag: Path, model: Any, object_labels: str = 'start') -> str:
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
    if object_labels != 'start':  # (so the caches of 'start' keep their names)
        signature['object_labels'] = object_labels
    classes = _attribute_classes(model)
    if classes is not None:  # (likewise for models without the attribute score)
        signature['attribute_classes'] = classes
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]


def _attribute_classes(model: Any) -> Optional[list[list[str]]]:
    """The colour and kind class names of a model with the attribute score, else None."""
    config = model.config
    if getattr(config, 'pointer_score', None) != 'attribute':
        return None
    return [list(config.pointer_colours), list(config.pointer_kinds)]


def encode_bag(bag: 'str | Path', model: Any, object_labels: str = 'start') -> Samples:
    """
    Read a bag and compute every labelled frame's model inputs with ``model``'s preprocessing.

    ``object_labels`` (:data:`OBJECT_LABELS`) says how the object pointer's per-group labels
    are made: :func:`target_groups` from the start position, or with 'tracked'
    :func:`tracked_target_groups` from the recorded position of each frame.

    Raises ``DatasetError`` when the bag has no labelled frame or its chunks are shorter than
    the model's horizon.
    """
    from vla_pruned_ros.tokens.points_3d import observation_groups

    if object_labels not in OBJECT_LABELS:
        raise DatasetError(f'object_labels must be one of {OBJECT_LABELS}, got {object_labels!r}')
    config = model.config
    classes = _attribute_classes(model)
    rows: dict[str, list] = {name: [] for name in _ARRAYS}
    instructions: list[str] = []
    families: list[str] = []
    for number, episode in enumerate(read_episodes(bag)):
        if episode.family not in families:
            families.append(episode.family)
        target = target_position(episode.metadata)
        half_height = target_half_height(episode.metadata)
        camera_to_world = _camera_to_world(episode.metadata)
        zone = named_zone(episode.metadata)
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
            ee_xy = np.asarray(obs.ee_pose[:2], np.float32)
            rows['target_xy'].append(target - ee_xy)
            tracked = object_labels == 'tracked' and frame.target_position is not None
            if tracked and np.isfinite(half_height):
                labels = tracked_target_groups(
                    groups.centres, camera_to_world, frame.target_position, half_height)
            else:
                labels = target_groups(groups.centres, camera_to_world, target, ee_xy)
            rows['target_groups'].append(labels)
            rows['zone_groups'].append(zone_groups(groups.centres, camera_to_world, zone))
            if classes is not None:
                rows['named_attributes'].append(named_attributes(episode.metadata, *classes))
                colour, kind = attribute_groups(groups.centres, camera_to_world,
                                                episode.metadata, *classes,
                                                target_now=frame.target_position)
                rows['group_colour'].append(colour)
                rows['group_kind'].append(kind)
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
        target_groups=np.stack(rows['target_groups']).astype(np.float32),
        zone_groups=np.stack(rows['zone_groups']).astype(np.float32),
        instructions=instructions,
        families=families,
        **({} if classes is None else {
            name: np.stack(rows[name]).astype(np.int8) for name in _OPTIONAL_ARRAYS}),
    )


def read_cached_samples(path: 'str | Path') -> Samples:
    """The samples of one bag as :func:`load_samples` cached them (a ``.npz`` file)."""
    with np.load(path) as data:
        strings = json.loads(str(data['strings']))
        return Samples(**{k: data[k] for k in _ARRAYS
                          if k in data.files or k not in _OPTIONAL_ARRAYS}, **strings)


def load_samples(
    paths: Iterable['str | Path'], model: Any, cache_dir: Optional['str | Path'] = None,
    progress: bool = False, object_labels: str = 'start',
) -> Samples:
    """
    Encode every bag under ``paths`` (see :func:`find_bags`) for ``model``, using a cache.

    With ``cache_dir`` each bag's samples are stored there as ``.npz`` and reused while the
    bag, the model's input configuration and ``object_labels`` (see :func:`encode_bag`) are
    unchanged.
    """
    bags = find_bags(paths)
    parts = []
    iterator: Iterable[Path] = bags
    if progress:
        from tqdm import tqdm

        iterator = tqdm(bags, desc='reading bags', unit='bag')
    for bag in iterator:
        key = _cache_key(bag, model, object_labels)
        cache = Path(cache_dir) / f'{bag.name}-{key}.npz' if cache_dir else None
        if cache is not None and cache.is_file():
            parts.append(read_cached_samples(cache))
            continue
        samples = encode_bag(bag, model, object_labels)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix('.partial.npz')
            strings = {'instructions': samples.instructions, 'families': samples.families}
            np.savez(partial, strings=json.dumps(strings),
                     **{k: getattr(samples, k) for k in _ARRAYS})
            partial.replace(cache)
        parts.append(samples)
    return concat_samples(parts)
