"""
package.xml, CMakeLists.txt and the requirements describe what the code really uses.

rosdep installs a ROS user's dependencies from package.xml alone, and pip the rest from
requirements/ros-workspace.txt, so an import that neither declares breaks on a robot although
it works in the development venv, where everything is installed.
"""

import ast
from pathlib import Path
import re
import sys
import xml.etree.ElementTree as ET

from catkin_pkg.package import parse_package
import pytest

import vla_pruned_ros

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'vla_pruned_ros'

# ROS 2 packages the code may import that no naming rule below recognises.
ROS_PACKAGES = {
    'rclpy', 'launch', 'launch_ros', 'launch_testing', 'launch_testing_ros',
    'ament_index_python', 'message_filters', 'cv_bridge', 'image_geometry', 'tf2_ros',
    'tf2_py', 'tf2_geometry_msgs', 'diagnostic_updater', 'rosbag2_py', 'rosidl_runtime_py',
    'sensor_msgs_py', 'rclpy_message_converter', 'rqt_gui', 'rqt_gui_py',
}
ROS_SUFFIXES = ('_msgs', '_srvs', '_interfaces', '_actions')
# import name -> rosdep key of a Python library that the distribution packages
ROSDEP_KEYS = {
    'numpy': 'python3-numpy',
    'cv2': 'python3-opencv',
    'yaml': 'python3-yaml',
    'matplotlib': 'python3-matplotlib',
    'tqdm': 'python3-tqdm',
    'PIL': 'python3-pil',
    'scipy': 'python3-scipy',
}
# torch is installed first, per machine (JetPack wheel, CUDA build): see README.md
PLATFORM_PACKAGES = {'torch'}


def is_ros_package(name: str) -> bool:
    return name in ROS_PACKAGES or name.endswith(ROS_SUFFIXES)


def imported_top_level_names() -> dict:
    """Map each absolute top-level import of the package and its launch files to a file."""
    files = [p for p in (REPO / PACKAGE).rglob('*.py') if '__pycache__' not in p.parts]
    files += sorted((REPO / 'launch').glob('*.py'))
    names = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                names.setdefault(module.split('.')[0], str(path.relative_to(REPO)))
    names.pop(PACKAGE, None)
    return names


def pip_requirement_names() -> set:
    names = set()
    for line in (REPO / 'requirements' / 'ros-workspace.txt').read_text().splitlines():
        line = line.split('#')[0].strip()
        if line:
            names.add(re.split(r'[<>=!~\[; ]', line)[0].lower().replace('-', '_'))
    return names


@pytest.fixture(scope='module')
def package():
    return parse_package(str(REPO / 'package.xml'))


def run_depends(package) -> set:
    return {d.name for d in package.exec_depends + package.build_export_depends}


def test_package_xml_is_valid_format_3(package):
    package.validate()  # raises InvalidPackage with the reason
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert package.name == PACKAGE
    assert package.version == vla_pruned_ros.__version__


def test_package_xml_declares_an_ament_cmake_interface_package(package):
    assert package.get_build_type() == 'ament_cmake'
    assert {'ament_cmake', 'ament_cmake_python', 'rosidl_default_generators'} <= {
        d.name for d in package.buildtool_depends
    }
    assert 'rosidl_default_runtime' in run_depends(package)
    assert 'rosidl_interface_packages' in {g.name for g in package.member_of_groups}


def test_every_imported_ros_package_is_a_run_dependency(package):
    declared = run_depends(package)
    undeclared = {
        name: where
        for name, where in imported_top_level_names().items()
        if is_ros_package(name) and name not in declared
    }
    assert not undeclared, f'add <exec_depend> to package.xml for: {undeclared}'


def test_every_third_party_import_is_declared(package):
    declared = run_depends(package)
    pip_names = pip_requirement_names()
    undeclared = {}
    for name, where in imported_top_level_names().items():
        if name in sys.stdlib_module_names or is_ros_package(name) or name in PLATFORM_PACKAGES:
            continue
        if ROSDEP_KEYS.get(name) in declared or name.lower() in pip_names:
            continue
        undeclared[name] = where
    assert not undeclared, (
        f'declare these imports as a rosdep key in package.xml or in '
        f'requirements/ros-workspace.txt (and pin them in requirements/venv.txt): {undeclared}'
    )


def test_every_message_file_is_generated():
    cmake = (REPO / 'CMakeLists.txt').read_text()
    listed = set(re.findall(r'\bmsg/\w+\.msg\b', cmake))
    present = {f'msg/{p.name}' for p in (REPO / 'msg').glob('*.msg')}
    assert listed == present
