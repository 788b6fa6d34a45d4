"""The release commands' mistakes: a clear message, the right exit status, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbship.release.tools import which
from tests.conftest import SHOWCASE
from tests.release.conftest import free_port, needs


def nbship(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbship", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_publish_without_a_registry_says_how_to_start_one(tmp_path: Path) -> None:
    done = nbship(tmp_path, "publish", str(SHOWCASE), "--allow-dirty")
    assert done.returncode == 1
    assert "the embedded one is not running" in done.stderr
    assert "nbship registry up" in done.stderr and "Traceback" not in done.stderr


def test_publish_refuses_what_no_commit_names_before_doing_any_work(tmp_path: Path) -> None:
    nb = tmp_path / "nb.ipynb"
    shutil.copy(SHOWCASE, nb)
    done = nbship(tmp_path, "publish", "nb.ipynb", "--registry", "127.0.0.1:9")
    assert done.returncode == 1 and "is not in a git repository" in done.stderr
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                       cwd=tmp_path, check=True, capture_output=True)
    nb.write_text(nb.read_text().replace("epochs = 8", "epochs = 3"))
    done = nbship(tmp_path, "publish", "nb.ipynb", "--registry", "127.0.0.1:9")
    assert done.returncode == 1 and "has uncommitted changes" in done.stderr
    assert "--allow-dirty" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / ".nbship" / "images").exists()  # refused before building


def test_release_show_of_a_bad_reference(tmp_path: Path) -> None:
    done = nbship(tmp_path, "release", "show", "no-such-host/releases/x")
    assert done.returncode == 1
    assert "not a registry reference" in done.stderr and "Traceback" not in done.stderr


@needs("docker-registry")
def test_release_show_of_a_missing_release(tmp_path: Path) -> None:
    root = tmp_path / ".nbship/registry"
    assert nbship(tmp_path, "registry", "up", "--port", str(free_port()),
                  "--root", str(root)).returncode == 0
    try:
        done = nbship(tmp_path, "release", "show", "nothing-here")
        assert done.returncode == 1
        assert "no release" in done.stderr and "nothing-here" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        nbship(tmp_path, "registry", "down", "--root", str(root))


def test_a_builder_that_cannot_run_is_named_with_what_to_do(tmp_path: Path) -> None:
    engine = which("docker") and subprocess.run(["docker", "info"],
                                                capture_output=True).returncode == 0
    if engine:
        pytest.skip("a Docker engine runs here: nothing is missing to report")
    done = nbship(tmp_path, "build", str(SHOWCASE), "--backend", "docker")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    if which("docker"):  # the CLI without an engine, as on these machines
        assert "docker is installed but no engine answers" in done.stderr
        assert "--backend buildah" in done.stderr
    else:
        assert "docker is not installed" in done.stderr and "apt-get install" in done.stderr
