"""The step graph is kept between runs, and re-made when the notebook changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

import nbship.extract.cache as cache
from tests.conftest import Planted, fixture_path


def test_unchanged_notebook_is_not_analysed_again(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    nb = tmp_path / "n.ipynb"
    shutil.copy(fixture_path("three_numpy_steps"), nb)
    first = cache.analyse(nb, cache_dir=tmp_path / "c")

    def must_not_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("analysed an unchanged notebook again")

    monkeypatch.setattr(cache, "read_notebook", must_not_read)
    again = cache.analyse(nb, cache_dir=tmp_path / "c")
    assert [s.name for s in again.steps] == [s.name for s in first.steps]
    assert again.notebook.sha256 == first.notebook.sha256

    doc = nbformat.read(nb, as_version=4)
    doc.cells[4].source = "centered = data - 1"
    nbformat.write(doc, nb)
    with pytest.raises(AssertionError, match="analysed"):
        cache.analyse(nb, cache_dir=tmp_path / "c")


def test_a_broken_cache_entry_is_ignored(tmp_path: Path) -> None:
    nb = fixture_path("fan_out_fan_in")
    cache.analyse(nb, cache_dir=tmp_path)
    for entry in tmp_path.glob("*.pickle"):
        entry.write_bytes(b"not a pickle")
    assert len(cache.analyse(nb, cache_dir=tmp_path).steps) == 4


@pytest.mark.parametrize("sealed_elsewhere", [False, True], ids=["plain", "other-machine-key"])
def test_a_planted_cache_entry_is_never_unpickled(sealed_elsewhere: bool, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from nbship import signing

    nb = fixture_path("fan_out_fan_in")
    cache.analyse(nb, cache_dir=tmp_path / "c")
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Planted(marker))
    if sealed_elsewhere:
        monkeypatch.setenv(signing.KEY_ENV, "ab" * 32)
        payload = signing.seal(payload)
        monkeypatch.delenv(signing.KEY_ENV)
    for entry in (tmp_path / "c").glob("*.pickle"):
        entry.write_bytes(payload)
    assert len(cache.analyse(nb, cache_dir=tmp_path / "c").steps) == 4
    assert not marker.exists()
