"""
Approximate time synchronisation of rgb, depth, camera_info, point cloud and proprioception.

ROS-free and thread-safe: subscription callbacks of several threads call ``add_*`` while an
inference timer calls ``pop_latest``; bag replay and tests drive it directly.

What makes a set:

- The rgb image is the pivot: a set is one rgb frame plus, for every other required stream
  (depth when ``use_depth``, cloud when ``use_cloud``), the message nearest to it in time, each
  within ``slop_s`` of the rgb stamp. The observation carries the rgb stamp.
- Intrinsics are latched, not part of the match: the camera_info nearest to the rgb stamp
  within slop is used if there is one, else the newest received. Drivers publish camera_info
  once, slowly or with stamps of their own, and it rarely changes; requiring a stamp match
  would stall the sync on such drivers. A depth set still needs at least one camera_info.
- End-effector pose and joint state are optional: the nearest within slop, else None.
- The instruction is latched (``set_instruction``) and required.

``pop_latest(now_ns)`` returns the newest complete set and consumes it together with every
older rgb/depth/cloud message, so no set is returned twice and time never runs backwards; a
message arriving with a stamp at or before what was consumed is dropped. A set older than
``max_age_s`` is refused (and consumed). After a time jump backwards (a bag played in a loop,
a simulator reset) call ``reset()``.
"""

import bisect
from dataclasses import dataclass
import threading
from typing import Any, Optional

import numpy as np

from vla_pruned_ros.camera import CameraIntrinsics
from vla_pruned_ros.convert import NS_PER_S, ConversionError
from vla_pruned_ros.observation import Observation

# Poses come at hundreds of Hz; keep them by age (max_age + slop), bounded by this count.
PROPRIO_CAPACITY = 4096


@dataclass(frozen=True)
class SyncResult:
    """
    Outcome of ``ObservationSynchronizer.pop_latest``.

    ``reason`` is 'ok' when ``observation`` is set, else one of 'no instruction',
    'no complete set', 'stale: newest complete set is X s old (max Y s)' or
    'invalid set: <problem>'. ``detail`` explains an incomplete set (which stream is missing
    or how far its nearest message is), for logs.
    """

    observation: Optional[Observation]
    reason: str
    detail: str = ''

    @property
    def ok(self) -> bool:
        """Return True when an observation was produced."""
        return self.observation is not None


class _Stream:
    """Stamped messages of one input, sorted by stamp; older than ``floor_ns`` is refused."""

    def __init__(self, capacity: int, horizon_ns: Optional[int] = None) -> None:
        self.capacity = capacity
        self.horizon_ns = horizon_ns
        self.stamps: list = []
        self.payloads: list = []
        self.floor_ns: Optional[int] = None

    def __len__(self) -> int:
        return len(self.stamps)

    def add(self, stamp_ns: int, payload: Any) -> int:
        """Insert a message; return how many messages were dropped (itself included)."""
        if self.floor_ns is not None and stamp_ns <= self.floor_ns:
            return 1
        dropped = 0
        index = bisect.bisect_left(self.stamps, stamp_ns)
        if index < len(self.stamps) and self.stamps[index] == stamp_ns:
            # A second message with the same stamp replaces the first.
            self.payloads[index] = payload
            return 1
        self.stamps.insert(index, stamp_ns)
        self.payloads.insert(index, payload)
        if self.horizon_ns is not None:
            cut = bisect.bisect_left(self.stamps, self.stamps[-1] - self.horizon_ns)
            dropped += self._remove_first(cut)
        if len(self.stamps) > self.capacity:
            dropped += self._remove_first(len(self.stamps) - self.capacity)
        return dropped

    def nearest(self, stamp_ns: int) -> Optional[int]:
        """Return the index of the message nearest in time to ``stamp_ns``, or None."""
        if not self.stamps:
            return None
        index = bisect.bisect_left(self.stamps, stamp_ns)
        candidates = [i for i in (index - 1, index) if 0 <= i < len(self.stamps)]
        return min(candidates, key=lambda i: abs(self.stamps[i] - stamp_ns))

    def nearest_within(self, stamp_ns: int, slop_ns: int) -> Optional[int]:
        index = self.nearest(stamp_ns)
        if index is None or abs(self.stamps[index] - stamp_ns) > slop_ns:
            return None
        return index

    def consume_through(self, index: int) -> int:
        """Remove messages up to and including ``index``; later ones with older stamps refused."""
        self.floor_ns = self.stamps[index]
        return self._remove_first(index + 1)

    def _remove_first(self, count: int) -> int:
        del self.stamps[:count]
        del self.payloads[:count]
        return count

    def clear(self) -> None:
        self.stamps.clear()
        self.payloads.clear()
        self.floor_ns = None


class ObservationSynchronizer:
    """
    Pair rgb with depth and/or point cloud by stamp and hand out the newest complete set.

    ``use_depth`` and ``use_cloud`` choose the required 3D streams (both False gives rgb-only
    observations). ``queue_size`` bounds each image/cloud queue. ``counters`` reports
    'complete' (sets returned), 'stale_refused' (sets older than max_age), 'invalid' (sets
    refused by ``Observation.validate``) and 'dropped_unmatched' (rgb/depth/cloud messages
    discarded without being part of a returned set: queue overflow, older than a popped set,
    part of a refused set, or late arrivals).
    """

    def __init__(
        self,
        slop_s: float = 0.05,
        max_age_s: float = 0.5,
        use_depth: bool = True,
        use_cloud: bool = False,
        queue_size: int = 10,
    ) -> None:
        if not slop_s >= 0:
            raise ValueError(f'slop_s must be >= 0, got {slop_s}')
        if not max_age_s > 0:
            raise ValueError(f'max_age_s must be > 0, got {max_age_s}')
        if int(queue_size) < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.slop_s = float(slop_s)
        self.max_age_s = float(max_age_s)
        self.use_depth = bool(use_depth)
        self.use_cloud = bool(use_cloud)
        self.queue_size = int(queue_size)
        self._slop_ns = int(round(slop_s * NS_PER_S))
        self._max_age_ns = int(round(max_age_s * NS_PER_S))
        horizon_ns = self._max_age_ns + self._slop_ns
        self._lock = threading.Lock()
        self._rgb = _Stream(self.queue_size)
        self._depth = _Stream(self.queue_size)
        self._cloud = _Stream(self.queue_size)
        self._info = _Stream(self.queue_size)
        self._ee_pose = _Stream(PROPRIO_CAPACITY, horizon_ns)
        self._joint_state = _Stream(PROPRIO_CAPACITY, horizon_ns)
        self._instruction = ''
        self._counters = dict.fromkeys(
            ('complete', 'stale_refused', 'invalid', 'dropped_unmatched'), 0
        )

    # -- inputs ---------------------------------------------------------------------------------

    def add_rgb(self, stamp_ns: int, rgb: np.ndarray, frame_id: str = '') -> None:
        """Add an (H, W, 3) uint8 RGB image taken at ``stamp_ns``."""
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ConversionError(f'rgb must be an (H, W, 3) array, got {_shape_of(rgb)}')
        self._add(self._rgb, stamp_ns, (rgb, str(frame_id)), counted=True)

    def add_depth(self, stamp_ns: int, depth_m: np.ndarray) -> None:
        """Add an (H, W) float depth image in metres, registered to the rgb camera."""
        if not isinstance(depth_m, np.ndarray) or depth_m.ndim != 2:
            raise ConversionError(f'depth must be an (H, W) array, got {_shape_of(depth_m)}')
        self._add(self._depth, stamp_ns, depth_m, counted=True)

    def add_camera_info(self, stamp_ns: int, intrinsics: CameraIntrinsics) -> None:
        """Add intrinsics of the rgb (and registered depth) image."""
        if not isinstance(intrinsics, CameraIntrinsics):
            raise ConversionError(
                f'intrinsics must be CameraIntrinsics, got {type(intrinsics).__name__}'
            )
        self._add(self._info, stamp_ns, intrinsics, counted=False)

    def add_cloud(self, stamp_ns: int, points: np.ndarray) -> None:
        """Add an (N, 3) float point cloud in the camera frame, metres."""
        if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1] != 3:
            raise ConversionError(f'points must be an (N, 3) array, got {_shape_of(points)}')
        self._add(self._cloud, stamp_ns, points, counted=True)

    def add_ee_pose(self, stamp_ns: int, pose: np.ndarray) -> None:
        """Add an end-effector pose (x y z qx qy qz qw); optional input."""
        values = np.asarray(pose, dtype=np.float64).reshape(-1)
        if values.shape != (7,):
            raise ConversionError(f'ee_pose must hold 7 values, got {values.size}')
        self._add(self._ee_pose, stamp_ns, values, counted=False)

    def add_joint_state(self, stamp_ns: int, positions: np.ndarray) -> None:
        """Add joint positions; optional input."""
        values = np.asarray(positions, dtype=np.float64).reshape(-1)
        self._add(self._joint_state, stamp_ns, values, counted=False)

    def set_instruction(self, text: str) -> None:
        """Set the instruction used by every following observation ('' clears it)."""
        if not isinstance(text, str):
            raise ConversionError(f'instruction must be a string, got {type(text).__name__}')
        with self._lock:
            self._instruction = text

    def reset(self) -> None:
        """Forget every queued message and consumed stamp (keeps the instruction)."""
        with self._lock:
            for stream in self._streams():
                stream.clear()

    @property
    def queued(self) -> dict:
        """Return how many rgb, depth and cloud messages wait in the queues."""
        with self._lock:
            return {'rgb': len(self._rgb), 'depth': len(self._depth), 'cloud': len(self._cloud)}

    @property
    def counters(self) -> dict:
        """Return a copy of the counters (complete, stale_refused, invalid, dropped_unmatched)."""
        with self._lock:
            return dict(self._counters)

    # -- output ---------------------------------------------------------------------------------

    def pop_latest(self, now_ns: int) -> SyncResult:
        """
        Return the newest complete set as an Observation, consuming it and everything older.

        ``now_ns`` is the current time on the clock of the stamps (sim time under bag replay).
        """
        with self._lock:
            if not self._instruction:
                return SyncResult(None, 'no instruction')
            match, detail = self._newest_complete_set()
            if match is None:
                return SyncResult(None, 'no complete set', detail)
            rgb_index, depth_index, cloud_index = match
            stamp_ns = self._rgb.stamps[rgb_index]
            observation = self._build(rgb_index, depth_index, cloud_index)
            consumed = self._rgb.consume_through(rgb_index)
            if depth_index is not None:
                consumed += self._depth.consume_through(depth_index)
            if cloud_index is not None:
                consumed += self._cloud.consume_through(cloud_index)
            age_s = (int(now_ns) - stamp_ns) / NS_PER_S
            set_size = 1 + (depth_index is not None) + (cloud_index is not None)
            if age_s > self.max_age_s:
                self._counters['stale_refused'] += 1
                self._counters['dropped_unmatched'] += consumed
                return SyncResult(
                    None,
                    f'stale: newest complete set is {age_s:.2f} s old (max {self.max_age_s:g} s)',
                )
            try:
                observation.validate()
            except ConversionError as err:
                self._counters['invalid'] += 1
                self._counters['dropped_unmatched'] += consumed
                return SyncResult(None, f'invalid set: {err}')
            self._counters['complete'] += 1
            self._counters['dropped_unmatched'] += consumed - set_size
            return SyncResult(observation, 'ok')

    # -- internals ------------------------------------------------------------------------------

    def _streams(self) -> tuple:
        return (
            self._rgb,
            self._depth,
            self._cloud,
            self._info,
            self._ee_pose,
            self._joint_state,
        )

    def _add(self, stream: _Stream, stamp_ns: int, payload: Any, counted: bool) -> None:
        stamp_ns = int(stamp_ns)
        with self._lock:
            dropped = stream.add(stamp_ns, payload)
            if counted:
                self._counters['dropped_unmatched'] += dropped

    def _required(self) -> list:
        streams = []
        if self.use_depth:
            streams.append(('depth', self._depth))
        if self.use_cloud:
            streams.append(('cloud', self._cloud))
        return streams

    def _newest_complete_set(self) -> tuple:
        """Return ((rgb, depth, cloud) indices or None, detail of the newest rgb's mismatch)."""
        if not self._rgb:
            return None, 'no rgb image yet'
        if self.use_depth and not self._info:
            return None, 'no camera_info yet (needed to use depth)'
        required = self._required()
        for rgb_index in range(len(self._rgb) - 1, -1, -1):
            stamp_ns = self._rgb.stamps[rgb_index]
            matched = {}
            for name, stream in required:
                matched[name] = stream.nearest_within(stamp_ns, self._slop_ns)
                if matched[name] is None:
                    break
            else:
                return (rgb_index, matched.get('depth'), matched.get('cloud')), ''
        return None, self._mismatch_detail(required)

    def _mismatch_detail(self, required: list) -> str:
        stamp_ns = self._rgb.stamps[-1]
        parts = []
        for name, stream in required:
            index = stream.nearest(stamp_ns)
            if index is None:
                parts.append(f'no {name} queued')
            else:
                gap_s = abs(stream.stamps[index] - stamp_ns) / NS_PER_S
                parts.append(f'nearest {name} is {gap_s:.3f} s from the newest rgb')
        return f'{", ".join(parts)} (slop {self.slop_s:g} s)'

    def _build(
        self, rgb_index: int, depth_index: Optional[int], cloud_index: Optional[int]
    ) -> Observation:
        stamp_ns = self._rgb.stamps[rgb_index]
        rgb, frame_id = self._rgb.payloads[rgb_index]
        info_index = self._info.nearest_within(stamp_ns, self._slop_ns)
        if info_index is None and self._info:
            info_index = len(self._info) - 1
        return Observation(
            rgb=rgb,
            depth=None if depth_index is None else self._depth.payloads[depth_index],
            points=None if cloud_index is None else self._cloud.payloads[cloud_index],
            intrinsics=None if info_index is None else self._info.payloads[info_index],
            stamp_ns=stamp_ns,
            instruction=self._instruction,
            ee_pose=_payload_near(self._ee_pose, stamp_ns, self._slop_ns),
            joint_state=_payload_near(self._joint_state, stamp_ns, self._slop_ns),
            frame_id=frame_id,
        )


def _payload_near(stream: _Stream, stamp_ns: int, slop_ns: int) -> Optional[Any]:
    index = stream.nearest_within(stamp_ns, slop_ns)
    return None if index is None else stream.payloads[index]


def _shape_of(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f'shape {value.shape}'
    return type(value).__name__
