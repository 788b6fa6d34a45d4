"""What the Prometheus Operator generates from nbship's resources, for a real Prometheus and
Alertmanager on this machine: written from prometheus-operator's source (commit 6adcebc,
github.com/prometheus-operator/prometheus-operator), each part naming the code it follows.
Only what nbship's resources use is converted; anything else is an AssertionError, so a
resource this stand-in does not understand cannot pass unnoticed.

Not reproduced: Kubernetes service discovery itself (a static target carries the
``__meta_kubernetes_*`` labels the pod's discovery would give), the Prometheus CR's
``enforcedNamespaceLabel`` (off by default; when set the operator adds ``namespace`` to
every rule's labels and matchers, pkg/namespacelabeler/labeler.go EnforceNamespaceLabel,
so the alert has it regardless), and the ``filterRunning`` pod-phase drop.
"""

from __future__ import annotations

import re
from typing import Any


def sanitize(name: str) -> str:
    """pkg/prometheus/promcfg.go sanitizeLabelName: invalid characters become ``_``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def rule_file(rule: dict[str, Any]) -> dict[str, Any]:
    """A PrometheusRule's rule file (pkg/prometheus/server/rules.go selects it;
    pkg/operator/rules.go, PrometheusRuleSelector.Select and generateRulesConfiguration,
    marshals its spec as the file's content; without enforcedNamespaceLabel the groups are
    unchanged)."""
    assert rule["kind"] == "PrometheusRule"
    return {"groups": rule["spec"]["groups"]}


def _relabel(r: dict[str, Any]) -> dict[str, Any]:
    keys = {"action": "action", "sourceLabels": "source_labels", "targetLabel": "target_label",
            "replacement": "replacement", "regex": "regex", "separator": "separator"}
    unknown = set(r) - set(keys)
    assert not unknown, f"the stand-in does not convert relabeling fields {unknown}"
    return {keys[k]: v for k, v in r.items()}


def scrape_config(monitor: dict[str, Any], namespace: str, target: str,
                  pod_labels: dict[str, str], container_port: int,
                  pod: str = "marker-classifier-predictor-0") -> dict[str, Any]:
    """The scrape config of a PodMonitor's first endpoint (pkg/prometheus/promcfg.go,
    generatePodMonitorConfig): keep the selector's pods, keep the endpoint's port, label
    namespace/container/pod, job ``<namespace>/<name>``, then the PodMonitor's own
    relabelings. ``target`` is the pod's address with the meta labels discovery gives."""
    assert monitor["kind"] == "PodMonitor"
    spec, name = monitor["spec"], monitor["metadata"]["name"]
    ep = spec["podMetricsEndpoints"][0]
    relabel: list[dict[str, Any]] = []
    for k in sorted(spec["selector"]["matchLabels"]):
        relabel.append({"action": "keep",
                        "source_labels": [f"__meta_kubernetes_pod_label_{sanitize(k)}",
                                          f"__meta_kubernetes_pod_labelpresent_{sanitize(k)}"],
                        "regex": f"({spec['selector']['matchLabels'][k]});true"})
    if ep.get("port"):
        relabel.append({"action": "keep",
                        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                        "regex": ep["port"]})
    else:
        relabel.append({"action": "keep",
                        "source_labels": ["__meta_kubernetes_pod_container_port_number"],
                        "regex": str(ep["portNumber"])})
    relabel += [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{namespace}/{name}"},
    ]
    relabel += [_relabel(r) for r in ep.get("relabelings", [])]
    meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_container_name": "kserve-container",
            "__meta_kubernetes_pod_container_port_number": str(container_port)}
    for k, v in pod_labels.items():
        meta[f"__meta_kubernetes_pod_label_{sanitize(k)}"] = v
        meta[f"__meta_kubernetes_pod_labelpresent_{sanitize(k)}"] = "true"
    return {"job_name": f"podMonitor/{namespace}/{name}/0",
            "honor_labels": bool(ep.get("honorLabels", False)),
            "metrics_path": ep.get("path", "/metrics"),
            "scrape_interval": ep.get("interval", "30s"),
            "static_configs": [{"targets": [target], "labels": meta}],
            "relabel_configs": relabel}


def _matcher(m: dict[str, str]) -> str:
    """pkg/apis/monitoring/v1alpha1 Matcher.String(): name, match type, quoted value
    (openMetricsEscape)."""
    value = m["value"].replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'{m["name"]}{m.get("matchType", "=")}"{value}"'


def alertmanager_yaml(config: dict[str, Any], namespace: str,
                      secrets: dict[tuple[str, str], str]) -> dict[str, Any]:
    """alertmanager.yaml with one AlertmanagerConfig (pkg/alertmanager/amcfg.go): the
    operator's default base configuration (operator.go defaultAlertmanagerConfiguration: a
    ``null`` receiver), the AlertmanagerConfig's route converted (convertRoute: receivers
    ``<namespace>/<name>/<receiver>``, v2 matchers) and prepended to the root's routes
    with ``continue: true`` and, by the default matcher strategy ``OnNamespace``,
    ``namespace="<namespace>"`` (getEnforcer, namespaceEnforcer.processRoute,
    continueToNextRoute); receivers converted (convertWebhookConfig, convertHTTPConfig:
    the authorization Secret's value inline). ``secrets``: (Secret, key) -> value."""
    assert config["kind"] == "AlertmanagerConfig"
    name, spec = config["metadata"]["name"], config["spec"]

    def ns(s: str) -> str:  # makeNamespacedString
        return f"{namespace}/{name}/{s}"

    r = spec["route"]
    known = {"receiver", "groupBy", "groupWait", "groupInterval", "repeatInterval",
             "matchers", "continue"}
    assert not set(r) - known, f"the stand-in does not convert route fields {set(r) - known}"
    route: dict[str, Any] = {"receiver": ns(r["receiver"])}
    for src, dst in (("groupBy", "group_by"), ("groupWait", "group_wait"),
                     ("groupInterval", "group_interval"), ("repeatInterval", "repeat_interval")):
        if src in r:
            route[dst] = r[src]
    route["matchers"] = [_matcher(m) for m in r.get("matchers", [])] + [
        _matcher({"name": "namespace", "value": namespace, "matchType": "="})]
    route["continue"] = True
    receivers: list[dict[str, Any]] = [{"name": "null"}]
    for rec in spec["receivers"]:
        assert set(rec) <= {"name", "webhookConfigs"}, rec
        hooks = []
        for h in rec["webhookConfigs"]:
            hook: dict[str, Any] = {"url": h["url"],
                                    "send_resolved": bool(h.get("sendResolved", True))}
            auth = h.get("httpConfig", {}).get("authorization")
            if auth:
                cred = auth["credentials"]
                hook["http_config"] = {"authorization": {
                    "type": auth.get("type") or "Bearer",
                    "credentials": secrets[(cred["name"], cred["key"])]}}
            hooks.append(hook)
        receivers.append({"name": ns(rec["name"]), "webhook_configs": hooks})
    return {"route": {"receiver": "null", "routes": [route]}, "receivers": receivers,
            "templates": []}
