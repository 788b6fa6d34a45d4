"""The Kayenta canary config render writes (valid PromQL, Kayenta's shape) and the
judgment a rehearsal makes from two series (Mann-Whitney, effect sizes, criticality,
scores)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from nbship.spinnaker.kayenta import (
    METRICS,
    Intervals,
    canary_config,
    canary_intervals,
    classify,
    config_problems,
    duration_seconds,
    judge,
    shift,
)


def noisy(mean: float, n: int = 40, spread: float = 0.05, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [mean * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_the_shift_and_its_interval() -> None:
    control = noisy(10.0, seed=1)
    low, high, estimate = shift([v + 2.0 for v in control], control)
    assert low <= 2.0 <= high and abs(estimate - 2.0) < 0.2
    low, high, _ = shift(noisy(10.0, seed=2), noisy(10.0, seed=3))
    assert low < 0 < high  # no shift: the interval holds 0


@pytest.mark.parametrize(("experiment", "allowed", "label"), [
    (noisy(1.0, seed=9), 1.0, "Pass"),          # the same distribution
    (noisy(2.0, seed=9), 1.0, "High"),          # twice as high
    (noisy(2.0, seed=9), 3.0, "Pass"),          # ...but allowed up to three times
    (noisy(10.0, seed=9), 3.0, "High"),
    (noisy(0.5, seed=9), 1.0, "Pass"),          # lower, and only increases count
])
def test_classify_by_significance_and_effect_size(experiment: list[float], allowed: float,
                                                  label: str) -> None:
    got, why = classify(noisy(1.0, seed=8), experiment, "increase",
                        allowed_increase=allowed)
    assert got == label, why


def test_classify_edge_cases() -> None:
    assert classify([], [1.0], "increase")[0] == "Nodata"
    assert classify([0.0] * 5, [0.0] * 5, "increase") == ("Pass", "the same values")
    assert classify(noisy(1.0), noisy(0.3), "decrease")[0] == "Low"
    assert classify(noisy(1.0), [float("nan")] * 3, "increase")[0] == "Nodata"


def test_scores_groups_and_critical_metrics() -> None:
    config = canary_config("nbship-model-server", "markers")
    same = {m["promql"]: (noisy(1.0, seed=4), noisy(1.0, seed=5)) for m in METRICS}

    def series(values: dict[str, tuple[list[float], list[float]]]):  # type: ignore[no-untyped-def]
        return lambda template: values[template]

    good = judge(config, series(same))
    assert good.result == "pass" and good.score == 100.0
    slow = dict(same)
    latency = next(m["promql"] for m in METRICS if m["name"] == "latency p90")
    slow[latency] = (noisy(0.005, seed=4), noisy(0.02, seed=5))  # 4x slower: not critical
    verdict = judge(config, series(slow))
    assert verdict.score == 75.0 and verdict.result == "pass"
    assert [m["classification"] for m in verdict.metrics] == ["Pass", "High", "Pass"]
    broken = dict(same)
    concentration = next(m["promql"] for m in METRICS if m["name"] == "class concentration")
    broken[concentration] = (noisy(0.1, seed=4), [1.0] * 40)  # one class: critical
    verdict = judge(config, series(broken))
    assert verdict.score == 0.0 and verdict.result == "fail"


def test_the_canary_config_is_kayentas_shape_with_valid_promql(tmp_path: Path) -> None:
    import yaml

    from nbship.release.tools import which

    config = canary_config("nbship-model-server", "markers")
    assert config_problems(config) == []
    assert {"name", "configVersion", "applications", "judge", "metrics", "templates",
            "classifier"} <= set(config)
    assert config["judge"]["name"] == "NetflixACAJudge-v1.0"
    for metric in config["metrics"]:
        assert metric["query"]["customInlineTemplate"].startswith("PromQL:")
        assert "${scope}" in metric["query"]["customInlineTemplate"]
    assert config_problems({"name": "x", "metrics": [{"query": {"type": "datadog"}}],
                            "classifier": {}}) != []
    if which("promtool") is None:
        pytest.skip("not installed: promtool (make tools; .ci/run installs it)")
    rules = {"groups": [{"name": "kayenta", "rules": [
        {"record": f"nbship:kayenta_{i}", "expr": m["query"]["customInlineTemplate"]
         [len("PromQL:"):].replace("${scope}", "20261130-000000-000000")}
        for i, m in enumerate(config["metrics"])]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("text", "seconds"), [("PT20S", 20), ("PT0H5M", 300),
                                               ("PT1H30M", 5400), ("P1D", 86400)])
def test_lifetime_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_a_bad_lifetime_is_a_message() -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 duration"):
        duration_seconds("5 minutes")


def test_windows_hold_four_scrapes_and_the_description_names_only_its_metrics() -> None:
    """Issue 20 (7): rate() gives nothing with fewer than two samples in its window
    (Prometheus' extrapolatedRate), so every range is at least four of the PodMonitor's
    scrape intervals; the config's description names the metrics it has, no others."""
    import re

    from nbship.monitoring.cluster import pod_monitor

    interval = pod_monitor("marker-classifier")["spec"]["podMetricsEndpoints"][0]["interval"]
    scrape = int(interval.rstrip("s"))
    for metric in METRICS:
        windows = re.findall(r"\[(\d+)s\]", metric["promql"])
        assert windows and all(int(w) >= 4 * scrape for w in windows), (metric["name"],
                                                                        windows)
    config = canary_config("nbship-model-server", "markers")
    described = config["description"]
    assert all(m["name"] in described for m in config["metrics"])
    assert "drift" not in described  # PSI is the judge job's, not this config's


# issue 20 (3): Orca's interval planning, with the table of orca-kayenta's
# src/test/kotlin/com/netflix/spinnaker/orca/kayenta/pipeline/RunCanaryIntervalsStageTest.kt
# ("start and end times are not specified", lifetime 48 h) as data: warmup, interval and
# lookback minutes -> the analysis windows, in minutes after the stage starts
H = 60  # minutes in an hour
ORCA_INTERVALS = [
    (None, None, None, [(0, 48 * H)]),
    (None, "", "", [(0, 48 * H)]),
    (None, "0", "0", [(0, 48 * H)]),
    (None, str(8 * H), None, [(0, 8 * H * i) for i in range(1, 7)]),
    ("45", None, "", [(45, 45 + 48 * H)]),
    ("45", "0", None, [(45, 45 + 48 * H)]),
    ("45", str(8 * H), "", [(45, 45 + 8 * H * i) for i in range(1, 7)]),
    (None, None, "60", [(47 * H, 48 * H)]),
    (None, str(8 * H), "60", [(8 * H * i - H, 8 * H * i) for i in range(1, 7)]),
    ("45", "0", "60", [(45 + 47 * H, 45 + 48 * H)]),
    ("45", str(8 * H), "60", [(45 + 8 * H * i - H, 45 + 8 * H * i) for i in range(1, 7)]),
]


@pytest.mark.parametrize(("warmup", "interval", "lookback", "windows"), ORCA_INTERVALS)
def test_intervals_as_orca_plans_them(warmup: str | None, interval: str | None,
                                      lookback: str | None,
                                      windows: list[tuple[int, int]]) -> None:
    config = {"lifetimeDuration": "PT48H", "beginCanaryAnalysisAfterMins": warmup,
              "canaryAnalysisIntervalMins": interval, "lookbackMins": lookback}
    planned = canary_intervals(config)
    assert [(a / 60, b / 60) for a, b in planned.windows] == windows
    assert planned.warmup == 60 * int(warmup or 0)
    assert planned.interval == 60 * (int(interval) if interval and interval != "0"
                                     else 48 * H)


def test_a_lifetime_under_a_minute_is_what_orca_cannot_plan() -> None:
    # RunCanaryIntervalsStage: lifetime.toMinutes() / interval.toMinutes() is 0/0
    with pytest.raises(ValueError, match="0/0"):
        canary_intervals({"lifetimeDuration": "PT30S"})
    with pytest.raises(ValueError, match="endTime"):
        canary_intervals({})
    # a minute and a half, no interval: one interval of 90 s, as Orca waits it
    assert canary_intervals({"lifetimeDuration": "PT90S"}) == Intervals(0, 90, [(0, 90)])
    # an interval of a minute over 150 s: two intervals; Orca never analyses the last 30 s
    assert canary_intervals({"lifetimeDuration": "PT150S", "canaryAnalysisIntervalMins": 1}
                            ).windows == [(0, 60), (0, 120)]
    assert canary_intervals({"lifetimeHours": "1"}).windows == [(0, 3600)]
