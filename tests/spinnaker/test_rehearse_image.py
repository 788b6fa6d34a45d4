"""`--jobs image` (the default) with real buildah containers (issue 17 §3): this machine's
key (the `nbship-key` secret) goes only to the images of the release being rehearsed, by
digest as its release.json records them; every Job runs in a pid namespace of its own.

The images are small and real: a scratch image holding a shell and a `python` that
prints, as SPINNAKER_PROPERTY_ lines, the key it was given and the processes it sees;
pushed to the embedded registry and pulled by digest, as a rehearsal pulls a release's."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbship.spinnaker.rehearse import Options, RehearsalError, history, rehearse
from tests.conftest import push_release
from tests.release.conftest import needs
from tests.spinnaker.test_rehearse import job, pipeline, write

pytestmark = [pytest.mark.image, pytest.mark.slow, needs("buildah", "docker-registry")]
JOB = "manifest.spec.template.spec.containers[0]"
READY = ["canary", "ready", "http://127.0.0.1:9", "--stable", "http://127.0.0.1:9",
         "--model", "m", "--timeout", "0"]
KEY = {"name": "NBSHIP_ARTIFACT_KEY", "valueFrom": {"secretKeyRef": {"name": "nbship-key",
                                                                     "key": "key"}}}
PYTHON = """#!/bin/sh
echo "SPINNAKER_PROPERTY_verb=$3 $4"
echo "SPINNAKER_PROPERTY_key=${NBSHIP_ARTIFACT_KEY:-none}"
echo "SPINNAKER_PROPERTY_self=$$"
echo "SPINNAKER_PROPERTY_pids=$(echo /proc/[0-9]*)"
echo "SPINNAKER_PROPERTY_cwd=$(pwd)"
"""


def _rootfs(folder: Path) -> Path:
    """/bin/sh (dash) and the libraries it loads, and the `python` above."""
    root = folder / "rootfs"
    for d in ("bin", "proc", "tmp", "dev"):
        (root / d).mkdir(parents=True)
    shutil.copy(os.path.realpath("/bin/sh"), root / "bin" / "sh")
    ldd = subprocess.run(["ldd", "/bin/sh"], capture_output=True, text=True, check=True)
    for line in ldd.stdout.splitlines():
        lib = next((w for w in line.split() if w.startswith("/")), None)
        if lib:
            (root / lib.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.realpath(lib), root / lib.lstrip("/"))
    (root / "bin" / "python").write_text(PYTHON)
    (root / "bin" / "python").chmod(0o755)
    return root


@pytest.fixture(scope="module")
def images(local_registry: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, str]]:
    """Two images in the registry, by digest (the release's server image, and another),
    and the release whose release.json names the first; in a container store of their own."""
    folder = tmp_path_factory.mktemp("jobimages")
    store = folder / "containers"
    store.mkdir()
    (store / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\ngraphroot = '
                                        f'"{store}/graph"\nrunroot = "{store}/run"\n')
    saved = os.environ.get("CONTAINERS_STORAGE_CONF")
    os.environ["CONTAINERS_STORAGE_CONF"] = str(store / "storage.conf")

    def buildah(*args: str) -> str:
        done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    try:
        root = _rootfs(folder)
        refs: dict[str, str] = {}
        for name in ("release", "other"):
            box = buildah("from", "scratch")
            buildah("copy", box, str(root), "/")
            buildah("config", "--label", f"dev.nbship.test={name}", box)
            buildah("commit", "--quiet", box, f"localhost/job-{name}:1")
            buildah("rm", box)
            digest_file = folder / f"{name}.digest"
            buildah("push", "--quiet", "--tls-verify=false", "--digestfile", str(digest_file),
                    f"localhost/job-{name}:1", f"docker://{local_registry}/job-{name}:1")
            refs[name] = f"{local_registry}/job-{name}@{digest_file.read_text().strip()}"
        digest = refs["release"].split("@")[1]
        record = {"schema": "nbship.release/v1", "name": "marker-classifier",
                  "commit": "0123456789abcdef0123456789abcdef01234567",
                  "notebook": {"path": "notebooks/marker_classifier.ipynb",
                               "sha256": "b" * 64},
                  "images": {"nbship-server": {"reference": refs["release"],
                                               "digest": digest}},
                  "manifests": [], "steps": {}}
        (folder / "rel").mkdir()
        refs["release_ref"] = push_release(local_registry, folder / "rel", record, b"# p\n")
        yield refs
    finally:
        subprocess.run(["buildah", "rm", "--all"], capture_output=True)
        subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True)
        if saved is None:
            os.environ.pop("CONTAINERS_STORAGE_CONF", None)
        else:
            os.environ["CONTAINERS_STORAGE_CONF"] = saved


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "project"
    root.mkdir()
    before = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(before)


def image_job(ref: str, name: str, image: str, key: bool) -> dict[str, Any]:
    stage = job(ref, [] if ref == "1" else [str(int(ref) - 1)], name, READY,
                propertyFile="nbship")
    container = stage["manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["image"] = image
    if key:
        container["env"] = [KEY]
    return stage


def containers() -> list[str]:
    done = subprocess.run(["buildah", "containers", "--quiet"], capture_output=True,
                          text=True, check=True)
    return done.stdout.split()


def test_the_key_goes_to_the_releases_image_and_jobs_see_only_their_own_pids(
        images: dict[str, str], project: Path) -> None:
    from nbship.signing import key_hex

    doc = pipeline([image_job("1", "In the release's image", images["release"], key=True),
                    image_job("2", "In another image", images["other"], key=False)])
    lines: list[str] = []
    record, _ = rehearse(write(project, doc), Options(root=project / ".nbship" / "deploy",
                                                      release=images["release_ref"]),
                         echo=lines.append)
    assert record["status"] == "SUCCEEDED", record["message"]
    ours, other = (s["outputs"] for s in record["stages"])
    assert ours["verb"] == other["verb"] == "canary ready"
    assert ours["key"] == key_hex()
    assert other["key"] == "none"
    for seen in (ours, other):
        pids = [int(p.rsplit("/", 1)[1]) for p in seen["pids"].split()]
        assert os.getpid() not in pids and 1 in pids, seen["pids"]  # a pid namespace
        assert len(pids) < 10 and int(seen["self"]) < 100, seen  # of its own, small
        assert seen["cwd"] == str(project)
    assert record["options"]["key_release"] == images["release_ref"]
    assert any("the nbship-key secret goes to the images of" in line for line in lines)
    assert containers() == []  # each Job's container removed


def test_another_image_asking_for_the_key_is_refused_before_anything_runs(
        images: dict[str, str], project: Path) -> None:
    doc = pipeline([image_job("1", "Fine", images["release"], key=False),
                    image_job("2", "Wants the key", images["other"], key=True)])
    path = write(project, doc)
    with pytest.raises(RehearsalError) as err:
        rehearse(path, Options(root=project / ".nbship" / "deploy",
                               release=images["release_ref"]), echo=lambda line: None)
    text = str(err.value)
    assert f"$.stages[1] (runJobManifest 'Wants the key'): $.stages[1].{JOB}.env[0]: the " \
        "nbship-key secret (this machine's signing key) goes only to images of the release " \
        f"being rehearsed, {images['release_ref']} (--release: " in text
    assert f"$.stages[1].{JOB}.image '{images['other']}' is not one of them" in text
    # no release named: the key goes to no image, not even the release's
    doc = pipeline([image_job("1", "Wants the key", images["release"], key=True)])
    with pytest.raises(RehearsalError, match="none named: --release REF names it"):
        rehearse(write(project, doc), Options(root=project / ".nbship" / "deploy"),
                 echo=lambda line: None)
    assert history(project / ".nbship" / "deploy") == [] and containers() == []


def test_an_image_named_by_a_parameter_is_checked_once_resolved(
        images: dict[str, str], project: Path) -> None:
    """`${parameters.image}` passes the first check; resolved to another image, the stage
    fails, naming the path, and no container is made."""
    stage = image_job("1", "Wants the key", "${parameters.image}", key=True)
    doc = pipeline([stage], parameterConfig=[{"name": "image", "default": images["release"]}])
    lines: list[str] = []
    record, _ = rehearse(write(project, doc), Options(
        root=project / ".nbship" / "deploy", release=images["release_ref"],
        parameters={"image": images["other"]}), echo=lines.append)
    assert record["status"] == "TERMINAL"
    message = record["stages"][0]["message"]
    assert "refused, not run" in message and f"$.stages[0].{JOB}.env[0]: the nbship-key " \
        "secret" in message and f"'{images['other']}' is not one of them" in message
    assert not any(line.startswith("    $ nbship") for line in lines)
    assert containers() == []


def push_model(registry: str, folder: Path, release: str, signed: bool) -> str:
    """A model release (model.json only) that records it was built from ``release``:
    signed with this machine's key, or with another's."""
    import json

    from nbship import signing
    from nbship.release import oci
    from nbship.release.model import MODEL_MEDIA_TYPE

    folder.mkdir()
    record: dict[str, Any] = {
        "schema": "nbship.model/v1", "name": "marker-classifier",
        "run": {"id": "20261207-000000-000001" if signed else "20261207-000000-000002"},
        "serve": {"file": "serve.py", "sha256": "0" * 64, "parameters": {}, "values": {}},
        "profile": None, "pipeline": {"yaml_sha256": None, "release": {"reference": release}}}
    record[signing.SIGNATURE] = signing.sign(record) if signed else "ab" * 32
    (folder / "model.json").write_text(json.dumps(record))
    ref = oci.Reference.parse(f"{registry}/models/marker-classifier:"
                              f"{'signed' if signed else 'forged'}")
    oci.push_files(ref, folder, [("model.json", MODEL_MEDIA_TYPE)],
                   ("model.json", MODEL_MEDIA_TYPE), "the model", "")
    _, digest, _ = oci.get_manifest(ref)
    return f"{ref.registry}/{ref.repository}@{digest}"


def test_without_release_the_key_follows_a_signed_model_release(
        images: dict[str, str], project: Path, tmp_path: Path) -> None:
    """The model delivery's parameter names a model release; the release it records (under
    this machine's signature) is the one whose images get the key. A model whose
    signature does not hold names no release."""
    from nbship.signing import key_hex

    registry = images["release"].split("/")[0]
    signed = push_model(registry, tmp_path / "signed", images["release_ref"], signed=True)
    forged = push_model(registry, tmp_path / "forged", images["release_ref"], signed=False)
    doc = pipeline([image_job("1", "Judge", images["release"], key=True)],
                   parameterConfig=[{"name": "model", "default": signed}])
    path = write(project, doc)
    record, _ = rehearse(path, Options(root=project / ".nbship" / "deploy"),
                         echo=lambda line: None)
    assert record["status"] == "SUCCEEDED", record["message"]
    assert record["stages"][0]["outputs"]["key"] == key_hex()
    assert record["options"]["key_release"] == images["release_ref"]
    with pytest.raises(RehearsalError, match="none named: --release REF names it"):
        rehearse(path, Options(root=project / ".nbship" / "deploy",
                               parameters={"model": forged}), echo=lambda line: None)


def isvc_stage(image: str, model: str, key: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "kserve-container", "image": image, "args": [model]}
    if key:
        container["env"] = [KEY]
    return {"refId": "1", "requisiteStageRefIds": [], "type": "deployManifest",
            "name": "Deploy", "account": "k8s", "cloudProvider": "kubernetes",
            "source": "text", "manifests": [{
                "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                "metadata": {"name": "m", "namespace": "default"},
                "spec": {"predictor": {"containers": [container]}}}]}


def test_model_servers_run_in_the_inference_services_image_by_default(
        images: dict[str, str], project: Path) -> None:
    """Issue 20 (2): as KServe runs the predictor, the rehearsal runs `nbship serve MODEL`
    in the InferenceService's image (the release's server image), with the nbship-key
    secret only for the release's image; --servers venv only on request."""
    from nbship.signing import key_hex

    model = images["release"].split("/")[0] + "/models/m@sha256:" + "a" * 64
    root = project / ".nbship" / "deploy"
    record, _ = rehearse(write(project, pipeline([isvc_stage(images["release"], model,
                                                             key=True)])),
                         Options(root=root, release=images["release_ref"], traffic=0),
                         echo=lambda line: None)
    assert record["options"]["servers"] == "image"
    (log,) = (root / "rehearsals" / record["id"]).glob("m-*.log")
    said = dict(line.split("=", 1) for line in log.read_text().splitlines()
                if line.startswith("SPINNAKER_PROPERTY_"))
    # the stand-in image's `python` says what it was asked to run, and with which key
    assert said["SPINNAKER_PROPERTY_verb"] == f"serve {model}"
    assert said["SPINNAKER_PROPERTY_key"] == key_hex()
    assert said["SPINNAKER_PROPERTY_cwd"] == str(project)
    assert any("did not get ready" in e["what"] for e in record["cluster"]["events"]), \
        record["cluster"]["events"]  # the stand-in serves nothing
    assert containers() == []  # the server's container removed once it stopped
    # another image asking for the key is refused before anything starts
    with pytest.raises(RehearsalError, match=r"deployManifest 'Deploy'.*nbship-key"):
        rehearse(write(project, pipeline([isvc_stage(images["other"], model, key=True)])),
                 Options(root=root, release=images["release_ref"], traffic=0),
                 echo=lambda line: None)
