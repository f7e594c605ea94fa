"""Point the ROS wheels' exported CMake files at this interpreter's include folders (shared/design/ROS2_ON_PIP.md).

The PyPI `ros-*` wheels were built under /opt/python/cpXY-cpXY/...; their `share/**/*.cmake` files name that
machine's Python and numpy include folders, which CMake refuses because they do not exist here. Every later
`pip install ros-*` brings the bad paths back, so the Makefile runs this after each wheel install. Idempotent.

    usage: python tools/fix_ros_cmake_paths.py [PREFIX]      (PREFIX: the venv root; default sys.prefix)
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

# /opt/python/cp311-cp311/include/python3.11 and /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/...
_PYTHON_INCLUDE = re.compile(r"/opt/python/cp\d+-cp\d+t?/include/python\d+\.\d+t?")
_NUMPY_INCLUDE = re.compile(r"/opt/python/cp\d+-cp\d+t?/lib/python\d+\.\d+t?/site-packages/numpy/(?:_?core/)?include")


def rewrite(text: str, python_include: str, numpy_include: str) -> str:
    """``text`` with the build machine's Python and numpy include folders replaced by the given ones."""
    text = _NUMPY_INCLUDE.sub(lambda _: numpy_include, text)
    return _PYTHON_INCLUDE.sub(lambda _: python_include, text)


def fix_prefix(prefix: Path, python_include: str, numpy_include: str) -> list[Path]:
    """Rewrite every ``prefix/share/**/*.cmake`` that names a missing /opt/python folder; returns the changed files."""
    changed = []
    for path in sorted((prefix / "share").glob("**/*.cmake")):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if "/opt/python/" not in text:
            continue
        new = rewrite(text, python_include, numpy_include)
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    prefix = Path(args[0]) if args else Path(sys.prefix)
    try:
        import numpy
    except ImportError:
        print("fix_ros_cmake_paths: numpy is not installed in this interpreter", file=sys.stderr)
        return 1
    python_include = sysconfig.get_paths()["include"]
    if not (Path(python_include) / "Python.h").is_file():
        print(f"fix_ros_cmake_paths: no Python.h in {python_include} (install the Python headers)", file=sys.stderr)
        return 1
    changed = fix_prefix(prefix, python_include, numpy.get_include())
    left = [p for p in (prefix / "share").glob("**/*.cmake") if "/opt/python/" in p.read_text(errors="replace")]
    print(f"fix_ros_cmake_paths: rewrote {len(changed)} CMake file(s) under {prefix / 'share'}")
    if left:
        print(f"fix_ros_cmake_paths: /opt/python paths remain in {[str(p) for p in left[:5]]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
