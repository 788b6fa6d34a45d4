"""The cluster's monitoring, as a release carries it: the same rules as a PrometheusRule, a
PodMonitor for the InferenceService's pods, the Alertmanager route to the retraining
trigger, a Grafana dashboard; validated offline with promtool's own PromQL parser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from nbship.monitoring import cluster
from nbship.monitoring.rules import JOB, rules

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="not installed: promtool (make tools; .ci/run does)")


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return cluster.manifests("marker-classifier")


def test_the_cluster_files_validate_and_carry_the_local_rules(files: dict[str, str]) -> None:
    assert cluster.validate(files) == []
    assert sorted(files) == ["alertmanagerconfig.yaml", "dashboard.json", "podmonitor.yaml",
                             "prometheusrule.yaml"]
    rule = yaml.safe_load(files["prometheusrule.yaml"])
    assert rule["spec"] == rules()  # exactly what `promtool test rules` tests locally
    assert cluster.manifests("marker-classifier") == files  # deterministic


def test_the_pod_monitor_finds_kserve_pods_with_the_job_the_rules_expect(
        files: dict[str, str]) -> None:
    spec = yaml.safe_load(files["podmonitor.yaml"])["spec"]
    assert spec["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "marker-classifier"}
    endpoint = spec["podMetricsEndpoints"][0]
    assert endpoint["portNumber"] == 8080 and endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": JOB} in \
        endpoint["relabelings"]


def test_drift_alerts_route_to_the_retraining_webhook(files: dict[str, str]) -> None:
    spec = yaml.safe_load(files["alertmanagerconfig.yaml"])["spec"]
    matcher = next(m for m in spec["route"]["matchers"] if m["name"] == "alertname")
    assert set(matcher["value"].split("|")) == {"NbshipInputDrift", "NbshipPredictionDrift"}
    hook = spec["receivers"][0]["webhookConfigs"][0]["url"]
    assert hook == cluster.webhook_url("marker-classifier") == \
        "http://marker-classifier-trigger:9095/alerts"


def test_the_dashboard_shows_golden_signals_and_drift(files: dict[str, str]) -> None:
    board = json.loads(files["dashboard.json"])
    titles = [p["title"] for p in board["panels"]]
    assert titles[:4] == ["Traffic (requests/s)", "Error ratio", "Latency",
                          "In-flight requests (saturation)"]
    assert {"Input drift (PSI per feature group)", "Prediction drift (PSI)"} <= set(titles)
    latency = board["panels"][2]["targets"]
    assert [t["legendFormat"] for t in latency] == ["p50", "p90", "p99"]
    drift = board["panels"][4]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert 0.25 in [s.get("value") for s in drift]  # the alert's line
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "model"]


def test_validation_fails_on_broken_promql_and_shapes(files: dict[str, str]) -> None:
    broken = dict(files)
    broken["prometheusrule.yaml"] = files["prometheusrule.yaml"].replace(
        "max by (namespace, model)", "max by (namespace, model", 1)
    board = json.loads(files["dashboard.json"])
    board["panels"][0]["targets"][0]["expr"] = "sum(rate(nbship_requests_total[5m]"
    broken["dashboard.json"] = json.dumps(board)
    mon = yaml.safe_load(files["podmonitor.yaml"])
    del mon["spec"]["podMetricsEndpoints"][0]["portNumber"]
    broken["podmonitor.yaml"] = yaml.safe_dump(mon)
    route = yaml.safe_load(files["alertmanagerconfig.yaml"])
    route["spec"]["route"]["receiver"] = "nobody"
    broken["alertmanagerconfig.yaml"] = yaml.safe_dump(route)
    problems = "\n".join(cluster.validate(broken))
    assert "NbshipInputDrift" in problems and "could not parse expression" in problems
    assert "dashboard.json" in problems
    assert "needs a port or portNumber" in problems
    assert "names no receiver" in problems


def test_a_release_carries_the_retraining_trigger(tmp_path: Path) -> None:
    # issue 20 (11): the webhook's Service exists; its pod listens beyond 127.0.0.1 only
    # with the Secret's token
    from nbship.release.publish import _monitoring_files

    out = dict((p.name, kind) for p, kind in _monitoring_files(
        "marker-classifier", tmp_path, "registry/steps@sha256:" + "0" * 64,
        "marker_classifier.ipynb", "registry"))
    assert out["trigger-deployment.yaml"] == "Deployment"
    assert out["trigger-service.yaml"] == "Service"
    files = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert cluster.validate(files) == []
    service = yaml.safe_load(files["trigger-service.yaml"])
    assert service["metadata"]["name"] == "marker-classifier-trigger"
    args = yaml.safe_load(files["trigger-deployment.yaml"])["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert args[:2] == ["trigger", "/etc/nbship/notebook/marker_classifier.ipynb"]
    assert "--registry" in args and "--secret-file" in args
    broken = dict(files)
    broken["trigger-service.yaml"] = files["trigger-service.yaml"].replace(
        "name: marker-classifier-trigger", "name: elsewhere", 1)
    broken["trigger-deployment.yaml"] = "".join(
        line for line in files["trigger-deployment.yaml"].splitlines(keepends=True)
        if line.strip() != "- --secret-file")
    problems = "\n".join(cluster.validate(broken))
    assert "no webhook names the trigger's Service elsewhere" in problems
    assert "--host without --secret-file" in problems
