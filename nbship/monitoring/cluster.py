"""The same monitoring on a cluster: Prometheus Operator resources and a Grafana dashboard.

What ``nbship monitor up`` runs on one machine, as a release carries it for Kubernetes:

* ``prometheusrule.yaml`` — the alert rules of ``rules.py`` (the very groups that
  ``promtool test rules`` checks) as a ``PrometheusRule``;
* ``podmonitor.yaml`` — a ``PodMonitor`` scraping the InferenceService's pods
  (KServe labels them ``serving.kserve.io/inferenceservice: NAME``) on port 8080,
  with the job label the rules expect (``nbship-serve``);
* ``alertmanagerconfig.yaml`` — an ``AlertmanagerConfig`` routing nbship's drift
  alerts to the retraining trigger's webhook, with the Bearer secret of the Secret
  ``<name>-trigger`` (key ``token``);
* ``trigger-deployment.yaml``, ``trigger-service.yaml`` (with a trigger image) —
  ``nbship trigger`` in a pod (``--host 0.0.0.0`` there only, ``--secret-file`` from the
  same Secret) behind the Service ``<name>-trigger`` the webhook names;
* ``dashboard.json`` — a Grafana dashboard built with grafanalib: traffic, error
  ratio, latency percentiles, in-flight requests, input and prediction drift.

``validate`` checks them offline: every PromQL expression (rules and panels) with
``promtool check rules`` — Prometheus's own parser —, and the resources' shape
(kinds, selectors, ports, routes) against what the Prometheus Operator requires.

The PodMonitor's ``portNumber`` needs prometheus-operator >= v0.79.0 (added by #7150,
commit 20cc1a0, pkg/apis/monitoring/v1/podmonitor_types.go; first tagged in v0.79.0):
an older operator's CRD prunes the unknown field, the endpoint then selects no port and
every declared container port of the pod is scraped.

Routing follows the operator's defaults (checked against its source, pkg/alertmanager/
amcfg.go): the AlertmanagerConfig's route becomes a sub-route of the Alertmanager's root
with ``continue: true``, receivers named ``<namespace>/<AlertmanagerConfig>/<receiver>``,
and (matcher strategy ``OnNamespace``, the default) the matcher
``namespace="<its namespace>"`` — so every alert keeps ``namespace`` (rules.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from nbship.monitoring.alerts import DRIFT_ALERTS
from nbship.monitoring.rules import DEFAULT, JOB, Thresholds, rules

OPERATOR_GROUP = "monitoring.coreos.com"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
PORT = 8080
TRIGGER_PORT = 9095
OPERATOR_MIN_VERSION = "v0.79.0"  # PodMonitor portNumber (see the module's doc)
SECRET_KEY = "token"
SECRET_DIR = "/var/run/secrets/nbship-trigger"
NOTEBOOK_DIR = "/etc/nbship/notebook"


def trigger_name(name: str) -> str:
    """The trigger's Deployment, Service and Secret (one trigger per model)."""
    return f"{name}-trigger"


def webhook_url(name: str) -> str:
    """Where the AlertmanagerConfig sends the model's drift alerts: its trigger's Service
    (a name in the AlertmanagerConfig's own namespace)."""
    return f"http://{trigger_name(name)}:{TRIGGER_PORT}/alerts"


def _metadata(name: str, suffix: str) -> dict[str, Any]:
    return {"name": f"{name}-{suffix}",
            "labels": {"app.kubernetes.io/name": name,
                       "app.kubernetes.io/managed-by": "nbship"}}


def prometheus_rule(name: str, thresholds: Thresholds = DEFAULT) -> dict[str, Any]:
    return {"apiVersion": f"{OPERATOR_GROUP}/v1", "kind": "PrometheusRule",
            "metadata": _metadata(name, "rules"), "spec": rules(thresholds)}


def pod_monitor(name: str) -> dict[str, Any]:
    meta = _metadata(name, "serving")
    meta["annotations"] = {"nbship.dev/requires": f"prometheus-operator >= {OPERATOR_MIN_VERSION}"}
    return {"apiVersion": f"{OPERATOR_GROUP}/v1", "kind": "PodMonitor",
            "metadata": meta,
            "spec": {
                "selector": {"matchLabels": {ISVC_LABEL: name}},
                "podMetricsEndpoints": [{
                    "portNumber": PORT, "path": "/metrics", "interval": "15s",
                    "honorLabels": True,  # the server's own `model` label stays `model`
                    "relabelings": [
                        {"action": "replace", "targetLabel": "job", "replacement": JOB},
                        {"action": "replace", "targetLabel": "model", "replacement": name},
                    ],
                }],
            }}


def alertmanager_config(name: str, webhook: str | None = None) -> dict[str, Any]:
    receiver = "nbship-retrain"
    return {"apiVersion": f"{OPERATOR_GROUP}/v1alpha1", "kind": "AlertmanagerConfig",
            "metadata": _metadata(name, "retrain"),
            "spec": {
                "route": {"receiver": receiver, "groupBy": ["alertname", "model"],
                          "groupWait": "30s", "repeatInterval": "1h",
                          "matchers": [
                              {"name": "alertname", "matchType": "=~",
                               "value": "|".join(sorted(DRIFT_ALERTS))},
                              {"name": "model", "matchType": "=", "value": name}]},
                "receivers": [{"name": receiver, "webhookConfigs": [{
                    "url": webhook or webhook_url(name), "sendResolved": False,
                    # the operator reads the Secret in the AlertmanagerConfig's namespace
                    # into http_config.authorization (amcfg.go, convertHTTPConfig)
                    "httpConfig": {"authorization": {"type": "Bearer", "credentials": {
                        "name": trigger_name(name), "key": SECRET_KEY}}}}]}],
            }}


def _trigger_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name,
            "app.kubernetes.io/component": "retraining-trigger"}


def trigger_deployment(name: str, image: str, notebook: str,
                       registry: str | None = None) -> dict[str, Any]:
    """``nbship trigger`` in a pod: the notebook from the ConfigMap ``<name>-notebook``,
    the secret from the Secret ``<name>-trigger``; on every address of the pod (the
    Service reaches it there), which it does only with the secret."""
    args = ["trigger", f"{NOTEBOOK_DIR}/{notebook}", "--host", "0.0.0.0",
            "--port", str(TRIGGER_PORT), "--secret-file", f"{SECRET_DIR}/{SECRET_KEY}",
            "--root", "/var/lib/nbship/runs"]
    args += ["--registry", registry] if registry else ["--no-push"]
    meta = _metadata(name, "trigger")
    meta["labels"] = {**meta["labels"], **_trigger_labels(name)}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "replicas": 1,  # one run at a time, one cooldown: a single trigger
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": _trigger_labels(name)},
        "template": {"metadata": {"labels": _trigger_labels(name)}, "spec": {
            "containers": [{
                "name": "trigger", "image": image,
                "command": ["python", "-m", "nbship"], "args": args,
                "ports": [{"name": "webhook", "containerPort": TRIGGER_PORT}],
                "readinessProbe": {"tcpSocket": {"port": TRIGGER_PORT}},
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"memory": "4Gi"}},
                "securityContext": {"allowPrivilegeEscalation": False},
                "volumeMounts": [
                    {"name": "secret", "mountPath": SECRET_DIR, "readOnly": True},
                    {"name": "notebook", "mountPath": NOTEBOOK_DIR, "readOnly": True},
                    {"name": "runs", "mountPath": "/var/lib/nbship"}],
            }],
            "volumes": [
                {"name": "secret", "secret": {"secretName": trigger_name(name)}},
                {"name": "notebook", "configMap": {"name": f"{name}-notebook"}},
                {"name": "runs", "emptyDir": {}}],
        }},
    }}


def trigger_service(name: str) -> dict[str, Any]:
    meta = _metadata(name, "trigger")
    meta["labels"] = {**meta["labels"], **_trigger_labels(name)}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
        "selector": _trigger_labels(name),
        "ports": [{"name": "webhook", "port": TRIGGER_PORT, "targetPort": TRIGGER_PORT}]}}


# (title, unit, [(PromQL, legend)]); $model is the dashboard's model variable
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Traffic (requests/s)", "reqps", [
        ('sum by (protocol) (rate(nbship_requests_total{model="$model"}[5m]))', "{{protocol}}")]),
    ("Error ratio", "percentunit", [
        ('sum(rate(nbship_requests_total{model="$model",code=~"5.."}[5m])) / '
         'sum(rate(nbship_requests_total{model="$model"}[5m]))', "5xx"),
        ('sum(rate(nbship_requests_total{model="$model",code=~"4.."}[5m])) / '
         'sum(rate(nbship_requests_total{model="$model"}[5m]))', "4xx")]),
    ("Latency", "s", [
        (f"histogram_quantile({q}, sum by (le) "
         f'(rate(nbship_request_seconds_bucket{{model="$model"}}[5m])))', f"p{int(q * 100)}")
        for q in (0.5, 0.9, 0.99)]),
    ("In-flight requests (saturation)", "short", [
        ('sum(nbship_requests_in_flight{model="$model"})', "in flight")]),
    ("Input drift (PSI per feature group)", "short", [
        ('nbship_input_drift_psi{model="$model"}', "{{feature_group}}")]),
    ("Prediction drift (PSI)", "short", [
        ('nbship_prediction_drift_psi{model="$model"}', "predictions")]),
    ("Predictions by class", "reqps", [
        ('sum by (class) (rate(nbship_predictions_total{model="$model"}[5m]))', "{{class}}")]),
]


def dashboard(name: str, thresholds: Thresholds = DEFAULT) -> dict[str, Any]:
    """The Grafana dashboard (JSON model), built with grafanalib."""
    import grafanalib.core as g
    from grafanalib._gen import DashboardEncoder

    panels = []
    for n, (title, unit, queries) in enumerate(PANELS):
        psi = "drift" in title.lower()
        panels.append(g.TimeSeries(
            title=title, unit=unit, dataSource="${datasource}",
            gridPos=g.GridPos(h=8, w=12, x=12 * (n % 2), y=8 * (n // 2)),
            targets=[g.Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i))
                     for i, (expr, legend) in enumerate(queries)],
            thresholds=[g.Threshold("green", 0, 0.0),
                        g.Threshold("red", 1, thresholds.drift_psi)] if psi else [],
            thresholdsStyleMode="line" if psi else "off"))
    board = g.Dashboard(
        title=f"nbship: {name}", uid=f"nbship-{name}"[:40], tags=["nbship", "kserve"],
        description=f"Golden signals and drift of the model server {name!r} (nbship)",
        timezone="utc", refresh="30s", panels=panels,
        templating=g.Templating(list=[
            g.Template(name="datasource", type="datasource", query="prometheus", label="Data"),
            g.Template(name="model", label="Model", dataSource="${datasource}",
                       query="label_values(nbship_requests_total, model)", default=name)]),
    ).auto_panel_ids()
    return dict(json.loads(json.dumps(board.to_json_data(), cls=DashboardEncoder)))


def manifests(name: str, thresholds: Thresholds = DEFAULT, webhook: str | None = None,
              trigger_image: str | None = None, notebook: str | None = None,
              registry: str | None = None) -> dict[str, str]:
    """File name -> text, as a release carries them; with ``trigger_image`` (an image with
    nbship, its own dependencies and the notebook's packages; a release names its server
    image, which has kserve for the serving check but, as built today, not nbformat nor
    kfp-kubernetes, which ``nbship trigger`` imports) and ``notebook`` (its file name), the
    trigger's Deployment and Service too."""
    def dump(doc: dict[str, Any]) -> str:
        return str(yaml.safe_dump(doc, sort_keys=False))

    files = {
        "prometheusrule.yaml": dump(prometheus_rule(name, thresholds)),
        "podmonitor.yaml": dump(pod_monitor(name)),
        "alertmanagerconfig.yaml": dump(alertmanager_config(name, webhook)),
        "dashboard.json": json.dumps(dashboard(name, thresholds), indent=2, sort_keys=True)
        + "\n",
    }
    if trigger_image is not None:
        files["trigger-deployment.yaml"] = dump(trigger_deployment(
            name, trigger_image, notebook or f"{name}.ipynb", registry))
        files["trigger-service.yaml"] = dump(trigger_service(name))
    return files


def _promql_problems(groups: list[dict[str, Any]], promtool: str) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="nbship-promtool-") as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                              text=True, timeout=60)
    return [] if done.returncode == 0 else [
        line.strip() for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "Checking" not in line]


def _trigger_problems(docs: dict[str, Any], route: dict[str, Any]) -> list[str]:
    """The trigger's Service is the webhook's host and port; its pod listens beyond the
    loopback only with a secret."""
    deployment, service = docs.get("trigger-deployment.yaml"), docs.get("trigger-service.yaml")
    if deployment is None and service is None:
        return []
    if not isinstance(deployment, dict) or not isinstance(service, dict):
        return ["trigger-deployment.yaml and trigger-service.yaml go together"]
    problems = []
    hooks = [h.get("url", "") for r in route.get("receivers", []) if isinstance(r, dict)
             for h in r.get("webhookConfigs", []) if isinstance(h, dict)]
    ports = [p.get("port") for p in service.get("spec", {}).get("ports", [])]
    svc = service.get("metadata", {}).get("name")
    if not any(urllib.parse.urlsplit(h).hostname == svc and urllib.parse.urlsplit(h).port
               in ports for h in hooks):
        problems.append(f"alertmanagerconfig.yaml: no webhook names the trigger's Service "
                        f"{svc} (ports {ports})")
    for c in deployment.get("spec", {}).get("template", {}).get("spec", {}).get(
            "containers", []):
        args = c.get("args", [])
        if "--host" in args and "--secret-file" not in args:
            problems.append("trigger-deployment.yaml: --host without --secret-file")
    return problems


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def validate(files: dict[str, str], promtool: str = "promtool",
             operator_version: str | None = None) -> list[str]:
    """Problems of the cluster monitoring files (empty: they hold); see the module's doc.
    With ``operator_version`` (the cluster's prometheus-operator, e.g. ``v0.78.2``), the
    fields it does not know are problems too."""
    problems: list[str] = []
    docs = {f: yaml.safe_load(t) for f, t in files.items() if f.endswith(".yaml")}
    expected = {"prometheusrule.yaml": ("v1", "PrometheusRule"),
                "podmonitor.yaml": ("v1", "PodMonitor"),
                "alertmanagerconfig.yaml": ("v1alpha1", "AlertmanagerConfig")}
    for file, (version, kind) in expected.items():
        doc = docs.get(file)
        if not isinstance(doc, dict):
            problems.append(f"{file}: missing or not a YAML object")
            continue
        if doc.get("apiVersion") != f"{OPERATOR_GROUP}/{version}" or doc.get("kind") != kind:
            problems.append(f"{file}: apiVersion/kind must be {OPERATOR_GROUP}/{version} {kind}")
        if not str(doc.get("metadata", {}).get("name", "")):
            problems.append(f"{file}: metadata.name is required")
    rule = docs.get("prometheusrule.yaml") or {}
    groups = rule.get("spec", {}).get("groups") if isinstance(rule, dict) else None
    if not isinstance(groups, list) or not groups:
        problems.append("prometheusrule.yaml: spec.groups must be a non-empty list")
    else:
        problems += [f"prometheusrule.yaml: spec.groups: {p}"
                     for p in _promql_problems(groups, promtool)]
    mon = (docs.get("podmonitor.yaml") or {}).get("spec", {})
    if not mon.get("selector", {}).get("matchLabels"):
        problems.append("podmonitor.yaml: spec.selector.matchLabels is required")
    for i, ep in enumerate(mon.get("podMetricsEndpoints") or [None]):
        if not isinstance(ep, dict) or not (ep.get("port") or isinstance(ep.get("portNumber"),
                                                                         int)):
            problems.append(f"podmonitor.yaml: spec.podMetricsEndpoints[{i}] needs a port "
                            "or portNumber")
        elif "portNumber" in ep and operator_version is not None and \
                _version(operator_version) < _version(OPERATOR_MIN_VERSION):
            problems.append(f"podmonitor.yaml: spec.podMetricsEndpoints[{i}].portNumber needs "
                            f"prometheus-operator >= {OPERATOR_MIN_VERSION} (the cluster's "
                            f"{operator_version} drops the field: every declared port is "
                            "scraped)")
    route = (docs.get("alertmanagerconfig.yaml") or {}).get("spec", {})
    receivers = {r.get("name") for r in route.get("receivers", []) if isinstance(r, dict)}
    if route.get("route", {}).get("receiver") not in receivers:
        problems.append("alertmanagerconfig.yaml: spec.route.receiver names no receiver")
    for m in route.get("route", {}).get("matchers", []):
        if m.get("matchType") not in ("=", "!=", "=~", "!~") or not m.get("name"):
            problems.append(f"alertmanagerconfig.yaml: matcher {m} is not name/matchType/value")
        if m.get("name") == "namespace":
            problems.append("alertmanagerconfig.yaml: a namespace matcher is the operator's "
                            "(OnNamespace adds its own namespace)")
    problems += _trigger_problems(docs, route)
    board = json.loads(files.get("dashboard.json", "null"))
    if not isinstance(board, dict) or not board.get("panels"):
        problems.append("dashboard.json: no panels")
    else:
        exprs = [t["expr"].replace("$model", "m") for p in board["panels"]
                 for t in p.get("targets", [])]
        record = [{"name": "dashboard", "rules": [
            {"record": f"nbship:panel_{i}", "expr": e} for i, e in enumerate(exprs)]}]
        problems += [f"dashboard.json: {p}" for p in _promql_problems(record, promtool)]
        ids = [p.get("id") for p in board["panels"]]
        if len(set(ids)) != len(ids):
            problems.append("dashboard.json: panel ids are not unique")
    return problems
