"""Hand-made rosbag2 files for the evaluation tests: any topic names, rates and corruptions."""

from pathlib import Path

import numpy as np

from vla_pruned_ros.convert import (
    intrinsics_to_camera_info,
    ns_to_stamp,
    numpy_to_image,
    numpy_to_pointcloud2,
    package_typestore,
    rosbags_types,
)
from vla_pruned_ros.observation import Observation
from vla_pruned_ros.sim.record import depth_to_millimetres

IMAGE = 'sensor_msgs/msg/Image'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
CLOUD = 'sensor_msgs/msg/PointCloud2'
STRING = 'std_msgs/msg/String'
POSE = 'geometry_msgs/msg/PoseStamped'
CHUNK = 'vla_pruned_ros/msg/ActionChunk'
STATS = 'vla_pruned_ros/msg/PruningStats'
# Bag times start here, like the simulator's recordings.
T0 = 1_704_067_200 * 1_000_000_000
MS = 1_000_000

REALSENSE = {
    'rgb': '/camera/camera/color/image_raw',
    'depth': '/camera/camera/aligned_depth_to_color/image_raw',
    'info': '/camera/camera/color/camera_info',
    'cloud': '/camera/camera/depth/color/points',
}


class BagBuilder:
    """Collect messages (or raw, possibly corrupted, bytes) and write them as one rosbag2."""

    def __init__(self) -> None:
        self.typestore = package_typestore()
        self.types = rosbags_types()
        self.entries: list = []  # (bag time, order, topic, msgtype, raw bytes)
        # Added to the bag time of the next messages (header stamps stay as given).
        self.log_offset_ns = 0

    def add(self, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
        self.add_raw(topic, msgtype, stamp_ns, bytes(self.typestore.serialize_cdr(msg, msgtype)))

    def add_raw(self, topic: str, msgtype: str, stamp_ns: int, raw: bytes) -> None:
        log_ns = stamp_ns + self.log_offset_ns
        self.entries.append((log_ns, len(self.entries), topic, msgtype, raw))

    def header(self, stamp_ns: int):
        return self.types['std_msgs/msg/Header'](stamp=ns_to_stamp(stamp_ns), frame_id='cam')

    def rgb(self, topic: str, obs: Observation, stamp_ns: int) -> None:
        self.add(topic, IMAGE, stamp_ns, numpy_to_image(obs.rgb, 'rgb8', stamp_ns, 'cam'))

    def depth(self, topic: str, obs: Observation, stamp_ns: int, step=None) -> None:
        image = numpy_to_image(depth_to_millimetres(obs.depth), '16UC1', stamp_ns, 'cam')
        if step is not None:
            image.step = step  # a driver bug: the data no longer fits step x height
        self.add(topic, IMAGE, stamp_ns, image)

    def info(self, topic: str, obs: Observation, stamp_ns: int) -> None:
        self.add(topic, CAMERA_INFO, stamp_ns,
                 intrinsics_to_camera_info(obs.intrinsics, stamp_ns, 'cam'))

    def cloud(self, topic: str, obs: Observation, stamp_ns: int) -> None:
        self.add(topic, CLOUD, stamp_ns, numpy_to_pointcloud2(obs.cloud(stride=2), None,
                                                              stamp_ns, 'cam'))

    def string(self, topic: str, text: str, stamp_ns: int) -> None:
        self.add(topic, STRING, stamp_ns, self.types[STRING](data=text))

    def pose(self, topic: str, pose, stamp_ns: int) -> None:
        t = self.types
        x, y, z, qx, qy, qz, qw = (float(v) for v in pose)
        self.add(topic, POSE, stamp_ns, t[POSE](
            header=self.header(stamp_ns),
            pose=t['geometry_msgs/msg/Pose'](
                position=t['geometry_msgs/msg/Point'](x=x, y=y, z=z),
                orientation=t['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw),
            ),
        ))

    def chunk(self, topic: str, actions, stamp_ns: int) -> None:
        actions = np.asarray(actions, dtype=np.float32)
        self.add(topic, CHUNK, stamp_ns, self.types[CHUNK](
            header=self.header(stamp_ns), horizon=actions.shape[0], action_dim=actions.shape[1],
            dt=0.1, action_space='eef_delta_xyz_rpy_gripper', dimension_names=[],
            data=actions.reshape(-1),
        ))

    def stats(self, topic: str, stamp_ns: int, pruner: str, latency_ms: float, kept: int):
        self.add(topic, STATS, stamp_ns, self.types[STATS](
            header=self.header(stamp_ns), pruner=pruner, budget=kept, full_step=False,
            tokens_2d_in=64, tokens_3d_in=32, tokens_2d_kept=kept, tokens_3d_kept=0,
            stage_names=[], stage_tokens_2d=np.zeros(0, np.uint32),
            stage_tokens_3d=np.zeros(0, np.uint32), latency_ms=latency_ms, tokenize_ms=0.0,
            decoder_ms=0.0, pruning_overhead_ms=0.0, action_head_ms=0.0, flops_dense=1.0,
            flops_actual=1.0, speedup=0.0, device='cpu',
        ))

    def write(self, path: Path, storage: str = 'sqlite3') -> Path:
        """Write every message in bag-time order (ties keep insertion order); return the folder."""
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        writer = Writer(path, version=9, storage_plugin=plugin)
        writer.open()
        connections = {}
        try:
            for stamp, _, topic, msgtype, raw in sorted(self.entries, key=lambda e: e[:2]):
                if topic not in connections:
                    connections[topic] = writer.add_connection(topic, msgtype,
                                                               typestore=self.typestore)
                writer.write(connections[topic], stamp, raw)
        finally:
            writer.close()
        return path


def camera_bag(
    builder: BagBuilder,
    observations: list,
    names: dict,
    period_ns: int = 100 * MS,
    start_ns: int = T0,
    info: bool = True,
    cloud: bool = False,
    depth_every: int = 1,
) -> list[int]:
    """Add rgb, depth (every ``depth_every``-th frame), camera_info and cloud; return stamps."""
    stamps = []
    for k, obs in enumerate(observations):
        stamp = start_ns + k * period_ns
        stamps.append(stamp)
        builder.rgb(names['rgb'], obs, stamp)
        if 'depth' in names and k % depth_every == 0:
            builder.depth(names['depth'], obs, stamp)
        if info:
            builder.info(names['info'], obs, stamp)
        if cloud:
            builder.cloud(names['cloud'], obs, stamp)
    return stamps


def truncated(builder: BagBuilder, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
    """Add ``msg`` with its serialised bytes cut in half: it cannot be deserialised."""
    raw = bytes(builder.typestore.serialize_cdr(msg, msgtype))
    builder.add_raw(topic, msgtype, stamp_ns, raw[: len(raw) // 2])
