"""`nbship monitor` without a sub-verb: what Prometheus says about the served models.

* a live terminal view (rich): per model, traffic, error ratios, p50/p99 latency,
  in-flight requests, drift, and the alerts firing;
* ``--check``: exit 1 when an nbship alert fires (for CI, a canary judge, cron);
* ``--html FILE``: the last N minutes as plots (matplotlib) in one self-contained
  page — latency percentiles, traffic and error ratio, drift per feature group.

Everything is read from Prometheus's HTTP API (instant and range queries).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import time
from pathlib import Path
from typing import Any

from nbship.files import write_atomic
from nbship.monitoring.stack import api, query

SIGNALS = {
    "req/s": "sum by (model) (rate(nbship_requests_total[1m]))",
    "4xx": 'sum by (model) (rate(nbship_requests_total{code=~"4.."}[1m])) / '
           "sum by (model) (rate(nbship_requests_total[1m]))",
    "5xx": 'sum by (model) (rate(nbship_requests_total{code=~"5.."}[1m])) / '
           "sum by (model) (rate(nbship_requests_total[1m]))",
    "p50 ms": "1000 * histogram_quantile(0.5, sum by (model, le) "
              "(rate(nbship_request_seconds_bucket[1m])))",
    "p99 ms": "1000 * histogram_quantile(0.99, sum by (model, le) "
              "(rate(nbship_request_seconds_bucket[1m])))",
    "in flight": "sum by (model) (nbship_requests_in_flight)",
    "input PSI": "max by (model) (nbship_input_drift_psi)",
    "pred PSI": "max by (model) (nbship_prediction_drift_psi)",
    "window": "max by (model) (nbship_drift_window_rows)",
}


def firing(prometheus: str) -> list[dict[str, str]]:
    """nbship's alerts firing now (labels of each)."""
    alerts = api(prometheus, "alerts").get("alerts", [])
    return [a["labels"] for a in alerts
            if a.get("state") == "firing" and a["labels"].get("source") == "nbship"]


def snapshot(prometheus: str) -> dict[str, dict[str, float]]:
    """model -> signal -> value, now."""
    table: dict[str, dict[str, float]] = {}
    for name, promql in SIGNALS.items():
        for row in query(prometheus, promql):
            model = row["metric"].get("model", "?")
            table.setdefault(model, {})[name] = float(row["value"][1])
    return table


def render(prometheus: str) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"nbship monitor - Prometheus {prometheus} - "
                        f"{dt.datetime.now().strftime('%H:%M:%S')}")
    table.add_column("model")
    for name in SIGNALS:
        table.add_column(name, justify="right")
    for model, values in sorted(snapshot(prometheus).items()):
        cells = []
        for name in SIGNALS:
            value = values.get(name)
            text = "-" if value is None or value != value else (
                f"{value:.1%}" if name in ("4xx", "5xx") else f"{value:.3g}")
            style = "red" if (name.endswith("PSI") and value and value > 0.25) else ""
            cells.append(Text(text, style=style))
        table.add_row(model, *cells)
    alerts = firing(prometheus)
    lines = Text("alerts firing: " + (", ".join(
        f"{a['alertname']} ({a.get('model', '?')})" for a in alerts) or "none"),
        style="bold red" if alerts else "green")
    return Group(table, lines)


def live(prometheus: str, interval: float = 2.0) -> None:
    from rich.live import Live

    with Live(render(prometheus), refresh_per_second=4) as screen:
        while True:
            time.sleep(interval)
            screen.update(render(prometheus))


def _range(prometheus: str, promql: str, minutes: int) -> list[dict[str, Any]]:
    end = time.time()
    return list(api(prometheus, "query_range", {
        "query": promql, "start": end - 60 * minutes, "end": end,
        "step": max(1, minutes * 60 // 300)}, timeout=30).get("result", []))


def _natural(name: str) -> tuple[int, str]:
    """f8-f15 before f16-f23: feature groups in their order, not the alphabet's."""
    digits = "".join(ch for ch in name.split("-")[0] if ch.isdigit())
    return (int(digits) if digits else -1, name)


PLOTS = [
    ("Latency (ms)", {"p50": SIGNALS["p50 ms"], "p99": SIGNALS["p99 ms"]}),
    ("Traffic (requests/s)", {"requests": SIGNALS["req/s"]}),
    ("Error ratio", {"4xx": SIGNALS["4xx"], "5xx": SIGNALS["5xx"]}),
    ("Input drift: PSI per feature group", {"": "max by (model, feature_group) "
                                                "(nbship_input_drift_psi)"}),
    ("Prediction drift: PSI", {"predictions": SIGNALS["pred PSI"]}),
]


def report(prometheus: str, path: Path, minutes: int = 30) -> int:
    """Write the HTML page of the last ``minutes``; returns the number of plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    for title, queries in PLOTS:
        fig, ax = plt.subplots(figsize=(9, 3))
        drawn = 0
        for label, promql in queries.items():
            for series in sorted(_range(prometheus, promql, minutes),
                                 key=lambda s: _natural(s["metric"].get("feature_group", ""))):
                points = [(dt.datetime.fromtimestamp(float(t)), float(v))
                          for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if not points:
                    continue
                metric = series["metric"]
                name = " ".join(filter(None, [metric.get("model"), label,
                                              metric.get("feature_group")]))
                times: Any = [p[0] for p in points]  # matplotlib plots datetimes as dates
                ax.plot(times, [p[1] for p in points], label=name)
                drawn += 1
        if "PSI" in title:
            ax.axhline(0.25, color="red", linestyle="--", linewidth=1, label="alert at 0.25")
        ax.set_title(title)
        if drawn:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data in this window", ha="center", transform=ax.transAxes)
        fig.autofmt_xdate()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        images.append((title, base64.b64encode(buf.getvalue()).decode()))
    alerts = firing(prometheus)
    body = "".join(f'<h2>{html.escape(t)}</h2><img alt="{html.escape(t)}" '
                   f'src="data:image/png;base64,{b}">' for t, b in images)
    alert_text = ", ".join(f"{a['alertname']} ({a.get('model', '?')})" for a in alerts)
    page = (f"<!doctype html><meta charset='utf-8'><title>nbship monitor</title>"
            f"<h1>nbship monitor: the last {minutes} minutes</h1>"
            f"<p>Prometheus {html.escape(prometheus)}, "
            f"{html.escape(dt.datetime.now().isoformat(timespec='seconds'))}. Alerts firing: "
            f"{html.escape(alert_text or 'none')}</p>{body}")
    write_atomic(path, page)
    return len(images)
