"""The model delivery rehearsed end to end on 127.0.0.1: real model servers behind a
real traffic split, requests sent throughout. A good candidate is promoted (the old
server stopped); a broken one (shuffled labels, the gate lowered so only the canary
judgment can stop it) is rolled back with no request failing; the rollback pipeline
serves the previous model release again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nbship.spinnaker.rehearse import Options, history, rehearse
from tests.conftest import ROOT, push_release, run_showcase, showcase_project

pytestmark = pytest.mark.slow

SERVER = "127.0.0.1:5000/nbship-server@sha256:" + "6" * 64
STEPS = "127.0.0.1:5000/nbship-steps@sha256:" + "5" * 64


def model_release(registry: str, run: Path) -> str:
    from nbship.release import model

    pushed = model.push(run, registry, echo=lambda line: None)
    return f"{pushed.reference.registry}/{pushed.reference.repository}@{pushed.digest}"


@pytest.fixture(scope="module")
def delivery(local_registry: str, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    """Three model releases of the showcase (stable; a good candidate trained with another
    seed; a broken one trained on shuffled labels with the gate at 0) and the Spinnaker
    pipelines rendered for the good one."""
    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        from make_marker_batches import write_batches
    finally:
        sys.path.remove(str(ROOT / "notebooks"))
    folder = tmp_path_factory.mktemp("delivery")
    for name in ("stable", "good", "broken"):
        (folder / name).mkdir()
    write_batches(folder / "shuffled", shuffle_labels=True)
    refs = {
        "stable": model_release(local_registry, run_showcase(folder / "stable", epochs=3)),
        "good": model_release(local_registry, run_showcase(folder / "good", epochs=3, seed=1)),
        "broken": model_release(local_registry, run_showcase(
            folder / "broken", epochs=3, data_dir=str(folder / "shuffled"), threshold=0.0)),
    }
    record = {"schema": "nbship.release/v1", "name": "marker-classifier",
              "commit": "0123456789abcdef0123456789abcdef01234567",
              "notebook": {"path": "notebooks/marker_classifier.ipynb", "sha256": "b" * 64},
              "images": {"nbship-steps": {"reference": STEPS, "digest": STEPS.split("@")[1]},
                         "nbship-server": {"reference": SERVER,
                                           "digest": SERVER.split("@")[1]}},
              "manifests": [], "steps": {}}
    (folder / "release").mkdir()
    release = push_release(local_registry, folder / "release", record, b"# the pipeline\n")
    project = showcase_project(folder / "project", (
        "[tool.nbship.deploy]\ncanary_seconds = 3\n"
        '[tool.nbship.training."notebooks/marker_classifier.ipynb"]\ncron = "0 0 3 * * *"\n'))
    from nbship.spinnaker.render import render

    render(release, project / "spinnaker", pyproject=project / "pyproject.toml",
           model=refs["good"])
    return {"refs": refs, "project": project, "spinnaker": project / "spinnaker",
            "release": release}


def by_name(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in record["stages"]}


def test_a_good_candidate_is_promoted_and_the_old_server_stopped(
        delivery: dict[str, Any], tmp_path: Path) -> None:
    refs = delivery["refs"]
    record, path = rehearse(delivery["spinnaker"] / "marker-classifier-model-delivery.json",
                            Options(jobs="venv", stable=refs["stable"], judge="continue",
                                    time_scale=0.01, root=tmp_path), echo=lambda line: None)
    stages = by_name(record)
    assert record["status"] == "SUCCEEDED", record["message"]
    assert stages["Judge the canary"]["outputs"]["canary_verdict"] == "pass"
    assert float(stages["Judge the canary"]["outputs"]["canary_agreement"]) >= 0.9
    assert stages["Promote the canary?"]["decision"] == "continue"
    assert stages["Promote (100 %)"]["status"] == "SUCCEEDED"
    assert stages["Roll back the canary (0 %)"]["status"] == "SKIPPED"
    assert record["cluster"]["final"] == {"marker-classifier": {
        "stable": refs["good"], "canary": None, "canary_percent": None}}
    story = [e["what"] for e in record["cluster"]["events"]]
    stable, good = (r.rsplit("/", 1)[1].replace("sha256:", "")[:30] for r in
                    (refs["stable"], refs["good"]))
    assert f"marker-classifier: canary {good} at 10 % once ready" in story
    assert f"marker-classifier: canary {good} at 100 %" in story
    assert f"marker-classifier: stopped {stable}" in story  # the old server is gone
    ready = next(e for e in record["cluster"]["events"]
                 if e["what"] == f"marker-classifier: {good} ready")
    assert sorted(ready["weights"].values()) == [10, 90]  # the split, once it was ready
    traffic = record["traffic"]
    assert traffic["sent"] > 50 and traffic["failed"] == 0, traffic
    assert record["provenance"]["model"]["digest"] == refs["good"].split("@")[1]
    assert record["provenance"]["stable"]["digest"] == refs["stable"].split("@")[1]
    assert record["provenance"]["model"]["run"] != record["provenance"]["stable"]["run"]
    assert path.is_file()


def test_a_broken_candidate_is_rolled_back_and_no_request_fails(
        delivery: dict[str, Any]) -> None:
    """Through the CLI, as a person runs it: exit 1, the story on stdout, no traceback."""
    refs = delivery["refs"]
    done = subprocess.run(
        [sys.executable, "-m", "nbship", "deploy", "rehearse",
         "spinnaker/marker-classifier-model-delivery.json", "--stable", refs["stable"],
         "-p", f"model={refs['broken']}", "--judge", "continue", "--time-scale", "0.01",
         "--jobs", "venv"],
        cwd=delivery["project"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "the canary failed its judgment or was stopped at the approval and was rolled " \
        "back" in done.stdout
    record = history(delivery["project"] / ".nbship" / "deploy")[-1]
    stages = by_name(record)
    assert record["status"] == "TERMINAL"
    judged = stages["Judge the canary"]
    assert judged["status"] == "FAILED_CONTINUE"
    assert judged["outputs"]["canary_verdict"] == "fail"
    assert float(judged["outputs"]["canary_agreement"]) < 0.5  # it disagrees
    assert float(judged["outputs"]["canary_prediction_psi"]) > 0.25  # and drifts
    assert stages["Promote the canary?"]["status"] == "SKIPPED"
    assert stages["Promote (100 %)"]["status"] == "SKIPPED"
    assert stages["Roll back the canary (0 %)"]["status"] == "SUCCEEDED"
    assert record["cluster"]["final"]["marker-classifier"]["stable"] == refs["stable"]
    assert record["traffic"]["sent"] > 50 and record["traffic"]["failed"] == 0
    listed = subprocess.run([sys.executable, "-m", "nbship", "deploy", "history"],
                            cwd=delivery["project"], capture_output=True, text=True,
                            timeout=120)
    assert record["id"] in listed.stdout and "TERMINAL" in listed.stdout


def test_stop_at_the_approval_rolls_a_good_candidate_back(delivery: dict[str, Any],
                                                          tmp_path: Path) -> None:
    refs = delivery["refs"]
    record, _ = rehearse(delivery["spinnaker"] / "marker-classifier-model-delivery.json",
                         Options(jobs="venv", stable=refs["stable"], judge="stop", root=tmp_path),
                         echo=lambda line: None)
    stages = by_name(record)
    assert stages["Judge the canary"]["status"] == "SUCCEEDED"
    assert stages["Promote the canary?"]["status"] == "FAILED_CONTINUE"
    assert stages["Promote (100 %)"]["status"] == "SKIPPED"
    assert stages["Roll back the canary (0 %)"]["status"] == "SUCCEEDED"
    assert record["status"] == "TERMINAL" and "stopped at the approval" in record["message"]
    assert record["cluster"]["final"]["marker-classifier"]["stable"] == refs["stable"]
    assert record["traffic"]["failed"] == 0


def test_the_rollback_pipeline_serves_the_previous_model_again(
        delivery: dict[str, Any], tmp_path: Path) -> None:
    refs = delivery["refs"]
    doc = json.loads((delivery["spinnaker"] / "marker-classifier-model-rollback.json")
                     .read_text())
    assert doc["parameterConfig"][0]["name"] == "previous_model"
    record, _ = rehearse(delivery["spinnaker"] / "marker-classifier-model-rollback.json",
                         Options(jobs="venv", stable=refs["good"],
                                 parameters={"previous_model": refs["stable"]},
                                 root=tmp_path), echo=lambda line: None)
    assert record["status"] == "SUCCEEDED"
    assert record["cluster"]["final"]["marker-classifier"]["stable"] == refs["stable"]
    assert record["traffic"]["failed"] == 0


@pytest.fixture(scope="module")
def kayenta(delivery: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model delivery rendered with a Kayenta canary config: the folder it went to."""
    from nbship.release.tools import which
    from nbship.spinnaker.render import render

    if which("prometheus") is None:
        pytest.skip("not installed: prometheus (make tools; .ci/run installs it)")
    project = showcase_project(tmp_path_factory.mktemp("kayenta"), (
        '[tool.nbship.deploy]\ncanary_seconds = 60\ncanary_config = "nbship-model-server"\n'
        '[tool.nbship.training."notebooks/marker_classifier.ipynb"]\ncron = "0 0 3 * * *"\n'))
    written = render(delivery["release"], project / "spinnaker",
                     pyproject=project / "pyproject.toml", model=delivery["refs"]["good"])
    assert project / "spinnaker" / "kayenta" / "nbship-model-server.json" in written
    return project / "spinnaker"


def test_kayenta_judges_from_prometheus_a_good_and_a_broken_candidate(
        delivery: dict[str, Any], kayenta: Path, tmp_path: Path) -> None:
    """The kayentaCanary stage, scoped by the runs the readiness job reports, judged from
    the rehearsal's own Prometheus scraping both servers."""
    refs = delivery["refs"]
    pipeline = kayenta / "marker-classifier-model-delivery.json"
    doc = json.loads(pipeline.read_text())
    assert doc["stages"][2]["type"] == "kayentaCanary"
    good, _ = rehearse(pipeline, Options(jobs="venv", stable=refs["stable"], judge="continue",
                                         root=tmp_path), echo=lambda line: None)
    judged = by_name(good)["Judge the canary"]
    assert good["status"] == "SUCCEEDED", judged["outputs"]
    assert judged["outputs"]["overallResult"] == "pass"
    assert judged["outputs"]["metrics"]["class concentration"] == "Pass"
    assert good["cluster"]["final"]["marker-classifier"]["stable"] == refs["good"]
    broken, _ = rehearse(pipeline, Options(jobs="venv", stable=refs["stable"], judge="continue",
                                           parameters={"model": refs["broken"]},
                                           root=tmp_path), echo=lambda line: None)
    judged = by_name(broken)["Judge the canary"]
    assert broken["status"] == "TERMINAL" and judged["status"] == "FAILED_CONTINUE"
    assert judged["outputs"]["metrics"]["class concentration"] == "High"
    assert judged["outputs"]["overallScore"] == 0
    assert broken["cluster"]["final"]["marker-classifier"]["stable"] == refs["stable"]
    assert good["traffic"]["failed"] == broken["traffic"]["failed"] == 0


def test_the_first_delivery_has_no_canary_and_nothing_targets_prev(
        delivery: dict[str, Any], tmp_path: Path) -> None:
    """Issue 20 (6): with no model in production, KServe routes no `prev-` tag
    (ksvc_reconciler.go splits to a rolled-out revision only when there is one): the
    canary pipeline's readiness Job fails there, as its pod would, and the first-delivery
    pipeline serves the model with no canary, its readiness Job on the predictor's own
    address."""
    refs = delivery["refs"]
    first = json.loads((delivery["spinnaker"] / "marker-classifier-model-first-delivery.json")
                       .read_text())
    assert "prev-" not in json.dumps(first)
    assert "canaryTrafficPercent" not in json.dumps(first)
    record, _ = rehearse(delivery["spinnaker"] / "marker-classifier-model-first-delivery.json",
                         Options(jobs="venv", root=tmp_path), echo=lambda line: None)
    assert record["status"] == "SUCCEEDED", record["message"]
    ready = by_name(record)["Wait until the model is ready"]
    assert ready["outputs"]["canary_ready"] == "true"
    assert record["cluster"]["final"] == {"marker-classifier": {
        "stable": refs["good"], "canary": None, "canary_percent": None}}
    assert record["traffic"]["sent"] > 0 and record["traffic"]["failed"] == 0
    canary, _ = rehearse(delivery["spinnaker"] / "marker-classifier-model-delivery.json",
                         Options(jobs="venv", judge="continue", time_scale=0.01,
                                 root=tmp_path), echo=lambda line: None)
    stages = by_name(canary)
    assert canary["status"] == "TERMINAL"
    waited = stages["Wait until the canary is ready"]
    assert waited["status"] == "TERMINAL"
    assert "http://prev-marker-classifier-predictor" in waited["message"]
    assert "no previous revision" in waited["message"]
    assert stages["Judge the canary"]["status"] == "NOT_STARTED"
    assert stages["Promote (100 %)"]["status"] == "NOT_STARTED"
