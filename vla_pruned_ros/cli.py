"""
The ``vla-pruned-ros`` command: one entry point with a sub-command per job.

Each sub-command lives in its own module, which exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Those modules keep heavy imports (torch, MuJoCo, rclpy) inside ``run`` so
that ``--help`` stays fast and a missing optional dependency only affects the sub-command
that needs it.
"""

import argparse
from collections.abc import Sequence
import importlib
import sys
from typing import Optional

# sub-command name -> module that defines add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    'demo': 'vla_pruned_ros.demo',
    'bench': 'vla_pruned_ros.bench',
    'compare': 'vla_pruned_ros.compare',
    'sim': 'vla_pruned_ros.sim.cli',
    'up': 'vla_pruned_ros.nodes.up',
    'play': 'vla_pruned_ros.nodes.player',
    'eval': 'vla_pruned_ros.eval.cli',
    'train': 'vla_pruned_ros.train.cli',
    'ties-calibrate': 'vla_pruned_ros.ties_cli',
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog='vla-pruned-ros',
        description='Token-pruned 2D+3D Vision-Language-Action policies for ROS 2.',
    )
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
        assert sub.prog.endswith(name), f'{module_name} registered a parser for {sub.prog}'
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``vla-pruned-ros`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
