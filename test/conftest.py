"""
Environment every test run needs, set before any test module imports rclpy or MuJoCo.

- ``AMENT_PREFIX_PATH`` gains this interpreter's prefix: the ROS 2 wheels do not set it, and
  ``get_package_share_directory()`` (package.xml, launch, config) needs it.
- DDS discovery stays on this host, in a domain of its own per test run (derived from the
  pid), so concurrent runs on one machine do not see each other's topics.
- MuJoCo renders offscreen through EGL unless the caller chose a backend.
- The build helpers in tools/ are importable, so tests use the code the build uses.
"""

import os
from pathlib import Path
import sys


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
