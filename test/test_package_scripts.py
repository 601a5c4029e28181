"""
Every console script declared in setup.cfg is installed and answers ``--help``.

Where depends on who installed the package: pip (``make``) puts the scripts into the
environment's ``bin/``, CMake (colcon) into ``lib/vla_pruned_ros/`` of the install prefix,
where ``ros2 run`` looks.
"""

from pathlib import Path
import subprocess
import sys

from ament_index_python.packages import get_package_prefix
import pytest

from console_scripts import read_console_scripts

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'vla_pruned_ros'
SCRIPTS = sorted(read_console_scripts(REPO / 'setup.cfg'))


def script_dir() -> Path:
    cmake_dir = Path(get_package_prefix(PACKAGE)) / 'lib' / PACKAGE
    return cmake_dir if cmake_dir.is_dir() else Path(sys.prefix) / 'bin'


@pytest.mark.parametrize('name', SCRIPTS)
def test_console_script_runs_help(name):
    executable = script_dir() / name
    assert executable.is_file(), f'{name} is not in {executable.parent}: install again (make)'
    result = subprocess.run(
        [str(executable), '--help'], capture_output=True, text=True, timeout=60, cwd='/'
    )
    assert result.returncode == 0, f'{name} --help failed:\n{result.stderr}'
    assert 'usage' in result.stdout.lower()
