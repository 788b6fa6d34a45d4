"""Build contexts without a builder: requirements, the lock, the content-hash tag, --dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.local import preload_modules
from nbship.release.context import digest_of, write_context
from nbship.release.wheels import LockedWheel, Wheelhouse, step_requirements
from tests.conftest import SHOWCASE, fixture_path


def test_step_requirements_are_the_notebooks_libraries_and_the_runtime_pinned_as_here() -> None:
    import importlib.metadata as md

    graph = build_graph(read_notebook(SHOWCASE))
    pins = step_requirements(graph, preload_modules(graph))
    names = {p.split("==")[0] for p in pins}
    assert {"torch", "numpy", "kfp", "safetensors", "cloudpickle"} <= names
    assert f"torch=={md.version('torch')}" in pins
    # what only the tests and the notebook tooling need stays out of the steps' image
    assert not names & {"pytest", "papermill", "nbval", "jupyterlab", "nbship", "kserve"}
    assert pins == sorted(pins)


def test_magics_bring_ipython_into_the_image() -> None:
    graph = build_graph(read_notebook(fixture_path("magics_and_shell_lines")))
    assert any(p.startswith("ipython==") for p in step_requirements(graph, []))


def _house(tmp: Path, name: str, content: bytes) -> Wheelhouse:
    tmp.mkdir(parents=True, exist_ok=True)
    file = f"{name}-1.0-py3-none-any.whl"
    (tmp / file).write_bytes(content)
    import hashlib

    return Wheelhouse(tmp, [LockedWheel(name, "1.0", file, hashlib.sha256(content).hexdigest())])


def test_context_tag_is_the_content_hash(tmp_path: Path) -> None:
    house = _house(tmp_path / "h1", "demo", b"one")
    first = write_context("img", tmp_path / "ctx", [house], base="base:1", version="0.1.0")
    lock = (first.directory / "requirements.lock").read_text()
    assert f"demo==1.0 --hash=sha256:{house.wheels[0].sha256}" in lock
    assert (first.directory / "wheels" / house.wheels[0].file).read_bytes() == b"one"
    again = write_context("img", tmp_path / "ctx", [house], base="base:1", version="0.1.0")
    assert again.tag == first.tag and again.tag.startswith("ctx-")
    # same wheel name, other bytes (nbship's own wheel after a code change): new tag, new file
    changed = _house(tmp_path / "h2", "demo", b"two")
    other = write_context("img", tmp_path / "ctx", [changed], base="base:1", version="0.1.0")
    assert other.tag != first.tag
    assert (other.directory / "wheels" / changed.wheels[0].file).read_bytes() == b"two"
    rebased = write_context("img", tmp_path / "ctx", [changed], base="base:2", version="0.1.0")
    assert rebased.tag != other.tag
    assert digest_of(rebased.directory) == rebased.digest


def test_dockerfile_installs_offline_without_leaving_wheels_in_a_layer(tmp_path: Path) -> None:
    ctx = write_context("img", tmp_path, [_house(tmp_path / "h", "demo", b"x")],
                        base="python:3.11-slim", version="0.1.0")
    text = (ctx.directory / "Dockerfile").read_text()
    assert "--no-index" in text and "--require-hashes" in text
    assert "--mount=type=bind,source=wheels" in text and "COPY" not in text
    assert "ARG BASE=python:3.11-slim" in text


def test_dry_run_writes_contexts_only(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "nbship", "build", str(SHOWCASE), "--dry-run",
                           "-o", str(tmp_path / "images"), "--base", "python:3.11-slim"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ("nbship-steps", "nbship-server"):
        assert f"localhost/{name}:ctx-" in done.stdout
        ctx = tmp_path / "images" / name
        lock = (ctx / "requirements.lock").read_text()
        wheels = sorted(p.name for p in (ctx / "wheels").iterdir())
        assert len(wheels) == len(lock.strip().splitlines()) - 1  # one line per wheel
        assert any(w.startswith("torch-") for w in wheels)
    assert "kserve==" in (tmp_path / "images/nbship-server/requirements.lock").read_text()
    assert "kserve==" not in (tmp_path / "images/nbship-steps/requirements.lock").read_text()
