"""The local scheduler with real time kept short: a cron every 3 seconds, a data folder of
marker batches, an authenticated webhook, and a SIGKILL in the middle."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from nbship.pipelines import scheduler
from nbship.pipelines.training import data_digest
from tests.conftest import ROOT, SHOWCASE, wait_for
from tests.release.conftest import free_port

pytestmark = pytest.mark.slow


def batches() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_marker_batches", ROOT / "notebooks" / "make_marker_batches.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs(root: Path, status: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    doc = scheduler.status(root) or scheduler.stored(root)
    return [r for r in doc["runs"] if (status is None or r["status"] == status)
            and (kind is None or r["trigger"]["kind"] == kind)]


def post(url: str, token: str | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_cron_new_data_webhook_and_a_sigkill(tmp_path: Path, local_registry: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notebooks").mkdir()
    shutil.copy(SHOWCASE, tmp_path / "notebooks" / "marker_classifier.ipynb")
    source = tmp_path / "data" / "markers"
    make = batches()
    make.write_batches(source, first=0, count=2)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.nbship.training."notebooks/marker_classifier.ipynb"]\n'
                         'cron = "*/3 * * * * *"\ndata = "data/markers"\n'
                         'data_parameter = "data_dir"\n'
                         "parameters = { epochs = 1, threshold = 0.5 }\nwebhook = true\n"
                         f'registry = "{local_registry}"\n')
    monkeypatch.setenv(scheduler.SECRET_ENV, "s3cret")
    root = tmp_path / ".nbship" / "scheduler"
    port = free_port()
    address, started = scheduler.up(pyproject, root, port)
    try:
        assert started and address == f"127.0.0.1:{port}"
        assert scheduler.up(pyproject, root, port) == (address, False)  # one scheduler
        # the data was never trained on: one run, on a snapshot of it
        first = wait_for("the first run", lambda: runs(root, "SUCCESS"))
        assert first[0]["trigger"]["kind"] == "data"
        wait_for("two cron fires skipped", lambda: len(runs(root, "SKIPPED", "cron")) >= 2,
                 timeout=30)
        skipped = runs(root, "SKIPPED", "cron")[0]
        assert skipped["message"].startswith("data unchanged since the last run")
        assert len(runs(root, "SUCCESS")) == 1

        make.write_batches(source, first=2, count=1)  # a new batch lands
        second = wait_for("the run for the new batch",
                          lambda: runs(root, "SUCCESS")[1:], timeout=120)[0]
        before = len(runs(root, "SKIPPED", "cron"))
        wait_for("cron fires after it", lambda: len(runs(root, "SKIPPED", "cron")) >= before + 2,
                 timeout=30)
        assert len(runs(root, "SUCCESS")) == 2  # exactly one run for the new data
        prov = json.loads((Path(second["run"]) / "provenance.json").read_text())
        assert prov["trigger"]["kind"] in ("data", "cron")
        assert prov["trigger"]["data"]["sha256"] == data_digest(source)
        assert prov["parameters"]["data_dir"] == prov["trigger"]["data"]["snapshot"]
        assert Path(prov["parameters"]["data_dir"]).name == data_digest(source)
        # each passing run's model became a model release; latest is the newest
        from nbship.release import model, oci

        assert "model release" in second["message"], second
        repo = model.model_repository(local_registry, "marker-classifier")
        assert f"run-{prov['run']['id']}" in oci.tags(repo) and len(oci.tags(repo)) == 3
        record, _, _ = model.show(str(repo.with_tag("latest")))
        assert record["run"]["id"] == prov["run"]["id"]
        assert record["run"]["trigger"]["data"]["sha256"] == data_digest(source)

        # SIGKILL, then up again: the schedule is there once, nothing runs twice
        pid = json.loads((root / "scheduler.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for("the scheduler gone", lambda: scheduler.status(root) is None, timeout=10)
        kept = scheduler.stored(root)["schedules"]
        assert [s["name"] for s in kept] == ["marker-classifier"]
        address, started = scheduler.up(pyproject, root, port)
        assert started
        status = scheduler.status(root)
        assert status is not None and len(status["schedules"]) == 1
        assert status["schedules"][0]["last_data"] == data_digest(source)
        after = len(runs(root, "SKIPPED", "cron"))
        wait_for("cron fires after the restart",
                 lambda: len(runs(root, "SKIPPED", "cron")) >= after + 2, timeout=30)
        assert len(runs(root, "SUCCESS")) == 2

        # the webhook: the secret or nothing
        assert post(f"http://{address}/trigger/marker-classifier", None)[0] == 401
        assert post(f"http://{address}/trigger/marker-classifier", "wrong")[0] == 401
        assert post(f"http://{address}/trigger/unknown", "s3cret")[0] == 404
        code, reply = post(f"http://{address}/trigger/marker-classifier", "s3cret")
        assert code == 202 and reply["pipeline"] == "marker-classifier"
        hook = wait_for("the webhook's run", lambda: runs(root, kind="webhook"), timeout=30)
        assert hook[0]["status"] == "SKIPPED" and "data unchanged" in hook[0]["message"]
        assert len(runs(root, "SUCCESS")) == 2
        fired = [r["started"] for r in runs(root, kind="cron")]
        assert len(fired) == len(set(fired))  # no fire time twice
    finally:
        assert scheduler.down(root) is True
    assert scheduler.status(root) is None and not (root / "scheduler.json").exists()


def test_drift_alerts_reach_the_scheduler_with_the_secret(tmp_path: Path) -> None:
    from nbship.pipelines.training import Training
    from tests.conftest import serving

    store = scheduler.Store(tmp_path / "schedules.sqlite")
    store.put(Training("marker-classifier", tmp_path / "nb.ipynb", webhook=True), time.time())
    store.put(Training("other", tmp_path / "other.ipynb", cron="0 0 3 * * *"), time.time())
    sched = scheduler.Scheduler(store, tmp_path, secret="s3cret", echo=lambda line: None)
    port = free_port()
    alert: dict[str, Any] = {"status": "firing", "startsAt": "2026-11-30T05:00:00Z",
             "labels": {"alertname": "NbshipInputDrift", "model": "marker-classifier"}}
    payload = {"version": "4", "status": "firing", "alerts": [
        alert, {**alert, "labels": {**alert["labels"], "model": "other"}},  # no webhook
        {**alert, "labels": {"alertname": "NbshipHighLatencyP99", "model": "x"}}]}
    with serving(scheduler.http_server(sched, port)):
        url = f"http://127.0.0.1:{port}/alerts"

        def send(body: Any, token: str | None) -> tuple[int, dict[str, Any]]:
            req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {token}"}
                                         if token else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        assert send(payload, None)[0] == 401 and send(payload, "nope")[0] == 401
        assert send({"no": "alerts"}, "s3cret")[0] == 400
        assert send(payload, "s3cret") == (202, {"queued": ["marker-classifier"]})
        assert send(payload, "s3cret") == (202, {"queued": []})  # one waits already
    (training, why), = sched.queue
    assert training.name == "marker-classifier" and why["kind"] == "alert"
    assert why["alert"] == "NbshipInputDrift" and why["labels"]["model"] == "marker-classifier"
