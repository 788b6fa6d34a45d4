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


def _nbship_commands(script: str) -> list[list[str]]:
    """The nbship command lines of a script, CI variables replaced by sample values."""
    import re
    import shlex

    text = re.sub(r"\$\{\{[^}]*\}\}", "example", script.replace("\\\n", " "))
    text = re.sub(r"\$[A-Z_]+", "registry.example.com/group/project", text)
    commands = []
    for line in text.splitlines():
        words = shlex.split(line)
        if "nbship" in words:
            commands.append(words[words.index("nbship") + 1:])
    return commands


def test_publish_jobs_run_on_main_after_the_tests_and_parse() -> None:
    from nbship.cli import _parser

    github = yaml.safe_load((ROOT / "ci" / "github-actions.yml").read_text())["jobs"]
    job = github["publish"]
    assert job["needs"] == "notebooks" and "refs/heads/main" in job["if"]
    assert job["permissions"]["packages"] == "write"
    gitlab = yaml.safe_load((ROOT / "ci" / "gitlab-ci.yml").read_text())["publish"]
    assert gitlab["rules"][0]["if"] == "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
    scripts = ["\n".join(s.get("run", "") for s in job["steps"]), "\n".join(gitlab["script"])]
    for script in scripts:
        commands = _nbship_commands(script)
        verbs = [c[0] for c in commands]
        assert verbs.index("run") < verbs.index("publish") < verbs.index("release")
        for argv in commands:
            _parser().parse_args(argv)  # exits (SystemExit) on a bad option
