"""Judge a canary model server against the stable one, on the same requests.

``nbship canary judge`` sends the same inputs to both servers (KServe's v2 ``/infer``,
one row per request, for ``--requests`` requests or ``--seconds``) and compares:

* **errors** — the canary's error ratio may exceed the stable's by ``max_extra_errors``;
* **latency** — the canary's p99 may be at most ``max_latency_ratio`` times the stable's
  (plus ``latency_slack`` seconds: a few ms of noise);
* **agreement** — the share of inputs where both predict the same (``np.isclose`` for
  real values) must reach ``min_agreement``;
* **prediction drift** — the PSI of the canary's predictions against the stable's
  (class frequencies, or quantile bins for real values) must stay under ``max_psi``.

Exit status 0 when every check passes, 1 when one fails (a Spinnaker Run Job stage then
fails and the rollback branch runs); the figures are also printed as
``SPINNAKER_PROPERTY_canary_*`` lines. ``nbship canary ready`` waits until a server's
model answers ready (a readiness job: Spinnaker reports custom resources stable at once).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Criteria:
    max_extra_errors: float = 0.01
    max_latency_ratio: float = 1.5
    latency_slack: float = 0.005
    min_agreement: float = 0.9
    max_psi: float = 0.25


@dataclass
class Side:
    """What one server answered."""

    latencies: list[float]
    errors: int
    predictions: list[Any]  # one per request; None where it failed

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def error_ratio(self) -> float:
        return self.errors / max(self.requests, 1)

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99)) if self.latencies else float("nan")


def infer(url: str, model: str, row: np.ndarray, timeout: float = 30) -> tuple[Any, float]:
    """(the prediction or None, seconds) for one row over KServe's v2 protocol."""
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, *row.shape],
                                   "datatype": "FP64" if row.dtype.kind == "f" else "INT64",
                                   "data": row.ravel().tolist()}]}).encode()
    req = urllib.request.Request(f"{url.rstrip('/')}/v2/models/{model}/infer", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            doc = json.loads(reply.read())
        value = doc["outputs"][0]["data"][0]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
        value = None
    return value, time.perf_counter() - started


def compare(stable: Side, canary: Side) -> dict[str, float]:
    """The figures the criteria judge."""
    from nbship.monitoring.drift import Profile

    pairs = [(s, c) for s, c in zip(stable.predictions, canary.predictions)
             if s is not None and c is not None]
    if pairs:
        s_arr = np.asarray([p[0] for p in pairs], dtype=float)
        c_arr = np.asarray([p[1] for p in pairs], dtype=float)
        agreement = float(np.mean(np.isclose(s_arr, c_arr, rtol=1e-2, atol=1e-6)))
        # the stable server's predictions are the reference the canary's are measured against
        drift = Profile.build(s_arr.reshape(-1, 1), s_arr).prediction_psi(c_arr)
    else:
        agreement, drift = 0.0, float("inf")
    return {"stable_error_ratio": stable.error_ratio, "canary_error_ratio": canary.error_ratio,
            "stable_p99_seconds": stable.p99, "canary_p99_seconds": canary.p99,
            "agreement": agreement, "prediction_psi": drift,
            "requests": float(min(stable.requests, canary.requests))}


def verdict(figures: dict[str, float], criteria: Criteria) -> list[tuple[str, bool, str]]:
    """(check, passed, what it compared) for each criterion."""
    c = criteria
    latency_limit = figures["stable_p99_seconds"] * c.max_latency_ratio + c.latency_slack
    return [
        ("errors", figures["canary_error_ratio"] <= figures["stable_error_ratio"]
         + c.max_extra_errors, f"canary {figures['canary_error_ratio']:.3f} vs stable "
         f"{figures['stable_error_ratio']:.3f} (+{c.max_extra_errors} allowed)"),
        ("latency", figures["canary_p99_seconds"] <= latency_limit,
         f"p99 canary {figures['canary_p99_seconds'] * 1000:.1f} ms vs limit "
         f"{latency_limit * 1000:.1f} ms"),
        ("agreement", figures["agreement"] >= c.min_agreement,
         f"{figures['agreement']:.3f} of the same inputs predicted alike (>= "
         f"{c.min_agreement})"),
        ("prediction drift", figures["prediction_psi"] <= c.max_psi,
         f"PSI {figures['prediction_psi']:.3f} of the canary's predictions vs the stable's "
         f"(<= {c.max_psi})"),
    ]


def judge(stable_url: str, canary_url: str, stable_model: str, canary_model: str,
          inputs: np.ndarray, *, requests: int = 200, seconds: float = 0.0,
          seed: int = 0, warmup: int = 20, echo: Callable[[str], None] = print
          ) -> dict[str, float]:
    """Send the same rows to both servers (interleaved); the figures. The first
    ``warmup`` requests to each are not counted: a server just started answers its first
    requests slower (lazy initialisation), which says nothing of its steady latency."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(inputs)
    order = rng.permutation(len(rows))
    for n in range(warmup):
        for url, model in ((stable_url, stable_model), (canary_url, canary_model)):
            infer(url, model, rows[order[n % len(order)]])
    stable, canary = Side([], 0, []), Side([], 0, [])
    started = time.monotonic()
    n = 0
    while n < requests or time.monotonic() - started < seconds:
        row = rows[order[n % len(order)]]
        for side, url, model in ((stable, stable_url, stable_model),
                                 (canary, canary_url, canary_model)):
            value, took = infer(url, model, row)
            side.latencies.append(took)
            side.predictions.append(value)
            side.errors += value is None
        n += 1
        if n % 100 == 0:
            echo(f"  {n} requests to each")
    return compare(stable, canary)


def wait_ready(url: str, model: str, timeout: float = 600) -> bool:
    """True once ``url`` says ``model`` is ready; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/v2/models/{model}/ready",
                                        timeout=5) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    return False


def provenance(url: str, model: str, timeout: float = 10) -> dict[str, Any]:
    """What a server says its model comes from (``/v2/models/NAME/provenance``): its run
    id and model release, as strings ("" where it does not say)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/v2/models/{model}/provenance",
                                    timeout=timeout) as reply:
            doc = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {"run": "", "model": ""}
    run = doc.get("run") if isinstance(doc, dict) else None
    run = run.get("id") if isinstance(run, dict) else run
    return {"run": str(run or ""), "model": str(doc.get("model") or "")
            if isinstance(doc, dict) else ""}

