"""Alertmanager's webhook starts a retraining run: once per cooldown, with the reason kept."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbship.pipelines.trigger import Trigger, server
from tests.conftest import serving, write_notebook

pytestmark = pytest.mark.slow


def alert(name: str = "NbshipInputDrift", status: str = "firing") -> dict[str, Any]:
    return {"version": "4", "status": status, "receiver": "nbship-trigger", "alerts": [{
        "status": status, "labels": {"alertname": name, "model": "m", "severity": "warning"},
        "annotations": {"summary": "m: inputs drifted"}, "startsAt": "2026-11-30T03:00:00Z"}]}


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[str, Trigger]]:
    nb = write_notebook(tmp_path / "retrain.ipynb", [
        (["parameters"], "n = 3"), (["step:train"], "w = n * 2"),
        (["step:check"], "assert w == 2 * n")])
    trigger = Trigger(nb, tmp_path / ".nbship" / "runs", {"n": 5}, cooldown=600,
                      echo=lambda line: None)
    with serving(server(trigger, port=0)) as httpd:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", trigger
    trigger.wait(timeout=120)


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_drift_alert_starts_one_run_per_cooldown(listening: tuple[str, Trigger],
                                                   tmp_path: Path) -> None:
    base, trigger = listening
    status, reply = post(f"{base}/alerts", json.dumps(alert()).encode())
    assert status == 202 and reply["started"] is True
    for _ in range(3):  # Alertmanager repeats itself; so does a flapping alert
        status, reply = post(f"{base}/alerts", json.dumps(alert("NbshipPredictionDrift")).encode())
        assert status == 200 and reply["started"] is False
    trigger.wait(timeout=120)
    status, reply = post(f"{base}/alerts", json.dumps(alert()).encode())
    assert reply["started"] is False and "cooldown" in reply["reason"]
    runs = sorted((tmp_path / ".nbship" / "runs").rglob("provenance.json"))
    assert len(runs) == 1
    prov = json.loads(runs[0].read_text())
    assert prov["run"]["status"] == "SUCCESS" and prov["parameters"]["n"] == 5
    assert prov["trigger"]["kind"] == "alert"
    assert prov["trigger"]["alert"] == "NbshipInputDrift"
    assert prov["trigger"]["labels"]["model"] == "m"
    with urllib.request.urlopen(f"{base}/runs", timeout=10) as got:
        assert [r["status"] for r in json.loads(got.read())["runs"]] == ["SUCCESS"]


@pytest.mark.parametrize("body,code", [
    (json.dumps(alert(status="resolved")).encode(), 200),
    (json.dumps(alert("NbshipHighLatencyP99")).encode(), 200),
    (b"not json", 400),
    (b"[1, 2]", 400),
    (b"{" * 100_000, 400),
])
def test_what_does_not_retrain(body: bytes, code: int, listening: tuple[str, Trigger],
                               tmp_path: Path) -> None:
    base, _ = listening
    status, reply = post(f"{base}/alerts", body)
    assert status == code and (reply.get("started") is False or "error" in reply)
    assert not list((tmp_path / ".nbship" / "runs").rglob("provenance.json"))


def test_a_huge_body_is_refused(listening: tuple[str, Trigger]) -> None:
    base, _ = listening
    status, reply = post(f"{base}/alerts", b" " * ((2 << 20) + 12345))
    assert status == 413 and "error" in reply
