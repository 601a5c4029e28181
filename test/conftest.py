"""
Environment every test run needs, set before any test module imports rclpy or MuJoCo.

- ``AMENT_PREFIX_PATH`` gains this interpreter's prefix: the ROS 2 wheels do not set it, and
  ``get_package_share_directory()`` (package.xml, launch, config) needs it.
- DDS discovery stays on this host, in a domain of its own per test run (derived from the
  pid), so concurrent runs on one machine do not see each other's topics.
- MuJoCo renders offscreen through EGL unless the caller chose a backend.
- The build helpers in tools/ are importable, so tests use the code the build uses.
- In-process models run on one torch thread: their kernels last microseconds, and two intra-op
  threads on a busy 2-core machine wait on each other (a micro-model step went from 10 ms to
  700 ms). Subprocesses (the node tests) keep torch's default.
"""

import os
from pathlib import Path
import sys

import pytest


def _prepend_path(name: str, entry: str) -> None:
    parts = [p for p in os.environ.get(name, '').split(os.pathsep) if p]
    if entry not in parts:
        os.environ[name] = os.pathsep.join([entry, *parts])


_prepend_path('AMENT_PREFIX_PATH', sys.prefix)
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# Domain ids 1..101 are valid for every RMW on Linux (ports stay below the ephemeral range).
os.environ['ROS_DOMAIN_ID'] = str(1 + os.getpid() % 101)
os.environ.setdefault('MUJOCO_GL', 'egl')

sys.path.append(str(Path(__file__).resolve().parents[1] / 'tools'))


@pytest.fixture(autouse=True, scope='session')
def single_torch_thread():
    """Run in-process models on one torch thread for the whole session, then restore."""
    try:
        import torch
    except ImportError:  # the package tests run without torch too
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def sim_cli():
    """Run ``vla-pruned-ros sim ARGS...`` in this process; the callable returns the exit status."""
    import argparse

    from vla_pruned_ros.sim import cli

    parser = argparse.ArgumentParser(prog='vla-pruned-ros')
    cli.add_parser(parser.add_subparsers(dest='command'))

    def run(*argv: str) -> int:
        return cli.run(parser.parse_args(['sim', *argv]))

    return run
