"""Atomic writes: the old file or the new one, never a part, never a stray temp file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbship.files import sha256_file, write_atomic


def test_write_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    write_atomic(target, "old")
    write_atomic(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "doc.json"
    write_atomic(target, "old")

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_sha256_file_names_the_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 20000  # more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
