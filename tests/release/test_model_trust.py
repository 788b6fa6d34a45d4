"""Issue 17 §2 for model releases: `model push` pushes only what the run's seal covers (a
forged run folder is refused, not re-signed); a pulled model's serve.py runs from its
checked bytes (a planted pyc never runs); a model pushed with another key is refused
before anything it brings is written; value archives that nbship never writes are a
message."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nbship import signing
from nbship.errors import ServeError
from nbship.release import model, oci
from tests.conftest import ROOT
from tests.serving.test_serve_trust import EVIL, forged, plant_pyc, tiny_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_runs(tmp_path_factory.mktemp("model-trust"), 2, 3)


@pytest.fixture
def model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(model.CACHE_ENV, str(tmp_path / "models"))
    return tmp_path / "models"


def _push(run: Path, registry: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbship", "model", "push", str(run),
                           "--registry", registry], cwd=ROOT, text=True, capture_output=True,
                          timeout=300, env={**os.environ, **env})


def test_model_push_refuses_a_run_folder_whose_seal_does_not_hold(
        runs: list[Path], local_registry: str, tmp_path: Path) -> None:
    """Today's attack: a fake commit, accuracy=0.999 and another run's model, pushed and
    re-signed with this machine's key as if the run had made them."""
    a, b = runs
    other = json.loads((b / "provenance.json").read_text())
    forgery = forged(a, tmp_path / "runs", {
        "git.commit": "f" * 40, "metrics.accuracy": 0.999,
        "steps.make.outputs.weights": other["steps"]["make"]["outputs"]["weights"],
        "serve.inputs.weights.sha256": other["steps"]["make"]["outputs"]["weights"]["sha256"],
    })
    done = _push(forgery, local_registry)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "seal does not hold" in done.stderr and "Traceback" not in done.stderr
    repo = model.model_repository(local_registry, "tiny")
    assert oci.exists(repo.with_tag(f"run-{a.name}")) is None
    assert oci.exists(repo.with_tag("latest")) is None

    # the run as recorded pushes, and what it records is the run's
    done = _push(a, local_registry)
    assert done.returncode == 0, done.stderr
    record, _, _ = model.show(str(repo.with_tag("latest")))
    prov = json.loads((a / "provenance.json").read_text())
    assert record["commit"] == prov["git"]["commit"] and record["metrics"] == prov["metrics"]
    assert record["run"]["id"] == a.name


def test_model_push_refuses_a_value_that_is_not_the_runs(runs: list[Path], tmp_path: Path,
                                                         local_registry: str) -> None:
    own = tiny_runs(tmp_path / "own", 2)[0]
    uri = Path(json.loads((own / "provenance.json").read_text())
               ["steps"]["make"]["outputs"]["weights"]["uri"])
    other = json.loads((runs[1] / "provenance.json").read_text())
    import shutil

    shutil.rmtree(uri)
    shutil.copytree(other["steps"]["make"]["outputs"]["weights"]["uri"], uri)
    with pytest.raises(ServeError, match="not the value the run recorded"):
        model.push(own, local_registry, echo=lambda line: None)


def test_a_pulled_models_planted_pyc_never_runs(runs: list[Path], local_registry: str,
                                                model_cache: Path, tmp_path: Path) -> None:
    pushed = model.push(runs[0], local_registry, echo=lambda line: None)
    ref = f"{pushed.reference.registry}/{pushed.reference.repository}@{pushed.digest}"
    folder, _, _ = model.pull(ref)
    marker = tmp_path / "PWNED"
    source = (folder / model.SERVE_FILE).read_text()
    pyc = plant_pyc(folder / model.SERVE_FILE, EVIL.format(marker=str(marker)) + source)
    served = model.load_model(ref)
    assert served.predict([1, 1, 1]).tolist() == [2.0, 2.0, 2.0]
    assert not marker.exists(), "the planted __pycache__ ran"
    assert [p.name for p in pyc.parent.iterdir()] == [pyc.name]  # nothing written there


def test_a_model_pushed_with_another_key_is_refused_before_it_is_unpacked(
        runs: list[Path], local_registry: str, model_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pushed = model.push(runs[1], local_registry, echo=lambda line: None)
    ref = f"{pushed.reference.registry}/{pushed.reference.repository}@{pushed.digest}"
    monkeypatch.setenv(signing.KEY_ENV, "cd" * 32)  # this server's key is another
    with pytest.raises(ServeError, match="not pushed with this machine's key"):
        model.load_model(ref)
    assert not model_cache.exists() or not any(model_cache.rglob("*"))


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x",
            **fields: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data if kind == tarfile.REGTYPE else None


def _sparse_without_map() -> bytes:
    """A GNU sparse 1.0 member whose map has no newline: tarfile's own parser raised
    `ValueError: not enough values to unpack` from it."""
    info = tarfile.TarInfo("value.npy")
    info.size = 4
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "value.npy", "GNU.sparse.realsize": "4"}
    return _archive((info, b"1234"))


@pytest.mark.parametrize(("archive", "message"), [
    (_archive(_member("../outside")), "only plain relative names"),
    (_archive(_member("a/../../outside")), "only plain relative names"),
    (_archive(_member("/etc/cron.d/x")), "only plain relative names"),
    (_archive(_member("value.npy", tarfile.SYMTYPE, linkname="/etc/passwd")), "not a file"),
    (_archive(_member("a"), _member("value.npy", tarfile.LNKTYPE, linkname="a")), "not a file"),
    (_archive(_member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)), "not a file"),
    (_archive(_member("fifo", tarfile.FIFOTYPE)), "not a file"),
    (_archive(_member("d", tarfile.DIRTYPE)), "not a file"),
    (_archive(_member("value.npy", tarfile.GNUTYPE_SPARSE)), "sparse"),
    (_sparse_without_map(), "cannot be read|sparse"),
    (_archive(*(_member(f"f{n}") for n in range(model.MAX_MEMBERS + 1))), "more than 64"),
    (_archive(_member("a"), _member("a")), "twice"),
    (_archive(_member("a"), _member("a/b")), "twice"),
    (_archive(), "no files"),
    (b"\x00" * 100 + b"not a tar", "cannot be read|no files"),
    (b"garbage" * 100, "cannot be read"),
], ids=["dotdot", "dotdot-inside", "absolute", "symlink", "hardlink", "device", "fifo", "dir",
        "gnu-sparse", "pax-sparse-no-map", "many-files", "twice", "file-and-folder", "empty",
        "zeros", "garbage"])
def test_value_archives_nbship_never_writes_are_a_message(archive: bytes, message: str,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "a" / "out"
    out.parent.mkdir()
    with pytest.raises(ServeError, match=message):
        model._untar(archive, out)
    assert not out.exists() and [p.name for p in tmp_path.rglob("*")] == ["a"]


def test_a_value_archive_as_nbship_writes_it_comes_back(tmp_path: Path) -> None:
    (tmp_path / "v" / "module").mkdir(parents=True)
    (tmp_path / "v" / "nbship.json").write_text("{}")
    (tmp_path / "v" / "module" / "weights.safetensors").write_bytes(b"w" * 1000)
    model._untar(model._tar(tmp_path / "v"), tmp_path / "out")
    assert (tmp_path / "out" / "module" / "weights.safetensors").read_bytes() == b"w" * 1000
    assert (tmp_path / "out" / "nbship.json").read_text() == "{}"


def test_a_registrys_digest_never_becomes_a_path(tmp_path: Path) -> None:
    """A registry names the manifest's digest (Docker-Content-Digest); the pull folder was
    named from it, so `sha256:../../x` moved a model's files outside the cache."""
    import hashlib
    import http.server

    from tests.conftest import serving
    from tests.release.conftest import free_port

    serve_py = b"def build():\n    return (lambda x: x), None\n"
    record = {"schema": "nbship.model/v1", "name": "m", "run": {"id": "1"},
              "serve": {"file": "serve.py", "sha256": hashlib.sha256(serve_py).hexdigest(),
                        "parameters": {}, "values": {}}, "profile": None}
    config = json.dumps(record).encode()
    blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b for b in (config, serve_py)}
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": model.MODEL_MEDIA_TYPE, "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
        "layers": [{"mediaType": model.SERVE_MEDIA_TYPE, "size": len(serve_py),
                    "digest": "sha256:" + hashlib.sha256(serve_py).hexdigest(),
                    "annotations": {"org.opencontainers.image.title": "serve.py"}}],
    }).encode()

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if "/manifests/" in self.path:
                body, headers = manifest, {"Content-Type": "application/vnd.oci.image."
                                           "manifest.v1+json",
                                           "Docker-Content-Digest": "sha256:../../../escaped"}
            elif "/blobs/" in self.path and self.path.rsplit("/", 1)[-1] in blobs:
                body, headers = blobs[self.path.rsplit("/", 1)[-1]], {}
            else:
                self.send_error(404)
                return
            self.send_response(200)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    cache = tmp_path / "a" / "b" / "models"
    port = free_port()
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", port), Registry)):
        done = subprocess.run([sys.executable, "-m", "nbship", "serve",
                               f"127.0.0.1:{port}/models/m:latest", "--port", str(free_port())],
                              cwd=ROOT, text=True, capture_output=True, timeout=120,
                              env={**os.environ, model.CACHE_ENV: str(cache)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is not the sha256 of the manifest" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.rglob("serve.py"))


def test_a_value_changed_in_the_model_cache_is_never_served(
        runs: list[Path], local_registry: str, model_cache: Path) -> None:
    import numpy as np

    from nbship.runtime import serializers

    pushed = model.push(runs[0], local_registry, echo=lambda line: None)
    ref = f"{pushed.reference.registry}/{pushed.reference.repository}@{pushed.digest}"
    folder, record, _ = model.pull(ref)
    # the unpacked value rewritten whole, its own metadata made to agree
    unpacked = folder / "values" / "value-0"
    for path in unpacked.iterdir():
        path.unlink()
    serializers.save(np.full(3, 1000.0), unpacked)
    assert model.load_model(ref).predict([1, 1, 1]).tolist() == [2.0, 2.0, 2.0]
    # the archive changed: refused
    tar = folder / record["serve"]["values"]["weights"]["file"]
    tar.write_bytes(tar.read_bytes() + b"\0" * 512)
    with pytest.raises(ServeError, match="changed since it was pulled"):
        model.load_model(ref)
