"""`nbship kfp` against a KFP API stand-in (tests/pipelines/kfp_standin.py — not KFP): every
request body checked against the kfp-server-api models, uploads parsed as PipelineSpec."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from tests.conftest import ROOT, SHOWCASE, push_release, serving
from tests.pipelines.kfp_standin import Invalid, StandIn, check
from tests.release.conftest import free_port

TOKEN = "t0ken"


@pytest.fixture(scope="module")
def release(local_registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A release in the registry as `nbship publish` lays it out (release.json as config and
    layer, pipeline.yaml), made without images (the image tests publish real ones)."""
    tmp = tmp_path_factory.mktemp("release")
    compiled = compile_graph(build_graph(read_notebook(SHOWCASE)), tmp / "build",
                             base_image="127.0.0.1:5000/nbship-steps@sha256:" + "a" * 64)
    record = {"schema": "nbship.release/v1", "name": "marker-classifier",
              "commit": "0123456789abcdef0123456789abcdef01234567",
              "notebook": {"path": "notebooks/marker_classifier.ipynb",
                           "sha256": read_notebook(SHOWCASE).sha256},
              "images": {}, "manifests": [], "steps": {}}
    return push_release(local_registry, tmp, record, compiled.yaml.read_bytes())


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[StandIn, str]]:
    api = StandIn(token=TOKEN)
    with serving(api.server()) as server:
        yield api, f"http://127.0.0.1:{server.server_address[1]}"


def kfp(host: str, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KFP_TOKEN": token, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([sys.executable, "-m", "nbship", "kfp", *args, "--host", host],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def props(out: str) -> dict[str, str]:
    return dict(re.findall(r"^SPINNAKER_PROPERTY_(\w+)=(.*)$", out, re.M))


def test_upload_run_schedule_status_disable(standin: tuple[StandIn, str], release: str) -> None:
    api, host = standin
    first = kfp(host, "upload", release)
    assert first.returncode == 0, first.stderr
    again = kfp(host, "upload", release)
    assert again.returncode == 0 and "already there" in again.stdout, again.stderr
    assert props(first.stdout) == props(again.stdout)  # the same release: one version
    named = [v for v in api.versions.values() if v["display_name"].startswith(
        "marker-classifier-01234567-")]
    assert len(named) == 1

    run = kfp(host, "run", release, "-p", "epochs=2", "-p", "lr=0.01")
    assert run.returncode == 0, run.stderr
    assert "PENDING" in run.stdout and "RUNNING" in run.stdout and "SUCCEEDED" in run.stdout
    made = api.runs[props(run.stdout)["run_id"]]
    assert made["runtime_config"]["parameters"] == {"epochs": 2, "lr": 0.01}
    assert made["pipeline_version_reference"]["pipeline_version_id"] == named[0][
        "pipeline_version_id"]

    one = kfp(host, "schedule", release, "--cron", "0 0 3 * * *")
    assert one.returncode == 0, one.stderr
    two = kfp(host, "schedule", release, "--cron", "0 30 2 * * *", "--max-concurrency", "2")
    assert two.returncode == 0, two.stderr
    ids = props(two.stdout)
    assert ids["replaced_recurring_runs"] == props(one.stdout)["recurring_run_id"]
    enabled = [r for r in api.recurring.values() if r["status"] == "ENABLED"]
    assert [r["recurring_run_id"] for r in enabled] == [ids["recurring_run_id"]]
    assert enabled[0]["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"
    assert enabled[0]["no_catchup"] is True and str(enabled[0]["max_concurrency"]) == "2"

    status = kfp(host, "status", "marker-classifier")
    assert status.returncode == 0 and "ENABLED cron 0 30 2 * * *" in status.stdout
    off = kfp(host, "disable", "marker-classifier")
    assert off.returncode == 0 and "disabled 1 schedule(s)" in off.stdout
    assert not [r for r in api.recurring.values() if r["status"] == "ENABLED"]
    # every body nbship sent was one the kfp-server-api models accept
    assert not [r for r in api.requests if r[2] >= 400]


def test_the_schedule_comes_from_pyproject_and_the_sa_token_works(
        standin: tuple[StandIn, str], release: str, tmp_path: Path) -> None:
    """One vocabulary: without --cron, the repository's [tool.nbship.training] cron and
    parameters; auth with the service-account token file, as in a pod."""
    api, host = standin
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "KFP_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "nbship", "kfp", "schedule", release,
                           "--host", host], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**env, "KF_PIPELINES_SA_TOKEN_PATH": str(token_file)})
    assert done.returncode == 0, done.stderr
    made = api.recurring[props(done.stdout)["recurring_run_id"]]
    assert made["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # ROOT's pyproject.toml
    assert made["runtime_config"]["parameters"] == {"epochs": 2}


def test_a_wrong_token_is_a_message(standin: tuple[StandIn, str], release: str) -> None:
    _, host = standin
    done = kfp(host, "upload", release, token="wrong")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused the credentials (HTTP 401)" in done.stderr
    assert "Traceback" not in done.stderr
    cron = kfp(host, "schedule", release, "--cron", "0 3 * * *")
    assert cron.returncode == 2 and "not a 6-field cron" in cron.stderr


def test_the_standin_refuses_what_the_models_do_not_accept() -> None:
    check("V2beta1RecurringRun", {"display_name": "x", "mode": "ENABLE",
                                  "trigger": {"cron_schedule": {"cron": "0 0 3 * * *"}}})
    bad: list[dict[str, Any]] = [
        {"mode": "SOMETIMES"},
        {"display_name": 5},
        {"trigger": {"cron": "0 0 3 * * *"}},  # not a field of V2beta1Trigger
        {"schedule": "nightly"},
    ]
    for doc in bad:
        with pytest.raises(Invalid):
            check("V2beta1RecurringRun", doc)


def test_the_same_verbs_on_this_machine(release: str, tmp_path: Path) -> None:
    """Without --host: the release's own YAML on kfp.local, the local scheduler."""
    import shutil
    import time

    from nbship.pipelines import scheduler

    (tmp_path / "notebooks").mkdir()
    shutil.copy(SHOWCASE, tmp_path / "notebooks" / "marker_classifier.ipynb")

    def here(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nbship", "kfp", *args], cwd=tmp_path,
                              env={k: v for k, v in os.environ.items()
                                   if k != "KF_PIPELINES_ENDPOINT"},
                              capture_output=True, text=True, timeout=300)

    up = here("upload", release)
    assert up.returncode == 0 and "kept" in up.stdout, up.stderr
    assert "already there" in here("upload", release).stdout
    run = here("run", release, "-p", "epochs=1", "-p", "threshold=0.5")
    assert run.returncode == 0, run.stderr
    assert "nbship-serve" in run.stdout and "SUCCESS: accuracy=" in run.stdout
    prov_path = Path(run.stdout.split("provenance: ")[1].split()[0])
    prov = json.loads(prov_path.read_text())
    assert prov["trigger"]["release"].startswith(release.rsplit(":", 1)[0] + "@sha256:")
    assert prov["pipeline"]["yaml_sha256"] != "" and props(run.stdout)["run_state"] == "SUCCEEDED"

    first = here("schedule", release, "--cron", "*/2 * * * * *")
    assert first.returncode == 0 and "replacing" not in first.stdout, first.stderr
    second = here("schedule", release, "--cron", "*/2 * * * * *", "-p", "epochs=1",
                  "-p", "threshold=0.5")
    assert second.returncode == 0 and "replacing the previous one" in second.stdout
    root = tmp_path / ".nbship" / "scheduler"
    assert [s["name"] for s in scheduler.stored(root)["schedules"]] == ["kfp:marker-classifier"]
    address, _ = scheduler.up(tmp_path / "pyproject.toml", root, free_port())
    try:
        deadline = time.monotonic() + 120
        while not [r for r in scheduler.stored(root)["runs"] if r["status"] == "SUCCESS"]:
            assert time.monotonic() < deadline, scheduler.stored(root)
            time.sleep(0.5)
    finally:
        scheduler.down(root)
    done = [r for r in scheduler.stored(root)["runs"] if r["status"] == "SUCCESS"][0]
    assert done["trigger"]["kind"] == "cron" and done["trigger"]["release"].startswith(
        release.rsplit(":", 1)[0])
    status = here("status", "marker-classifier")
    assert "kfp:marker-classifier cron */2 * * * * *" in status.stdout
    assert "disabled the local schedule" in here("disable", "marker-classifier").stdout
    assert scheduler.stored(root)["schedules"] == []
