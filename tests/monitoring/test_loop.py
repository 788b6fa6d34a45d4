"""The loop closes, on 127.0.0.1 with the real parts: the showcase's model served by KServe,
scraped by Prometheus; held-out digits keep it quiet, rotated and noised ones fire the drift
alert; Alertmanager delivers it to nbship's trigger, which retrains; the new run says why."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from nbship.extract.graph import build_graph
from nbship.monitoring import stack
from nbship.monitoring.rules import Thresholds
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import run_compiled
from nbship.pipelines.trigger import Trigger, server
from nbship.release import oci
from tests.conftest import ROOT, SHOWCASE, serving, wait_for
from tests.release.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
    reason="not installed: prometheus, prometheus-alertmanager (make tools; .ci/run does)")]


def predict(base: str, images: np.ndarray) -> None:
    for start in range(0, len(images), 100):
        req = urllib.request.Request(
            f"{base}/v1/models/marker-classifier:predict", method="POST",
            data=json.dumps({"instances": images[start:start + 100].tolist()}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as reply:
            assert reply.status == 200


def monitor_cli(prometheus: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbship", "monitor", "--prometheus",
                           prometheus, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def firing(prometheus: str) -> set[str]:
    with urllib.request.urlopen(f"http://{prometheus}/api/v1/alerts", timeout=10) as reply:
        alerts = json.loads(reply.read())["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def test_drift_alert_retrains(tmp_path: Path, local_registry: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    from nbship.release import model

    monkeypatch.setenv(model.CACHE_ENV, str(tmp_path / "models"))
    nb = tmp_path / "marker_classifier.ipynb"
    shutil.copy(SHOWCASE, nb)
    runs = tmp_path / ".nbship" / "runs"
    compiled = compile_graph(build_graph(read_notebook(nb)), tmp_path / ".nbship" / "build")
    first = run_compiled(compiled, {"epochs": 1, "threshold": 0.5}, root=runs,
                         echo=lambda line: None)
    first_model = model.push(first.record_dir, local_registry, echo=lambda line: None)
    served_ref = f"{first_model.reference.registry}/{first_model.reference.repository}:latest"
    trigger = Trigger(nb, runs, {"epochs": 1, "threshold": 0.5}, cooldown=600,
                      registry=local_registry, echo=lambda line: None)
    monitor_root = tmp_path / ".nbship" / "monitor"
    with serving(server(trigger, port=0)) as hook:
        mon = stack.up(monitor_root, prometheus_port=free_port(), alertmanager_port=free_port(),
                       webhook=f"http://127.0.0.1:{hook.server_address[1]}/alerts",
                       thresholds=Thresholds(for_="5s"), scrape_interval="1s")
        port = free_port()
        model_server = subprocess.Popen(
            [sys.executable, "-m", "nbship", "serve", served_ref, "--port", str(port),
             "--monitor", str(monitor_root)], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for("Prometheus scraping the model server", lambda: [
                r for r in stack.query(mon.prometheus, 'up{job="nbship-serve"}')
                if r["value"][1] == "1"])
            info = wait_for("the served model's origin", lambda: stack.query(
                mon.prometheus, "nbship_model_info"))
            assert info[0]["metric"]["release"].endswith(first_model.digest)  # by digest
            digits = load_digits().images
            rng = np.random.default_rng(0)
            held = digits[rng.choice(len(digits), 1000, replace=False)]
            predict(base, held)
            time.sleep(8)  # longer than the rules' `for` and a few evaluations
            assert not firing(mon.prometheus) & {"NbshipInputDrift", "NbshipPredictionDrift"}
            assert not trigger.runs
            quiet = monitor_cli(mon.prometheus, "--check")
            assert quiet.returncode == 0 and "no alert firing" in quiet.stdout, quiet.stderr
            shifted = np.clip(np.rot90(held, 1, axes=(1, 2)) + rng.normal(0, 3, held.shape), 0, 16)
            predict(base, shifted)
            wait_for("the drift alert", lambda: firing(mon.prometheus) & {
                "NbshipInputDrift", "NbshipPredictionDrift"})
            loud = monitor_cli(mon.prometheus, "--check")
            assert loud.returncode == 1 and "FIRING NbshipInputDrift model=marker-classifier" \
                in loud.stdout, loud.stdout + loud.stderr
            page = tmp_path / "monitor.html"
            wrote = monitor_cli(mon.prometheus, "--html", str(page), "--minutes", "5")
            assert wrote.returncode == 0 and "5 plots" in wrote.stdout, wrote.stderr
            text = page.read_text()
            assert text.count("data:image/png;base64,") == 5 and "NbshipInputDrift" in text
            from rich.console import Console

            from nbship.monitoring.view import render

            console = Console(record=True, width=200)
            console.print(render(mon.prometheus))
            shown = console.export_text()
            assert "marker-classifier" in shown and "alerts firing: Nbship" in shown
            wait_for("Alertmanager delivering it and the retraining run", lambda: trigger.runs,
                     timeout=180)
            trigger.wait(timeout=300)
            record = trigger.runs[0]
            assert record["status"] == "SUCCESS", record
            prov = json.loads((Path(record["run"]) / "provenance.json").read_text())
            assert prov["trigger"]["alert"] in ("NbshipInputDrift", "NbshipPredictionDrift")
            assert prov["trigger"]["labels"]["model"] == "marker-classifier"
            assert prov["serve"] and Path(record["run"]) != first.record_dir  # the next model
            assert record["data"]["sha256"] == prov["data"]["sha256"]
            assert len(trigger.runs) == 1  # repeated alerts within the cooldown: one run
            # the retrained model is the next model release, saying why it was made
            latest = oci.exists(oci.Reference.parse(served_ref))
            assert latest and record["model"].endswith(latest) and latest != first_model.digest
            newest, _, _ = model.show(served_ref)
            assert newest["run"]["id"] == prov["run"]["id"] != first_model.record["run"]["id"]
            assert newest["run"]["trigger"]["alert"] == prov["trigger"]["alert"]
            assert newest["data"] == prov["data"]
        finally:
            model_server.send_signal(signal.SIGTERM)
            try:
                model_server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                model_server.kill()
            stack.down(monitor_root)
    assert not list((monitor_root / "targets").glob("*.json"))  # the server removed itself
