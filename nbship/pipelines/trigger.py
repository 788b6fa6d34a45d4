"""Training that starts by itself: Alertmanager's webhook starts a run of the notebook's
pipeline (stage 5 of the path, its drift trigger).

``nbship trigger NOTEBOOK`` listens on 127.0.0.1:9095 for Alertmanager's webhook
(version 4 payloads, ``POST /alerts``). A firing alert whose name is one of the
drift alerts starts a run of the notebook's pipeline on kfp.local, with the
parameters given; the run's provenance says why (``trigger``: kind, alert name,
labels, when it was received) and on which data (``data.sha256``). A run that
succeeds — the notebook's own gate steps passed — is pushed as the next model
release. One run at a time, and at most one per cooldown:
Alertmanager repeats alerts, a drifted model needs one retraining, not twenty.

With a secret (``--secret-file``), every request needs ``Authorization: Bearer <secret>``
(Alertmanager's ``http_config.authorization``): the trigger as a cluster renders it
(``monitoring/cluster.py``: a Deployment listening on every address of its pod, behind a
Service) takes alerts only so. Without one it listens only on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import hmac
import http.server
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.jsonhttp import JSONHandler
from nbship.monitoring import alerts

DEFAULT_PORT = 9095
MAX_BODY = 1 << 20
DRAIN_LIMIT = 16 << 20  # a larger body is not read at all: the connection just closes


@dataclass
class Trigger:
    """Decides which alerts start a run, and starts it (in a thread of its own)."""

    notebook: Path
    root: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    cooldown: float = 600.0
    alert_names: frozenset[str] = alerts.DRIFT_ALERTS
    registry: str | None = None  # where a passing run's model is pushed (None: not pushed)
    echo: Callable[[str], None] = print
    runs: list[dict[str, Any]] = field(default_factory=list)
    _last_start: float | None = None
    _running: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, payload: Any) -> tuple[int, dict[str, Any]]:
        """(HTTP status, reply) for one webhook payload."""
        firing = alerts.firing(payload, self.alert_names)
        if firing is None:
            return 400, {"error": "not an Alertmanager webhook payload (no 'alerts' list)"}
        if not firing:
            return 200, {"started": False, "reason": "no firing alert that retrains"}
        alert = firing[0]
        with self._lock:
            now = time.monotonic()
            if self._running is not None and self._running.is_alive():
                return 200, {"started": False, "reason": "a retraining run is under way"}
            if self._last_start is not None and now - self._last_start < self.cooldown:
                left = self.cooldown - (now - self._last_start)
                return 200, {"started": False, "reason": f"cooldown ({left:.0f} s left)"}
            self._last_start = now
            why = {**alerts.trigger(alert),
                   "received": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            self._running = threading.Thread(target=self._run, args=(why,), daemon=True)
            self._running.start()
        self.echo(f"trigger: {why['alert']} {why['labels'].get('model', '')}: retraining "
                  f"{self.notebook}")
        return 202, {"started": True, "trigger": why}

    def _run(self, why: dict[str, Any]) -> None:
        from nbship.errors import NbshipError
        from nbship.extract.cache import analyse
        from nbship.extract.codegen import pipeline_name
        from nbship.pipelines.compile import compile_graph
        from nbship.pipelines.local import run_compiled

        try:
            graph = analyse(self.notebook)
            compiled = compile_graph(graph, self.root.parent / "build" / pipeline_name(graph))
            result = run_compiled(compiled, self.parameters, root=self.root, trigger=why,
                                  echo=lambda line: None)
            prov = json.loads(result.provenance.read_text())
            record: dict[str, Any] = {"run": str(result.record_dir), "status": result.status,
                                      "metrics": result.metrics, "trigger": why,
                                      "data": prov.get("data")}
        except NbshipError as exc:
            record = {"run": None, "status": "FAILURE", "error": str(exc), "trigger": why}
        self.echo(f"trigger: retraining {record['status']}"
                  + (f": {record['run']}" if record.get("run") else f": {record.get('error')}"))
        if record["status"] == "SUCCESS" and self.registry and graph.serve is not None:
            record["model"] = self._push(Path(record["run"]))
        self.runs.append(record)

    def _push(self, run_dir: Path) -> str:
        """The run passed its gate steps: its model becomes the next model release."""
        from nbship.errors import NbshipError
        from nbship.release.model import push

        assert self.registry is not None
        try:
            pushed = push(run_dir, self.registry, echo=lambda line: None)
        except NbshipError as exc:
            self.echo(f"trigger: the model was not pushed: {exc}")
            return f"not pushed: {exc}"
        ref = f"{pushed.reference}@{pushed.digest}"
        self.echo(f"trigger: model release {ref}")
        return ref

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the run under way, if any (tests, a clean stop)."""
        thread = self._running
        if thread is not None:
            thread.join(timeout)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def server(trigger: Trigger, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
           secret: str | None = None) -> http.server.ThreadingHTTPServer:
    """An HTTP server for Alertmanager's webhook (``POST /alerts``) and ``GET /runs``; with
    ``secret``, each request needs ``Authorization: Bearer <secret>`` (401 otherwise). An
    address other than the loopback's needs a secret (ValueError)."""
    if not secret and host not in LOOPBACK:
        raise ValueError(f"the trigger listens on {host} only with a secret (--secret-file)")

    class Handler(JSONHandler):
        def _allowed(self) -> bool:
            if not secret:
                return True
            given = self.headers.get("Authorization", "").encode()
            if hmac.compare_digest(given, f"Bearer {secret}".encode()):
                return True
            self.reply(401, {"error": "the trigger needs 'Authorization: Bearer <secret>' "
                             "(Alertmanager's http_config.authorization)"})
            self.close_connection = True
            return False

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            if not self._allowed():
                return
            if self.path.rstrip("/") != "/alerts":
                self.reply(404, {"error": "POST alerts to /alerts"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                left = length if MAX_BODY < length <= DRAIN_LIMIT else 0
                while left > 0:  # read it away, so that the client hears the answer
                    chunk = self.rfile.read(min(1 << 16, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                self.reply(413 if length > MAX_BODY else 400,
                            {"error": f"a JSON body of at most {MAX_BODY} bytes is expected"})
                self.close_connection = True
                return
            try:
                payload = json.loads(self.rfile.read(length))
            except (ValueError, RecursionError):
                self.reply(400, {"error": "the body is not JSON"})
                return
            self.reply(*trigger.handle(payload))

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if not self._allowed():
                return
            if self.path.rstrip("/") == "/runs":
                self.reply(200, {"runs": trigger.runs})
            else:
                self.reply(404, {"error": "GET /runs, or POST /alerts"})

    return http.server.ThreadingHTTPServer((host, port), Handler)
