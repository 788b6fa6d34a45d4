"""Kayenta canary analysis for nbship's model servers: the canary config ``render`` writes,
and how a rehearsal judges a ``kayentaCanary`` stage from the local Prometheus.

The config (Kayenta's ``CanaryConfig``, ``spin canary canary-config save --file``)
measures each side through nbship's own series, scoped by the *run* a server serves
(``nbship_model_info{run=...}``, joined on ``instance``), so the same queries work on a
cluster's Prometheus (the PodMonitor ``render`` ships) and on this machine's:

* **errors** — the share of 5xx answers (critical);
* **latency** — p90 of ``nbship_request_seconds``;
* **class concentration** — the chance that two predictions name the same class
  (Simpson's index): a model that learned nothing answers mostly one class (critical);

(The server's own prediction drift PSI is left out: a canary's drift window holds far
fewer rows than the stable's, and a PSI over few rows is large for any model. The
``canary judge`` job measures drift on the same requests instead.)

Kayenta itself (a Java service) does not run here. A rehearsal reads the same series
over the stage's lifetime and judges them the way Kayenta's NetflixACAJudge does: per
metric a Mann-Whitney U test of experiment against control, the Hodges-Lehmann shift and
its 95 % interval against a tolerance of 25 % of the shift, "High"/"Low"/"Pass"; a
critical metric that fails fails the analysis; the score is the groups' weighted share of
passing metrics, compared with ``scoreThresholds`` (pass 75, marginal 50). That is our
reading of Kayenta's judge, not Kayenta's code: figures may differ from a real Kayenta's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

JOIN = ' * on(instance) group_left() nbship_model_info{run="${scope}"}'


# rate()'s window: at least four scrapes of the PodMonitor (nbship/monitoring/cluster.py,
# interval 15s). rate() extrapolates from the samples inside its window and gives nothing
# with fewer than two (Prometheus' promql/functions.go, extrapolatedRate): a 15 s window
# over a 15 s scrape holds one sample most of the time, so the query had gaps or no data.
SCRAPE_SECONDS = 15
WINDOW = f"{4 * SCRAPE_SECONDS}s"


def _rate(series: str, window: str = WINDOW, labels: str = "") -> str:
    return f"rate({series}{labels}[{window}]){JOIN}"


# The canary takes a small share of the traffic: its windowed figures rest on fewer
# requests than the stable's, so a figure must not lean with the count. Class
# concentration is Simpson's index with its unbiased estimator, sum c(c-1) / n(n-1) over
# the classes' counts in the last minute: the chance that two predictions name the same
# class (0.1 for ten balanced classes, 1 for a model that answers one class), whatever
# n is; the largest class share would not do (its expectation grows as n shrinks). A
# minute holding fewer than 10 predictions gives no point at all: with one or two, the
# estimator says 1 (one prediction agrees with itself), which failed a sound canary in
# CI while it was still warming up. Each
# metric fails only past an effect size (Kayenta's effectSize.allowedIncrease), not on
# any significant difference.
METRICS: list[dict[str, Any]] = [
    {"name": "error ratio", "group": "Errors", "critical": True, "direction": "increase",
     "allowed_increase": 1.0,
     "promql": "(sum(" + _rate("nbship_requests_total", labels='{code=~"5.."}') + ") or "
               "vector(0)) / sum(" + _rate("nbship_requests_total") + ")"},
    {"name": "latency p90", "group": "Latency", "critical": False, "direction": "increase",
     "allowed_increase": 1.5,
     "promql": "histogram_quantile(0.9, sum by (le) ("
               + _rate("nbship_request_seconds_bucket") + "))"},
    {"name": "class concentration", "group": "Predictions", "critical": True,
     "direction": "increase", "allowed_increase": 3.0,
     "promql": "(sum(({c}) * (({c}) - 1)) / (sum({c}) * (sum({c}) - 1))) "
               "and on() (sum({c}) >= 10)".format(
         c="sum by (class) (increase(nbship_predictions_total[60s])" + JOIN + ")")},
]
WEIGHTS = {"Errors": 25, "Latency": 25, "Predictions": 50}


def canary_config(config_id: str, application: str) -> dict[str, Any]:
    """Kayenta's CanaryConfig for nbship's model servers (Prometheus metrics store)."""
    return {
        "id": config_id, "name": config_id, "configVersion": "1",
        "description": "nbship model server canary: " + ", ".join(m["name"] for m in METRICS)
                       + ", scoped by the run each server serves (rendered by nbship)",
        "applications": [application],
        "judge": {"name": "NetflixACAJudge-v1.0", "judgeConfigurations": {}},
        "metrics": [{"name": m["name"], "groups": [m["group"]], "scopeName": "default",
                     "query": {"type": "prometheus", "serviceType": "prometheus",
                               "metricName": m["name"].replace(" ", "_"),
                               "customInlineTemplate": "PromQL:" + m["promql"]},
                     "analysisConfigurations": {"canary": {
                         "direction": m["direction"], "critical": m["critical"],
                         "nanStrategy": "remove",
                         "effectSize": {"allowedIncrease": m["allowed_increase"]}}}}
                    for m in METRICS],
        "templates": {},
        "classifier": {"groupWeights": dict(WEIGHTS),
                       "scoreThresholds": {"pass": 75, "marginal": 50}},
    }


def config_problems(doc: Any) -> list[str]:
    """What keeps ``doc`` from being a CanaryConfig a rehearsal can judge with."""
    if not isinstance(doc, dict):
        return ["a canary config is a JSON object"]
    problems = [f"{key} is required" for key in ("name", "metrics", "classifier")
                if not doc.get(key)]
    for i, metric in enumerate(doc.get("metrics") or []):
        query = metric.get("query") if isinstance(metric, dict) else None
        template = query.get("customInlineTemplate") if isinstance(query, dict) else None
        if not isinstance(template, str) or not template.startswith("PromQL:"):
            problems.append(f"metrics[{i}].query.customInlineTemplate: a rehearsal runs "
                            "'PromQL:...' templates (Prometheus metrics store)")
    return problems


def duration_seconds(text: str) -> float:
    """An ISO-8601 duration as Kayenta's lifetimeDuration says it (PT1H30M, PT90S)."""
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?"
                     r"(?:(\d+(?:\.\d+)?)S)?)?", str(text).strip())
    if not m or not any(m.groups()):
        raise ValueError(f"lifetimeDuration {text!r} is not an ISO-8601 duration (PT10M)")
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s



@dataclass(frozen=True)
class Intervals:
    """How Orca plans a kayentaCanary that has no endTime (orca-kayenta's
    RunCanaryIntervalsStage.kt ``beforeStages`` and KayentaCanaryContext.kt): a warmup
    wait of ``beginCanaryAnalysisAfterMins``, then per interval a wait of the interval
    and an analysis of ``windows[i]`` (seconds after the stage starts)."""

    warmup: float
    interval: float
    windows: list[tuple[float, float]]


def canary_intervals(config: dict[str, Any]) -> Intervals:
    """The intervals Orca plans for ``canaryConfig``; ValueError for one Orca cannot plan.

    Orca counts intervals as ``lifetime.toMinutes() / interval.toMinutes()`` in whole
    minutes (the interval, ``canaryAnalysisIntervalMins``, defaulting to the lifetime,
    and the lifetime when 0 or longer): a lifetime under a minute is 0/0 (a Long
    division by zero: the stage fails before any analysis). Each window starts after the
    warmup (or ``lookbackMins`` before its end) and ends ``i`` intervals later."""
    def minutes(key: str, default: int | None) -> int | None:
        value = config.get(key)
        if value is None or value == "":
            return default
        try:
            return int(str(value))
        except ValueError:
            raise ValueError(f"{key} {value!r} is not a whole number of minutes") from None

    if config.get("lifetimeDuration"):
        lifetime = duration_seconds(str(config["lifetimeDuration"]))
    elif config.get("lifetimeHours") not in (None, ""):
        lifetime = float(str(config["lifetimeHours"])) * 3600
    else:
        raise ValueError("Canary stage configuration must include either `endTime` or "
                         "`lifetimeDuration`.")
    every = minutes("canaryAnalysisIntervalMins", None)
    interval = lifetime if every is None else every * 60.0
    if interval == 0 or interval > lifetime:
        interval = lifetime
    whole_lifetime, whole_interval = int(lifetime // 60), int(interval // 60)
    if whole_interval == 0:
        raise ValueError(
            f"a lifetime of {lifetime:g} s is under a minute: Orca counts the intervals as "
            f"lifetime.toMinutes() / interval.toMinutes() = {whole_lifetime}/"
            f"{whole_interval} and fails (RunCanaryIntervalsStage); at least PT1M")
    warmup = (minutes("beginCanaryAnalysisAfterMins", 0) or 0) * 60.0
    lookback = (minutes("lookbackMins", 0) or 0) * 60.0
    windows = []
    for i in range(1, whole_lifetime // whole_interval + 1):
        end = warmup + i * interval
        windows.append((end - lookback if lookback > 0 else warmup, end))
    return Intervals(warmup, interval, windows)

# --- the judge ---------------------------------------------------------------------------


def shift(experiment: Sequence[float], control: Sequence[float], confidence: float = 0.95
          ) -> tuple[float, float, float]:
    """(low, high, estimate): the Hodges-Lehmann shift of experiment over control and its
    confidence interval from the Mann-Whitney U distribution (normal approximation)."""
    from statistics import NormalDist

    diffs = sorted(e - c for e in experiment for c in control)
    n, m = len(experiment), len(control)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    k = int(math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12)))
    k = min(max(k, 0), len(diffs) - 1)
    mid = len(diffs) // 2
    estimate = diffs[mid] if len(diffs) % 2 else (diffs[mid - 1] + diffs[mid]) / 2
    return diffs[k], diffs[len(diffs) - 1 - k], estimate


def classify(control: Sequence[float], experiment: Sequence[float], direction: str,
             tolerance: float = 0.25, allowed_increase: float = 1.0,
             allowed_decrease: float = 1.0) -> tuple[str, str]:
    """(Pass | High | Low | Nodata, why) for one metric."""
    control = [v for v in control if not math.isnan(v)]
    experiment = [v for v in experiment if not math.isnan(v)]
    if not control or not experiment:
        return "Nodata", "no data for " + ("both" if not control and not experiment
                                           else "the control" if not control
                                           else "the experiment")
    if sorted(control) == sorted(experiment) or len(set(control) | set(experiment)) == 1:
        return "Pass", "the same values"
    low, high, estimate = shift(experiment, control)
    bound = tolerance * abs(estimate)
    mean_c, mean_e = sum(control) / len(control), sum(experiment) / len(experiment)
    ratio = mean_e / mean_c if mean_c else math.inf
    why = (f"shift {estimate:.4g} (95 % {low:.4g}..{high:.4g}), mean {mean_e:.4g} vs "
           f"{mean_c:.4g}")
    if direction in ("increase", "either") and low > bound and ratio >= allowed_increase:
        return "High", why
    if direction in ("decrease", "either") and high < -bound and ratio <= allowed_decrease:
        return "Low", why
    return "Pass", why


@dataclass(frozen=True)
class Verdict:
    score: float
    result: str  # pass | marginal | fail
    metrics: list[dict[str, Any]]


def judge(config: dict[str, Any], series: Callable[[str], tuple[list[float], list[float]]],
          thresholds: dict[str, Any] | None = None) -> Verdict:
    """Judge every metric of ``config``; ``series(promql_template)`` gives the control's and
    the experiment's values over the analysis."""
    metrics = []
    for metric in config["metrics"]:
        analysis = (metric.get("analysisConfigurations") or {}).get("canary") or {}
        control, experiment = series(metric["query"]["customInlineTemplate"][len("PromQL:"):])
        effect = analysis.get("effectSize") or {}
        label, why = classify(control, experiment, str(analysis.get("direction", "either")),
                              allowed_increase=float(effect.get("allowedIncrease", 1.0)),
                              allowed_decrease=float(effect.get("allowedDecrease", 1.0)))
        critical = bool(analysis.get("critical"))
        passed = label == "Pass" or (label == "Nodata" and not critical)
        metrics.append({"name": metric["name"], "group": (metric.get("groups") or ["-"])[0],
                        "classification": label, "critical": critical, "passed": passed,
                        "why": why, "points": [len(control), len(experiment)]})
    weights = (config.get("classifier") or {}).get("groupWeights") or {}
    groups: dict[str, list[bool]] = {}
    for m in metrics:
        groups.setdefault(m["group"], []).append(m["passed"])
    total = sum(float(weights.get(g, 0)) for g in groups) or 1.0
    score = sum(float(weights.get(g, 0)) * sum(v) / len(v) for g, v in groups.items()) \
        * 100 / total
    limits = thresholds or (config.get("classifier") or {}).get("scoreThresholds") or {}
    pass_at, marginal_at = float(limits.get("pass") or 75), float(limits.get("marginal") or 50)
    if any(m["critical"] and not m["passed"] for m in metrics):
        score = 0.0
    result = "pass" if score >= pass_at else "marginal" if score >= marginal_at else "fail"
    return Verdict(round(score, 1), result, metrics)
