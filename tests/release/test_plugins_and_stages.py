"""Builders plug in by entry point; a killed publish's staging folder is cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbship.errors import ToolMissingError
from nbship.release import backends
from nbship.release.publish import _remove_abandoned_stages


def _dist(folder: Path, group: str, line: str) -> None:
    dist = folder / "fake_builder-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-builder\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{line}\n")


def test_a_builder_plugs_in_through_an_entry_point(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_builder.py").write_text(
        "class Fake:\n    name = 'fake'\n    def has_image(self, ref):\n        return True\n")
    _dist(tmp_path, "nbship.builders", "fake = fake_builder:Fake")
    monkeypatch.syspath_prepend(str(tmp_path))
    chosen = backends.backend("fake")
    assert chosen.name == "fake" and chosen.has_image("x")
    with pytest.raises(ToolMissingError, match="no image builder 'nope'") as info:
        backends.backend("nope")
    assert "fake" in str(info.value.hint) and "buildah" in str(info.value.hint)


def test_a_broken_builder_plugin_is_named(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _dist(tmp_path, "nbship.builders", "broken = no_such_module:Builder")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ToolMissingError, match="plug-in 'broken'"):
        backends.backend("broken")


def test_abandoned_publish_stages_are_removed_live_ones_kept(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    (tmp_path / f".release-{gone.pid}-abc").mkdir()
    (tmp_path / f".release-{os.getpid()}-def").mkdir()
    (tmp_path / ".release-olderformat").mkdir()
    _remove_abandoned_stages(tmp_path)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {".release-olderformat", f".release-{os.getpid()}-def"}
