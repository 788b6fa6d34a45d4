"""What a rehearsal refuses to run (issue 17 §3): a Job is one of the commands `nbship
deploy render` writes, with the environment render writes, or nothing runs; every Job
runs in an environment nbship builds, in the project, and never starts a rehearsal.

Each case is a real rehearsal of a hand-written pipeline file whose Job, were it run,
would leave a marker file (real `python -m nbship` processes from this venv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbship.spinnaker.rehearse import Options, RehearsalError, history, rehearse
from tests.conftest import SHOWCASE, write_notebook
from tests.spinnaker.test_rehearse import job, pipeline, write

JOB = "manifest.spec.template.spec.containers[0]"
READY = ["canary", "ready", "http://127.0.0.1:9", "--stable", "http://127.0.0.1:9",
         "--model", "m", "--timeout", "0"]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A project folder, the working directory of the test (as of `nbship deploy
    rehearse`), and a marker path outside it that no Job may create."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    before = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(before)


def refused(path: Path, root: Path, **options: Any) -> str:
    with pytest.raises(RehearsalError) as err:
        rehearse(path, Options(root=root / ".nbship" / "deploy", jobs="venv", **options),
                 echo=lambda line: None)
    assert history(root / ".nbship" / "deploy") == []  # nothing started, nothing recorded
    return str(err.value)


def one_job(root: Path, command: list[str], **container: Any) -> Path:
    stage = job("1", [], "Job", [])
    spec = stage["manifest"]["spec"]["template"]["spec"]["containers"][0]
    spec["command"] = command
    spec.update(container)
    return write(root, pipeline([stage]))


def test_notebook_code_is_refused(project: Path, tmp_path: Path) -> None:
    """`nbship run NOTEBOOK` (its cells are code) and `python -c`: neither is a Job render
    writes."""
    marker = tmp_path / "owned-by-notebook"
    write_notebook(project / "notebooks" / "evil.ipynb",
                   [([], f"import pathlib\npathlib.Path({str(marker)!r}).touch()")])
    text = refused(one_job(project, ["python", "-m", "nbship", "run", "notebooks/evil.ipynb"]),
                   project)
    assert f"$.stages[0].{JOB}.command[3]: nbship 'run notebooks/evil.ipynb' is not a Job " \
        "that nbship deploy render writes (it writes: kfp upload, kfp run, kfp schedule, " \
        "canary ready, canary judge)" in text
    text = refused(one_job(project, ["python", "-c",
                                     f"open({str(marker)!r}, 'w')", "-m", "nbship"]), project)
    assert f"$.stages[0].{JOB}.command: a rehearsal runs nbship's own Jobs" in text
    assert not marker.exists()


def test_a_pytest_plugin_through_nbship_test_is_refused(project: Path, tmp_path: Path) -> None:
    marker = tmp_path / "owned-by-plugin"
    (project / "evilplugin.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r})"
                                           ".touch()\n")
    (project / "notebooks" / "marker_classifier.ipynb").write_bytes(SHOWCASE.read_bytes())
    path = one_job(project, ["python", "-m", "nbship"],
                   args=["test", "notebooks/marker_classifier.ipynb", "--", "-p", "evilplugin"])
    text = refused(path, project)
    assert f"$.stages[0].{JOB}.args[0]: nbship 'test notebooks/marker_classifier.ipynb' is " \
        "not a Job" in text
    assert not marker.exists()


def test_options_render_does_not_write_are_refused_with_their_path(project: Path) -> None:
    """A verb render writes, with what render does not write: an option it does not
    give, one given twice, a parameter that is not NAME=JSON, a URL that is a file."""
    path = one_job(project, ["python", "-m", "nbship", *READY, "--inputs", "/etc/passwd",
                             "--model", "x"])
    text = refused(path, project)
    assert f"$.stages[0].{JOB}.command[12]: '--inputs' is not an option render writes for " \
        "nbship canary ready (it writes --stable, --model, --timeout)" in text
    assert f"$.stages[0].{JOB}.command: nbship canary ready has --model 2 time(s); render " \
        "writes it once" in text
    path = one_job(project, ["python", "-m", "nbship", "kfp", "run",
                             "127.0.0.1:5000/releases/x@sha256:" + "a" * 64,
                             "--experiment", "e", "-p", "epochs", "--host", "file:///etc"])
    text = refused(path, project)
    assert f"$.stages[0].{JOB}.command[9]: 'epochs' is not a parameter" in text
    assert f"$.stages[0].{JOB}.command[11]: 'file:///etc' is not a url" in text


def test_pythonpath_to_a_sitecustomize_is_refused_and_never_inherited(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "owned-by-sitecustomize"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "sitecustomize.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r})"
                                           ".touch()\n")
    for var in ({"name": "PYTHONPATH", "value": str(evil)},
                {"name": "LD_PRELOAD", "value": str(evil / "x.so")},
                {"name": "NBSHIP_ARTIFACT_KEY", "value": "00" * 32}):
        text = refused(one_job(project, ["python", "-m", "nbship", *READY], env=[var]),
                       project)
        assert f"$.stages[0].{JOB}.env[0]: {var['name']!r}: a rehearsal gives a Job only " \
            "the environment render writes (KF_PIPELINES_SA_TOKEN_PATH, " \
            "NBSHIP_ARTIFACT_KEY)" in text
    # this process's own PYTHONPATH (and PYTHON*, LD_*) is not the Job's either
    monkeypatch.setenv("PYTHONPATH", str(evil))
    monkeypatch.setenv("PYTHONSTARTUP", str(evil / "sitecustomize.py"))
    record, _ = rehearse(one_job(project, ["python", "-m", "nbship", *READY]),
                         Options(root=project / ".nbship" / "deploy", jobs="venv"),
                         echo=lambda line: None)
    assert "exited 1" in record["stages"][0]["message"]  # it ran (nothing answers on :9)
    assert not marker.exists()


def test_a_job_cannot_write_outside_the_project(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (project / "notebooks" / "marker_classifier.ipynb").write_bytes(SHOWCASE.read_bytes())
    text = refused(one_job(project, ["python", "-m", "nbship", "compile",
                                     "notebooks/marker_classifier.ipynb", "-o", str(outside)]),
                   project)
    assert f"$.stages[0].{JOB}.command[3]: nbship 'compile notebooks/marker_classifier.ipynb'" \
        " is not a Job" in text
    # a release that is a path, not a registry's reference
    text = refused(one_job(project, ["python", "-m", "nbship", "kfp", "upload",
                                     f"../{outside.name}", "--host", "http://x"]), project)
    assert f"$.stages[0].{JOB}.command[5]: '../outside' is not a reference" in text
    assert not outside.exists()


def test_a_rehearsal_never_rehearses_itself(project: Path) -> None:
    """A Job running `deploy rehearse` of its own file is refused before anything runs;
    and a rehearsal started inside a rehearsal's Job (its environment says so) is refused."""
    path = one_job(project, ["python", "-m", "nbship", "deploy", "rehearse", "pipeline.json",
                             "--jobs", "venv"])
    text = refused(path, project)
    assert f"$.stages[0].{JOB}.command[3]: nbship 'deploy rehearse' is not a Job" in text
    wait = write(project, pipeline([{"refId": "1", "requisiteStageRefIds": [], "type": "wait",
                                     "name": "Soak", "waitTime": 0}]))
    done = subprocess.run([sys.executable, "-m", "nbship", "deploy", "rehearse", str(wait),
                           "--jobs", "venv"], cwd=project, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NBSHIP_REHEARSAL": "20261207T0-abc"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "inside a Job of rehearsal 20261207T0-abc: a rehearsal starts no other" \
        in done.stderr and "Traceback" not in done.stderr
    assert not (project / ".nbship" / "deploy").exists()


def test_a_parameter_resolving_to_a_bad_value_fails_its_stage_unrun(project: Path) -> None:
    """An expression passes the first check; once resolved, its value must be what render
    writes, or the stage fails (naming the stage and the path) without running."""
    doc = pipeline([job("1", [], "Ready", ["canary", "ready", "http://127.0.0.1:9",
                                           "--stable", "http://127.0.0.1:9",
                                           "--model", "${parameters.name}",
                                           "--timeout", "0"])],
                   parameterConfig=[{"name": "name", "default": "m"}])
    lines: list[str] = []
    record, _ = rehearse(write(project, doc), Options(
        root=project / ".nbship" / "deploy", jobs="venv",
        parameters={"name": "--inputs=/etc/passwd"}), echo=lines.append)
    stage = record["stages"][0]
    assert record["status"] == "TERMINAL" and stage["status"] == "TERMINAL"
    assert f"$.stages[0].{JOB}.command[9]: '--inputs=/etc/passwd' is not a name as render " \
        "writes it" in stage["message"] and "refused, not run" in stage["message"]
    assert not any(line.startswith("    $ nbship") for line in lines)
    assert record["message"].startswith("stage 1 Ready: ")


def test_the_jobs_render_writes_pass_the_check(tmp_path: Path) -> None:
    """Every Job of every pipeline render writes (the showcase's five files) is one the
    rehearsal runs: the allow-list is render's own table (render.JOB_COMMANDS)."""
    from nbship.spinnaker import render
    from nbship.spinnaker.rehearse import job_problems

    record = {"name": "mc", "commit": "c" * 40,
              "notebook": {"path": "n.ipynb", "sha256": "e" * 64},
              "images": {"nbship-steps": {"reference": "h:5000/s@sha256:" + "a" * 64},
                         "nbship-server": {"reference": "h:5000/v@sha256:" + "b" * 64}}}
    cfg = render.DeployConfig(application="mc", cron="0 0 3 * * *", parameters={"epochs": 2},
                       ci_parameters={"epochs": 1, "note": "a b"})
    docs = [render.ml_pipeline_cd(record, "h:5000/releases/mc@sha256:" + "c" * 64, cfg),
            render.ml_pipeline_rollback(record, cfg),
            render.continuous_training(record, "h/r", cfg),
            render.model_delivery(record, "h:5000/models/mc@sha256:" + "d" * 64, cfg)]
    jobs = [s for d in docs for s in d["stages"] if s["type"] == "runJobManifest"]
    assert len(jobs) >= 5
    for s in jobs:
        container = json.loads(json.dumps(s["manifest"]["spec"]["template"]["spec"]
                                          ["containers"][0]))
        assert job_problems(container, "$", resolved=False) == [], container["command"]
