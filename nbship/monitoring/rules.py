"""Alerting rules for served models, in Prometheus's rule format.

Five alerts, each per model: the error ratio (5xx), p99 latency, input drift,
prediction drift, and a server that stopped answering scrapes. Drift alerts need
a window of at least MIN_WINDOW_ROWS rows, so a few requests after a start do not
page anyone. PSI above 0.25 is the conventional "significant shift".

Every alert keeps the series' ``namespace`` (aggregations are ``by (namespace, model)``):
on a cluster the PodMonitor's scrape config sets it from ``__meta_kubernetes_namespace``
(prometheus-operator pkg/prometheus/promcfg.go, generatePodMonitorConfig), and the
operator's default AlertmanagerConfig matcher strategy ``OnNamespace`` adds
``namespace="<the AlertmanagerConfig's namespace>"`` to its route
(pkg/alertmanager/amcfg.go, namespaceEnforcer.processRoute): an alert without it never
reaches the retraining trigger. On one machine the series have no namespace and the
aggregations give the same alerts as ``by (model)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

JOB = "nbship-serve"


@dataclass(frozen=True)
class Thresholds:
    error_ratio: float = 0.05
    latency_p99_seconds: float = 0.5
    drift_psi: float = 0.25
    min_window_rows: int = 200
    for_: str = "1m"  # how long a condition must hold before the alert fires


DEFAULT = Thresholds()


def rules(t: Thresholds = DEFAULT) -> dict[str, Any]:
    def alert(name: str, expr: str, summary: str, severity: str = "warning") -> dict[str, Any]:
        return {"alert": name, "expr": expr, "for": t.for_,
                "labels": {"severity": severity, "source": "nbship"},
                "annotations": {"summary": summary}}

    window = f"on(namespace, model) (nbship_drift_window_rows >= {t.min_window_rows})"
    return {"groups": [{"name": "nbship-serving", "rules": [
        alert("NbshipHighErrorRatio",
              'sum by (namespace, model) (rate(nbship_requests_total{code=~"5.."}[5m])) / '
              f"sum by (namespace, model) (rate(nbship_requests_total[5m])) > {t.error_ratio}",
              "{{ $labels.model }}: more than " + f"{t.error_ratio:.0%}" +
              " of inference requests fail with a server error", "critical"),
        alert("NbshipHighLatencyP99",
              "histogram_quantile(0.99, sum by (namespace, model, le) "
              f"(rate(nbship_request_seconds_bucket[5m]))) > {t.latency_p99_seconds}",
              "{{ $labels.model }}: p99 latency above " + f"{t.latency_p99_seconds}s"),
        alert("NbshipInputDrift",
              f"max by (namespace, model) (nbship_input_drift_psi) > {t.drift_psi} and {window}",
              "{{ $labels.model }}: inputs drifted from the training profile "
              "(PSI {{ $value | printf \"%.2f\" }})"),
        alert("NbshipPredictionDrift",
              "max by (namespace, model) (nbship_prediction_drift_psi) > "
              f"{t.drift_psi} and {window}",
              "{{ $labels.model }}: predictions drifted from the training profile "
              "(PSI {{ $value | printf \"%.2f\" }})"),
        alert("NbshipServerDown", f'up{{job="{JOB}"}} == 0',
              "{{ $labels.model }}: the model server does not answer scrapes", "critical"),
    ]}]}


def rules_yaml(t: Thresholds = DEFAULT) -> str:
    return str(yaml.safe_dump(rules(t), sort_keys=False, width=100))
