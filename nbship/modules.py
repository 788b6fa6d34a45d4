"""Importing a module nbship generated (pipeline.py, serve.py) from its file.

Each import gets a name of its own (from the file's path), so two notebooks' modules
never replace each other, and leaves ``sys.modules`` as it found it afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


@contextlib.contextmanager
def imported(path: Path, prefix: str) -> Iterator[ModuleType]:
    """The module in ``path``, executed, for the duration of the block."""
    name = f"{prefix}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
