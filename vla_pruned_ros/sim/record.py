"""
Record scripted-expert episodes as a rosbag2 (MCAP or SQLite3), without ROS, via ``rosbags``.

Topics (camera frame ``camera_color_optical_frame``, poses and twists in ``world``):

==============================  ===================================  =========================
topic                           type                                 when
==============================  ===================================  =========================
/episode                        std_msgs/msg/String (JSON metadata)  episode start
/instruction                    std_msgs/msg/String                  episode start
/camera/color/image_raw         sensor_msgs/msg/Image (rgb8)         every observation
/camera/depth/image_rect_raw    sensor_msgs/msg/Image (16UC1, mm)    every observation
/camera/color/camera_info       sensor_msgs/msg/CameraInfo           every observation
/camera/depth/points            sensor_msgs/msg/PointCloud2 (xyz)    every observation
/ee_pose                        geometry_msgs/msg/PoseStamped        every observation
/expert/twist                   geometry_msgs/msg/TwistStamped       every step (action / dt)
/expert/action_chunk            vla_pruned_ros/msg/ActionChunk       every step (next H)
/sim/target_position            geometry_msgs/msg/PointStamped       every observation
==============================  ===================================  =========================

``/sim/target_position`` is simulator truth, not a sensor: where the named object's centre is
(``world``) at each observation. The policy node never reads it; training reads it for the
pointer's per-group labels while the object moves (:mod:`vla_pruned_ros.train.dataset`).

An episode of T steps has T + 1 observations; the last one (the outcome) has no action.
Header stamps equal the observation's sim stamp and the bag timestamp of every message. Each
episode starts ``EPISODE_GAP_NS`` after the previous one ended, so episodes never overlap.

The recorded actions are the expert's clean labels; with noise on, the executed (perturbed)
actions only shape which states are visited (see :mod:`vla_pruned_ros.sim.expert`).
With a driving policy (``sim record --policy MODEL``, :mod:`vla_pruned_ros.sim.dagger`) the
policy's actions are executed and the expert's labels of the states it reaches are recorded:
DAgger data, in the same format (the ``/episode`` metadata says ``"driver": "policy"``).
With excursions (``sim record --excursions P``, :mod:`vla_pruned_ros.sim.excursion`) random
detours break the expert's path now and then and the expert's recoveries are recorded
(``"driver": "excursion"``). With object nudges (``sim record --nudges P``,
:mod:`vla_pruned_ros.sim.nudge`) the named object is moved a few centimetres now and then
while the gripper works on it (``"driver": "nudge"``, with the episode's ``nudges``).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from vla_pruned_ros.convert import (
    depth_to_points,
    intrinsics_to_camera_info,
    ns_to_stamp,
    numpy_to_image,
    numpy_to_pointcloud2,
    package_typestore,
    rosbags_types,
)
from vla_pruned_ros.eval.topics import POINT, TARGET_POSITION_TOPIC
from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sim.dagger import PolicyDriver
from vla_pruned_ros.sim.env import (
    ACTION_DIM,
    ACTION_NAMES,
    ACTION_SPACE,
    CAMERA_FRAME_ID,
    REFERENCE_CONTROL_DT,
    SIM_START_NS,
    WORLD_FRAME_ID,
    TabletopEnv,
)
from vla_pruned_ros.sim.excursion import ExcursionDriver
from vla_pruned_ros.sim.expert import (
    TOLERANCES,
    Episode,
    action_chunks,
    make_expert,
    run_episode,
)
from vla_pruned_ros.sim.nudge import ObjectNudgeDriver
from vla_pruned_ros.sim.tasks import FAMILIES, SPLITS

STORAGES = ('mcap', 'sqlite3')
# What may decide the executed actions instead of the expert (the expert always labels).
Driver = Union[PolicyDriver, ExcursionDriver, ObjectNudgeDriver]
CHUNK_HORIZON = 8
EPISODE_GAP_NS = 1_000_000_000
# Depth pixels farther than this do not fit 16UC1 millimetres and are written as 0 (invalid).
MAX_DEPTH_MM = 65535

TOPICS: dict[str, str] = {
    '/episode': 'std_msgs/msg/String',
    '/instruction': 'std_msgs/msg/String',
    '/camera/color/image_raw': 'sensor_msgs/msg/Image',
    '/camera/depth/image_rect_raw': 'sensor_msgs/msg/Image',
    '/camera/color/camera_info': 'sensor_msgs/msg/CameraInfo',
    '/camera/depth/points': 'sensor_msgs/msg/PointCloud2',
    '/ee_pose': 'geometry_msgs/msg/PoseStamped',
    '/expert/twist': 'geometry_msgs/msg/TwistStamped',
    '/expert/action_chunk': 'vla_pruned_ros/msg/ActionChunk',
    TARGET_POSITION_TOPIC: POINT,
}


class RecordError(ValueError):
    """Bad recording arguments: existing output, unknown family, split or storage."""


@dataclass
class RecordSummary:
    """What a recording wrote: the bag path, per-episode metadata and message counts."""

    path: Path
    storage: str
    episodes: list[dict] = field(default_factory=list)
    messages: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Fraction of recorded episodes solved by whoever acted (expert, or policy for DAgger)."""
        if not self.episodes:
            return 0.0
        return sum(e['success'] for e in self.episodes) / len(self.episodes)

    @property
    def size_bytes(self) -> int:
        """Total size of the files in the bag folder."""
        return sum(f.stat().st_size for f in self.path.rglob('*') if f.is_file())


def depth_to_millimetres(depth_m: np.ndarray) -> np.ndarray:
    """Return a metres depth image as uint16 millimetres (16UC1), 0 where invalid."""
    depth = np.asarray(depth_m, dtype=np.float64)
    with np.errstate(invalid='ignore'):
        millimetres = np.where(np.isfinite(depth) & (depth > 0), np.round(depth * 1000.0), 0.0)
    millimetres[millimetres > MAX_DEPTH_MM] = 0
    return millimetres.astype(np.uint16)


class _BagWriter:
    """Serialise messages into one rosbags writer, one connection per topic."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.typestore = package_typestore()
        self.types = rosbags_types()
        self.counts: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self._connections = {
            topic: writer.add_connection(topic, msgtype, typestore=self.typestore)
            for topic, msgtype in TOPICS.items()
        }

    def write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        data = self.typestore.serialize_cdr(msg, TOPICS[topic])
        self.writer.write(self._connections[topic], stamp_ns, data)
        self.counts[topic] += 1

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        return self.types['std_msgs/msg/Header'](
            stamp=ns_to_stamp(stamp_ns, self.types), frame_id=frame_id
        )

    def string(self, text: str) -> Any:
        return self.types['std_msgs/msg/String'](data=text)

    def pose(self, pose: np.ndarray, stamp_ns: int) -> Any:
        t = self.types
        x, y, z, qx, qy, qz, qw = (float(v) for v in pose)
        return t['geometry_msgs/msg/PoseStamped'](
            header=self.header(stamp_ns, WORLD_FRAME_ID),
            pose=t['geometry_msgs/msg/Pose'](
                position=t['geometry_msgs/msg/Point'](x=x, y=y, z=z),
                orientation=t['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw),
            ),
        )

    def point(self, position: np.ndarray, stamp_ns: int) -> Any:
        t = self.types
        x, y, z = (float(v) for v in position)
        return t['geometry_msgs/msg/PointStamped'](
            header=self.header(stamp_ns, WORLD_FRAME_ID),
            point=t['geometry_msgs/msg/Point'](x=x, y=y, z=z),
        )

    def twist(self, action: np.ndarray, dt: float, stamp_ns: int) -> Any:
        t = self.types
        velocity = np.asarray(action[:6], dtype=np.float64) / dt
        vector = t['geometry_msgs/msg/Vector3']
        return t['geometry_msgs/msg/TwistStamped'](
            header=self.header(stamp_ns, WORLD_FRAME_ID),
            twist=t['geometry_msgs/msg/Twist'](
                linear=vector(x=velocity[0], y=velocity[1], z=velocity[2]),
                angular=vector(x=velocity[3], y=velocity[4], z=velocity[5]),
            ),
        )

    def chunk(self, chunk: np.ndarray, dt: float, stamp_ns: int) -> Any:
        horizon, dim = chunk.shape
        return self.types['vla_pruned_ros/msg/ActionChunk'](
            header=self.header(stamp_ns, WORLD_FRAME_ID),
            horizon=horizon,
            action_dim=dim,
            dt=float(dt),
            action_space=ACTION_SPACE,
            dimension_names=list(ACTION_NAMES),
            data=np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1),
        )

    def observation(self, obs: Observation, points_stride: int) -> None:
        stamp, frame = obs.stamp_ns, obs.frame_id
        self.write(
            '/camera/color/image_raw', numpy_to_image(obs.rgb, 'rgb8', stamp, frame), stamp
        )
        depth_mm = depth_to_millimetres(obs.depth)
        self.write(
            '/camera/depth/image_rect_raw',
            numpy_to_image(depth_mm, '16UC1', stamp, frame),
            stamp,
        )
        self.write(
            '/camera/color/camera_info',
            intrinsics_to_camera_info(obs.intrinsics, stamp, frame),
            stamp,
        )
        points = obs.points
        if points is None:
            points = depth_to_points(obs.depth, obs.intrinsics, stride=points_stride)
        self.write('/camera/depth/points', numpy_to_pointcloud2(points, None, stamp, frame), stamp)
        self.write('/ee_pose', self.pose(obs.ee_pose, stamp), stamp)


def _write_episode(
    bag: _BagWriter, episode: Episode, metadata: dict, dt: float, points_stride: int
) -> None:
    first = episode.observations[0].stamp_ns
    bag.write('/episode', bag.string(json.dumps(metadata, sort_keys=True)), first)
    bag.write('/instruction', bag.string(metadata['instruction']), first)
    actions = np.asarray(episode.actions, dtype=np.float64).reshape(-1, ACTION_DIM)
    chunks = action_chunks(actions, CHUNK_HORIZON) if len(actions) else actions
    for t, obs in enumerate(episode.observations):
        bag.observation(obs, points_stride)
        if t < len(episode.target_positions):
            position = bag.point(episode.target_positions[t], obs.stamp_ns)
            bag.write(TARGET_POSITION_TOPIC, position, obs.stamp_ns)
        if t < len(actions):
            bag.write('/expert/twist', bag.twist(actions[t], dt, obs.stamp_ns), obs.stamp_ns)
            bag.write('/expert/action_chunk', bag.chunk(chunks[t], dt, obs.stamp_ns), obs.stamp_ns)


def record_episodes(
    out_path: 'str | Path',
    families: Sequence[str],
    episodes: int,
    split: str = 'train',
    seed: int = 0,
    storage: str = 'mcap',
    image_size: tuple[int, int] = (224, 224),
    control_dt: float = REFERENCE_CONTROL_DT,
    points_stride: int = 4,
    translation_noise: float = 0.003,
    yaw_noise: float = 0.015,
    compress: bool = True,
    progress: bool = False,
    driver: Optional[Driver] = None,
    expert_tolerance: str = 'strict',
) -> RecordSummary:
    """
    Roll out ``episodes`` expert episodes per family and write them to a new bag.

    Episode i of each family uses task seed ``seed + i``; families alternate (reach 0,
    push 0, pick 0, reach 1, ...). ``out_path`` is the bag folder and must not exist.
    ``compress`` compresses with zstd: MCAP chunks (read transparently by any MCAP reader) or,
    for sqlite3, each message. ``progress`` shows a tqdm bar. With a ``driver``
    (:class:`vla_pruned_ros.sim.dagger.PolicyDriver`) the policy acts and the expert only labels
    (DAgger data); its policy must read images of ``image_size``. With an
    :class:`vla_pruned_ros.sim.excursion.ExcursionDriver` random detours interrupt the expert,
    with an :class:`vla_pruned_ros.sim.nudge.ObjectNudgeDriver` the named object is moved.
    ``expert_tolerance`` is the experts' alignment tolerance
    (:data:`vla_pruned_ros.sim.expert.TOLERANCES`). Raises ``RecordError`` on bad arguments.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    out = Path(out_path)
    if out.exists():
        raise RecordError(f'output {out} already exists; rosbag2 writes a new folder')
    if storage not in STORAGES:
        raise RecordError(f'unknown storage {storage!r}; choose one of {list(STORAGES)}')
    if split not in SPLITS:
        raise RecordError(f'unknown split {split!r}; choose one of {list(SPLITS)}')
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise RecordError(f'unknown or no families {list(families)}; known: {list(FAMILIES)}')
    if int(episodes) < 1:
        raise RecordError(f'episodes must be at least 1, got {episodes}')
    if expert_tolerance not in TOLERANCES:
        raise RecordError(f'unknown expert tolerance {expert_tolerance!r}; choose one of '
                          f'{list(TOLERANCES)}')
    if isinstance(driver, PolicyDriver):
        size = driver.policy.config.vision.image_size
        if tuple(image_size) != (size, size):
            raise RecordError(f'the driving policy reads {size} x {size} images, the recording '
                              f'renders {image_size[0]} x {image_size[1]}')
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    jobs = [(family, int(seed) + i) for i in range(int(episodes)) for family in families]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit='episode', desc=f'recording {out.name}')

    summary = RecordSummary(path=out, storage=storage)
    start_ns = SIM_START_NS
    writer = Writer(out, version=9, storage_plugin=plugin)
    if compress:
        mode = CompressionMode.STORAGE if storage == 'mcap' else CompressionMode.MESSAGE
        writer.set_compression(mode, CompressionFormat.ZSTD)
    writer.open()
    try:
        bag = _BagWriter(writer)
        for index, (family, task_seed) in enumerate(jobs):
            with TabletopEnv(
                family, task_seed, split, image_size=image_size, control_dt=control_dt,
                points_stride=points_stride, start_ns=start_ns,
            ) as env:
                expert = make_expert(family, translation_noise, yaw_noise, seed=task_seed,
                                     tolerance=expert_tolerance)
                episode = run_episode(env, expert, driver=driver)
                metadata = {
                    'index': index,
                    **episode.task_metadata,
                    'success': episode.success,
                    'steps': episode.steps,
                    'control_dt': env.control_dt,
                    'chunk_horizon': CHUNK_HORIZON,
                    'image_size': list(env.image_size),
                    'translation_noise': translation_noise,
                    'yaw_noise': yaw_noise,
                    'driver': 'expert',
                    **(driver.describe() if driver is not None else {}),
                    'expert_tolerance': expert_tolerance,
                    'camera_frame': CAMERA_FRAME_ID,
                    'world_frame': WORLD_FRAME_ID,
                    'camera_to_world': env.camera_to_world().round(6).tolist(),
                    'start_ns': episode.observations[0].stamp_ns,
                    'end_ns': episode.observations[-1].stamp_ns,
                }
                _write_episode(bag, episode, metadata, env.control_dt, points_stride)
            summary.episodes.append(metadata)
            start_ns = metadata['end_ns'] + EPISODE_GAP_NS
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f'{summary.success_rate:.0%}')
        writer.set_custom_data('vla_pruned_ros.episodes', str(len(summary.episodes)))
        summary.messages = dict(bag.counts)
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    return summary


def read_episode_metadata(bag_path: 'str | Path') -> list[dict]:
    """Return the JSON metadata of every episode in a recorded bag, in time order."""
    from rosbags.rosbag2 import Reader

    typestore = package_typestore()
    with Reader(Path(bag_path)) as reader:
        connections = [c for c in reader.connections if c.topic == '/episode']
        return [
            json.loads(typestore.deserialize_cdr(raw, c.msgtype).data)
            for c, _, raw in reader.messages(connections=connections)
        ]
