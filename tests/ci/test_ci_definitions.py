"""The CI files for users' repositories install once, run `nbship test`, keep the reports."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT


def test_github_actions_workflow() -> None:
    doc = yaml.safe_load((ROOT / "ci" / "github-actions.yml").read_text())
    steps = doc["jobs"]["notebooks"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any(r.startswith("python -m pip install -r requirements.txt") for r in runs)
    assert "nbship test notebooks/ --artifacts nbship-test" in runs
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "nbship-test/"


def test_gitlab_ci_job() -> None:
    job = yaml.safe_load((ROOT / "ci" / "gitlab-ci.yml").read_text())["notebooks"]
    assert "nbship test notebooks/ --artifacts nbship-test" in job["script"]
    assert job["artifacts"]["reports"]["junit"] == "nbship-test/junit.xml"
    assert job["artifacts"]["when"] == "always"
