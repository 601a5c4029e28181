"""
Set-up script for ``pip install -e .`` (the ``make`` path); all metadata lives in setup.cfg.

In a ROS 2 workspace colcon builds this package with CMake instead (package.xml says
ament_cmake), so nothing here runs there.
"""

from setuptools import setup

setup()
