"""
Start the policy node and the diagnostics node.

    ros2 launch vla_pruned_ros policy.launch.py [ARG:=VALUE ...]   (--show-args lists them)

- ``params_file``: parameters of both nodes (default: the package's config/policy.yaml).
- ``model``, ``preset``, ``pruner``, ``token_budget``, ``keep_ratio``, ``device``, ``dtype``,
  ``instruction``, ``output_mode``, ``input_mode``: override that policy_node parameter (empty:
  as in params_file).
- ``use_sim_time``: follow /clock (replaying a bag with ``--clock``); ``namespace``.
- topic remaps: ``rgb_topic``, ``depth_topic``, ``camera_info_topic``, ``cloud_topic``,
  ``instruction_topic``, ``ee_pose_topic``, ``twist_topic``, ``pose_topic``, ``gripper_topic``,
  e.g. ``twist_topic:=/servo_node/delta_twist_cmds`` to drive MoveIt Servo.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from vla_pruned_ros.nodes.params import (
    LAUNCH_PARAMETERS,
    LAUNCH_REMAPS,
    launch_overrides,
    parse_bool,
)

PACKAGE = 'vla_pruned_ros'


def launch_nodes(context, *args, **kwargs):
    """Build both nodes from the evaluated launch arguments."""

    def value(name):
        return LaunchConfiguration(name).perform(context)

    params_file = value('params_file')
    common = {'use_sim_time': parse_bool(value('use_sim_time'))}
    overrides = launch_overrides({name: value(name) for name in LAUNCH_PARAMETERS})
    remappings = [
        (topic, value(argument))
        for argument, (topic, _) in LAUNCH_REMAPS.items()
        if value(argument) != topic
    ]
    namespace = value('namespace')
    return [
        Node(
            package=PACKAGE,
            executable='policy_node',
            name='policy_node',
            namespace=namespace,
            parameters=[params_file, {**common, **overrides}],
            remappings=remappings,
            output='screen',
            emulate_tty=True,
        ),
        Node(
            package=PACKAGE,
            executable='diagnostics_node',
            name='diagnostics_node',
            namespace=namespace,
            parameters=[params_file, common],
            output='screen',
            emulate_tty=True,
        ),
    ]


def generate_launch_description():
    """Arguments, then both nodes."""
    arguments = [
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), 'config',
                                                'policy.yaml']),
            description='parameters file of both nodes',
        ),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='follow /clock (bag replay with --clock)'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of both'),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value='',
                              description=f'policy_node {name} (empty: as in params_file)')
        for name in LAUNCH_PARAMETERS
    ]
    arguments += [
        DeclareLaunchArgument(argument, default_value=default,
                              description=f'topic the policy node uses as {topic}')
        for argument, (topic, default) in LAUNCH_REMAPS.items()
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=launch_nodes)])
