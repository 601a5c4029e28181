"""
``policy_node``: sensor topics in, action chunks, end-effector commands and pruning stats out.

A thin adapter; the logic lives in the core:

- sensor callbacks convert messages (:mod:`vla_pruned_ros.convert`) and feed an
  :class:`~vla_pruned_ros.sync.ObservationSynchronizer`; nothing heavy runs there;
- one worker thread runs at most one ``Policy.step`` at a time, always on the newest complete
  observation (older ones are dropped; so are observations older than ``max_obs_age_s`` by the
  node clock, which follows /clock under ``use_sim_time``);
- a control timer publishes the command for *now* from the current chunk
  (:class:`~vla_pruned_ros.actions.CommandStream`), a zero twist / held pose when there is none;
- faults never stop the node: they are counted, logged (throttled) and reported on
  ``policy_status`` (diagnostic_msgs/DiagnosticStatus), which the diagnostics node relays.

Topics (relative names, remap them): inputs ``camera/color/image_raw``,
``camera/depth/image_rect_raw``, ``camera/color/camera_info``, ``camera/depth/points``,
``instruction`` (std_msgs/String), ``ee_pose`` (PoseStamped); outputs ``action_chunk``,
``pruning_stats``, ``policy_status``, ``cmd_twist`` (TwistStamped), ``cmd_pose`` (PoseStamped),
``cmd_gripper`` (std_msgs/Float64, 0 open .. 1 closed). Parameters: see
:mod:`vla_pruned_ros.nodes.params`.
"""

import array
from collections import deque
import threading
import time
from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64, String

from vla_pruned_ros.actions import ActionError, CommandConfig, CommandStream
from vla_pruned_ros.convert import (
    NS_PER_S,
    camera_info_to_intrinsics,
    image_to_depth,
    image_to_rgb,
    ns_to_stamp,
    pointcloud2_to_numpy,
    rclpy_types,
    stamp_to_ns,
)
from vla_pruned_ros.diagnostics import FaultTracker, SpeedupTracker, StepSample
from vla_pruned_ros.msg import ActionChunk, PruningStats
from vla_pruned_ros.nodes.params import (
    ACTION_AXES,
    ParameterError,
    check_value,
    declare,
    policy_parameters,
    read_all,
    resolve_model_source,
    spec_by_name,
)
from vla_pruned_ros.sync import ObservationSynchronizer

DESCRIPTION = 'Run the pruned 2D+3D VLA policy on sensor topics and publish commands.'
MODEL_PARAMETERS = ('model', 'preset', 'device', 'dtype')
PRUNING_PARAMETERS = ('pruner', 'token_budget', 'keep_ratio', 'floor_2d', 'floor_3d',
                      'pruner_options', 'tri_stage_stage1', 'tri_stage_stage2',
                      'tri_stage_stage3')
STAGE_PARAMETERS = ('tri_stage_stage1', 'tri_stage_stage2', 'tri_stage_stage3')
COMMAND_PARAMETERS = ('output_mode', 'axis_scale', 'axis_limit', 'gripper_binary',
                      'gripper_threshold', 'max_obs_age_s')
SYNC_PARAMETERS = ('sync_slop_s', 'max_obs_age_s', 'input_mode')
# The worker also wakes on its own this often, to notice stale input while no sensor speaks.
WORKER_POLL_S = 0.05
# An rgb stamp this far behind the previous one means time jumped back (bag loop, sim reset);
# without a reset the synchronizer would refuse everything up to the old stamps.
TIME_JUMP_NS = NS_PER_S // 10
LOG_THROTTLE_S = 5.0
# A model that reads the end-effector pose waits this long (wall clock) for the pose of the
# newest rgb image before running without it: drivers publish the pose after the images.
POSE_WAIT_S = 0.2
SYNC_QUEUE_SIZE = 5


def _instruction_qos(durability: DurabilityPolicy) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=durability,
    )


class PolicyNode(Node):
    """The policy as a ROS 2 node (see the module docstring for topics)."""

    def __init__(self, node_name: str = 'policy_node', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        all_specs = policy_parameters()
        model_specs = [s for s in all_specs if s.name in MODEL_PARAMETERS]
        declare(self, model_specs)
        self.policy = self._load_policy(read_all(self, model_specs))
        grid = self.policy.model.vision.grid_size
        self.n_2d = int(np.prod(grid))
        self.n_3d = int(self.policy.config.points.num_groups)
        self._needs_pose = bool(self.policy.model.n_proprio)
        from vla_pruned_ros.pruning import available_pruners

        specs = policy_parameters(self.n_2d, self.n_3d, tuple(available_pruners()))
        self._specs = spec_by_name(specs)
        declare(self, [s for s in specs if s.name not in MODEL_PARAMETERS])

        self._stop = threading.Event()
        self._wake = threading.Event()
        self.faults = FaultTracker()
        self.stream = CommandStream()
        self._speedup = SpeedupTracker()
        self._recent_latency: dict = {}
        self._dense_policy = None
        self._settings: dict = {}
        self._sync: Optional[ObservationSynchronizer] = None
        self._instruction = ''
        self._latest_pose: Optional[np.ndarray] = None
        self._last_rgb_stamp: Optional[int] = None
        self._last_obs_stamp: Optional[int] = None
        self._last_stale_ns: Optional[int] = None
        self._pose_stamps: deque = deque(maxlen=64)
        self._last_rgb_arrival = 0.0
        self._step_count = 0
        self._log_times: dict = {}
        self._types = rclpy_types()
        self._apply(read_all(self, specs), initial=True)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._control_group = MutuallyExclusiveCallbackGroup()
        sensors = {'callback_group': self._sensor_group}
        self.create_subscription(
            Image, 'camera/color/image_raw', self._on_rgb, qos_profile_sensor_data, **sensors)
        self.create_subscription(
            Image, 'camera/depth/image_rect_raw', self._on_depth, qos_profile_sensor_data,
            **sensors)
        self.create_subscription(
            CameraInfo, 'camera/color/camera_info', self._on_camera_info,
            qos_profile_sensor_data, **sensors)
        self.create_subscription(
            PointCloud2, 'camera/depth/points', self._on_cloud, qos_profile_sensor_data,
            **sensors)
        self.create_subscription(
            PoseStamped, 'ee_pose', self._on_ee_pose, qos_profile_sensor_data, **sensors)
        # Latched publishers (the recommended way) and plain ones (`ros2 topic pub` default)
        # are incompatible with each other's subscriber, so listen with both.
        for durability in (DurabilityPolicy.TRANSIENT_LOCAL, DurabilityPolicy.VOLATILE):
            self.create_subscription(
                String, 'instruction', self._on_instruction, _instruction_qos(durability),
                **sensors)

        self.chunk_pub = self.create_publisher(ActionChunk, 'action_chunk', 10)
        self.stats_pub = self.create_publisher(PruningStats, 'pruning_stats', 10)
        self.status_pub = self.create_publisher(DiagnosticStatus, 'policy_status', 10)
        self.twist_pub = self.create_publisher(TwistStamped, 'cmd_twist', 10)
        self.pose_pub = self.create_publisher(PoseStamped, 'cmd_pose', 10)
        self.gripper_pub = self.create_publisher(Float64, 'cmd_gripper', 10)

        self._control_timer = self._make_control_timer(self._settings['control_rate_hz'])
        self.create_timer(1.0, self._publish_status)

        self._worker = threading.Thread(target=self._work, name='policy_worker', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'ready: {self.policy.config.preset} model on {self.policy.device}, '
            f'{self.n_2d} 2D + {self.n_3d} 3D visual tokens, pruner {self._settings["pruner"]}'
        )

    # ------------------------------------------------------------------------- model
    def _load_policy(self, values: dict) -> Any:
        source = resolve_model_source(values['model'], values['preset'])  # before the slow import
        from vla_pruned_ros.policy import Policy

        if source.warning:
            self.get_logger().warning(source.warning)
        options = {'device': values['device'], 'dtype': values['dtype'], 'pruner': 'dense'}
        self.get_logger().info(f'loading {source.kind} {source.value!r} ...')
        try:
            if source.kind == 'preset':
                return Policy.from_preset(source.value, **options)
            return Policy.from_pretrained(source.value, **options)
        except (OSError, ValueError) as err:
            raise ParameterError(f'cannot load the model from {source.value!r}: {err}') from None

    def _dense(self) -> Any:
        """A second Policy on the same weights, always dense: the periodic reference step."""
        if self._dense_policy is None:
            from vla_pruned_ros.policy import Policy

            self._dense_policy = Policy(
                self.policy.model, self.policy.tokenizer, device=str(self.policy.device),
                dtype=self._settings['dtype'], pruner='dense',
            )
        return self._dense_policy

    # -------------------------------------------------------------------- parameters
    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        updates = {p.name: _plain(p.value) for p in parameters}
        try:
            self._apply(updates)
        except ValueError as err:  # ParameterError, BudgetError, ActionError, unknown pruner
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def _apply(self, updates: dict, initial: bool = False) -> None:
        """Validate ``updates`` together, then apply them (the policy at its next step)."""
        from vla_pruned_ros.pruning import Budget, create_pruner
        from vla_pruned_ros.pruning.spec import parse_options_by_pruner

        for name, value in updates.items():
            spec = self._specs.get(name)
            problem = None if spec is None else check_value(spec, value)
            if problem is not None:
                raise ParameterError(problem)
        settings = {**self._settings, **updates}
        touched = set(updates) if not initial else set(settings)

        budget = None
        pruner_changed = False
        if touched & set(PRUNING_PARAMETERS):
            tokens = settings['token_budget'] or None
            budget = Budget(
                tokens=tokens,
                keep_ratio=None if tokens else settings['keep_ratio'],
                floor_2d=settings['floor_2d'],
                floor_3d=settings['floor_3d'],
            )
            budget.resolve(self.n_2d, self.n_3d)  # floors above the budget raise BudgetError
            options = parse_options_by_pruner(settings['pruner_options'])
            options['tri_stage'] = {
                **options.get('tri_stage', {}),
                **{f'stage{i}': settings[f'tri_stage_stage{i}'] for i in (1, 2, 3)},
            }
            if touched & set(STAGE_PARAMETERS):
                # rejects e.g. stage 1 and 2 both off
                create_pruner('tri_stage', **options['tri_stage'])
            pruner_changed = 'pruner' in touched or 'pruner_options' in touched or (
                settings['pruner'] == 'tri_stage' and touched & set(STAGE_PARAMETERS)
            )
        command_config = None
        if touched & set(COMMAND_PARAMETERS):
            command_config = CommandConfig(
                output_mode=settings['output_mode'],
                axis_scale=tuple(settings['axis_scale']),
                axis_limit=tuple(settings['axis_limit']),
                gripper_binary=settings['gripper_binary'],
                gripper_threshold=settings['gripper_threshold'],
                max_age_s=settings['max_obs_age_s'],
            )
        # Everything is valid; the policy may still refuse (unknown pruner): then nothing changed.
        if budget is not None:
            name = settings['pruner']
            self.policy.configure(
                pruner=name if pruner_changed else None,
                budget=budget,
                pruner_config=options.get(name) if pruner_changed else None,
            )
        if command_config is not None:
            self.stream.configure(command_config)
        if touched & set(SYNC_PARAMETERS):
            mode = settings['input_mode']
            sync = ObservationSynchronizer(
                slop_s=settings['sync_slop_s'],
                max_age_s=settings['max_obs_age_s'],
                use_depth=mode in ('depth', 'both'),
                use_cloud=mode in ('cloud', 'both'),
                queue_size=SYNC_QUEUE_SIZE,
            )
            sync.set_instruction(self._instruction)
            self._sync = sync
        if 'fault_hold_s' in touched:
            self.faults.hold_s = settings['fault_hold_s']
        if 'instruction' in touched and settings['instruction']:
            self._set_instruction(settings['instruction'])
        if not initial and 'control_rate_hz' in touched:
            self.destroy_timer(self._control_timer)
            self._control_timer = self._make_control_timer(settings['control_rate_hz'])
        self._settings = settings
        if not initial:
            changed = ', '.join(f'{k}={v}' for k, v in updates.items() if k in self._specs)
            if changed:
                self.get_logger().info(f'parameters set: {changed} (applied at the next step)')

    # ------------------------------------------------------------------------ inputs
    def _guard(self, kind: str, topic: str, convert: Any, wake: bool = True) -> None:
        """Run a conversion; a bad message is a fault, never an exception out of a callback."""
        try:
            convert()
        except Exception as err:  # any bad message must leave the node running
            self._fault('conversion_errors', f'bad {kind} on {topic}: {err}')
            return
        if wake:  # only images and clouds can complete an observation
            self._wake.set()

    def _on_rgb(self, msg: Image) -> None:
        def convert() -> None:
            stamp = stamp_to_ns(msg.header.stamp)
            rgb = image_to_rgb(msg)
            self._check_time_jump(stamp)
            self._sync.add_rgb(stamp, rgb, self._settings['camera_frame'] or msg.header.frame_id)
            self._last_rgb_arrival = time.monotonic()

        self._guard('rgb image', 'camera/color/image_raw', convert)

    def _on_depth(self, msg: Image) -> None:
        if self._settings['input_mode'] == 'cloud':
            return

        def convert() -> None:
            depth = image_to_depth(msg, self._settings['depth_scale_mm'])
            self._sync.add_depth(stamp_to_ns(msg.header.stamp), depth)

        self._guard('depth image', 'camera/depth/image_rect_raw', convert)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        def convert() -> None:
            intrinsics = camera_info_to_intrinsics(msg, self._settings['camera_info_rectified'])
            self._sync.add_camera_info(stamp_to_ns(msg.header.stamp), intrinsics)

        self._guard('camera_info', 'camera/color/camera_info', convert, wake=False)

    def _on_cloud(self, msg: PointCloud2) -> None:
        if self._settings['input_mode'] == 'depth':
            return

        def convert() -> None:
            points, _ = pointcloud2_to_numpy(msg)
            self._sync.add_cloud(stamp_to_ns(msg.header.stamp), points)

        self._guard('point cloud', 'camera/depth/points', convert)

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        def convert() -> None:
            p, q = msg.pose.position, msg.pose.orientation
            pose = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float64)
            stamp = stamp_to_ns(msg.header.stamp)
            self._sync.add_ee_pose(stamp, pose)
            self._pose_stamps.append(stamp)
            self._latest_pose = pose

        self._guard('end-effector pose', 'ee_pose', convert, wake=self._needs_pose)

    def _on_instruction(self, msg: String) -> None:
        self._set_instruction(msg.data)

    def _set_instruction(self, text: str) -> None:
        if text == self._instruction:
            return  # both instruction subscriptions deliver a latched publisher's message
        self._instruction = text
        self._sync.set_instruction(text)
        self.policy.reset()  # a new instruction is a new episode for the pruner's history
        self.get_logger().info(f'instruction: {text!r}')
        self._wake.set()

    def _check_time_jump(self, stamp_ns: int) -> None:
        last, self._last_rgb_stamp = self._last_rgb_stamp, stamp_ns
        if last is not None and stamp_ns < last - TIME_JUMP_NS:
            self.get_logger().warning(
                f'time jumped back {(last - stamp_ns) / NS_PER_S:.1f} s: new episode')
            self._sync.reset()
            self.policy.reset()
            self.stream.invalidate('time jumped backwards; waiting for a new observation')
            self._last_obs_stamp = None
            self._pose_stamps.clear()

    # ------------------------------------------------------------------------ worker
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _work(self) -> None:
        """Inference loop: at most one step at a time, on the newest complete observation."""
        while not self._stop.is_set():
            self._wake.wait(WORKER_POLL_S)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self._pose_pending():
                    continue
                now_ns = self._now_ns()
                result = self._sync.pop_latest(now_ns)
                if result.ok:
                    self._infer(result.observation)
                else:
                    self._no_observation(result, now_ns)
            except Exception as err:  # shutdown races; anything else is a fault
                if self._stop.is_set() or not self.context.ok():
                    break
                self._fault('internal_errors', f'worker: {type(err).__name__}: {err}')

    def _pose_pending(self) -> bool:
        """True while the newest rgb image may still get its end-effector pose."""
        rgb_ns = self._last_rgb_stamp
        if not self._needs_pose or rgb_ns is None:
            return False
        if time.monotonic() - self._last_rgb_arrival >= POSE_WAIT_S:
            return False
        slop_ns = self._settings['sync_slop_s'] * NS_PER_S
        return not any(abs(stamp - rgb_ns) <= slop_ns for stamp in list(self._pose_stamps))

    def _no_observation(self, result: Any, now_ns: int) -> None:
        reason = result.reason
        if reason.startswith('invalid set'):
            self._fault('invalid_observations', reason)
            self.stream.invalidate(reason)
        elif reason.startswith('stale'):
            self.faults.count('stale_refused')
            self.faults.input_state(False, reason)
            self._last_stale_ns = now_ns
            self.stream.invalidate(f'input {reason}')
            self._log('input', f'input {reason}; commanding zero/hold')
        else:
            last = self._last_obs_stamp
            max_age_ns = self._settings['max_obs_age_s'] * NS_PER_S
            # Between two stale frames the queue is empty: 'stale' stays the better reason.
            recently_stale = (self._last_stale_ns is not None
                              and 0 <= now_ns - self._last_stale_ns < max_age_ns)
            if (last is None or now_ns - last > max_age_ns) and not recently_stale:
                detail = f': {result.detail}' if result.detail else ''
                if reason == 'no instruction':
                    detail = ' (publish on the instruction topic or set the parameter)'
                self.faults.input_state(False, f'{reason}{detail}')
                if last is not None:
                    self._log('input', f'input: {reason}{detail}')

    def _infer(self, observation: Any) -> None:
        if self._needs_pose and observation.ee_pose is None:
            # Part of the input, like depth: without it the set is incomplete, not a fault.
            message = ('no ee_pose within sync_slop_s of the rgb image (this model reads the '
                       'end-effector pose)')
            self.faults.input_state(False, message)
            self._log('input', f'input: {message}')
            return
        period = self._settings['dense_calibration_period']
        periodic_dense = (
            period > 0
            and self._settings['pruner'] != 'dense'
            and self._step_count % period == period - 1
        )
        self._step_count += 1
        self._last_obs_stamp = observation.stamp_ns
        self.faults.input_state(True, 'ok')
        policy = self._dense() if periodic_dense else self.policy
        try:
            actions, stats = policy.step(observation)
        except Exception as err:  # a failed step must not stop the node
            if not self.context.ok():
                return
            self._fault('inference_errors', f'inference failed: {type(err).__name__}: {err}')
            self.stream.invalidate(f'inference failed: {err}')
            return
        if self._stop.is_set() or not self.context.ok():
            return  # shut down during the step: nothing may be published any more
        try:
            self.stream.set_chunk(
                actions, observation.stamp_ns, self.policy.config.control_dt,
                observation.ee_pose,
            )
        except ActionError as err:
            self._fault('invalid_actions', f'{err}; commanding zero/hold')
            return
        self.faults.count('steps')
        age_s = (self._now_ns() - observation.stamp_ns) / NS_PER_S
        if age_s > self._settings['max_obs_age_s']:
            self._log('latency', f'the chunk is already {age_s:.2f} s old when ready (step '
                      f'{stats.latency_ms:.0f} ms): raise max_obs_age_s or lower the budget')
        self.chunk_pub.publish(self._chunk_msg(actions, observation.stamp_ns))
        self.stats_pub.publish(self._stats_msg(stats, observation.frame_id))

    # ----------------------------------------------------------------------- outputs
    def _header(self, msg: Any, stamp_ns: int, frame_id: str) -> None:
        msg.header.stamp = ns_to_stamp(stamp_ns, self._types)
        msg.header.frame_id = frame_id

    def _chunk_msg(self, actions: np.ndarray, stamp_ns: int) -> ActionChunk:
        msg = ActionChunk()
        self._header(msg, stamp_ns, self._settings['command_frame'])
        msg.horizon, msg.action_dim = (int(n) for n in actions.shape)
        msg.dt = float(self.policy.config.control_dt)
        msg.action_space = self.policy.config.action_space
        msg.dimension_names = list(ACTION_AXES)
        msg.data = array.array('f', np.ascontiguousarray(actions, np.float32).tobytes())
        return msg

    def _stats_msg(self, stats: Any, frame_id: str) -> PruningStats:
        sample = StepSample.from_stats(stats)
        self._speedup.add(sample)
        recent = self._recent_latency.setdefault(stats.pruner, deque(maxlen=20))
        recent.append(stats.latency_ms)
        speedup = self._speedup.estimate(stats.pruner, recent, stats.device)
        msg = PruningStats()
        self._header(msg, stats.stamp_ns, frame_id)
        msg.pruner = stats.pruner
        msg.budget = int(stats.budget)
        msg.full_step = bool(stats.full_step)
        msg.tokens_2d_in, msg.tokens_3d_in = int(stats.tokens_2d_in), int(stats.tokens_3d_in)
        msg.tokens_2d_kept = int(stats.tokens_2d_kept)
        msg.tokens_3d_kept = int(stats.tokens_3d_kept)
        msg.stage_names = [str(stage[0]) for stage in stats.stages]
        msg.stage_tokens_2d = [int(stage[1]) for stage in stats.stages]
        msg.stage_tokens_3d = [int(stage[2]) for stage in stats.stages]
        msg.latency_ms = float(stats.latency_ms)
        msg.tokenize_ms = float(stats.tokenize_ms)
        msg.decoder_ms = float(stats.decoder_ms)
        msg.pruning_overhead_ms = float(stats.pruning_overhead_ms)
        msg.action_head_ms = float(stats.action_head_ms)
        msg.flops_dense = float(stats.flops_dense)
        msg.flops_actual = float(stats.flops_actual)
        msg.speedup = float(speedup.value)
        msg.device = str(stats.device)
        return msg

    def _make_control_timer(self, rate_hz: float) -> Any:
        return self.create_timer(
            1.0 / rate_hz, self._on_control_timer, callback_group=self._control_group)

    def _on_control_timer(self) -> None:
        command = self.stream.command(self._now_ns(), self._latest_pose)
        settings = self._settings
        if settings['dry_run']:
            return
        stamp_ns = self._now_ns()
        frame = settings['command_frame']
        if settings['output_mode'] == 'twist':
            msg = TwistStamped()
            self._header(msg, stamp_ns, frame)
            linear, angular = msg.twist.linear, msg.twist.angular
            linear.x, linear.y, linear.z, angular.x, angular.y, angular.z = (
                float(v) for v in command.twist)
            self.twist_pub.publish(msg)
        elif command.pose is not None:
            msg = PoseStamped()
            self._header(msg, stamp_ns, frame)
            position, orientation = msg.pose.position, msg.pose.orientation
            position.x, position.y, position.z = (float(v) for v in command.pose[:3])
            orientation.x, orientation.y, orientation.z, orientation.w = (
                float(v) for v in command.pose[3:])
            self.pose_pub.publish(msg)
        if command.gripper is not None:
            self.gripper_pub.publish(Float64(data=float(command.gripper)))

    # ------------------------------------------------------------------------ status
    def _fault(self, kind: str, message: str) -> None:
        self.faults.fault(kind, message, self._now_ns() / NS_PER_S)
        self._log(kind, message, error=True)
        self._publish_status()

    def _log(self, key: str, message: str, error: bool = False) -> None:
        """Log at most every LOG_THROTTLE_S (wall clock) per key and kind of message."""
        # The text before the first ':' names the kind ('bad rgb image on ...'); numbers after
        # it change every time and must not defeat the throttle.
        key = f'{key}:{message.split(":")[0]}'
        now = time.monotonic()
        last = self._log_times.get(key)
        if last is not None and now - last < LOG_THROTTLE_S:
            return
        self._log_times[key] = now
        # rclpy fixes a logging call site's severity on first use: one call per severity.
        if error:
            self.get_logger().error(message)
        else:
            self.get_logger().warning(message)

    def _publish_status(self) -> None:
        level, message, values = self.faults.status(self._now_ns() / NS_PER_S)
        command = self.stream.command(self._now_ns(), self._latest_pose)
        values = values + [
            ('command', 'active' if command.active else f'holding: {command.reason}'),
            ('pruner', self._settings['pruner']),
            ('dry_run', str(self._settings['dry_run'])),
        ]
        msg = DiagnosticStatus(
            level=bytes([level]),
            name=f'{self.get_name()}: input and inference',
            message=message,
            hardware_id=str(self.policy.device),
            values=[KeyValue(key=k, value=str(v)) for k, v in values],
        )
        try:
            self.status_pub.publish(msg)
        except Exception:  # publishing races with shutdown
            if self.context.ok():
                raise

    def close(self) -> None:
        """Stop the worker thread (called before the node is destroyed)."""
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=10.0)


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, 'tolist') else value


def main(argv: Optional[list] = None) -> int:
    """Console script ``policy_node``."""
    from vla_pruned_ros.nodes.runtime import parse_cli, spin_nodes

    _, args = parse_cli('policy_node', DESCRIPTION, argv)
    return spin_nodes([PolicyNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
