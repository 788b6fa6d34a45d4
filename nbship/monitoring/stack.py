"""A real Prometheus and Alertmanager for the models served on this machine.

``nbship monitor up`` writes their configuration under ``.nbship/monitor/`` and starts
Debian's ``prometheus`` and ``prometheus-alertmanager`` detached, on 127.0.0.1 only:

* Prometheus scrapes every model server listed in ``targets/*.json`` (file service
  discovery: ``nbship serve`` writes its entry when it starts and removes it when it
  stops), evaluates nbship's alerting rules (``rules.yml``) and sends alerts to
* Alertmanager, which routes every nbship alert to a webhook (by default
  ``http://127.0.0.1:9095/alerts``, where the retraining trigger listens).

At scale the same rules go to the Prometheus Operator (a PrometheusRule), the same
route to the cluster's Alertmanager.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nbship import processes
from nbship.errors import ToolMissingError
from nbship.files import path_name, write_atomic
from nbship.monitoring.rules import JOB, Thresholds, rules_yaml

DEFAULT_ROOT = Path(".nbship/monitor")
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
WEBHOOK = "http://127.0.0.1:9095/alerts"


class MonitorError(ToolMissingError):
    """Prometheus or Alertmanager cannot be started, stopped or asked."""

    exit_code = 1


@dataclass(frozen=True)
class Monitor:
    prometheus: str  # host:port
    alertmanager: str
    root: Path


def targets_dir(root: Path = DEFAULT_ROOT) -> Path:
    return root / "targets"


def _ready(address: str) -> bool:
    return processes.answers(f"http://{address}/-/ready")


def prometheus_config(root: Path, alertmanager: str, scrape_interval: str = "5s") -> str:
    return str(yaml.safe_dump({
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(root / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{
            "job_name": JOB,
            "file_sd_configs": [{"files": [str(targets_dir(root) / "*.json")],
                                 "refresh_interval": "5s"}],
        }],
    }, sort_keys=False))


def alertmanager_config(webhook: str, secret_file: Path | None = None) -> str:
    """Every alert to ``webhook``; with ``secret_file``, as ``Authorization: Bearer <its
    content>`` (the scheduler's webhook takes alerts only so)."""
    hook: dict[str, object] = {"url": webhook, "send_resolved": False}
    if secret_file is not None:
        hook["http_config"] = {"authorization": {"type": "Bearer",
                                                 "credentials_file": str(secret_file)}}
    return str(yaml.safe_dump({
        "route": {"receiver": "nbship-trigger", "group_by": ["alertname", "model"],
                  "group_wait": "5s", "group_interval": "30s", "repeat_interval": "1h"},
        "receivers": [{"name": "nbship-trigger", "webhook_configs": [hook]}],
    }, sort_keys=False))


def _state(root: Path, name: str) -> Path:
    return root / f"{name}.json"


def up(root: Path = DEFAULT_ROOT, *, prometheus_port: int = PROMETHEUS_PORT,
       alertmanager_port: int = ALERTMANAGER_PORT, webhook: str = WEBHOOK,
       thresholds: Thresholds | None = None, scrape_interval: str = "5s",
       webhook_secret_file: Path | None = None) -> Monitor:
    """Write the configuration and start both (or find them running)."""
    from nbship.release.tools import require

    root = root.resolve()
    current = status(root)
    if current is not None:
        return current
    prom_exe = require("prometheus", "run Prometheus (apt-get install prometheus)")
    am_exe = require("prometheus-alertmanager",
                     "run Alertmanager (apt-get install prometheus-alertmanager)")
    prom_addr, am_addr = f"127.0.0.1:{prometheus_port}", f"127.0.0.1:{alertmanager_port}"
    for address in (prom_addr, am_addr):
        if _ready(address):
            raise MonitorError(f"something else already answers on {address}",
                               hint="nbship monitor up --prometheus-port N --alertmanager-port M")
    for folder in (root, targets_dir(root), root / "prometheus", root / "alertmanager"):
        folder.mkdir(parents=True, exist_ok=True)
    write_atomic(root / "rules.yml", rules_yaml(thresholds or Thresholds()))
    write_atomic(root / "prometheus.yml", prometheus_config(root, am_addr, scrape_interval))
    write_atomic(root / "alertmanager.yml", alertmanager_config(
        webhook, webhook_secret_file.resolve() if webhook_secret_file else None))
    am = processes.start(
        [am_exe, f"--config.file={root / 'alertmanager.yml'}",
         f"--storage.path={root / 'alertmanager'}", f"--web.listen-address={am_addr}",
         "--cluster.listen-address="],
        log=root / "alertmanager.log", address=am_addr, ready=lambda: _ready(am_addr),
        state=_state(root, "alertmanager"), error=MonitorError, what="Alertmanager")
    try:
        processes.start(
            [prom_exe, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'prometheus'}", f"--web.listen-address={prom_addr}",
             "--storage.tsdb.retention.time=7d"],
            log=root / "prometheus.log", address=prom_addr, ready=lambda: _ready(prom_addr),
            state=_state(root, "prometheus"), error=MonitorError, what="Prometheus")
    except MonitorError:
        processes.stop(am, _state(root, "alertmanager"))
        raise
    return Monitor(prom_addr, am_addr, root)


def status(root: Path = DEFAULT_ROOT) -> Monitor | None:
    """Both running (proven nbship's and answering), or None."""
    found = {}
    for name in ("prometheus", "alertmanager"):
        rec = processes.read(_state(root, name), error=MonitorError, what=name)
        if rec is None or not processes.ours(rec) or not _ready(rec.address):
            return None
        found[name] = rec.address
    return Monitor(found["prometheus"], found["alertmanager"], root.resolve())


def down(root: Path = DEFAULT_ROOT) -> bool:
    """Stop both; True if either was running. Data and configuration stay."""
    stopped = False
    for name in ("prometheus", "alertmanager"):
        rec = processes.read(_state(root, name), error=MonitorError, what=name)
        if rec is not None:
            stopped = processes.stop(rec, _state(root, name)) or stopped
    return stopped


def register_target(root: Path, model: str, address: str, labels: dict[str, str]) -> Path:
    """Tell Prometheus (file discovery) about a model server; returns the entry to remove.
    The model's name becomes part of the entry's file name: it must match
    ``files.PATH_NAME`` (MonitorError otherwise), so no name writes outside the folder."""
    path_name(model, "the model name", error=MonitorError, where="nbship monitor's targets")
    port = address.rsplit(":", 1)[-1]
    if not port.isdigit():
        raise MonitorError(f"a model server's address {address!r} has no port")
    folder = targets_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / f"{model}-{port}.json"
    write_atomic(entry, json.dumps([{"targets": [address],
                                     "labels": {"model": model, **labels}}]))
    return entry


def api(prometheus: str, endpoint: str, params: dict[str, Any] | None = None,
        timeout: float = 10) -> dict[str, Any]:
    """The ``data`` of Prometheus's HTTP API answer at ``/api/v1/<endpoint>``."""
    url = f"http://{prometheus}/api/v1/{endpoint}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return dict(json.loads(reply.read())["data"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        raise MonitorError(f"Prometheus at {prometheus} did not answer: {exc}",
                           hint="nbship monitor up") from None


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    return list(api(prometheus, "query", {"query": promql}).get("result", []))

