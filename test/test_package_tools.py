"""The build helpers in tools/: CMake export repair and console-script wrappers."""

from pathlib import Path
import subprocess
import sys
import sysconfig

import numpy
import pytest

from console_scripts import EntryPointError, read_console_scripts, write_wrappers
from fix_rosidl_exports import fix_exports

WHEEL_EXPORT = '''\
set_target_properties(std_msgs::std_msgs__rosidl_generator_py PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "/opt/python/cp311-cp311/include/python3.11;\
/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include;${_IMPORT_PREFIX}/include"
  INTERFACE_LINK_LIBRARIES "std_msgs::std_msgs__rosidl_generator_c"
)
'''


def test_fix_exports_points_at_this_interpreter_and_is_idempotent(tmp_path):
    export = tmp_path / 'share/std_msgs/cmake/export_std_msgs__rosidl_generator_pyExport.cmake'
    export.parent.mkdir(parents=True)
    export.write_text(WHEEL_EXPORT)
    python_include = sysconfig.get_paths()['include']

    assert fix_exports(tmp_path, python_include, numpy.get_include()) == [export]
    fixed = export.read_text()
    assert '/opt/python' not in fixed
    expected = f'"{python_include};{numpy.get_include()};${{_IMPORT_PREFIX}}/include"'
    assert expected in fixed
    assert 'INTERFACE_LINK_LIBRARIES "std_msgs::std_msgs__rosidl_generator_c"' in fixed

    assert fix_exports(tmp_path, python_include, numpy.get_include()) == []
    assert export.read_text() == fixed


def test_environment_exports_were_repaired():
    pattern = 'share/*/cmake/export_*__rosidl_generator_pyExport.cmake'
    exports = list(Path(sys.prefix).glob(pattern))
    if not exports:
        pytest.skip('no ROS 2 message wheels in this environment')
    stale = [str(p) for p in exports if '/opt/python/' in p.read_text()]
    assert not stale, 'run tools/fix_rosidl_exports.py (make does)'


def write_setup_cfg(tmp_path, scripts: str):
    setup_cfg = tmp_path / 'setup.cfg'
    setup_cfg.write_text(f'[options.entry_points]\nconsole_scripts =\n{scripts}')
    return setup_cfg


def test_wrappers_call_the_declared_function(tmp_path):
    setup_cfg = write_setup_cfg(
        tmp_path, '    say-hi = json.tool:main\n    py-version = platform:python_version\n'
    )
    assert read_console_scripts(setup_cfg) == {
        'say-hi': 'json.tool:main',
        'py-version': 'platform:python_version',
    }
    written = write_wrappers(setup_cfg, sys.executable, tmp_path / 'bin')
    help_text = subprocess.run(
        [str(written['say-hi']), '--help'], capture_output=True, text=True, check=True
    ).stdout
    assert 'json' in help_text.lower()
    # sys.exit(<str>) prints the string and exits 1: proof the function itself was called
    result = subprocess.run([str(written['py-version'])], capture_output=True, text=True)
    assert result.stderr.strip() == '.'.join(map(str, sys.version_info[:3]))


@pytest.mark.parametrize(
    'scripts', ['', '    no-target\n', '    bad = module.without.attribute\n']
)
def test_malformed_console_scripts_are_rejected(tmp_path, scripts):
    with pytest.raises(EntryPointError):
        read_console_scripts(write_setup_cfg(tmp_path, scripts))


def test_missing_section_is_rejected(tmp_path):
    setup_cfg = tmp_path / 'setup.cfg'
    setup_cfg.write_text('[metadata]\nname = x\n')
    with pytest.raises(EntryPointError, match='no console_scripts'):
        read_console_scripts(setup_cfg)
