"""
Every console script declared in setup.cfg is installed and answers ``--help``.

In a venv made by ``make`` pip installs them to ``bin/``; in a ROS 2 install space CMake
installs them to ``lib/vla_pruned_ros/`` (checked by test_package_colcon.py).
"""

from pathlib import Path
import subprocess
import sys

from console_scripts import read_console_scripts
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(read_console_scripts(REPO / 'setup.cfg'))


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason='pip installs scripts into a venv')
@pytest.mark.parametrize('name', SCRIPTS)
def test_console_script_runs_help(name):
    executable = Path(sys.prefix) / 'bin' / name
    assert executable.is_file(), f'{name} is not in {executable.parent}: run `make` again'
    result = subprocess.run(
        [str(executable), '--help'], capture_output=True, text=True, timeout=60, cwd='/'
    )
    assert result.returncode == 0, f'{name} --help failed:\n{result.stderr}'
    assert 'usage' in result.stdout.lower()
