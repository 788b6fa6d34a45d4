"""What a model server reports on /metrics, beside KServe's own histograms.

The four golden signals per model and protocol (v1/v2): latency
(``nbship_request_seconds``), traffic and errors (``nbship_requests_total`` by
status code; client errors are 4xx, server errors 5xx), saturation
(``nbship_requests_in_flight``); where the model comes from (``nbship_model_info``);
the distribution of predictions
(``nbship_predictions_total`` by class for classifiers); and drift against the
reference profile over the sliding window (``nbship_input_drift_psi`` and
``nbship_input_drift_ks`` per feature group, ``nbship_prediction_drift_psi``,
``nbship_drift_window_rows``), computed when Prometheus scrapes.

Everything goes into prometheus_client's default registry, which KServe's
/metrics handler exposes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nbship.monitoring.drift import Window

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("nbship_requests", "Inference requests by model, protocol and HTTP status",
                   ["model", "protocol", "code"])
LATENCY = Histogram("nbship_request_seconds", "Inference request latency (seconds)",
                    ["model", "protocol"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("nbship_requests_in_flight", "Inference requests being served",
                  ["model"])
PREDICTIONS = Counter("nbship_predictions", "Predictions by class (classifiers)",
                      ["model", "class"])
MODEL = Info("nbship_model", "Where the served model comes from: run, commit, model release",
             ["model"])
MONITORING_ERRORS = Counter("nbship_monitoring_errors", "Requests predict() answered whose "
                            "monitoring (prediction counts, drift window) failed", ["model"])


def run_id(provenance: dict[str, Any]) -> str:
    """The run a served model comes from (a run folder says its id; a model release says
    ``{"id": ...}``)."""
    run = provenance.get("run")
    return str((run.get("id") if isinstance(run, dict) else run) or "")


def describe_model(model: str, provenance: dict[str, Any]) -> None:
    """``nbship_model_info{model, run, commit, release}``: alerts and dashboards can name
    the run and commit of the model that drifted."""
    MODEL.labels(model=model).info({
        "run": run_id(provenance),
        "commit": str(provenance.get("commit") or ""),
        "release": str(provenance.get("model") or ""),
    })


MAX_CLASSES = 100  # class labels per model; predictions beyond count as class "other"
_classes: dict[str, set[str]] = {}


def observe_predictions(model: str, predictions: np.ndarray) -> None:
    """Count a classifier's predicted classes (integer outputs, one per row); the first
    MAX_CLASSES distinct classes each, the rest as "other" (an integer-valued regression
    would otherwise make a time series of every value it predicts: unbounded memory)."""
    flat = np.asarray(predictions)
    if flat.ndim != 1 or flat.dtype.kind not in "biu":
        return
    seen = _classes.setdefault(model, set())
    classes, counts = np.unique(flat, return_counts=True)
    for cls, n in zip(classes, counts):
        label = str(int(cls))
        if label not in seen:
            if len(seen) >= MAX_CLASSES:
                label = "other"
            else:
                seen.add(label)
        PREDICTIONS.labels(model, label).inc(int(n))


class DriftCollector(Collector):
    """PSI and KS from a model's sliding window, when /metrics is read."""

    def __init__(self, model: str, window: Window) -> None:
        self.model = model
        self.window = window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        drift = self.window.drift()
        rows = GaugeMetricFamily("nbship_drift_window_rows",
                                 "Rows in the drift window", labels=["model"])
        rows.add_metric([self.model], drift["rows"])
        yield rows
        psi = GaugeMetricFamily("nbship_input_drift_psi", "Input drift: population stability "
                                "index per feature group", labels=["model", "feature_group"])
        ks = GaugeMetricFamily("nbship_input_drift_ks", "Input drift: two-sample KS statistic "
                               "per feature group", labels=["model", "feature_group"])
        for group, value in drift["input_psi"].items():
            psi.add_metric([self.model, group], value)
            ks.add_metric([self.model, group], drift["input_ks"][group])
        yield psi
        yield ks
        pred = GaugeMetricFamily("nbship_prediction_drift_psi", "Prediction drift: population "
                                 "stability index of the predictions", labels=["model"])
        if drift["prediction_psi"] is not None:
            pred.add_metric([self.model], drift["prediction_psi"])
        yield pred


def watch_drift(model: str, window: Window) -> None:
    REGISTRY.register(DriftCollector(model, window))


def _protocol(path: str) -> str | None:
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


DRAIN = 64 << 20  # bytes: a too-large body up to this size is read away before the 413


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413 naming the limit,
    before it is read; at most ``concurrent`` inference requests are read and answered
    at once (the others wait, their bodies unread), so memory stays bounded.

    Judged by Content-Length, and by counting for chunked bodies (the app then gets
    no more than ``limit`` bytes and the client a 413). A too-large body up to
    DRAIN bytes (or 4x the limit) is read away and dropped as it comes, so the client
    hears the 413 instead of a reset while it sends, and the connection stays open for
    the next request; a larger one is not read and the 413 says ``connection: close``.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int,
                 concurrent: int = 8) -> None:
        self.app = app
        self.limit = limit
        self.concurrent = concurrent
        self._slots: asyncio.Semaphore | None = None

    async def _refuse(self, send: Callable[..., Any], close: bool) -> None:
        body = json.dumps({"error": f"the request body is larger than this server's limit "
                                    f"of {self.limit} bytes (nbship serve --max-body)"})
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413,
                    "headers": headers + [(b"connection", b"close")] if close else headers})
        await send({"type": "http.response.body", "body": body.encode()})

    async def _drain(self, receive: Callable[..., Any], declared: int) -> bool:
        """Read a too-large body away (up to DRAIN bytes or 4x the limit), so the client
        hears the 413 instead of a reset connection; a larger one is not read at all.
        Whether it was."""
        if declared > max(DRAIN, 4 * self.limit):
            return False
        while True:
            message = await receive()
            if message.get("type") != "http.request":
                return False
            if not message.get("more_body"):
                return True

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            # a client that waits for "100 Continue" (curl, over 1 MB) has not sent it
            waiting = headers.get(b"expect", b"").lower() == b"100-continue"
            drained = not waiting and await self._drain(receive, int(declared))
            await self._refuse(send, close=not drained)
            return
        if _protocol(scope.get("path", "")) is None:
            await self._read(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrent)
        async with self._slots:
            await self._read(scope, receive, send)

    async def _read(self, scope: dict[str, Any], receive: Callable[..., Any],
                    send: Callable[..., Any]) -> None:
        seen = 0
        started = False

        async def sending(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        async def receiving() -> dict[str, Any]:
            nonlocal seen
            message: dict[str, Any] = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge
            return message

        try:
            await self.app(scope, receiving, sending)
        except TooLarge:
            if not started:
                await self._refuse(send, close=True)


class TooLarge(Exception):
    """A chunked body went over the limit while the app read it."""


class GoldenSignals:
    """ASGI middleware: latency, traffic, errors and saturation of inference requests."""

    def __init__(self, app: Callable[..., Awaitable[None]], model: str) -> None:
        self.app = app
        self.model = model

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        protocol = _protocol(scope.get("path", "")) if scope.get("type") == "http" else None
        if protocol is None:
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def sending(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status["code"] = int(message.get("status", 500))
            await send(message)

        gauge = IN_FLIGHT.labels(self.model)
        gauge.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            gauge.dec()
            LATENCY.labels(self.model, protocol).observe(time.perf_counter() - started)
            REQUESTS.labels(self.model, protocol, str(status["code"])).inc()
