"""Shared fixtures: the fixture notebooks, the shared corpus, a graph builder."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbship.extract.graph import StepGraph, build_graph
from nbship.notebook import read_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
CORPUS = Path(os.environ.get("NBSHIP_CORPUS", ROOT.parent / "shared" / "corpus"))
SHOWCASE = ROOT / "notebooks" / "marker_classifier.ipynb"


def fixture_path(name: str) -> Path:
    return NOTEBOOKS / f"{name}.ipynb"


def graph_of(name: str) -> StepGraph:
    return build_graph(read_notebook(fixture_path(name)))


def write_notebook(path: Path, cells: list[tuple[list[str], str]]) -> Path:
    """A Python notebook at ``path`` with code cells (tags, source), for one test's case."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}
    for n, (tags, source) in enumerate(cells):
        cell = new_code_cell(source)
        cell["id"] = f"c{n}"
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.write(nb, str(path))
    return path


def showcase_project(folder: Path, pyproject: str) -> Path:
    """``folder`` as a checkout of the showcase: its notebook at
    notebooks/marker_classifier.ipynb and this pyproject.toml; the folder."""
    (folder / "notebooks").mkdir(parents=True, exist_ok=True)
    shutil.copy(SHOWCASE, folder / "notebooks" / "marker_classifier.ipynb")
    (folder / "pyproject.toml").write_text(pyproject)
    return folder


def run_showcase(folder: Path, epochs: int = 1, **parameters: Any) -> Path:
    """The showcase notebook copied into ``folder`` and run once (a gate of 0.5, unless
    ``parameters`` say otherwise), as `nbship run` leaves it; the run's record folder."""
    from nbship.pipelines.compile import compile_graph
    from nbship.pipelines.local import run_compiled

    nb = folder / "marker_classifier.ipynb"
    shutil.copy(SHOWCASE, nb)
    compiled = compile_graph(build_graph(read_notebook(nb)), folder / "build")
    result = run_compiled(compiled, {"epochs": epochs, "threshold": 0.5, **parameters},
                          root=folder / "runs", echo=lambda line: None)
    assert result.status == "SUCCESS"
    return result.record_dir


def wait_for(what: str, check: Any, timeout: float = 120) -> Any:
    """``check()``'s first truthy answer, asked every half second; fails after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def push_release(registry: str, folder: Path, record: dict[str, Any],
                 pipeline: bytes) -> str:
    """A release as `nbship publish` lays it out (release.json as config and layer, the
    pipeline), pushed without images (the image tests publish real ones): its reference."""
    import json

    from nbship.files import sha256_file
    from nbship.release import oci
    from nbship.release.publish import PIPELINE_MEDIA_TYPE, RELEASE_MEDIA_TYPE

    (folder / "pipeline.yaml").write_bytes(pipeline)
    record = {**record, "pipeline": {"file": "pipeline.yaml",
                                     "sha256": sha256_file(folder / "pipeline.yaml")}}
    (folder / "release.json").write_text(json.dumps(record))
    ref = f"{registry}/releases/{record['name']}:latest"
    oci.push_files(oci.Reference.parse(ref), folder,
                   [("release.json", RELEASE_MEDIA_TYPE), ("pipeline.yaml", PIPELINE_MEDIA_TYPE)],
                   ("release.json", RELEASE_MEDIA_TYPE), "the release", "")
    return ref


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """An http.server answering from a thread of its own for the block, then shut down."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class Planted:
    """A pickle that touches ``marker`` when it is loaded: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


@pytest.fixture(autouse=True, scope="session")
def _own_machine_key(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tests' own per-machine key (nbship.signing), not the user's."""
    os.environ.setdefault("NBSHIP_KEY_FILE", str(tmp_path_factory.mktemp("key") / "key"))


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS} (set NBSHIP_CORPUS)")
    return CORPUS


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded registry (Debian's docker-registry) on a free port: its address."""
    from nbship.release import registry
    from nbship.release.tools import which
    from tests.release.conftest import free_port

    if which("docker-registry") is None:
        pytest.skip("not installed: docker-registry (make tools; .ci/run installs it)")
    root = tmp_path_factory.mktemp("registry")
    state = registry.up(root, free_port())
    try:
        yield state.address
    finally:
        registry.down(root)
