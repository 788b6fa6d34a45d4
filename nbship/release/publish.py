"""``nbship publish``: images, then the pipeline, manifests and release record, then the tag.

Order, and why it is atomic:

1. the images are pushed (skipped when the registry already has their
   content-hash tag) and their digests read back;
2. the pipeline is compiled with the steps' image *by digest*; the Kubernetes
   manifests name the server's image by digest;
3. ``release.json`` (images and digests, the YAML's sha256, the notebook's sha256,
   the cells of each step, the commit, the metrics of the CI run) and those files
   are pushed as one OCI artifact (oras-py), tagged with the commit;
4. only then does the release tag (``latest``) move, by one manifest PUT.

A publish killed before 4 leaves ``latest`` on the previous release, whose
files and images were all pushed before it was tagged. Nothing in the release
depends on the time of publishing, so publishing the same commit again produces
the same bytes, the same digests, and changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbship import __version__
from nbship.errors import ReleaseError, ToolMissingError
from nbship.extract.graph import StepGraph
from nbship.files import sha256_file, write_atomic
from nbship.release import oci
from nbship.release.build import SERVER_IMAGE, STEPS_IMAGE, BuiltImage, git_commit

RELEASE_MEDIA_TYPE = "application/vnd.nbship.release.v1+json"
PIPELINE_MEDIA_TYPE = "application/vnd.nbship.kfp-pipeline.v2+yaml"
MANIFEST_MEDIA_TYPE = "application/vnd.nbship.kubernetes-manifest+yaml"
DASHBOARD_MEDIA_TYPE = "application/vnd.grafana.dashboard+json"
RELEASE_TAG = "latest"
# seconds to wait between pushes: makes the moment to interrupt a publish visible
DELAY_ENV = "NBSHIP_PUBLISH_DELAY"


@dataclass
class Published:
    release: oci.Reference  # REPO:COMMIT
    tag: oci.Reference  # REPO:latest
    digest: str  # the release artifact's manifest digest
    record: dict[str, Any]
    moved: bool  # False: the release tag already named this release
    seconds: float


def _remove_abandoned_stages(out: Path) -> None:
    """Remove staging folders of publishes whose process is gone (killed midway)."""
    for stage in out.glob(".release-*"):
        match = re.match(r"^\.release-(\d+)-", stage.name)
        if match is None or not stage.is_dir():
            continue  # an older nbship's: its owner is unknown, left alone
        try:
            os.kill(int(match[1]), 0)  # signal 0: only asks whether the pid exists
        except ProcessLookupError:
            shutil.rmtree(stage, ignore_errors=True)
        except (PermissionError, OverflowError):
            continue


def _pause() -> None:
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


def release_repository(registry: str, graph: StepGraph) -> oci.Reference:
    from nbship.extract.codegen import pipeline_name

    return oci.repository(registry, "releases", pipeline_name(graph))


def image_repository(registry: str, name: str) -> str:
    return f"{registry.rstrip('/')}/{name}"


def push_image(image: BuiltImage, registry: str, builder: Any,
               echo: Callable[[str], None], compression: str = "zstd") -> oci.Reference:
    """The image pushed under its content-hash tag; a reference by digest."""
    target = oci.Reference.parse(f"{image_repository(registry, image.context.name)}:"
                                 f"{image.context.tag}")
    digest = oci.exists(target)
    if digest is None:
        echo(f"  pushing {image.reference} -> {target}")
        digest = builder.push(image.reference, str(target), insecure=oci.insecure(registry),
                              compression=compression)
        digest = oci.exists(target) or digest
    else:
        echo(f"  {target} already in the registry")
    return oci.Reference(target.registry, target.repository, None, digest)


KEY_SECRET = "nbship-key"  # Kubernetes secret holding NBSHIP_ARTIFACT_KEY (key: key)


def inference_service(name: str, server: str, record: dict[str, Any],
                      model: str | None = None) -> str:
    """A KServe InferenceService running the server image; with ``model`` (a model release
    by digest) the server pulls that model at start, with the artifact key from a secret."""
    import yaml

    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": server,
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
    }
    annotations = {"serving.kserve.io/enable-prometheus-scraping": "true",
                   "prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics",
                   "nbship.dev/commit": str(record["commit"]),
                   "nbship.dev/notebook": record["notebook"]["path"],
                   "nbship.dev/notebook-sha256": record["notebook"]["sha256"]}
    if model is not None:
        container["args"] = [model, "--host", "0.0.0.0", "--port", "8080"]
        container["env"] = [{"name": "NBSHIP_ARTIFACT_KEY", "valueFrom": {"secretKeyRef": {
            "name": KEY_SECRET, "key": "key"}}}]
        annotations["nbship.dev/model"] = model
        annotations["nbship.dev/run"] = str(record.get("run", {}).get("id"))
    doc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": name,
                       "app.kubernetes.io/managed-by": "nbship",
                       "app.kubernetes.io/version": str(record["commit"])[:12]},
            "annotations": annotations,
        },
        "spec": {"predictor": {"containers": [container]}},
    }
    return str(yaml.safe_dump(doc, sort_keys=False))


def _monitoring_files(name: str, stage: Path, trigger_image: str | None = None,
                      notebook: str | None = None,
                      registry: str | None = None) -> list[tuple[Path, str]]:
    """The cluster's monitoring (PrometheusRule, PodMonitor, AlertmanagerConfig, Grafana
    dashboard; with ``trigger_image``, the retraining trigger's Deployment and Service),
    checked with promtool when it is installed; (file, kind) each."""
    from nbship.monitoring import cluster
    from nbship.release.tools import which

    files = cluster.manifests(name, trigger_image=trigger_image, notebook=notebook,
                              registry=registry)
    promtool = which("promtool")
    problems = cluster.validate(files, promtool) if promtool else []
    if problems:
        raise ReleaseError("the release's monitoring manifests do not validate:\n  "
                           + "\n  ".join(problems),
                           hint="this is a bug in nbship: please report it")
    kinds = {"prometheusrule.yaml": "PrometheusRule", "podmonitor.yaml": "PodMonitor",
             "alertmanagerconfig.yaml": "AlertmanagerConfig",
             "dashboard.json": "GrafanaDashboard", "trigger-deployment.yaml": "Deployment",
             "trigger-service.yaml": "Service"}
    out = []
    for file, text in files.items():
        (stage / file).write_text(text)
        out.append((stage / file, kinds[file]))
    return out


def _run_record(run_provenance: Path | None) -> dict[str, Any] | None:
    if run_provenance is None:
        return None
    doc = json.loads(run_provenance.read_text())
    run = doc.get("run", {})
    return {"run_id": run.get("id"), "status": run.get("status"),
            "parameters": doc.get("parameters"), "metrics": doc.get("metrics"),
            "provenance_sha256": sha256_file(run_provenance)}


def latest_run(graph: StepGraph, root: Path = Path(".nbship/runs")) -> Path | None:
    """The newest successful local run's provenance.json of this notebook, if any: among
    the runs this machine's nbship recorded (sealed), so a folder brought from elsewhere
    never puts its metrics into a release."""
    from nbship import signing
    from nbship.extract.codegen import pipeline_name

    found = []
    for path in (root / pipeline_name(graph)).glob("*/provenance.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(doc, dict) or not signing.signed(doc):
            continue
        if doc.get("run", {}).get("status") == "SUCCESS" and doc.get("notebook", {}).get(
                "sha256") == graph.notebook.sha256:
            found.append(path)
    return max(found, key=lambda p: p.parent.name) if found else None


def release_commit(graph: StepGraph, allow_dirty: bool = False) -> str:
    """The commit a release names; ReleaseError when there is none to name."""
    commit = git_commit(graph.notebook.path)
    if commit.startswith("unknown") and not allow_dirty:
        raise ReleaseError(
            f"{graph.notebook.path} is not in a git repository: a release must name the "
            "commit it was built from", hint="git init and commit, or --allow-dirty")
    if commit.endswith("-dirty") and not allow_dirty:
        raise ReleaseError(
            f"the notebook's repository has uncommitted changes (commit {commit}): a release "
            "must name what it was built from", hint="commit first, or --allow-dirty")
    return commit


def publish(graph: StepGraph, images: list[BuiltImage], *, registry: str, builder: Any,
            out: Path, run_provenance: Path | None = None, allow_dirty: bool = False,
            compression: str = "zstd", echo: Callable[[str], None] = print) -> Published:
    """Push everything, then move the release tag. See the module's docstring."""
    import importlib.util

    if importlib.util.find_spec("oras") is None:  # before any image is pushed
        raise ToolMissingError("publishing needs the oras package (pip install oras), which "
                               "is not installed", hint="make venv installs it "
                               "(requirements.txt)")

    from nbship.pipelines.compile import compile_graph

    started = time.perf_counter()
    commit = release_commit(graph, allow_dirty)
    repo = release_repository(registry, graph)

    pushed: dict[str, oci.Reference] = {}
    for image in images:
        pushed[image.context.name] = push_image(image, registry, builder, echo, compression)
        _pause()
    if STEPS_IMAGE not in pushed:
        raise ReleaseError("a release needs the steps' image (nbship build without --only "
                           "server)")

    out.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_stages(out)
    stage = Path(tempfile.mkdtemp(prefix=f".release-{os.getpid()}-", dir=out))
    try:
        compiled = compile_graph(graph, stage / "build", base_image=str(pushed[STEPS_IMAGE]))
        pipeline_file = stage / "pipeline.yaml"
        os.replace(compiled.yaml, pipeline_file)
        record: dict[str, Any] = {
            "schema": "nbship.release/v1",
            "name": compiled.name,
            "commit": commit,
            "nbship": __version__,
            "notebook": {"path": graph.notebook.path.as_posix(), "sha256": graph.notebook.sha256},
            "steps": {s.name: {"task": s.task,
                               "cells": [{"index": c.index, "id": c.id} for c in s.cells]}
                      for s in graph.steps},
            "images": {name: {"reference": str(ref), "digest": ref.digest,
                              "context_sha256": next(i.context.digest for i in images
                                                     if i.context.name == name)}
                       for name, ref in sorted(pushed.items())},
            "pipeline": {"file": "pipeline.yaml", "sha256": sha256_file(pipeline_file),
                         "base_image": str(pushed[STEPS_IMAGE])},
            "manifests": [],
            "ci_run": _run_record(run_provenance),
        }
        files = [(pipeline_file, PIPELINE_MEDIA_TYPE)]
        if SERVER_IMAGE in pushed:
            manifest = stage / "inferenceservice.yaml"
            manifest.write_text(inference_service(compiled.name, str(pushed[SERVER_IMAGE]),
                                                    record))
            record["manifests"].append({"file": manifest.name, "kind": "InferenceService",
                                        "sha256": sha256_file(manifest)})
            files.append((manifest, MANIFEST_MEDIA_TYPE))
            for path, kind in _monitoring_files(compiled.name, stage,
                                                str(pushed[SERVER_IMAGE]),
                                                graph.notebook.path.name, registry):
                record["manifests"].append({"file": path.name, "kind": kind,
                                            "sha256": sha256_file(path)})
                files.append((path, DASHBOARD_MEDIA_TYPE if kind == "GrafanaDashboard"
                              else MANIFEST_MEDIA_TYPE))
        release_file = stage / "release.json"
        release_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        files.insert(0, (release_file, RELEASE_MEDIA_TYPE))

        target = repo.with_tag(f"commit-{commit}")
        echo(f"  pushing the release {target} ({', '.join(f.name for f, _ in files)})")
        oci.push_files(target, stage, [(f.name, media) for f, media in files],
                       (release_file.name, RELEASE_MEDIA_TYPE), "the release",
                       "the release tag did not move; publish again")
        body, digest, media = oci.get_manifest(target)
        _pause()

        tag = repo.with_tag(RELEASE_TAG)
        moved = oci.exists(tag) != digest
        if moved:
            oci.put_manifest(tag, RELEASE_TAG, body, media)
            echo(f"  {tag} -> {digest}")
        else:
            echo(f"  {tag} already names this release")
        # keep a copy of what was published beside the build contexts
        kept = out / "releases" / compiled.name
        kept.mkdir(parents=True, exist_ok=True)
        for f, _ in files:
            write_atomic(kept / f.name, f.read_bytes())
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Published(target, tag, digest, record, moved, time.perf_counter() - started)


def show(reference: str) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """(release.json, artifact digest, the artifact's layers) of a published release."""
    ref = oci.Reference.parse(reference)
    if oci.exists(ref) is None:
        known = oci.tags(ref)
        raise ReleaseError(f"no release {ref}" + (f" (tags there: {', '.join(known)})" if known
                                                  else ""),
                           hint=f"nbship publish NOTEBOOK --registry {ref.registry}")
    body, digest, _ = oci.get_manifest(ref)
    manifest = json.loads(body)
    config = manifest.get("config", {})
    if config.get("mediaType") != RELEASE_MEDIA_TYPE:
        raise ReleaseError(f"{ref} is not an nbship release (config {config.get('mediaType')})")
    record = json.loads(oci.get_blob(ref, config["digest"]))
    return record, digest, list(manifest.get("layers", []))
