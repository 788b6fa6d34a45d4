"""A real build and publish of the showcase against a registry on 127.0.0.1.

One project (a git repository holding the showcase notebook) is built, run once
on kfp.local (its metrics go into the release), and published; the tests read
what landed in the registry with skopeo, oras and the distribution API.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.release import oci, registry
from tests.conftest import SHOWCASE
from tests.release.conftest import TOOLS, free_port, needs

pytestmark = [pytest.mark.image, pytest.mark.slow, needs(*TOOLS)]
NB = "notebooks/marker_classifier.ipynb"


def nbship(project: Path, *args: str, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "nbship", *args], cwd=project,
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, **(env or {})})
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True,
                          check=True).stdout.strip()


@dataclasses.dataclass
class Published:
    project: Path
    address: str
    out: Path
    commit: str
    build_output: str
    publish_output: str

    @property
    def repo(self) -> oci.Reference:
        return oci.Reference.parse(f"{self.address}/releases/marker-classifier:latest")

    def record(self, ref: str = "latest") -> dict[str, Any]:
        done = nbship(self.project, "release", "show",
                      f"{self.address}/releases/marker-classifier:{ref}", "--json")
        return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Any:
    project = tmp_path_factory.mktemp("project")
    (project / "notebooks").mkdir()
    shutil.copy(SHOWCASE, project / NB)
    git(project, "init", "-q")
    git(project, "-c", "user.email=ci@example.com", "-c", "user.name=ci", "add", ".")
    git(project, "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "nb")
    state = registry.up(project / ".nbship/registry", free_port())
    out = project / "images"
    # a container store of its own, as on a fresh CI machine (images built here, not before);
    # the base's root file system tar is kept between sessions (debootstrap takes a minute)
    store = tmp_path_factory.mktemp("containers")
    (store / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{store}/graph"\n'
        f'runroot = "{store}/run"\n')
    saved = {k: os.environ.get(k) for k in ("CONTAINERS_STORAGE_CONF", "NBSHIP_BASE_CACHE")}
    os.environ["CONTAINERS_STORAGE_CONF"] = str(store / "storage.conf")
    os.environ.setdefault("NBSHIP_BASE_CACHE", str(Path(tempfile.gettempdir()) /
                                                   "nbship-base-cache"))
    try:
        built = nbship(project, "build", NB, "--only", "steps", "-o", str(out))
        nbship(project, "run", NB, "-p", "epochs=2")  # the CI run the release records
        pub = nbship(project, "publish", NB, "--only", "steps", "--registry", state.address,
                     "-o", str(out))
        yield Published(project, state.address, out, git(project, "rev-parse", "HEAD"),
                        built.stdout, pub.stdout)
    finally:
        registry.down(project / ".nbship/registry")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # only the test's own store: never the machine's containers and images
        own = {**os.environ, "CONTAINERS_STORAGE_CONF": str(store / "storage.conf")}
        subprocess.run(["buildah", "rm", "--all"], capture_output=True, env=own)
        subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, env=own)


def test_image_in_registry_with_digest_and_provenance_labels(published: Published) -> None:
    record = published.record()
    image = record["images"]["nbship-steps"]
    tag = oci.Reference.parse(image["reference"])
    tagged = f"{published.address}/nbship-steps:ctx-{image['context_sha256'][:16]}"
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{tagged}"],
                          capture_output=True, text=True, check=True)
    inspected = json.loads(done.stdout)
    assert inspected["Digest"] == image["digest"] == tag.digest
    labels = inspected["Labels"]
    assert labels["org.opencontainers.image.revision"] == published.commit
    assert labels["dev.nbship.notebook.sha256"] == read_notebook(
        published.project / NB).sha256
    assert labels["org.opencontainers.image.version"] == record["nbship"]
    assert labels["dev.nbship.context.sha256"] == image["context_sha256"]


def test_build_ran_the_smoke_run(published: Published) -> None:
    assert "smoke run: the step code and its libraries import" in published.build_output


def test_the_model_server_image_serves(published: Published) -> None:
    done = nbship(published.project, "build", NB, "--only", "server", "-o",
                  str(published.out))
    assert "serve smoke ok: ready, /infer -> [1, 3], /metrics has drift" in done.stdout, \
        done.stdout + done.stderr
    ref = next(line.split()[0] for line in done.stdout.splitlines()
               if line.startswith("localhost/nbship-server:"))
    inspect = subprocess.run(["buildah", "inspect", "--type", "image", ref],
                             capture_output=True, text=True, check=True)
    config = json.loads(inspect.stdout)["OCIv1"]["config"]
    assert config["Entrypoint"] == ["python", "-m", "nbship", "serve"]
    assert config["Cmd"] == ["/mnt/models", "--host", "0.0.0.0", "--port", "8080"]


def test_the_model_server_image_loads_a_real_model_release(published: Published) -> None:
    """Issue 20 (2): the server image's Python is Debian's (3.11.2, no
    ``tarfile.extractall(filter=)``); what ``nbship serve MODEL`` and ``nbship canary judge
    --reference MODEL`` run in it, load_model, pulls a real model release (the CI run's,
    pushed to the registry), checks it with the nbship-key secret and unpacks its values."""
    from nbship.signing import key_hex

    built = nbship(published.project, "build", NB, "--only", "server", "-o",
                   str(published.out))
    image = next(line.split()[0] for line in built.stdout.splitlines()
                 if line.startswith("localhost/nbship-server:"))
    pushed = nbship(published.project, "model", "push", "--registry", published.address)
    model = next(line.split()[1] for line in pushed.stdout.splitlines()
                 if line.startswith("model:"))
    made = subprocess.run(["buildah", "from", "--quiet", image], capture_output=True,
                          text=True, check=True)
    container = made.stdout.strip().splitlines()[-1]
    probe = ("import inspect, sys, tarfile\n"
             "from nbship.release.model import load_model\n"
             "print('python', sys.version.split()[0], 'extractall filter=',\n"
             "      'filter' in inspect.signature(tarfile.TarFile.extractall).parameters)\n"
             f"served = load_model({model!r})\n"
             "print('loaded', served.name, 'in the server image')\n")
    try:
        done = subprocess.run(
            ["buildah", "run", "--isolation", "chroot", "--network", "host",
             f"--env=NBSHIP_ARTIFACT_KEY={key_hex()}", "--env=HOME=/tmp",
             container, "--", "python", "-c", probe],
            capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)
    assert "loaded marker-classifier in the server image" in done.stdout


def test_a_rehearsal_runs_a_run_job_in_the_released_image(published: Published,
                                                          tmp_path: Path) -> None:
    """`nbship deploy rehearse` (default --jobs image) runs a Run Job's nbship command in
    the Job's image, pulled by digest from the registry with buildah, on the host's
    network; an image that cannot be pulled fails the stage with a message."""
    import http.server

    from nbship.spinnaker.rehearse import Options, rehearse
    from tests.conftest import serving

    steps = published.record()["images"]["nbship-steps"]["reference"]
    seen: list[str] = []

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.path)
            body = json.dumps({"run": {"id": "run-7"}, "model": "m@sha256:x"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    def job(ref: str, image: str, args: list[str]) -> dict[str, Any]:
        return {"refId": ref, "requisiteStageRefIds": [] if ref == "1" else ["1"],
                "type": "runJobManifest", "name": f"job {ref}", "account": "k8s",
                "cloudProvider": "kubernetes", "source": "text", "alias": "runJob",
                "propertyFile": "nbship", "failPipeline": False, "continuePipeline": True,
                "manifest": {"apiVersion": "batch/v1", "kind": "Job",
                             "metadata": {"generateName": "j-", "namespace": "default"},
                             "spec": {"template": {"spec": {
                                 "restartPolicy": "Never", "containers": [{
                                     "name": "nbship", "image": image,
                                     "command": ["python", "-m", "nbship", *args]}]}}}}}

    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        doc = {"application": "markers", "name": "in-the-image", "triggers": [], "stages": [
            job("1", steps, ["canary", "ready", url, "--stable", url, "--model", "m",
                             "--timeout", "60"]),  # as render writes it (all a rehearsal runs)
            job("2", f"{published.address}/nbship-steps@sha256:" + "0" * 64,
                ["canary", "ready", url, "--stable", url, "--model", "m", "--timeout", "60"])]}
        (tmp_path / "pipeline.json").write_text(json.dumps(doc))
        lines: list[str] = []
        record, _ = rehearse(tmp_path / "pipeline.json", Options(root=tmp_path / "deploy"),
                             echo=lines.append)
    first, second = record["stages"]
    assert first["status"] == "SUCCEEDED", "\n".join(lines)
    assert first["outputs"] == {"canary_ready": "true", "canary_run": "run-7",
                                "canary_model": "m@sha256:x", "stable_run": "run-7",
                                "stable_model": "m@sha256:x"}
    assert f"(in {steps})" in "\n".join(lines)
    assert "/v2/models/m/ready" in seen  # asked from inside the container, over the host's net
    assert second["status"] == "FAILED_CONTINUE"
    assert second["message"].startswith(f"cannot pull {published.address}/nbship-steps@")


def test_rebuild_without_change_does_no_work(published: Published) -> None:
    started = time.perf_counter()
    done = nbship(published.project, "build", NB, "--only", "steps", "-o", str(published.out))
    assert "up to date" in done.stdout and "building localhost" not in done.stdout
    assert time.perf_counter() - started < 30


def test_release_yaml_pulls_back_byte_identical(published: Published, tmp_path: Path) -> None:
    import oras.client

    client = oras.client.OrasClient(hostname=published.address, insecure=True)
    pulled = client.pull(target=str(published.repo), outdir=str(tmp_path))
    files = {Path(p).name: Path(p) for p in pulled}
    assert set(files) == {"release.json", "pipeline.yaml"}
    kept = published.out / "releases" / "marker-classifier" / "pipeline.yaml"
    assert files["pipeline.yaml"].read_bytes() == kept.read_bytes()
    import hashlib

    record = json.loads(files["release.json"].read_text())
    assert record["pipeline"]["sha256"] == hashlib.sha256(
        files["pipeline.yaml"].read_bytes()).hexdigest()


def test_pipeline_names_its_image_by_digest_and_still_runs_on_kfp_local(
        published: Published, tmp_path: Path) -> None:
    import yaml

    from nbship.pipelines.compile import compile_graph
    from nbship.pipelines.local import run_compiled

    record = published.record()
    body, _, _ = oci.get_manifest(published.repo)
    layer = next(x for x in json.loads(body)["layers"]
                 if x["annotations"]["org.opencontainers.image.title"] == "pipeline.yaml")
    pipeline_file = tmp_path / "pipeline.yaml"
    pipeline_file.write_bytes(oci.get_blob(published.repo, layer["digest"]))
    spec = yaml.safe_load(pipeline_file.read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {record["images"]["nbship-steps"]["reference"]}
    assert all("@sha256:" in image for image in images)
    assert "pip install" not in pipeline_file.read_text()  # the image carries everything

    graph = build_graph(read_notebook(published.project / NB))
    compiled = compile_graph(graph, tmp_path / "build",
                             base_image=record["pipeline"]["base_image"])
    released = dataclasses.replace(compiled, yaml=pipeline_file)
    result = run_compiled(released, {"epochs": 2}, root=tmp_path / "runs",
                          echo=lambda line: None)
    assert result.status == "SUCCESS" and result.metrics["accuracy"] > 0.5


def test_release_traces_to_the_notebook_cells_and_the_ci_run(published: Published) -> None:
    record = published.record()
    nb = read_notebook(published.project / NB)
    graph = build_graph(nb)
    assert record["commit"] == published.commit
    assert record["notebook"] == {"path": NB, "sha256": nb.sha256}
    assert record["steps"] == {s.name: {"task": s.task, "cells": [
        {"index": c.index, "id": c.id} for c in s.cells]} for s in graph.steps}
    train_cell = nbformat.read(published.project / NB, 4).cells[
        record["steps"]["train"]["cells"][0]["index"]]
    assert train_cell.id == record["steps"]["train"]["cells"][0]["id"]
    assert "step:train" in train_cell.metadata["tags"]
    assert record["ci_run"]["status"] == "SUCCESS"
    assert record["ci_run"]["parameters"]["epochs"] == 2
    assert set(record["ci_run"]["metrics"]) == {"accuracy", "loss"}
    shown = nbship(published.project, "release", "show",
                   f"{published.address}/releases/marker-classifier").stdout
    assert f"commit    {published.commit}" in shown and "train" in shown


def test_publishing_the_same_commit_again_changes_nothing(published: Published) -> None:
    def snapshot() -> dict[str, str | None]:
        refs = {f"{published.repo.repository}:{t}": oci.exists(published.repo.with_tag(t))
                for t in oci.tags(published.repo)}
        steps = oci.Reference.parse(f"{published.address}/nbship-steps:latest")
        refs.update({f"nbship-steps:{t}": oci.exists(steps.with_tag(t))
                     for t in oci.tags(steps)})
        return refs

    before = snapshot()
    done = nbship(published.project, "publish", NB, "--only", "steps", "--registry",
                  published.address, "-o", str(published.out))
    assert "already in the registry" in done.stdout
    assert "(unchanged)" in done.stdout
    assert snapshot() == before


def test_a_publish_killed_between_pushes_leaves_the_previous_release(
        published: Published) -> None:
    previous = oci.exists(published.repo)
    old = published.record()
    # a new commit: the notebook's text changes, so does the pipeline's YAML
    doc = nbformat.read(published.project / NB, 4)
    doc.cells[0].source += "\n\nA second release."
    nbformat.write(doc, published.project / NB)
    git(published.project, "-c", "user.email=ci@example.com", "-c", "user.name=ci",
        "commit", "-qam", "second")
    commit = git(published.project, "rev-parse", "HEAD")
    new_tag = published.repo.with_tag(f"commit-{commit}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbship", "publish", NB, "--only", "steps", "--registry",
         published.address, "-o", str(published.out)],
        cwd=published.project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NBSHIP_PUBLISH_DELAY": "60"})
    try:
        deadline = time.monotonic() + 300
        while oci.exists(new_tag) is None:  # its files are pushed; the tag has not moved
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # latest still names the previous release, and everything it names is there
    assert oci.exists(published.repo) == previous
    assert published.record() == old
    for image in old["images"].values():
        assert oci.exists(oci.Reference.parse(image["reference"])) == image["digest"]
    # publishing again completes the interrupted release
    nbship(published.project, "publish", NB, "--only", "steps", "--registry",
           published.address, "-o", str(published.out))
    assert oci.exists(published.repo) == oci.exists(new_tag) != previous
    assert published.record()["commit"] == commit
