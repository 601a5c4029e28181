"""
``vla-pruned-ros up``: the policy node and the diagnostics node in one process.

The same nodes, parameters file and topics as ``ros2 launch vla_pruned_ros policy.launch.py``,
for machines without the ROS 2 command line tools. ROS arguments follow ``--ros-args``, e.g.
``vla-pruned-ros up --ros-args -p pruner:=fastv -p use_sim_time:=true``; ``-p`` values apply to
both nodes (each takes the ones it declares).
"""

import argparse
from pathlib import Path
from typing import Any, Optional

PACKAGE = 'vla_pruned_ros'


def default_params_file() -> Optional[Path]:
    """config/policy.yaml of this source tree (an editable install), else of the installed one."""
    # The source file first: it is the one a developer edits; an install copy may lag behind.
    candidates = [Path(__file__).resolve().parents[2] / 'config' / 'policy.yaml']
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / 'config' / 'policy.yaml')
    except Exception:  # no ament index: a plain pip install or source tree
        pass
    return next((path for path in candidates if path.is_file()), None)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``up``."""
    parser = subparsers.add_parser(
        'up', help='run the policy and diagnostics nodes in one process (no ROS CLI needed)',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--params-file', type=Path, default=None,
                        help='ROS parameters file (default: the package config/policy.yaml)')
    parser.add_argument('--ros-args', nargs=argparse.REMAINDER, default=None,
                        help='ROS arguments for both nodes (last on the line), e.g. '
                        '-p pruner:=fastv -p use_sim_time:=true')
    return parser


def run(args: argparse.Namespace) -> int:
    """Spin both nodes until Ctrl-C; returns the exit status."""
    import sys

    from vla_pruned_ros.nodes.diagnostics_node import DiagnosticsNode
    from vla_pruned_ros.nodes.policy_node import PolicyNode
    from vla_pruned_ros.nodes.runtime import spin_nodes

    params_file = args.params_file or default_params_file()
    ros_args = ['--ros-args']
    if params_file is not None:
        if not Path(params_file).is_file():
            print(f'up: parameters file {params_file} does not exist', file=sys.stderr)
            return 2
        # The file goes first so that -p values given on the command line override it.
        ros_args += ['--params-file', str(params_file)]
    ros_args += args.ros_args or []
    print(f'up: policy_node + diagnostics_node, parameters from {params_file}', flush=True)
    return spin_nodes([PolicyNode, DiagnosticsNode], ['vla-pruned-ros-up', *ros_args],
                      num_threads=6)
