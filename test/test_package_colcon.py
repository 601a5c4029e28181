"""
``colcon build`` of this repository gives a working ROS 2 install space.

This is the path of a user's ROS 2 workspace (Humble/Jazzy/Kilted): colcon drives CMake, which
generates the messages and installs the Python code, the console scripts and share/ files.
Here it builds against this environment's ROS 2 wheels. One build (10-40 s) serves the whole
module; select it with ``-m colcon`` or leave it out with ``-m 'not colcon'``.
"""

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from console_scripts import read_console_scripts

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'vla_pruned_ros'
PY_DIR = f'python{sys.version_info.major}.{sys.version_info.minor}'

pytestmark = pytest.mark.colcon


def find_colcon() -> Path:
    for candidate in (Path(sys.prefix) / 'bin' / 'colcon', shutil.which('colcon')):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    pytest.skip('colcon is not installed (pip install colcon-common-extensions)')


@pytest.fixture(scope='module')
def install(tmp_path_factory) -> Path:
    """Build the repository in a fresh workspace; return ``install/vla_pruned_ros``."""
    workspace = tmp_path_factory.mktemp('colcon_ws')
    (workspace / 'src').mkdir()
    (workspace / 'src' / PACKAGE).symlink_to(REPO, target_is_directory=True)
    env = build_env()
    result = subprocess.run(
        [
            str(find_colcon()), 'build', '--base-paths', 'src',
            '--event-handlers', 'console_cohesion-', 'status-',
            '--cmake-args', f'-DPython3_EXECUTABLE={sys.executable}', '-DBUILD_TESTING=OFF',
        ],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = result.stdout + result.stderr
    if result.returncode != 0:
        stderr_logs = sorted((workspace / 'log').glob('latest_build/*/stderr.log'))
        log += ''.join(p.read_text() for p in stderr_logs)
    assert result.returncode == 0, f'colcon build failed:\n{log[-6000:]}'
    return workspace / 'install' / PACKAGE


def build_env() -> dict:
    env = dict(os.environ)
    # this interpreter's prefix holds the ROS 2 wheels in a venv; a sourced ROS stays behind it
    for name in ('CMAKE_PREFIX_PATH', 'AMENT_PREFIX_PATH'):
        parts = [p for p in env.get(name, '').split(os.pathsep) if p and p != sys.prefix]
        env[name] = os.pathsep.join([sys.prefix, *parts])
    # an outer `make test` must not hand its jobserver to this build
    for name in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL'):
        env.pop(name, None)
    return env


def run_sourced(install: Path, *command: str) -> subprocess.CompletedProcess:
    """Run ``command`` after sourcing the install space, as a user of the workspace would."""
    script = f'source {install.parent / "local_setup.bash"} && exec "$@"'
    return subprocess.run(
        ['bash', '-c', script, 'run_sourced', *command],
        cwd=install.parent.parent,  # not the repository: its sources must not be imported
        env=build_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_python_code_and_messages_come_from_the_install_space(install):
    site = install / 'lib' / PY_DIR / 'site-packages' / PACKAGE
    sources = [
        p.relative_to(REPO / PACKAGE)
        for p in (REPO / PACKAGE).rglob('*.py')
        if '__pycache__' not in p.parts
    ]
    missing = [str(p) for p in sources if not (site / p).is_file()]
    assert not missing, f'not installed: {missing}'
    assert (site / '__init__.py').read_text() == (REPO / PACKAGE / '__init__.py').read_text()

    probe = (
        'import vla_pruned_ros.cli as cli, vla_pruned_ros.msg as msg\n'
        'from rclpy.serialization import deserialize_message, serialize_message\n'
        'chunk = msg.ActionChunk(horizon=1, action_dim=2, data=[0.5, -0.5])\n'
        'assert deserialize_message(serialize_message(chunk), msg.ActionChunk) == chunk\n'
        'libs = {l.split()[-1] for l in open("/proc/self/maps") if "libvla_pruned_ros" in l}\n'
        'print(cli.__file__); print(msg.__file__); print(*sorted(libs), sep="\\n")\n'
    )
    result = run_sourced(install, sys.executable, '-c', probe)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert len(lines) >= 3, result.stdout  # cli, msg and at least one typesupport library
    for path in lines:
        assert Path(path).is_relative_to(install), f'{path} is not from {install}'


def test_console_scripts_are_installed_for_ros2_run(install):
    scripts = read_console_scripts(REPO / 'setup.cfg')
    for name in scripts:
        executable = install / 'lib' / PACKAGE / name
        assert executable.is_file(), f'{name} missing from lib/{PACKAGE}'
        assert os.access(executable, os.X_OK)
        assert executable.read_text().splitlines()[0] == f'#!{sys.executable}'
        result = run_sourced(install, str(executable), '--help')
        assert result.returncode == 0, f'{name} --help failed:\n{result.stderr}'
        assert 'usage' in result.stdout.lower()


def test_share_files_and_ament_index(install):
    share = install / 'share' / PACKAGE
    assert (install / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE).is_file()
    assert (share / 'package.xml').read_text() == (REPO / 'package.xml').read_text()
    for msg in (REPO / 'msg').glob('*.msg'):
        assert (share / 'msg' / msg.name).read_text() == msg.read_text()
    for folder in ('launch', 'config'):
        for path in (REPO / folder).rglob('*'):
            if path.is_file() and '__pycache__' not in path.parts:
                relative = path.relative_to(REPO)
                assert (share / relative).is_file(), f'share/{PACKAGE}/{relative} missing'
