"""
Visual-token pruning for 2D+3D Vision-Language-Action policies, with ROS 2 nodes around it.

The generated message modules (``vla_pruned_ros.msg``) are installed by CMake/rosidl into a
site-packages directory of their own, while the Python code may live in a source checkout or
another prefix; extending ``__path__`` lets one package name span both.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = '0.1.0'
