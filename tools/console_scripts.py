"""
Write one small executable per console script declared in setup.cfg.

CMake (ament_cmake) does not read setup.cfg, so at configure time CMakeLists.txt runs this
script and installs the wrappers it writes to ``lib/<package>``, where ``ros2 run`` looks for
executables. The pip path gets the same commands from setuptools' entry points; both read the
one list in ``[options.entry_points] console_scripts``.

Usage: ``python3 console_scripts.py SETUP_CFG INTERPRETER OUT_DIR``; prints the names written,
one per line.
"""

import argparse
import configparser
from pathlib import Path
import re
import sys

# 'name = package.module:object.attribute' as setuptools accepts it (extras are not supported)
_ENTRY_POINT = re.compile(
    r'^(?P<name>[\w.-]+)\s*=\s*(?P<module>[\w.]+)\s*:\s*(?P<attr>[\w.]+)$'
)

_WRAPPER = '''\
#!{interpreter}
# Generated from setup.cfg by tools/console_scripts.py: edit setup.cfg, not this file.
import sys

from {module} import {head}

if __name__ == '__main__':
    sys.exit({call}())
'''


class EntryPointError(ValueError):
    """Raised when setup.cfg lacks console scripts or declares one this script cannot parse."""


def read_console_scripts(setup_cfg: Path) -> dict[str, str]:
    """
    Return ``{script name: 'module:attribute'}`` from setup.cfg.

    Raises EntryPointError when the section is missing, empty or holds a malformed line.
    """
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(setup_cfg):
        raise EntryPointError(f'cannot read {setup_cfg}')
    try:
        text = parser['options.entry_points']['console_scripts']
    except KeyError:
        raise EntryPointError(
            f'{setup_cfg} has no console_scripts in [options.entry_points]'
        ) from None
    scripts = {}
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        match = _ENTRY_POINT.match(line)
        if match is None:
            raise EntryPointError(f'malformed console_scripts entry in {setup_cfg}: {line!r}')
        scripts[match['name']] = f"{match['module']}:{match['attr']}"
    if not scripts:
        raise EntryPointError(f'{setup_cfg} declares no console_scripts')
    return scripts


def wrapper_source(target: str, interpreter: str) -> str:
    """Return the text of an executable that calls ``target`` ('module:attribute')."""
    module, attr = target.split(':')
    head = attr.split('.')[0]
    return _WRAPPER.format(interpreter=interpreter, module=module, head=head, call=attr)


def write_wrappers(setup_cfg: Path, interpreter: str, out_dir: Path) -> dict[str, Path]:
    """Write one executable wrapper per console script into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, target in read_console_scripts(setup_cfg).items():
        path = out_dir / name
        path.write_text(wrapper_source(target, interpreter))
        path.chmod(0o755)
        written[name] = path
    return written


def main() -> int:
    """Command-line entry: write the wrappers and print their names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('setup_cfg', type=Path)
    parser.add_argument('interpreter', help='absolute path of the Python for the shebang')
    parser.add_argument('out_dir', type=Path)
    args = parser.parse_args()
    try:
        written = write_wrappers(args.setup_cfg, args.interpreter, args.out_dir)
    except EntryPointError as error:
        print(f'console_scripts.py: {error}', file=sys.stderr)
        return 1
    print('\n'.join(written))
    return 0


if __name__ == '__main__':
    sys.exit(main())
