"""The alerting rules, unit-tested with Prometheus's own promtool: each fires on a bad
series and stays quiet on a healthy one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nbship.monitoring.rules import rules_yaml

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="not installed: promtool (make tools installs "
                                "Debian's prometheus; .ci/run does)")
M = 'model="digits"'
SERVE = 'job="nbship-serve",instance="127.0.0.1:8080",model="digits"'


def case(series: dict[str, str], alert: str, firing: bool, at: str = "10m",
         summary: str = "") -> dict[str, Any]:
    expected = [{"exp_labels": {"severity": _severity(alert), "source": "nbship",
                                "model": "digits", **_extra(alert)},
                 "exp_annotations": {"summary": summary}}] if firing else []
    test: dict[str, Any] = {
        "interval": "1m",
        "input_series": [{"series": k, "values": v} for k, v in series.items()],
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
    }
    return test


def _severity(alert: str) -> str:
    return "critical" if alert in ("NbshipHighErrorRatio", "NbshipServerDown") else "warning"


def _extra(alert: str) -> dict[str, str]:
    return {"job": "nbship-serve", "instance": "127.0.0.1:8080"} \
        if alert == "NbshipServerDown" else {}


def requests(ok_per_min: int, errors_per_min: int) -> dict[str, str]:
    return {f'nbship_requests_total{{{M},protocol="v1",code="200"}}': f"0+{ok_per_min}x20",
            f'nbship_requests_total{{{M},protocol="v1",code="500"}}': f"0+{errors_per_min}x20"}


def latency(slow: bool) -> dict[str, str]:
    # 60 requests a minute; slow: all above 1 s, healthy: all under 10 ms
    out = {}
    for le in ("0.01", "0.5", "1.0", "+Inf"):
        fast_count = "60" if not slow or le == "+Inf" else "0"
        out[f'nbship_request_seconds_bucket{{{M},protocol="v1",le="{le}"}}'] = \
            f"0+{fast_count}x20"
    return out


def drift(metric: str, value: float, rows: int) -> dict[str, str]:
    group = ',feature_group="f0-f7"' if metric == "nbship_input_drift_psi" else ""
    return {f"{metric}{{{M}{group}}}": f"{value}x20",
            f"nbship_drift_window_rows{{{M}}}": f"{rows}x20"}


CASES = {
    "error-ratio-fires": case(requests(90, 10), "NbshipHighErrorRatio", True, summary=(
        "digits: more than 5% of inference requests fail with a server error")),
    "error-ratio-quiet": case(requests(1000, 1), "NbshipHighErrorRatio", False),
    "latency-fires": case(latency(slow=True), "NbshipHighLatencyP99", True,
                          summary="digits: p99 latency above 0.5s"),
    "latency-quiet": case(latency(slow=False), "NbshipHighLatencyP99", False),
    "input-drift-fires": case(drift("nbship_input_drift_psi", 1.3, 1000), "NbshipInputDrift",
                              True, summary="digits: inputs drifted from the training "
                              "profile (PSI 1.30)"),
    "input-drift-quiet": case(drift("nbship_input_drift_psi", 0.03, 1000), "NbshipInputDrift",
                              False),
    "input-drift-quiet-small-window": case(drift("nbship_input_drift_psi", 1.3, 50),
                                           "NbshipInputDrift", False),
    "prediction-drift-fires": case(drift("nbship_prediction_drift_psi", 2.3, 1000),
                                   "NbshipPredictionDrift", True, summary="digits: predictions "
                                   "drifted from the training profile (PSI 2.30)"),
    "prediction-drift-quiet": case(drift("nbship_prediction_drift_psi", 0.02, 1000),
                                   "NbshipPredictionDrift", False),
    "server-down-fires": case({f"up{{{SERVE}}}": "1 1 0x10"}, "NbshipServerDown", True,
                              summary="digits: the model server does not answer scrapes"),
    "server-down-quiet": case({f"up{{{SERVE}}}": "1x12"}, "NbshipServerDown", False),
    "drift-needs-a-minute": case(drift("nbship_input_drift_psi", 1.3, 1000),
                                 "NbshipInputDrift", False, at="0m"),
}


@pytest.mark.parametrize("name", CASES)
def test_rule(name: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(rules_yaml())
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [CASES[name]]}))
    done = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_pass_promtool_check(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(rules_yaml())
    done = subprocess.run(["promtool", "check", "rules", "rules.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "5 rules found" in done.stdout, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("amtool") is None,
                    reason="not installed: amtool (prometheus-alertmanager; make tools)")
def test_alertmanager_config_checks_with_amtool_with_and_without_the_secret(
        tmp_path: Path) -> None:
    from nbship.monitoring.stack import alertmanager_config

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    for text in (alertmanager_config("http://127.0.0.1:9095/alerts"),
                 alertmanager_config("http://127.0.0.1:9096/alerts", secret)):
        path = tmp_path / "alertmanager.yml"
        path.write_text(text)
        done = subprocess.run(["amtool", "check-config", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    hook = yaml.safe_load(text)["receivers"][0]["webhook_configs"][0]
    assert hook["http_config"]["authorization"] == {"type": "Bearer",
                                                    "credentials_file": str(secret)}
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("Bearer", "Basic"))  # amtool refuses Basic here
    assert subprocess.run(["amtool", "check-config", str(broken)],
                          capture_output=True).returncode != 0


def _in_namespace(test: dict[str, Any]) -> dict[str, Any]:
    """The same case with the series as a cluster's PodMonitor scrapes them: in a namespace
    (prometheus-operator pkg/prometheus/promcfg.go relabels __meta_kubernetes_namespace)."""
    test = yaml.safe_load(yaml.safe_dump(test))
    for s in test["input_series"]:
        s["series"] = s["series"].replace(M, f'namespace="ml",{M}')
    for a in test["alert_rule_test"][0]["exp_alerts"]:
        a["exp_labels"]["namespace"] = "ml"
    return test


@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("-fires")])
def test_every_alert_keeps_the_namespace(name: str, tmp_path: Path) -> None:
    # issue 20 (11): the operator's OnNamespace matcher routes only alerts with a namespace
    (tmp_path / "rules.yml").write_text(rules_yaml())
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
         "tests": [_in_namespace(CASES[name])]}))
    done = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
