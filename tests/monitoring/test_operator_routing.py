"""Issue 20 (11): the retraining loop as the Prometheus Operator would run it on a cluster.

A real Prometheus and Alertmanager (Debian's 2.42 and 0.25) get the configuration the
operator would generate from the rendered PrometheusRule, PodMonitor and AlertmanagerConfig
in the namespace ``ml`` (tests/monitoring/operator_standin.py, written from the operator's
source: the PodMonitor's namespace label, the OnNamespace matcher on the route, the
receiver's Bearer secret). A model server whose inputs drifted (nbship's own drift
collector on a drifted window) is scraped; its alert must reach the trigger rendered as a
Deployment, started with the Deployment's own arguments (the address made 127.0.0.1 here,
the paths made local), authenticated with the Secret's token.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from nbship.monitoring import cluster
from nbship.monitoring.drift import Profile, Window
from nbship.monitoring.rules import Thresholds
from tests.conftest import ROOT, wait_for, write_notebook
from tests.monitoring import operator_standin as operator
from tests.release.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
    reason="not installed: prometheus, prometheus-alertmanager (make tools; .ci/run does)")]

NAME, NAMESPACE = "marker-classifier", "ml"
RECEIVER = f"{NAMESPACE}/{NAME}-retrain/nbship-retrain"  # makeNamespacedString


def get(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    with urllib.request.urlopen(req, timeout=10) as reply:
        return json.loads(reply.read())


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def drifted_server(port: int) -> Any:
    """nbship's drift collector on a window of shifted inputs and predictions, on /metrics."""
    from prometheus_client import CollectorRegistry, start_http_server

    from nbship.monitoring.metrics import DriftCollector

    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, size=(2000, 8, 8)).astype(np.float64)
    window = Window(Profile.build(images, rng.integers(0, 10, size=2000)))
    assert window.observe(np.clip(images[:800] + 6, 0, 16), np.full(800, 3))
    registry = CollectorRegistry()
    registry.register(DriftCollector(NAME, window))
    httpd, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return httpd


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("operator")
    files = cluster.manifests(NAME, Thresholds(for_="1s"), trigger_image="registry/steps@"
                              "sha256:" + "0" * 64, notebook="retrain.ipynb")
    docs = {f: yaml.safe_load(t) for f, t in files.items() if f.endswith(".yaml")}
    token = secrets.token_hex(16)
    secret_ref = docs["alertmanagerconfig.yaml"]["spec"]["receivers"][0]["webhookConfigs"][0][
        "httpConfig"]["authorization"]["credentials"]
    # the trigger, as its Deployment runs it: the Secret and the ConfigMap as files
    container = docs["trigger-deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    volumes = {v["name"]: v for v in
               docs["trigger-deployment.yaml"]["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    local: dict[str, Path] = {}
    for path, volume in mounts.items():
        local[path] = tmp / path.strip("/").replace("/", "_")
        local[path].mkdir()
        if "secret" in volume:
            assert volume["secret"]["secretName"] == secret_ref["name"]
            (local[path] / secret_ref["key"]).write_text(token)
        if "configMap" in volume:
            write_notebook(local[path] / "retrain.ipynb", [
                (["parameters"], "n = 3"), (["step:train"], "w = n * 2")])
    trigger_port = free_port()
    args = []
    for a in container["args"]:
        for path, there in local.items():
            a = a.replace(path, str(there))
        args.append({"0.0.0.0": "127.0.0.1", str(cluster.TRIGGER_PORT): str(trigger_port)}
                    .get(a, a))
    trigger = subprocess.Popen([sys.executable, "-m", "nbship", *args], cwd=tmp,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Kubernetes' part: the webhook's host is the Service, the Service selects the pod
    hook = urllib.parse.urlsplit(
        docs["alertmanagerconfig.yaml"]["spec"]["receivers"][0]["webhookConfigs"][0]["url"])
    service = docs["trigger-service.yaml"]
    assert hook.hostname == service["metadata"]["name"]
    assert hook.port == service["spec"]["ports"][0]["port"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["containerPort"]
    assert service["spec"]["selector"].items() <= \
        docs["trigger-deployment.yaml"]["spec"]["template"]["metadata"]["labels"].items()
    am_config = operator.alertmanager_yaml(docs["alertmanagerconfig.yaml"], NAMESPACE,
                                           {(secret_ref["name"], secret_ref["key"]): token})
    for rec in am_config["receivers"]:
        for h in rec.get("webhook_configs", []):
            h["url"] = h["url"].replace(f"{hook.hostname}:{hook.port}",
                                        f"127.0.0.1:{trigger_port}")
    server_port, prom_port, am_port = free_port(), free_port(), free_port()
    scrape = operator.scrape_config(
        docs["podmonitor.yaml"], NAMESPACE, f"127.0.0.1:{server_port}",
        {cluster.ISVC_LABEL: NAME, "component": "predictor"}, cluster.PORT)
    scrape["scrape_interval"] = "2s"  # the PodMonitor's 15 s, shortened for the test
    (tmp / "rules.yaml").write_text(yaml.safe_dump(
        operator.rule_file(docs["prometheusrule.yaml"])))
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yaml")],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [scrape]}))
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am_config, sort_keys=False))
    httpd = drifted_server(server_port)
    procs = [trigger]
    try:
        procs.append(subprocess.Popen(
            ["prometheus-alertmanager", f"--config.file={tmp / 'alertmanager.yml'}",
             f"--storage.path={tmp / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="], stdout=subprocess.DEVNULL,
            stderr=open(tmp / "am.log", "w")))  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'prom'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.DEVNULL,
            stderr=open(tmp / "prom.log", "w")))  # noqa: SIM115
        wait_for("Alertmanager", lambda: answers(f"http://127.0.0.1:{am_port}/-/ready"), 60)
        wait_for("Prometheus", lambda: answers(f"http://127.0.0.1:{prom_port}/-/ready"), 60)
        yield {"files": files, "docs": docs, "token": token, "tmp": tmp,
               "trigger": f"http://127.0.0.1:{trigger_port}", "trigger_proc": trigger,
               "prometheus": f"127.0.0.1:{prom_port}",
               "alertmanager": f"http://127.0.0.1:{am_port}", "am_config": am_config}
    finally:
        httpd.shutdown()
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_drifted_servers_alert_reaches_the_trigger_through_the_operators_route(
        loop: dict[str, Any]) -> None:
    route = loop["am_config"]["route"]["routes"][0]
    assert f'namespace="{NAMESPACE}"' in route["matchers"] and route["continue"] is True
    assert loop["am_config"]["receivers"][1]["webhook_configs"][0]["http_config"][
        "authorization"] == {"type": "Bearer", "credentials": loop["token"]}
    # scraped as the PodMonitor's pod, in its namespace
    prom = loop["prometheus"]
    series = wait_for("the drift series", lambda: get(
        f"http://{prom}/api/v1/query?query=nbship_input_drift_psi")["data"]["result"])
    assert {s["metric"]["namespace"] for s in series} == {NAMESPACE}
    assert {s["metric"]["job"] for s in series} == {"nbship-serve"}
    firing = wait_for("the drift alert at Alertmanager", lambda: [
        a for a in get(f"{loop['alertmanager']}/api/v2/alerts")
        if a["labels"]["alertname"] == "NbshipInputDrift"], 90)
    assert [r["name"] for r in firing[0]["receivers"]] == [RECEIVER], firing[0]["labels"]
    assert firing[0]["labels"].get("namespace") == NAMESPACE
    runs = wait_for("the trigger's retraining run", lambda: get(
        f"{loop['trigger']}/runs", loop["token"])["runs"], 120)
    assert runs[0]["trigger"]["labels"]["namespace"] == NAMESPACE
    assert runs[0]["trigger"]["labels"]["model"] == NAME
    assert runs[0]["trigger"]["alert"] in ("NbshipInputDrift", "NbshipPredictionDrift")


def test_the_trigger_takes_nothing_without_the_secret(loop: dict[str, Any]) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        req = urllib.request.Request(f"{loop['trigger']}/alerts", method="POST",
                                     data=b'{"alerts": []}', headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(f"{loop['trigger']}/runs")
    assert refused.value.code == 401
    args = loop["docs"]["trigger-deployment.yaml"]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and "--secret-file" in args
    nb = next(loop["tmp"].glob("etc_nbship_notebook/*.ipynb"))
    # everywhere else the trigger listens on 127.0.0.1, and elsewhere only with a secret
    from nbship.cli import _parser

    assert _parser().parse_args(["trigger", str(nb)]).host == "127.0.0.1"
    done = subprocess.run([sys.executable, "-m", "nbship", "trigger", str(nb), "--host",
                           "0.0.0.0", "--no-push"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "needs --secret-file" in done.stderr, done.stderr


def test_the_dashboards_legends_name_labels_the_series_have(loop: dict[str, Any]) -> None:
    board = json.loads(loop["files"]["dashboard.json"])
    prom = loop["prometheus"]
    checked = 0
    for panel in board["panels"]:
        for target in panel["targets"]:
            wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))
            if not wanted:
                continue
            expr = target["expr"].replace("$model", NAME)
            result = get(f"http://{prom}/api/v1/query?"
                         + urllib.parse.urlencode({"query": expr}))["data"]["result"]
            if not result:
                continue  # no traffic here; the drift panel has series
            for s in result:
                assert wanted <= set(s["metric"]), (panel["title"], wanted, s["metric"])
            checked += 1
    assert checked >= 1


def test_the_pod_monitor_states_the_operator_version_its_port_number_needs() -> None:
    files = cluster.manifests(NAME)
    monitor = yaml.safe_load(files["podmonitor.yaml"])
    assert "portNumber" in monitor["spec"]["podMetricsEndpoints"][0]
    assert monitor["metadata"]["annotations"]["nbship.dev/requires"] == \
        "prometheus-operator >= v0.79.0"
    assert cluster.validate(files, operator_version="v0.79.0") == []
    old = cluster.validate(files, operator_version="v0.78.2")
    assert any("portNumber needs prometheus-operator >= v0.79.0" in p for p in old), old
