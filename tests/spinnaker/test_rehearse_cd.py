"""The ML pipeline's delivery rehearsed: the rendered Run Job stages run `nbship kfp` on
this machine (kfp.local and the local scheduler) or against a KFP API (`--kfp-host`,
here the stand-in), with the outputs Spinnaker would read."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.spinnaker.rehearse import Options, rehearse
from tests.conftest import SHOWCASE, push_release, serving, showcase_project
from tests.pipelines.kfp_standin import StandIn

pytestmark = pytest.mark.slow
STEPS = "127.0.0.1:5000/nbship-steps@sha256:" + "a" * 64


@pytest.fixture(scope="module")
def project(local_registry: str, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, str, str]:
    """A checkout of the showcase, its release (the pipeline YAML the steps image would
    run) and the Spinnaker pipelines rendered from it."""
    from nbship.spinnaker.render import render

    tmp = tmp_path_factory.mktemp("release")
    compiled = compile_graph(build_graph(read_notebook(SHOWCASE)), tmp / "build",
                             base_image=STEPS)
    record = {"schema": "nbship.release/v1", "name": "marker-classifier",
              "commit": "0123456789abcdef0123456789abcdef01234567",
              "notebook": {"path": "notebooks/marker_classifier.ipynb",
                           "sha256": read_notebook(SHOWCASE).sha256},
              "images": {"nbship-steps": {"reference": STEPS, "digest": STEPS.split("@")[1]}},
              "manifests": [], "steps": {}}
    release = push_release(local_registry, tmp, record, compiled.yaml.read_bytes())
    root = showcase_project(tmp_path_factory.mktemp("project"), (
        "[tool.nbship.parameter_sets.ci]\nepochs = 1\nthreshold = 0.5\n"
        '[tool.nbship.training."notebooks/marker_classifier.ipynb"]\n'
        'cron = "0 0 3 * * *"\nparameters = { epochs = 2 }\n'))
    render(release, root / "spinnaker", pyproject=root / "pyproject.toml")
    # another release of the notebook (another commit), pushed later: what a trigger may
    # name instead of the rendered one (issue 20, point 5); then `latest` back on the first
    from nbship.release.publish import show

    other = tmp_path_factory.mktemp("other")
    later = push_release(local_registry, other, {**record, "commit": "fedcba98" * 5},
                         compiled.yaml.read_bytes())
    second = f"{later.rsplit(':', 1)[0]}@{show(later)[1]}"
    push_release(local_registry, tmp, record, compiled.yaml.read_bytes())
    return root, release, second


@pytest.fixture
def in_project(project: tuple[Path, str, str]) -> Iterator[Path]:
    before = Path.cwd()
    os.chdir(project[0])
    try:
        yield project[0]
    finally:
        os.chdir(before)


def stages(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in record["stages"]}


def test_the_cd_pipeline_uploads_runs_and_schedules_here(in_project: Path,
                                                         project: tuple[Path, str, str]) -> None:
    from nbship.pipelines.scheduler import Store

    lines: list[str] = []
    record, _ = rehearse(Path("spinnaker/marker-classifier-ml-pipeline-cd.json"),
                         Options(judge="continue", jobs="venv"), echo=lines.append)
    assert record["status"] == "SUCCEEDED", record["message"]
    by = stages(record)
    assert by["Upload the pipeline version"]["outputs"]["pipeline_version_id"].startswith(
        "marker-classifier-01234567-")
    run = by["Integration run (ci parameters)"]["outputs"]
    assert run["run_state"] == "SUCCEEDED" and float(run["metric_accuracy"]) >= 0.5
    assert any("-p epochs=1" in line and "--host" not in line for line in lines)
    assert by["Schedule in production?"]["decision"] == "continue"
    assert by["Schedule (replaces the previous schedule)"]["outputs"]["recurring_run_id"] \
        == "kfp:marker-classifier"
    rows = [t for t, _, _ in Store(in_project / ".nbship/scheduler/schedules.sqlite")
            .schedules()]
    assert [(t.name, t.cron, dict(t.parameters)) for t in rows] == [
        ("kfp:marker-classifier", "0 0 3 * * *", {"epochs": 2})]
    assert rows[0].release is not None and "@sha256:" in rows[0].release
    assert record["provenance"]["release"]["commit"] == "0123456789abcdef0123456789abcdef01234567"


def test_the_rollback_reschedules_and_a_kfp_api_can_stand_in(
        in_project: Path, project: tuple[Path, str, str]) -> None:
    api = StandIn(token="rehearsal-token")
    os.environ["KFP_TOKEN"] = "rehearsal-token"
    try:
        with serving(api.server()) as server:
            host = f"http://127.0.0.1:{server.server_address[1]}"
            record, _ = rehearse(Path("spinnaker/marker-classifier-ml-pipeline-rollback.json"),
                                 Options(jobs="venv", parameters={"previous_release": project[1]},
                                         kfp_host=host), echo=lambda line: None)
    finally:
        del os.environ["KFP_TOKEN"]
    assert record["status"] == "SUCCEEDED", record["message"]
    made = api.recurring[record["stages"][0]["outputs"]["recurring_run_id"]]
    assert made["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert made["runtime_config"]["parameters"] == {"epochs": 2}
    assert made["status"] == "ENABLED"


def test_the_trigger_selects_the_release_the_stages_deliver(
        in_project: Path, project: tuple[Path, str, str]) -> None:
    """Issue 20 (5): no stage re-runs the release fixed at render time. CI's webhook posts
    the release by digest as an artifact; Echo fires only on a body that meets the
    trigger's payloadConstraints and expected artifacts; Orca binds the artifact, and
    every Job delivers that release (#triggerResolvedArtifact)."""
    from nbship.pipelines.scheduler import Store
    from nbship.spinnaker.rehearse import RehearsalError

    second = project[2]
    cd = Path("spinnaker/marker-classifier-ml-pipeline-cd.json")
    doc = json.loads(cd.read_text())
    assert doc["parameterConfig"] == [] and "parameters.release" not in cd.read_text()
    artifact = {"type": "docker/image", "name": second.split("@")[0], "reference": second}
    refused: list[tuple[dict[str, Any], str]] = [
            ({"name": "marker-classifier-2", "artifacts": [artifact]}, "does not match"),
            ({"artifacts": [artifact]}, "the payload has no 'name'"),
            ({"name": "marker-classifier", "artifacts": [
                {**artifact, "name": "elsewhere.example/releases/marker-classifier"}]},
             "none of the payload's artifacts matches")]
    for payload, why in refused:
        with pytest.raises(RehearsalError, match="Echo would start no execution") as err:
            rehearse(cd, Options(judge="continue", jobs="venv", trigger_payload=payload),
                     echo=lambda line: None)
        assert why in str(err.value)
    lines: list[str] = []
    record, _ = rehearse(cd, Options(judge="continue", jobs="venv", trigger_payload={
        "name": "marker-classifier", "artifacts": [artifact]}), echo=lines.append)
    assert record["status"] == "SUCCEEDED", record["message"]
    by = stages(record)
    assert by["Upload the pipeline version"]["outputs"]["pipeline_version_id"].startswith(
        "marker-classifier-fedcba98-")
    assert record["trigger"]["type"] == "webhook"
    assert record["provenance"]["release"]["digest"] == second.split("@")[1]
    assert record["provenance"]["release"]["commit"] == "fedcba98" * 5
    rows = [t for t, _, _ in Store(in_project / ".nbship/scheduler/schedules.sqlite")
            .schedules()]
    assert [t.release for t in rows] == [second]
