"""Model releases: a run's servable model as an OCI artifact ``models/NAME``.

``nbship model push`` turns a successful run into one artifact, tagged ``run-<id>``,
then moves ``latest`` (one manifest PUT, as for pipeline releases):

* ``model.json`` (also the artifact's config): where the model came from — run,
  trigger, commit, notebook sha256, the cells of the steps and of the serve cell,
  parameters, metrics, the data hash, the pipeline and its release when one names
  this notebook — and each file's sha256; signed with this machine's key (HMAC);
* ``serve.py``: the serve cells (``build(values...) -> predict``);
* ``profile.json``: the reference profile the pipeline's serving check recorded;
* ``value-N.tar``: each value the serve cell reads, in the safest format there is —
  JSON, ``.npy``, safetensors; scikit-learn estimators converted to skops; a torch
  module as safetensors weights plus its architecture (the notebook's class: code,
  a signed cloudpickle); anything else as the run saved it (signed).

Nothing in the artifact depends on the time of pushing: the same run pushes the
same bytes. ``nbship serve REF`` pulls a release by digest into a cache folder,
checks every file against ``model.json`` and ``model.json`` against its HMAC, and
only then loads values and runs ``serve.py``. A pod gets the key as
``NBSHIP_ARTIFACT_KEY`` (a Kubernetes secret), as the pipeline's steps do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbship import __version__, signing
from nbship.errors import ReleaseError, ServeError
from nbship.files import path_name, sha256_file, write_atomic
from nbship.release import oci

MODEL_MEDIA_TYPE = "application/vnd.nbship.model.v1+json"
SERVE_MEDIA_TYPE = "application/vnd.nbship.serve.v1+python"
PROFILE_MEDIA_TYPE = "application/vnd.nbship.profile.v1+json"
VALUE_MEDIA_TYPE = "application/vnd.nbship.value.v1.tar"
LATEST = "latest"
RECORD = "model.json"
SERVE_FILE = "serve.py"
PROFILE_FILE = "profile.json"
_FILE_NAME = re.compile(r"^(model\.json|serve\.py|profile\.json|value-[0-9]{1,4}\.tar)$")
CACHE_ENV = "NBSHIP_MODEL_CACHE"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# a value archive holds the few files of one value folder (value.meta + the value): more
# members, or bigger names, are not an archive nbship wrote
MAX_MEMBERS = 64
MAX_VALUE = 16 << 30  # bytes: one value's archive (a model's weights), read into memory
_MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,7}")


@dataclass(frozen=True)
class PushedModel:
    reference: oci.Reference  # models/NAME:run-<id>
    digest: str
    record: dict[str, Any]
    moved: bool  # False: latest already named this model


def model_repository(registry: str, name: str) -> oci.Reference:
    return oci.repository(registry, "models", name)


def _tar(folder: Path) -> bytes:
    """A tar of ``folder``'s files, the same bytes for the same files (no times, no owners)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def _untar(data: bytes, folder: Path) -> None:
    """Extract a value archive: regular files with plain relative names only (no '..', no
    absolute paths, no links, devices, FIFOs, directories or sparse files), at most
    ``MAX_MEMBERS``; ServeError naming what is wrong, nothing written outside ``folder``."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            while (member := tar.next()) is not None:
                if len(files) >= MAX_MEMBERS:
                    raise ServeError(f"a value archive holds more than {MAX_MEMBERS} files")
                name = member.name
                if not member.isreg() or member.issparse():
                    kind = "a sparse file" if member.issparse() else "not a file"
                    raise ServeError(f"a value archive holds {name!r}, {kind}")
                if not _MEMBER.fullmatch(name) or ".." in name.split("/") \
                        or any(part == "." for part in name.split("/")):
                    raise ServeError(f"a value archive holds a member named {name!r}: only "
                                     "plain relative names are extracted")
                if name in files or any(other.startswith(name + "/") or
                                        name.startswith(other + "/") for other in files):
                    raise ServeError(f"a value archive holds {name!r} twice")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise ServeError(f"a value archive holds {name!r}, not a file")
                body = extracted.read()
                if len(body) != member.size:
                    raise ServeError(f"a value archive's member {name!r} is cut short")
                files[name] = body
    except ServeError:
        raise
    except (tarfile.TarError, ValueError, EOFError, OSError, UnicodeError,
            OverflowError) as exc:  # what a damaged header makes tarfile raise
        raise ServeError(f"a value archive cannot be read: {type(exc).__name__}: {exc}"
                         ) from None
    if not files:
        raise ServeError("a value archive holds no files")
    for name, body in files.items():
        target = folder.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as f:  # a fresh folder: nothing there to follow or replace
            f.write(body)


def _releasable(src: Path, dst: Path, sha256: str | None = None) -> dict[str, Any]:
    """Copy a run's value folder to ``dst`` in the safest format; its metadata. With
    ``sha256``, the value must be the one the (sealed) run recorded: the copy is checked,
    so what is released is what was checked."""
    from nbship.runtime import serializers

    try:
        meta = serializers.check(src, sha256)
        if meta.get("serializer") == "sklearn":  # joblib (pickle) -> skops, when skops can
            return _as_skops(src, dst, sha256)
        shutil.copytree(src, dst)
        return dict(serializers.check(dst, sha256))
    except serializers.UntrustedArtifact as exc:
        shutil.rmtree(dst, ignore_errors=True)
        raise ServeError(f"a value of the run is refused: {exc}") from None


def _as_skops(src: Path, dst: Path, sha256: str | None) -> dict[str, Any]:
    """A scikit-learn value as skops, when skops can take it; else the checked joblib."""
    from nbship.runtime import serializers

    skops = serializers.by_name("skops")
    value = serializers.load(src, sha256)  # checked: sha256 and this machine's HMAC
    try:
        assert skops is not None
        converted = serializers.save(value, dst, using=skops)
        serializers.load(dst)  # it must come back without trusting anything foreign
        return converted
    except Exception:  # noqa: BLE001 - skops cannot take this estimator: keep joblib
        shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dict(serializers.check(dst, sha256))


def _release_digest(registry: str, prov: dict[str, Any]) -> dict[str, Any] | None:
    """The pipeline release of this notebook (same sha256) at ``releases/NAME:latest``."""
    ref = oci.repository(registry, "releases", prov["pipeline"]["name"]).with_tag(LATEST)
    try:
        if oci.exists(ref) is None:
            return None
        from nbship.release.publish import show

        record, digest, _ = show(str(ref))
    except ReleaseError:
        return None
    if record.get("notebook", {}).get("sha256") != prov["notebook"]["sha256"]:
        return None
    server = record.get("images", {}).get("nbship-server", {}).get("reference")
    return {"reference": f"{ref.registry}/{ref.repository}@{digest}", "digest": digest,
            "commit": record.get("commit"), "server_image": server}


def build_record(run_dir: Path, stage: Path, registry: str) -> dict[str, Any]:
    """Write the model's files into ``stage``; return ``model.json``'s content (signed)."""
    from nbship.runtime import serializers
    from nbship.serving.bundle import check_run, read_sealed, serve_source, value_place

    prov = read_sealed(run_dir)  # every field below is what this machine's nbship recorded
    entry = check_run(run_dir, prov)
    (stage / SERVE_FILE).write_bytes(serve_source(run_dir, entry))  # the checked bytes
    values: dict[str, Any] = {}
    for n, (var, info) in enumerate(sorted(entry["inputs"].items())):
        if not var.isidentifier():
            raise ServeError(f"the run's serve entry names a value {var!r}, not a Python name")
        src, sha256 = value_place(prov, entry, var)
        folder = stage / f"v{n}"
        meta = _releasable(src, folder, sha256)
        tar = stage / f"value-{n}.tar"
        tar.write_bytes(_tar(folder))
        shutil.rmtree(folder)
        s = serializers.by_name(str(meta["serializer"]))
        values[var] = {"file": tar.name, "sha256": sha256_file(tar), "from": info["from"],
                       "serializer": meta["serializer"], "type": meta.get("type"),
                       "safe": bool(s and s.safe)}
    check = entry.get("check") or {}
    profile = None
    if isinstance(check.get("profile"), dict):
        from nbship.serving.bundle import MAX_PROFILE, read_file

        src = Path(str(check["profile"]["uri"]))
        data = read_file(src, MAX_PROFILE, "the run's drift profile")
        if hashlib.sha256(data).hexdigest() != check["profile"].get("sha256"):
            raise ReleaseError(f"the run's drift profile {src} changed since the run")
        (stage / PROFILE_FILE).write_bytes(data)
        profile = {"file": PROFILE_FILE, "sha256": hashlib.sha256(data).hexdigest()}
    run = prov["run"]
    record: dict[str, Any] = {
        "schema": "nbship.model/v1",
        "name": prov["pipeline"]["name"],
        "nbship": __version__,
        "run": {"id": run["id"], "finished": run.get("finished"),
                "trigger": prov.get("trigger") or {"kind": "manual"}},
        "commit": prov.get("git", {}).get("commit"),
        "dirty": prov.get("git", {}).get("dirty"),
        "notebook": prov["notebook"],
        "cells": {"serve": entry.get("cells", []),
                  "steps": {name: step.get("cells", []) for name, step in
                            prov.get("steps", {}).items()}},
        "parameters": prov.get("parameters", {}),
        "metrics": prov.get("metrics", {}),
        "data": prov.get("data"),
        "pipeline": {"yaml_sha256": prov["pipeline"].get("yaml_sha256"),
                     "release": _release_digest(registry, prov)},
        "serve": {"file": SERVE_FILE, "sha256": sha256_file(stage / SERVE_FILE),
                  "parameters": {p: prov["parameters"][p] for p in entry.get("parameters", [])},
                  "values": values},
        "profile": profile,
    }
    record[signing.SIGNATURE] = signing.sign(record)
    write_atomic(stage / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def push(run_dir: Path, registry: str, echo: Callable[[str], None] = print) -> PushedModel:
    """Push the run's model as ``models/NAME:run-<id>``, then move ``latest`` to it."""
    stage = Path(tempfile.mkdtemp(prefix="nbship-model-"))
    try:
        record = build_record(run_dir, stage, registry)
        repo = model_repository(registry, record["name"])
        target = repo.with_tag(f"run-{record['run']['id']}")
        files = [(RECORD, MODEL_MEDIA_TYPE), (SERVE_FILE, SERVE_MEDIA_TYPE)]
        if record["profile"]:
            files.append((PROFILE_FILE, PROFILE_MEDIA_TYPE))
        files += [(v["file"], VALUE_MEDIA_TYPE) for v in record["serve"]["values"].values()]
        echo(f"  pushing {target} ({', '.join(f for f, _ in files)})")
        oci.push_files(target, stage, files, (RECORD, MODEL_MEDIA_TYPE), "the model",
                       "latest did not move; push again")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    body, digest, media = oci.get_manifest(target)
    tag = repo.with_tag(LATEST)
    moved = oci.exists(tag) != digest
    if moved:
        oci.put_manifest(tag, LATEST, body, media)
    echo(f"  {tag} -> {digest}" + ("" if moved else " (unchanged)"))
    return PushedModel(target, digest, record, moved)


def show(reference: str) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """(model.json, manifest digest, layers) of a model release."""
    ref = oci.Reference.parse(reference)
    if oci.exists(ref) is None:
        known = oci.tags(ref)
        raise ReleaseError(f"no model {ref}" + (f" (tags there: {', '.join(known)})"
                                                 if known else ""),
                           hint="nbship model push [RUN] --registry "
                           f"{ref.registry} pushes one")
    body, digest, _ = oci.get_manifest(ref)
    if not _DIGEST.fullmatch(digest) or digest != "sha256:" + hashlib.sha256(body).hexdigest():
        raise ReleaseError(f"{ref}: the registry's digest {digest[:80]!r} is not the sha256 of "
                           "the manifest it sent")
    try:
        manifest = json.loads(body)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise ReleaseError(f"{ref}: the registry sent a manifest that is not a JSON object")
    config = manifest.get("config", {})
    if config.get("mediaType") != MODEL_MEDIA_TYPE:
        raise ReleaseError(f"{ref} is not an nbship model (config {config.get('mediaType')})")
    try:
        record = json.loads(oci.get_blob(ref, config["digest"]))
    except ValueError:
        record = None
    problem = _record_problem(record)
    if problem:
        raise ReleaseError(f"{ref}: its model.json is not an nbship.model/v1 record ({problem})")
    return record, digest, list(manifest.get("layers", []))


def _record_problem(record: Any) -> str | None:
    """What is wrong with a model.json a registry brought (None: the shape holds)."""
    if not isinstance(record, dict) or record.get("schema") != "nbship.model/v1":
        return "schema"
    if not isinstance(record.get("name"), str) or not isinstance(record.get("run"), dict):
        return "name, run"
    serve = record.get("serve")
    if not (isinstance(serve, dict) and isinstance(serve.get("sha256"), str)
            and isinstance(serve.get("values"), dict)
            and isinstance(serve.get("parameters", {}), dict)):
        return "serve"
    for var, value in serve["values"].items():
        if not (isinstance(value, dict) and isinstance(value.get("sha256"), str)
                and _FILE_NAME.fullmatch(str(value.get("file"))) and var.isidentifier()):
            return f"value {var!r}"
    profile = record.get("profile")
    if profile is not None and not (isinstance(profile, dict)
                                    and profile.get("file") == PROFILE_FILE
                                    and isinstance(profile.get("sha256"), str)):
        return "profile"
    for what, value in (("name", record["name"]), ("run id", record["run"].get("id"))):
        try:  # both become parts of paths and tags: names nbship makes only
            path_name(value, what, error=ReleaseError)
        except ReleaseError:
            return f"{what} {str(value)[:80]!r}"
    return None


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nbship" / "models")


def pull(reference: str) -> tuple[Path, dict[str, Any], str]:
    """The model's files in a cache folder named by its digest: (folder, record, digest).

    Every layer is checked against its digest (``oci.get_blob``) and against the sha256
    ``model.json`` records; the folder appears whole (built aside, then renamed)."""
    record, digest, layers = show(reference)
    ref = oci.Reference.parse(reference)
    if not signing.signed(record):  # before anything it brings is written or unpacked
        raise ServeError(f"{reference} was not pushed with this machine's key: its serving "
                         "code and values are not run",
                         hint=f"set {signing.KEY_ENV} to the key of the machine that pushed "
                         "it (in a cluster: a secret)")
    folder = cache_root() / digest.replace(":", "-")
    if (folder / RECORD).is_file():
        return folder, record, digest
    expected = {RECORD: None, SERVE_FILE: record["serve"]["sha256"]}
    if record.get("profile"):
        expected[PROFILE_FILE] = record["profile"]["sha256"]
    for value in record["serve"]["values"].values():
        expected[str(value["file"])] = value["sha256"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".pull-", dir=folder.parent))
    try:
        for layer in layers:
            title = layer.get("annotations", {}).get("org.opencontainers.image.title", "")
            if not _FILE_NAME.fullmatch(title) or title not in expected:
                raise ServeError(f"{ref}: unexpected file {title!r} in the model")
            data = oci.get_blob(ref, layer["digest"])
            (stage / title).write_bytes(data)
            want = expected.pop(title)
            if want is not None and sha256_file(stage / title) != want:
                raise ServeError(f"{ref}: {title} does not match the sha256 in model.json")
        missing = sorted(k for k in expected if k != RECORD)
        if missing:
            raise ServeError(f"{ref}: the model lacks {', '.join(missing)}")
        for value in record["serve"]["values"].values():
            _untar((stage / value["file"]).read_bytes(), stage / "values" / str(value["file"])
                   .removesuffix(".tar"))
        write_atomic(stage / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(stage, folder)
        except OSError:  # another process pulled it first: use theirs
            if not (folder / RECORD).is_file():
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder, record, digest


def load_model(reference: str) -> Any:
    """A model release, ready to serve (``serving.bundle.Served``)."""
    from nbship.runtime import serializers
    from nbship.serving.bundle import MAX_MODULE, Served, build_served, read_file, read_profile

    try:
        folder, record, digest = pull(reference)  # pull checks model.json's HMAC
    except ReleaseError as exc:
        raise ServeError(exc.message, hint=exc.hint) from None
    values: dict[str, Any] = {}
    # each value from its archive, read once and checked against the signed sha256, then
    # unpacked privately: a value changed in the cache after the pull is never served
    with tempfile.TemporaryDirectory(prefix="nbship-model-") as private:
        for var, value in record["serve"]["values"].items():
            tar = folder / str(value["file"])
            data = read_file(tar, MAX_VALUE, f"value {var!r}'s archive")
            if hashlib.sha256(data).hexdigest() != value["sha256"]:
                raise ServeError(f"{tar} changed since it was pulled; it is not served")
            unpacked = Path(private) / str(value["file"]).removesuffix(".tar")
            _untar(data, unpacked)
            try:
                values[var] = serializers.load(unpacked)
            except serializers.UntrustedArtifact as exc:
                raise ServeError(f"value {var!r} of {reference} is refused: {exc}") from None
    values.update(record["serve"].get("parameters", {}))
    source = read_file(folder / SERVE_FILE, MAX_MODULE, "the serving code")  # read once
    if hashlib.sha256(source).hexdigest() != record["serve"]["sha256"]:
        raise ServeError(f"{folder / SERVE_FILE} changed since it was pulled; it is not run")
    profile = None
    if record.get("profile"):
        profile = read_profile(folder / PROFILE_FILE, record["profile"]["sha256"])
    ref = oci.Reference.parse(reference)
    summary = {k: record.get(k) for k in ("run", "commit", "dirty", "notebook", "parameters",
                                            "metrics", "data", "pipeline")}
    summary["model"] = f"{ref.registry}/{ref.repository}@{digest}"
    predict, reference = build_served(source, str(folder / SERVE_FILE), values)  # those bytes
    return Served(name=str(record["name"]), predict=predict, provenance=summary,
                  profile=profile, reference_inputs=reference)


def inference_service(record: dict[str, Any], reference: str, digest: str) -> str:
    """The InferenceService that serves this model release by digest (``model show
    --manifest``); the server image is the one the notebook's pipeline release names."""
    from nbship.release.publish import inference_service as manifest

    release = (record.get("pipeline") or {}).get("release") or {}
    server = release.get("server_image")
    if not server:
        raise ReleaseError(f"no server image for {reference}: the model was pushed when no "
                           "pipeline release of its notebook (with the model server's image) "
                           "was in the registry",
                           hint="nbship publish NOTEBOOK, then nbship model push again")
    ref = oci.Reference.parse(reference)
    return manifest(str(record["name"]), server, record,
                    model=f"{ref.registry}/{ref.repository}@{digest}")
