"""
``vla-pruned-ros play BAG``: publish a rosbag2 (MCAP or SQLite3) onto the ROS graph.

For machines without ``ros2 bag play``. The bag is read with ``rosbags`` and every message is
published as the CDR bytes stored in the bag (no decoding), so any type whose Python message
package is importable works, this package's ActionChunk and PruningStats included. Messages
keep the bag's timing (scaled by ``--rate``); ``--clock`` publishes the bag time on ``/clock``
so nodes started with ``use_sim_time:=true`` see the recorded time. Topics recorded as
transient-local (and ``/instruction``, ``/episode`` in bags without QoS metadata) are published
latched, so a node that starts later still gets the instruction.
"""

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import importlib
from pathlib import Path
import threading
import time
from typing import Any, Optional

NS_PER_S = 1_000_000_000
DEFAULT_LATCHED = ('/instruction', '/episode')
# /clock is published at least this often (wall time) while waiting for the next message.
CLOCK_PERIOD_S = 0.01
PROGRESS_PERIOD_S = 2.0
# How long play waits at the end for its reliable subscribers to acknowledge the last messages.
DELIVERY_TIMEOUT_S = 5.0


class BagError(ValueError):
    """The bag cannot be played (missing, unreadable, no matching topic, bad rate)."""


@dataclass
class PlaySummary:
    """What a play published."""

    messages: int = 0
    loops: int = 0
    bag_duration_s: float = 0.0
    per_topic: dict = field(default_factory=dict)
    skipped_types: dict = field(default_factory=dict)  # topic -> type that could not be imported


def bag_directory(path: 'str | Path') -> Path:
    """Return the bag folder for ``path`` (the folder, or a storage file inside it)."""
    bag = Path(path).expanduser()
    if bag.is_file():
        bag = bag.parent
    if not (bag / 'metadata.yaml').is_file():
        raise BagError(f'{path} is not a rosbag2 folder (no metadata.yaml next to the storage)')
    return bag


def message_class(msgtype: str) -> type:
    """Import the Python class of ``'pkg/msg/Type'``; raise BagError when it is not installed."""
    try:
        package, interface, name = msgtype.split('/')
        return getattr(importlib.import_module(f'{package}.{interface}'), name)
    except (ValueError, ImportError, AttributeError):
        raise BagError(f'message type {msgtype!r} is not installed for Python') from None


def _recorded_latched(connection: Any) -> Optional[bool]:
    """True/False from the bag's recorded QoS, None when the bag has none."""
    profiles = getattr(getattr(connection, 'ext', None), 'offered_qos_profiles', None)
    if not profiles:
        return None
    if isinstance(profiles, str):  # older rosbags releases keep the YAML text
        text = profiles.lower()
        return 'transient_local' in text or 'durability: 1' in text
    return any('TRANSIENT_LOCAL' in str(getattr(p, 'durability', '')).upper() for p in profiles)


class BagPlayer:
    """
    Publish a bag's messages through ``node``'s publishers, in recorded timing.

    ``topics`` restricts what is played (None: everything). ``latched`` lists topics to publish
    transient-local when the bag has no QoS metadata for them.
    """

    def __init__(
        self,
        node: Any,
        bag: 'str | Path',
        rate: float = 1.0,
        clock: bool = False,
        loop: bool = False,
        topics: Optional[Sequence[str]] = None,
        latched: Sequence[str] = DEFAULT_LATCHED,
    ) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import Reader
        from rosgraph_msgs.msg import Clock

        if not rate > 0:
            raise BagError(f'rate must be positive, got {rate}')
        self.node = node
        self.path = bag_directory(bag)
        self.rate, self.loop = float(rate), bool(loop)
        self.summary = PlaySummary()
        self._publishers: dict = {}
        with Reader(self.path) as reader:
            wanted = [c for c in reader.connections if topics is None or c.topic in topics]
            self.summary.bag_duration_s = reader.duration / NS_PER_S
        if not wanted:
            raise BagError(f'no topic of {self.path} matches {list(topics or [])}')
        self._connection_ids = set()
        for connection in wanted:
            try:
                cls = message_class(connection.msgtype)
            except BagError:
                self.summary.skipped_types[connection.topic] = connection.msgtype
                continue
            self._connection_ids.add(connection.id)
            if connection.topic in self._publishers:
                continue
            recorded = _recorded_latched(connection)
            is_latched = recorded if recorded is not None else connection.topic in latched
            qos = QoSProfile(
                depth=10,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=(DurabilityPolicy.TRANSIENT_LOCAL if is_latched
                            else DurabilityPolicy.VOLATILE),
            )
            self._publishers[connection.topic] = node.create_publisher(cls, connection.topic, qos)
        if not self._publishers:
            raise BagError(f'none of the message types in {self.path} is installed')
        self._clock_type = Clock
        self._clock_pub = None
        self._last_bag_ns: Optional[int] = None
        if clock:
            self._clock_pub = node.create_publisher(
                Clock, '/clock', QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))

    @property
    def topics(self) -> list:
        """Topics this player publishes."""
        return sorted(self._publishers)

    def wait_for_subscribers(self, topics: Sequence[str], timeout_s: float) -> bool:
        """Wait (wall time) until each of ``topics`` has a subscriber; True when they all do."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._publishers[t].get_subscription_count() > 0 for t in topics
                   if t in self._publishers):
                return True
            time.sleep(0.05)
        return False

    def wait_for_delivery(self, timeout_s: float) -> bool:
        """
        Wait (wall time) until every subscriber acknowledged what was published.

        The publishers are reliable; a process that exits right after its last publish can
        take samples still in flight with it (the last image of a short bag, seen under load).
        True when everything was acknowledged within ``timeout_s``.
        """
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout_s
        publishers = list(self._publishers.values())
        if self._clock_pub is not None:
            publishers.append(self._clock_pub)
        for publisher in publishers:
            left = max(0.0, deadline - time.monotonic())
            if not publisher.wait_for_all_acked(Duration(nanoseconds=int(left * NS_PER_S))):
                return False
        return True

    def _publish_clock(self, bag_ns: int) -> None:
        if self._clock_pub is not None:
            msg = self._clock_type()
            msg.clock.sec, msg.clock.nanosec = divmod(int(bag_ns), NS_PER_S)
            self._clock_pub.publish(msg)

    def play(
        self,
        stop: Optional[threading.Event] = None,
        progress: Optional[Callable[[str], None]] = None,
    ) -> PlaySummary:
        """Publish the bag (again and again with ``loop``) until done or ``stop`` is set."""
        from rosbags.rosbag2 import Reader

        stop = stop or threading.Event()
        while not stop.is_set():
            with Reader(self.path) as reader:
                selected = [c for c in reader.connections if c.id in self._connection_ids]
                self._play_once(reader.messages(connections=selected), stop, progress)
            self.summary.loops += 1
            if not self.loop:
                break
        return self.summary

    def advance_clock(self, seconds: float, stop: Optional[threading.Event] = None) -> None:
        """
        Keep /clock running past the last message for ``seconds`` of bag time (at ``rate``).

        Lets nodes on sim time finish what runs on their timers (e.g. a last diagnostics
        update) after a short bag. Does nothing without ``clock`` or before anything played.
        """
        if self._clock_pub is None or self._last_bag_ns is None:
            return
        stop = stop or threading.Event()
        start_wall, start_ns = time.monotonic(), self._last_bag_ns
        while not stop.is_set():
            elapsed = (time.monotonic() - start_wall) * self.rate
            if elapsed >= seconds:
                break
            self._publish_clock(start_ns + int(elapsed * NS_PER_S))
            time.sleep(CLOCK_PERIOD_S)

    def _play_once(
        self, messages: Any, stop: threading.Event, progress: Optional[Callable[[str], None]]
    ) -> None:
        start_wall = time.monotonic()
        first_ns: Optional[int] = None
        last_report = start_wall
        for connection, bag_ns, raw in messages:
            if first_ns is None:
                first_ns = bag_ns
            target = start_wall + (bag_ns - first_ns) / NS_PER_S / self.rate
            # Sleep towards the message's time, keeping /clock moving in between.
            while not stop.is_set():
                now = time.monotonic()
                if now >= target:
                    break
                self._publish_clock(first_ns + int((now - start_wall) * self.rate * NS_PER_S))
                time.sleep(min(target - now, CLOCK_PERIOD_S))
            if stop.is_set():
                return
            self._publish_clock(bag_ns)
            self._last_bag_ns = bag_ns
            self._publishers[connection.topic].publish(bytes(raw))
            self.summary.messages += 1
            counts = self.summary.per_topic
            counts[connection.topic] = counts.get(connection.topic, 0) + 1
            if progress is not None and time.monotonic() - last_report >= PROGRESS_PERIOD_S:
                last_report = time.monotonic()
                elapsed = (bag_ns - first_ns) / NS_PER_S
                progress(f'play: {elapsed:6.1f} / {self.summary.bag_duration_s:.1f} s bag time, '
                         f'{self.summary.messages} messages')


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``play``."""
    parser = subparsers.add_parser(
        'play', help='publish a rosbag2 (MCAP or SQLite3) onto the ROS graph, with /clock',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('bag', help='bag folder (or a storage file inside it)')
    parser.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    parser.add_argument('--clock', action='store_true', help='publish the bag time on /clock')
    parser.add_argument('--loop', action='store_true', help='start again at the end')
    parser.add_argument('--topics', nargs='+', help='play only these topics')
    parser.add_argument('--latched', nargs='*', default=list(DEFAULT_LATCHED),
                        help='topics published transient-local when the bag has no QoS for them')
    parser.add_argument('--wait-for', nargs='*', default=[], metavar='TOPIC',
                        help='wait until these topics have a subscriber before playing')
    parser.add_argument('--wait-timeout', type=float, default=10.0,
                        help='seconds to wait for --wait-for subscribers')
    parser.add_argument('--quiet', action='store_true', help='no progress lines')
    parser.add_argument('--ros-args', nargs=argparse.REMAINDER, default=None,
                        help='ROS arguments for the player node (last on the line)')
    return parser


def run(args: argparse.Namespace) -> int:
    """Play the bag; return 0 when it was played (or interrupted by Ctrl-C), 2 on a bad bag."""
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException

    ros_args = [] if args.ros_args is None else ['--ros-args', *args.ros_args]
    rclpy.init(args=['vla-pruned-ros-play', *ros_args])
    node = rclpy.create_node('bag_player')
    status = 0
    try:
        player = BagPlayer(node, args.bag, args.rate, args.clock, args.loop, args.topics,
                           args.latched)
        for topic, msgtype in player.summary.skipped_types.items():
            print(f'play: skipping {topic}: {msgtype} is not installed', file=sys.stderr)
        if args.wait_for and not player.wait_for_subscribers(args.wait_for, args.wait_timeout):
            print(f'play: no subscriber on {args.wait_for} after {args.wait_timeout:g} s; '
                  'playing anyway', file=sys.stderr)
        print(f'play: {player.path} ({player.summary.bag_duration_s:.1f} s, '
              f'{len(player.topics)} topics) at rate {args.rate:g}'
              f'{" with /clock" if args.clock else ""}', flush=True)
        summary = player.play(progress=None if args.quiet else lambda line: print(line,
                                                                                 flush=True))
        if not player.wait_for_delivery(DELIVERY_TIMEOUT_S):
            print(f'play: some subscriber did not acknowledge every message within '
                  f'{DELIVERY_TIMEOUT_S:g} s', file=sys.stderr)
        print(f'play: done, {summary.messages} messages', flush=True)
    except BagError as err:
        print(f'play: {err}', file=sys.stderr)
        status = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return status
