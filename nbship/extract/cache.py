"""Keep a notebook's StepGraph between commands.

A cached `nbship run` spends most of its time importing nbformat and IPython and
analysing the notebook again. When the notebook's bytes, nbship's own code and
the environment are unchanged, the graph from last time is the same graph: it is
kept in ``.nbship/cache/`` (pickled, written atomically) and read back instead.
Any change to one of the three is a different key. Each entry is sealed with an
HMAC of this machine's key (nbship.signing): an entry that a cloned or copied
folder brings does not verify and is never unpickled.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import site
import sys
from pathlib import Path

from nbship.extract.graph import StepGraph, build_graph
from nbship.files import write_atomic
from nbship.notebook import read_notebook
from nbship.signing import seal, unseal

CACHE_DIR = Path(os.environ.get("NBSHIP_CACHE_DIR", ".nbship/cache"))


def code_digest() -> str:
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _environment() -> str:
    """Changes when packages are installed or removed (the missing-module check)."""
    stamps = [sys.executable]
    for folder in site.getsitepackages():
        try:
            stamps.append(f"{folder}:{os.stat(folder).st_mtime_ns}")
        except OSError:
            continue
    return "|".join(stamps)


def analyse(path: Path, *, cache_dir: Path = CACHE_DIR) -> StepGraph:
    """``build_graph(read_notebook(path))``, served from the cache when nothing changed."""
    try:
        raw = path.read_bytes()
    except OSError:
        return build_graph(read_notebook(path))  # the reader's own clear error
    key = hashlib.sha256(b"\0".join([
        raw, code_digest().encode(), _environment().encode(), str(path).encode(),
        os.getcwd().encode()])).hexdigest()
    entry = cache_dir / f"{key}.pickle"
    try:
        payload = unseal(entry.read_bytes())
        graph = pickle.loads(payload) if payload is not None else None
        if isinstance(graph, StepGraph):
            return graph
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        pass
    graph = build_graph(read_notebook(path))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(entry, seal(pickle.dumps(graph)))
    except (OSError, RecursionError):
        pass  # a read-only folder only costs the next run its speed
    return graph
