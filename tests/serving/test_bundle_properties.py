"""Properties of what a run folder or a model release brings (issue 17 §2): names that
become paths, provenance fields under the seal, provenance.json of any content, and value
archives of any members. Whatever comes in, the answer is the value or an NbshipError
with a message: never another exception, never a path outside its folder."""

from __future__ import annotations

import copy
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbship.errors import NbshipError, ServeError
from nbship.files import PATH_NAME, path_name
from nbship.pipelines.local import seal_provenance
from nbship.release import model
from nbship.serving.bundle import read_sealed

EXAMPLES = int(os.environ.get("NBSHIP_HYPOTHESIS_EXAMPLES", "40"))
PROPS = settings(max_examples=EXAMPLES * 3, deadline=None,
                 derandomize="NBSHIP_HYPOTHESIS_RANDOM" not in os.environ,
                 suppress_health_check=[HealthCheck.too_slow])

TRICKY = st.sampled_from(["..", ".", "/", "\\", "../../outside/victim", "a/../b", "/etc/passwd",
                          "a\x00b", "~", "-rf", "é", "A", "a b", "a\nb", "x" * 300, "",
                          "marker-classifier", "20261207-224211-123456", "nbship-serve"])
NAMES = st.one_of(TRICKY, st.text(max_size=40),
                  st.from_regex(r"[a-z0-9][a-z0-9./-]{0,20}", fullmatch=True))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                    | st.floats(allow_nan=False),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@PROPS
@given(st.one_of(NAMES, JSON))
def test_a_name_is_a_single_plain_path_part_or_an_error(value: Any) -> None:
    root = Path("/srv/nbship/targets")
    try:
        name = path_name(value, "the name")
    except NbshipError as exc:
        assert "not a name nbship makes" in exc.message and exc.hint
        return
    assert PATH_NAME.fullmatch(name) and name == value
    joined = root / f"{name}-8080.json"
    assert joined.parent == root and os.path.normpath(joined) == str(joined)
    assert name not in (".", "..") and "/" not in name and len(name) <= 240


def _provenance(name: str, run_id: str) -> dict[str, Any]:
    """A run's provenance with the fields serve, `model push` and the monitoring read."""
    return {
        "run": {"id": run_id, "status": "SUCCESS", "seconds": 1.5,
                "finished": "2026-12-07T22:00:00+00:00"},
        "git": {"commit": "a" * 40, "dirty": False},
        "notebook": {"path": "n.ipynb", "sha256": "b" * 64},
        "pipeline": {"name": name, "yaml_sha256": "c" * 64},
        "parameters": {"epochs": 1, "threshold": 0.5, "tags": ["x", 1], "opts": {"k": None}},
        "metrics": {"accuracy": 0.9778, "loss": 0.05472},
        "data": {"sha256": "d" * 64, "from": {"load": {"x": "e" * 64}}},
        "steps": {"train": {"outputs": {"model": {"uri": "/runs/artifacts/train/model",
                                                  "sha256": "f" * 64}}}},
        "serve": {"module": "serve.py", "sha256": "0" * 64,
                  "inputs": {"model": {"from": "train", "sha256": "f" * 64}},
                  "parameters": ["threshold"], "check": {"profile": None}},
        "trigger": {"kind": "manual"},
    }


def _leaves(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _run_folder(root: Path, prov: dict[str, Any], name: str, run_id: str) -> Path:
    folder = root / "runs" / name / run_id
    folder.mkdir(parents=True)
    (folder / "provenance.json").write_text(json.dumps(prov))
    return folder


@PROPS
@given(st.data(), JSON)
def test_every_provenance_field_is_under_the_seal(data: st.DataObject, new: Any) -> None:
    sealed = seal_provenance(_provenance("marker-classifier", "20261207-224211-123456"))
    paths = [p for p in _leaves(sealed) if p and p[0] != "hmac"]
    where = data.draw(st.sampled_from(paths))
    changed = copy.deepcopy(sealed)
    doc = changed
    for key in where[:-1]:
        doc = doc[key]
    doc[where[-1]] = new
    with tempfile.TemporaryDirectory() as tmp:
        folder = _run_folder(Path(tmp), changed, "marker-classifier", "20261207-224211-123456")
        if json.dumps(changed, sort_keys=True) == json.dumps(sealed, sort_keys=True):
            assert read_sealed(folder)["pipeline"]["name"] == "marker-classifier"
            return
        try:
            read_sealed(folder)
        except ServeError as exc:
            assert "seal does not hold" in exc.message
        else:
            raise AssertionError(f"a change of {where} passed the seal")


@PROPS
@given(NAMES, NAMES)
def test_names_under_a_seal_that_holds_are_still_checked(name: str, run_id: str) -> None:
    sealed = seal_provenance(_provenance(name, run_id))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "runs" / "p" / "r"
        folder.mkdir(parents=True)
        (folder / "provenance.json").write_text(json.dumps(sealed))
        try:
            prov = read_sealed(folder)
        except ServeError as exc:
            assert ("not a name nbship makes" in exc.message or "not its own" in exc.message)
            return
        assert (name, run_id) == ("p", "r") and prov["pipeline"]["name"] == "p"


@PROPS
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
def test_any_provenance_json_is_a_message(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "runs" / "p" / "r"
        folder.mkdir(parents=True)
        (folder / "provenance.json").write_bytes(content)
        try:
            read_sealed(folder)
        except ServeError as exc:
            assert exc.message
        else:
            raise AssertionError("an unsealed provenance was read as sealed")


KINDS = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
         tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE, tarfile.CONTTYPE,
         tarfile.GNUTYPE_SPARSE]
MEMBER_NAMES = st.one_of(
    st.sampled_from(["nbship.json", "value.npy", "module/weights.safetensors", "..",
                     "../x", "a/../../x", "/abs", "./a", "a//b", "a/", "a\\b", "é", "a" * 300]),
    st.text(alphabet="ab./\\-_ ", max_size=12))
MEMBERS = st.lists(st.tuples(MEMBER_NAMES, st.sampled_from(KINDS), st.binary(max_size=20),
                             st.dictionaries(st.sampled_from(["GNU.sparse.major",
                                                              "GNU.sparse.map",
                                                              "GNU.sparse.size", "path",
                                                              "linkpath", "size"]),
                                             st.text(alphabet="0123456789,./a", max_size=6),
                                             max_size=2)),
                   max_size=70)


def _tar_of(members: list[tuple[str, bytes, bytes, dict[str, str]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, pax in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "value.npy" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            regular = kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
            info.size = len(data) if regular else 0
            info.pax_headers = pax
            tar.addfile(info, io.BytesIO(data) if regular else None)
    return buf.getvalue()


def _untar_or_message(archive: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "in" / "values"
        out.parent.mkdir()
        try:
            model._untar(archive, out)
        except ServeError as exc:
            assert exc.message
            assert not out.exists()
        else:
            for path in out.rglob("*"):
                assert not path.is_symlink()
                assert path.is_dir() or path.is_file()
            assert len([p for p in out.rglob("*") if p.is_file()]) <= model.MAX_MEMBERS
        outside = [p for p in Path(tmp).rglob("*") if out not in (p, *p.parents)]
        assert outside == [out.parent], outside


@PROPS
@given(MEMBERS)
def test_any_value_archive_is_extracted_inside_or_is_a_message(
        members: list[tuple[str, bytes, bytes, dict[str, str]]]) -> None:
    try:
        archive = _tar_of(members)
    except (ValueError, UnicodeError, tarfile.TarError):  # tarfile will not write it
        return
    _untar_or_message(archive)


@PROPS
@given(st.binary(max_size=3000), st.integers(0, 2999), st.binary(min_size=1, max_size=8))
def test_damaged_value_archives_are_a_message(noise: bytes, at: int, patch: bytes) -> None:
    good = bytearray(_tar_of([("nbship.json", tarfile.REGTYPE, b"{}", {}),
                              ("value.npy", tarfile.REGTYPE, b"x" * 600, {})]))
    good[at:at + len(patch)] = patch
    _untar_or_message(bytes(good))
    _untar_or_message(noise)
