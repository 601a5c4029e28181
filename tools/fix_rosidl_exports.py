"""
Point the PyPI ROS message wheels' CMake exports at this interpreter's headers.

The message wheels (std_msgs, builtin_interfaces, ...) ship
``share/<pkg>/cmake/export_<pkg>__rosidl_generator_pyExport.cmake`` files whose include
directories are the wheel builder's: ``/opt/python/cp311-cp311/include/python3.11`` and its
numpy's ``numpy/_core/include``. CMake rejects a generated message package that depends on
them, because the directories do not exist here. This rewrites those two entries to
``sysconfig``'s include directory and ``numpy.get_include()`` of the running interpreter.
Running it again changes nothing.

Usage: ``python fix_rosidl_exports.py [PREFIX]`` (default: ``sys.prefix``).
"""

import argparse
from pathlib import Path
import re
import sys
import sysconfig

_INCLUDE_DIRS = re.compile(r'(INTERFACE_INCLUDE_DIRECTORIES ")([^"]*)(")')
_PYTHON_INCLUDE = re.compile(r'/include/python3\.\d+$')
_NUMPY_INCLUDE = re.compile(r'/numpy/(_core|core)/include$')


def fixed_include_dirs(value: str, python_include: str, numpy_include: str) -> str:
    """Return the ``;``-separated include list with Python and numpy entries replaced."""
    entries = []
    for entry in value.split(';'):
        if _PYTHON_INCLUDE.search(entry):
            entry = python_include
        elif _NUMPY_INCLUDE.search(entry):
            entry = numpy_include
        entries.append(entry)
    return ';'.join(entries)


def fix_exports(prefix: Path, python_include: str, numpy_include: str) -> list[Path]:
    """Rewrite every rosidl_generator_py export under ``prefix``; return the files changed."""
    changed = []
    pattern = 'share/*/cmake/export_*__rosidl_generator_pyExport.cmake'
    for path in sorted(prefix.glob(pattern)):
        text = path.read_text()
        new_text = _INCLUDE_DIRS.sub(
            lambda m: m[1] + fixed_include_dirs(m[2], python_include, numpy_include) + m[3],
            text,
        )
        if new_text != text:
            path.write_text(new_text)
            changed.append(path)
    return changed


def main() -> int:
    """Command-line entry: fix the exports under PREFIX and report how many changed."""
    import numpy  # only needed here, so importing this module stays cheap

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('prefix', nargs='?', type=Path, default=Path(sys.prefix))
    args = parser.parse_args()
    python_include = sysconfig.get_paths()['include']
    changed = fix_exports(args.prefix, python_include, numpy.get_include())
    print(f'fix_rosidl_exports: {len(changed)} file(s) now use {python_include}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
