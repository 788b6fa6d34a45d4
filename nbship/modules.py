"""Running a module nbship generated (pipeline.py, serve.py) from its bytes.

A module is never imported by path: Python's import system would run a
``__pycache__/NAME.cpython-311.pyc`` found beside the file instead of the file (an
"unchecked-hash" pyc is run without looking at the source at all), and the file could
change between a check of its sha256 and its import. Here the bytes are read once,
compiled, and run in a fresh module namespace; no bytecode cache is read or written.

Each module gets a name of its own (from its file name and bytes), so two notebooks'
modules never replace each other, and ``sys.modules`` is left as it was found afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


@contextlib.contextmanager
def executed(source: bytes, filename: str, prefix: str) -> Iterator[ModuleType]:
    """The module whose code is exactly ``source`` (``filename`` is only for tracebacks
    and ``inspect``), executed, for the duration of the block."""
    digest = hashlib.sha256(filename.encode("utf-8", "surrogatepass") + b"\0" + source)
    name = f"{prefix}_{digest.hexdigest()[:12]}"
    code = compile(source, filename, "exec", dont_inherit=True)
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module  # classes defined in the module find it (dataclasses, pickle)
    try:
        exec(code, module.__dict__)  # noqa: S102 - nbship's own generated module
        yield module
    finally:
        sys.modules.pop(name, None)


@contextlib.contextmanager
def imported(path: Path, prefix: str) -> Iterator[ModuleType]:
    """The module in ``path`` (its bytes, read once), executed, for the duration of the
    block."""
    with executed(path.read_bytes(), str(path), prefix) as module:
        yield module
