"""
Start, spin and stop nodes the same way for every entry point (console scripts, ``up``).

SIGINT/SIGTERM end the spin quietly (exit status 0); a configuration error (bad parameter,
missing model) prints one line and exits with status 2 instead of a traceback.
"""

import argparse
from collections.abc import Callable, Sequence
import sys
from typing import Any, Optional

EXIT_CONFIG_ERROR = 2


def parse_cli(
    prog: str, description: str, argv: Optional[Sequence[str]] = None
) -> tuple:
    """
    Parse a node's command line: ``--help`` here, everything after ``--ros-args`` for rclpy.

    Returns (argparse namespace, full argument list for ``rclpy.init``).
    """
    from rclpy.utilities import remove_ros_args

    args = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog='ROS arguments follow --ros-args, e.g. --ros-args -p pruner:=fastv '
        '--params-file config/policy.yaml -r camera/color/image_raw:=/my/rgb',
    )
    namespace = parser.parse_args(remove_ros_args(args)[1:])
    return namespace, args


def spin_nodes(
    factories: Sequence[Callable[[], Any]], args: Sequence[str], num_threads: int = 4
) -> int:
    """
    ``rclpy.init(args)``, build the nodes, spin them in one MultiThreadedExecutor until shutdown.

    Each factory returns a node; a node with a ``close()`` method has it called before it is
    destroyed (to stop worker threads). Returns the process exit status.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    from vla_pruned_ros.nodes.params import ParameterError

    rclpy.init(args=list(args))
    nodes = []
    status = 0
    try:
        for factory in factories:
            nodes.append(factory())
        executor = MultiThreadedExecutor(num_threads=num_threads)
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterError as err:
        print(f'error: {err}', file=sys.stderr)
        status = EXIT_CONFIG_ERROR
    finally:
        for node in reversed(nodes):
            close = getattr(node, 'close', None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return status
