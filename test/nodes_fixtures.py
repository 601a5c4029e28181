"""
Helpers for the node tests: a test-side node, sensor publishers and node processes.

The test-side node records outputs; node processes start from their console scripts.

Everything runs in its own rclpy context and under a namespace unique to the test run, on the
domain id test/conftest.py chose; waits for discovery are bounded (it sometimes takes seconds).
"""

from collections.abc import Callable, Sequence
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

from model_fixtures import make_observation

READY_TIMEOUT_S = 90.0  # a node process imports torch (seconds on a loaded 2-core machine)
FRAME = 'camera_color_optical_frame'


def script(name: str) -> str:
    """Path of a console script installed into this venv."""
    path = Path(sys.prefix) / 'bin' / name
    assert path.is_file(), f'{name} is not installed in {path.parent}: run `make` again'
    return str(path)


def start_process(args: Sequence[str], log_path: Path) -> subprocess.Popen:
    """Start a node process writing stdout+stderr to ``log_path``."""
    log = open(log_path, 'w')  # noqa: SIM115  (closed by stop_process)
    process = subprocess.Popen(
        list(args), stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
        start_new_session=True,
    )
    process.log_file = log
    process.log_path = log_path
    return process


def stop_process(process: subprocess.Popen, sig: int = signal.SIGINT,
                 timeout: float = 20.0) -> int:
    """Send ``sig``, wait, kill if it hangs; return the exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    process.log_file.close()
    return process.returncode


def read_log(process: subprocess.Popen) -> str:
    return Path(process.log_path).read_text(errors='replace')


class Graph:
    """A test-side node in a private context, spun by a background executor thread."""

    def __init__(self, namespace: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.namespace = namespace
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node('test_graph', namespace=namespace, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.lock = threading.Lock()
        self.received: dict = {}

    def record(self, msg_type: Any, topic: str, qos: Any = 10) -> None:
        """Keep every message of ``topic`` with its arrival time (monotonic)."""
        messages = self.received.setdefault(topic, [])

        def keep(msg: Any) -> None:
            with self.lock:
                messages.append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, keep, qos)

    def messages(self, topic: str, since: float = 0.0) -> list:
        with self.lock:
            return [msg for t, msg in self.received.get(topic, []) if t >= since]

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             tick: Optional[Callable[[], None]] = None, period: float = 0.1) -> Any:
    """Call ``tick`` every ``period`` until ``predicate()`` is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:g} s waiting for {what}')
        if tick is not None:
            tick()
        time.sleep(period)


class SensorRig:
    """Publishers of rgb, depth, camera_info, cloud, ee_pose and the (latched) instruction."""

    def __init__(self, graph: Graph) -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_msgs.msg import String

        from vla_pruned_ros.convert import rclpy_types

        node = graph.node
        self.graph = graph
        self.types = rclpy_types()
        self.rgb = node.create_publisher(Image, 'camera/color/image_raw', 10)
        self.depth = node.create_publisher(Image, 'camera/depth/image_rect_raw', 10)
        self.info = node.create_publisher(CameraInfo, 'camera/color/camera_info', 10)
        self.cloud = node.create_publisher(PointCloud2, 'camera/depth/points', 10)
        self.pose = node.create_publisher(PoseStamped, 'ee_pose', 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.instruction = node.create_publisher(String, 'instruction', latched)
        self.count = 0

    def now_ns(self) -> int:
        return time.time_ns()

    def publish_instruction(self, text: str) -> None:
        from std_msgs.msg import String

        self.instruction.publish(String(data=text))

    def publish_frame(self, stamp_ns: Optional[int] = None) -> int:
        """Publish one synchronised observation stamped ``stamp_ns`` (default now)."""
        from geometry_msgs.msg import PoseStamped

        from vla_pruned_ros.convert import (
            depth_to_points,
            intrinsics_to_camera_info,
            ns_to_stamp,
            numpy_to_image,
            numpy_to_pointcloud2,
        )

        stamp = self.now_ns() if stamp_ns is None else stamp_ns
        obs = make_observation(seed=self.count % 5)
        self.count += 1
        depth_mm = np.round(obs.depth * 1000).astype(np.uint16)
        t = self.types
        self.info.publish(intrinsics_to_camera_info(obs.intrinsics, stamp, FRAME, types=t))
        self.depth.publish(numpy_to_image(depth_mm, '16UC1', stamp, FRAME, types=t))
        points = depth_to_points(obs.depth, obs.intrinsics, stride=4)
        self.cloud.publish(numpy_to_pointcloud2(points, None, stamp, FRAME, types=t))
        pose = PoseStamped()
        pose.header.stamp = ns_to_stamp(stamp, t)
        pose.header.frame_id = 'world'
        pose.pose.position.x, pose.pose.position.z = 0.4, 0.3
        pose.pose.orientation.w = 1.0
        self.pose.publish(pose)
        self.rgb.publish(numpy_to_image(obs.rgb, 'rgb8', stamp, FRAME, types=t))
        return stamp

    def publish_bad_image(self) -> None:
        """An rgb8 image whose data is shorter than step x height."""
        msg = numpy_to_image_bad(self.types, self.now_ns())
        self.rgb.publish(msg)

    def publish_bad_cloud(self) -> None:
        """A PointCloud2 without x/y/z fields, stamped now."""
        from sensor_msgs.msg import PointCloud2

        from vla_pruned_ros.convert import ns_to_stamp

        msg = PointCloud2()
        msg.header.stamp = ns_to_stamp(self.now_ns(), self.types)
        msg.height, msg.width, msg.point_step, msg.row_step = 1, 4, 4, 16
        msg.data = bytes(16)
        self.cloud.publish(msg)


def numpy_to_image_bad(types: Any, stamp_ns: int) -> Any:
    from vla_pruned_ros.convert import numpy_to_image

    msg = numpy_to_image(np.zeros((8, 8, 3), np.uint8), 'rgb8', stamp_ns, FRAME, types=types)
    msg.height = 16  # data now holds half the rows it claims
    return msg
