"""What Alertmanager's webhook brings (version 4 payloads), read once for every receiver
(``nbship trigger`` and the scheduler's ``POST /alerts``)."""

from __future__ import annotations

from typing import Any

# the alerts of monitoring/rules.py that mean "retrain": the model's world moved
DRIFT_ALERTS = frozenset({"NbshipInputDrift", "NbshipPredictionDrift"})


def firing(payload: Any, names: frozenset[str] = DRIFT_ALERTS) -> list[dict[str, Any]] | None:
    """The firing alerts named in ``names``, in the payload's order; None when the payload
    is not an Alertmanager webhook payload (no ``alerts`` list)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        return None
    return [a for a in payload["alerts"] if isinstance(a, dict)
            and a.get("status") == "firing" and isinstance(a.get("labels"), dict)
            and a["labels"].get("alertname") in names]


def trigger(alert: dict[str, Any]) -> dict[str, Any]:
    """Why a run started, for its provenance: the alert, its labels, when it began."""
    labels = alert["labels"]
    return {"kind": "alert", "alert": str(labels.get("alertname")),
            "labels": {str(k): str(v) for k, v in labels.items()},
            "starts_at": str(alert.get("startsAt", ""))}
