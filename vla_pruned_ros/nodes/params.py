"""
The nodes' ROS parameters: one declaration each (default, description, range, read-only).

The table is plain data, so tests, the launch file and docs read the same names; ``declare``
turns it into ``ParameterDescriptor`` s (integer/floating-point ranges make rqt_reconfigure show
sliders). ``check_value`` validates what rclpy's descriptor checks do not (choices, array
lengths, finiteness); the policy node's set-parameters callback also lets the policy reject
impossible pruner/budget combinations.

Also here: which model the policy node loads (``resolve_model_source``) and the launch
argument -> parameter override conversion (``launch_overrides``).
"""

from dataclasses import dataclass
import math
import os
from pathlib import Path
from typing import Any, Optional

PACKAGE = 'vla_pruned_ros'
PRESET_NAMES = ('tiny', 'small', 'mla-7b')
DTYPES = ('fp32', 'bf16', 'fp16')
INPUT_MODES = ('depth', 'cloud', 'both')
OUTPUT_MODES = ('twist', 'pose')
ACTION_AXES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')


class ParameterError(ValueError):
    """A parameter value the nodes cannot use; the message names the parameter and problem."""


@dataclass(frozen=True)
class ParamSpec:
    """
    One parameter.

    ``int_range`` / ``float_range`` are (from, to, step) as in rcl_interfaces (step 0 = any
    value). ``choices`` restricts strings; ``length`` fixes the size of a double array.
    """

    name: str
    default: Any
    description: str
    read_only: bool = False
    int_range: Optional[tuple] = None
    float_range: Optional[tuple] = None
    choices: tuple = ()
    length: Optional[int] = None


def policy_parameters(n_2d: int = 256, n_3d: int = 256, pruners: tuple = ()) -> list:
    """
    The policy node's parameters; token ranges follow the loaded model's visual tokens.

    ``n_2d`` / ``n_3d`` are the 2D patch and 3D group tokens one observation gives; ``pruners``
    (the registry's names) are listed in the ``pruner`` description.
    """
    n_visual = n_2d + n_3d
    pruner_names = ', '.join(pruners) if pruners else 'dense, random, fastv, tri_stage, ...'

    return [
        # -- model (fixed for the node's life)
        ParamSpec('model', '', 'Model directory (save_model format). Empty: the embedded '
                  'default model, or the tiny preset with a warning when none is installed.',
                  read_only=True),
        ParamSpec('preset', '', 'Use a randomly initialised preset instead of a model '
                  f'({", ".join(PRESET_NAMES)}); for latency work only.', read_only=True,
                  choices=('',) + PRESET_NAMES),
        ParamSpec('device', 'auto', "Torch device: 'auto', 'cpu', 'cuda', 'cuda:1', ...",
                  read_only=True),
        ParamSpec('dtype', 'fp32', 'Model precision: fp32, bf16 or fp16.', read_only=True,
                  choices=DTYPES),
        # -- pruning (live; applied at the next step)
        ParamSpec('pruner', 'tri_stage', f'Visual-token pruner, one of: {pruner_names}.'),
        ParamSpec('token_budget', 0, 'Visual tokens (2D + 3D) kept per step; 0 = use '
                  'keep_ratio.', int_range=(0, n_visual, 1)),
        ParamSpec('keep_ratio', 0.25, 'Share of visual tokens kept when token_budget is 0 '
                  '(1.0 = all).', float_range=(0.01, 1.0, 0.0)),
        ParamSpec('floor_2d', 0, 'Minimum 2D (RGB patch) tokens kept.',
                  int_range=(0, n_2d, 1)),
        ParamSpec('floor_3d', 0, 'Minimum 3D (point group) tokens kept.',
                  int_range=(0, n_3d, 1)),
        ParamSpec('pruner_options', '', 'Config overrides per pruner, applied when that pruner '
                  'is active: name:key=value,...;name:key=value,... (e.g. '
                  "'info_entropy:reuse=false;tri_stage:shift_threshold=0.3'); the "
                  'tri_stage_stageN switches win over tri_stage entries here.'),
        ParamSpec('tri_stage_stage1', True, 'tri_stage: stage 1 (modality salience, before '
                  'the decoder).'),
        ParamSpec('tri_stage_stage2', True, 'tri_stage: stage 2 (semantic grouping inside '
                  'the decoder).'),
        ParamSpec('tri_stage_stage3', True, 'tri_stage: stage 3 (temporal smoothing and '
                  'segments).'),
        ParamSpec('dense_calibration_period', 20, 'Run every N-th step dense to measure the '
                  'speedup on this device (0 = never).', int_range=(0, 1000, 1)),
        # -- input
        ParamSpec('input_mode', 'depth', '3D input: depth (image + camera_info), cloud '
                  '(PointCloud2) or both.', choices=INPUT_MODES),
        ParamSpec('max_obs_age_s', 0.5, 'Observations (and commands computed from them) older '
                  'than this, by the node clock, are not used.', float_range=(0.01, 10.0, 0.0)),
        ParamSpec('sync_slop_s', 0.05, 'Largest stamp difference between the rgb image and the '
                  'depth/cloud of one observation.', float_range=(0.0, 1.0, 0.0)),
        ParamSpec('depth_scale_mm', 0.001, 'Metres per unit of 16UC1 depth images.',
                  float_range=(1e-6, 1.0, 0.0)),
        ParamSpec('camera_info_rectified', False, 'Read intrinsics from CameraInfo P '
                  '(rectified images) instead of K.'),
        ParamSpec('instruction', '', 'Instruction used until one arrives on the instruction '
                  'topic (empty: wait for the topic).'),
        # -- output
        ParamSpec('output_mode', 'twist', 'Command stream: twist (TwistStamped velocities) or '
                  'pose (PoseStamped targets).', choices=OUTPUT_MODES),
        ParamSpec('control_rate_hz', 30.0, 'Rate of the command stream taken from the current '
                  'action chunk.', float_range=(1.0, 500.0, 0.0)),
        ParamSpec('axis_scale', [1.0] * 7, 'Factors for ' + ' '.join(ACTION_AXES) + '.',
                  length=7),
        ParamSpec('axis_limit', [0.25, 0.25, 0.25, 1.0, 1.0, 1.0], 'Speed limits for x y z '
                  '(m/s) and roll pitch yaw (rad/s); pose targets obey them too.', length=6),
        ParamSpec('gripper_binary', True, 'Send 0/1 gripper commands (threshold '
                  'gripper_threshold) instead of the clipped value.'),
        ParamSpec('gripper_threshold', 0.5, 'Gripper value above which the gripper closes.',
                  float_range=(0.0, 1.0, 0.0)),
        ParamSpec('dry_run', False, 'Compute and publish chunks and stats but send no '
                  'commands.'),
        ParamSpec('command_frame', 'world', 'frame_id of commands and chunks (the frame the '
                  'model predicts deltas in).'),
        ParamSpec('camera_frame', '', 'Camera frame_id to report; empty: from the images.'),
        ParamSpec('fault_hold_s', 5.0, 'A fault keeps the status at ERROR for this long.',
                  float_range=(0.1, 600.0, 0.0)),
    ]


def diagnostics_parameters() -> list:
    """The diagnostics node's parameters."""
    return [
        ParamSpec('window_s', 10.0, 'Rolling window of step statistics.',
                  float_range=(1.0, 600.0, 0.0)),
        ParamSpec('min_rate_hz', 1.0, 'WARN when policy steps come slower than this '
                  '(0 = no check).', float_range=(0.0, 1000.0, 0.0)),
        ParamSpec('silence_timeout_s', 5.0, 'ERROR when the policy node sends nothing for '
                  'this long.', float_range=(0.5, 600.0, 0.0)),
        ParamSpec('calibration_dense_ms', 0.0, 'Dense step latency measured beforehand on '
                  'this device (0 = none); used until a periodic dense step is seen.',
                  float_range=(0.0, 1e6, 0.0)),
        ParamSpec('period_s', 1.0, 'Publish period on /diagnostics.', read_only=True,
                  float_range=(0.05, 60.0, 0.0)),
        ParamSpec('hardware_id', '', 'hardware_id of the status; empty: the device in '
                  'the stats.'),
    ]


def spec_by_name(specs: list) -> dict:
    """Return {name: ParamSpec}."""
    return {spec.name: spec for spec in specs}


def check_value(spec: ParamSpec, value: Any) -> Optional[str]:
    """Return why ``value`` is not acceptable for ``spec``, or None when it is."""
    expected = type(spec.default)
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, (list, tuple)) or hasattr(value, 'tolist')
    if not ok:
        return f'{spec.name} must be a {expected.__name__}, got {type(value).__name__}'
    if spec.choices and value not in spec.choices:
        return f'{spec.name} must be one of {", ".join(map(repr, spec.choices))}, got {value!r}'
    if isinstance(value, float) and not math.isfinite(value):
        return f'{spec.name} must be finite, got {value}'
    bounds = spec.int_range or spec.float_range
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        return f'{spec.name} must be in [{bounds[0]}, {bounds[1]}], got {value}'
    if spec.length is not None:
        values = list(value)
        if len(values) != spec.length:
            return f'{spec.name} must hold {spec.length} values, got {len(values)}'
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f'{spec.name} must hold finite numbers, got {values}'
    return None


def declare(node: Any, specs: list) -> None:
    """Declare every parameter on ``node`` with a descriptor; raise ParameterError on a bad one."""
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    types = {
        bool: ParameterType.PARAMETER_BOOL,
        int: ParameterType.PARAMETER_INTEGER,
        float: ParameterType.PARAMETER_DOUBLE,
        str: ParameterType.PARAMETER_STRING,
        list: ParameterType.PARAMETER_DOUBLE_ARRAY,
    }
    for spec in specs:
        description = spec.description
        if spec.choices:
            description += f' One of: {", ".join(c or "(empty)" for c in spec.choices)}.'
        descriptor = ParameterDescriptor(
            name=spec.name,
            type=types[type(spec.default)],
            description=description,
            read_only=spec.read_only,
        )
        if spec.int_range is not None:
            low, high, step = spec.int_range
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=step)]
        if spec.float_range is not None:
            low, high, step = spec.float_range
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(low), to_value=float(high), step=float(step))
            ]
        default = [float(v) for v in spec.default] if spec.length else spec.default
        try:
            parameter = node.declare_parameter(spec.name, default, descriptor)
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            raise ParameterError(
                f'parameter {spec.name}: {err} (expected a {type(spec.default).__name__}; '
                'write floats with a decimal point, e.g. 30.0)'
            ) from None
        problem = check_value(spec, _plain(parameter.value))
        if problem is not None:
            raise ParameterError(f'parameter {problem}')


def _plain(value: Any) -> Any:
    """Parameter arrays come back as array.array / numpy; make them lists."""
    if hasattr(value, 'tolist'):
        return value.tolist()
    return value


def read_all(node: Any, specs: list) -> dict:
    """Return {name: current value} of ``specs`` on ``node`` (arrays as lists)."""
    return {spec.name: _plain(node.get_parameter(spec.name).value) for spec in specs}


# ---------------------------------------------------------------------------------------------
# Model source
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """What the policy node loads: a model directory or a preset, and a warning to log."""

    kind: str  # 'directory' or 'preset'
    value: str
    warning: str = ''


def default_model_candidates() -> list:
    """Where the embedded default model may be, nearest first."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / 'models' / 'default')
    except Exception:  # not installed as a ROS package, or no ament index
        pass
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / 'share' / PACKAGE / 'models' / 'default')
    candidates.append(Path(__file__).resolve().parents[2] / 'models' / 'default')
    unique = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def resolve_model_source(model: str, preset: str) -> ModelSource:
    """
    Decide what to load from the ``model`` and ``preset`` parameters.

    ``preset`` wins when set (random weights); else ``model`` must be a directory; else the
    embedded default model; else the tiny preset, with a loud warning.
    """
    if model and preset:
        raise ParameterError('set either model or preset, not both')
    if preset:
        if preset not in PRESET_NAMES:
            raise ParameterError(f'unknown preset {preset!r}; one of {", ".join(PRESET_NAMES)}')
        return ModelSource('preset', preset, f'preset {preset!r} has RANDOM weights: its '
                           'actions are meaningless (latency measurements only)')
    if model:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise ParameterError(f'model directory {model!r} does not exist')
        return ModelSource('directory', str(path))
    for candidate in default_model_candidates():
        if (candidate / 'config.json').is_file():
            return ModelSource('directory', str(candidate))
    return ModelSource('preset', 'tiny', 'NO TRAINED MODEL FOUND (model is empty and no '
                       'embedded default is installed): falling back to the tiny preset with '
                       'RANDOM weights; its actions are meaningless. Set the model parameter.')


# ---------------------------------------------------------------------------------------------
# Launch arguments
# ---------------------------------------------------------------------------------------------

# launch argument -> policy node parameter it overrides (when not empty)
LAUNCH_PARAMETERS = ('model', 'preset', 'pruner', 'token_budget', 'keep_ratio', 'device',
                     'dtype', 'instruction', 'output_mode', 'input_mode')

# launch argument -> (policy node topic, default target). Commands stay on the node's own
# topics unless remapped on purpose, e.g. twist_topic:=/servo_node/delta_twist_cmds.
LAUNCH_REMAPS = {
    'rgb_topic': ('camera/color/image_raw', 'camera/color/image_raw'),
    'depth_topic': ('camera/depth/image_rect_raw', 'camera/depth/image_rect_raw'),
    'camera_info_topic': ('camera/color/camera_info', 'camera/color/camera_info'),
    'cloud_topic': ('camera/depth/points', 'camera/depth/points'),
    'instruction_topic': ('instruction', 'instruction'),
    'ee_pose_topic': ('ee_pose', 'ee_pose'),
    'twist_topic': ('cmd_twist', 'cmd_twist'),
    'pose_topic': ('cmd_pose', 'cmd_pose'),
    'gripper_topic': ('cmd_gripper', 'cmd_gripper'),
}


def launch_overrides(arguments: dict) -> dict:
    """
    Typed policy-node parameter overrides from launch argument strings; empty ones are skipped.

    Raises ParameterError naming the argument for a value of the wrong type.
    """
    specs = spec_by_name(policy_parameters())
    overrides = {}
    for name in LAUNCH_PARAMETERS:
        text = str(arguments.get(name, '')).strip()
        if not text:
            continue
        kind = type(specs[name].default)
        try:
            overrides[name] = kind(text) if kind is not bool else parse_bool(text)
        except ValueError:
            raise ParameterError(
                f'launch argument {name}:={text!r} is not a {kind.__name__}'
            ) from None
    return overrides


def parse_bool(text: str) -> bool:
    """'true'/'false' (any case, or 1/0) as a bool; raise ValueError otherwise."""
    lowered = str(text).strip().lower()
    if lowered in ('true', '1', 'yes', 'on'):
        return True
    if lowered in ('false', '0', 'no', 'off'):
        return False
    raise ValueError(f'not a boolean: {text!r}')
