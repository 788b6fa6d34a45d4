"""Properties of the rehearsal's Job check (issue 17 §3): whatever a pipeline file puts in
a Job's container, the check answers with problems (never another exception), and what
it lets through is a command of render's table with render's environment; every command
render's table describes, with values of their kinds, gets through."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbship.spinnaker.rehearse import job_problems
from nbship.spinnaker.render import JOB_COMMANDS, JOB_ENV, VALUE_KINDS

EXAMPLES = int(os.environ.get("NBSHIP_HYPOTHESIS_EXAMPLES", "40"))
PROPS = settings(max_examples=EXAMPLES * 5, deadline=None,
                 derandomize="NBSHIP_HYPOTHESIS_RANDOM" not in os.environ,
                 suppress_health_check=[HealthCheck.too_slow])
WORDS = st.one_of(
    st.sampled_from(["python", "-m", "nbship", "kfp", "run", "upload", "schedule", "canary",
                     "ready", "judge", "deploy", "rehearse", "test", "--", "-p", "--host",
                     "--model", "--stable", "--canary", "--timeout", "--seconds", "--cron",
                     "--reference", "--experiment", "--inputs", "--host=http://x", "-c",
                     "x=1", "http://127.0.0.1:9", "h:5000/releases/r", "../outside", "${x}",
                     "/etc/passwd", "file:///etc", "0 0 3 * * *", "600", ""]),
    st.text(max_size=12))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
ENV = st.one_of(st.sampled_from([*JOB_ENV, {"name": "PYTHONPATH", "value": "/tmp"},
                                 {"name": "NBSHIP_ARTIFACT_KEY", "value": "00"}]), JSON)
CONTAINERS = st.fixed_dictionaries(
    {"command": st.one_of(st.lists(WORDS, max_size=14).map(
        lambda w: ["python", "-m", "nbship", *w]), st.lists(WORDS, max_size=6), JSON)},
    optional={"args": st.one_of(st.lists(WORDS, max_size=8), JSON),
              "env": st.one_of(st.lists(ENV, max_size=3), JSON), "envFrom": JSON})


@PROPS
@given(CONTAINERS, st.booleans())
def test_any_container_gets_problems_or_is_a_command_of_renders_table(
        container: dict[str, Any], resolved: bool) -> None:
    problems = job_problems(container, "$", resolved=resolved)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    if problems:
        assert all(p.startswith("$") for p in problems)
        return
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    assert argv[:3] == ["python", "-m", "nbship"]
    command = next(c for verb, c in JOB_COMMANDS.items() if tuple(argv[3:3 + len(verb)]) == verb)
    options = {o for o, _, _ in command.options}
    rest = argv[3 + len(command.verb):]
    flags = [w for i, w in enumerate(rest) if w.startswith("-")
             and (i == 0 or rest[i - 1] not in options)]
    assert set(flags) <= options
    assert all(e in JOB_ENV for e in container.get("env") or [])
    assert not container.get("envFrom")
    if resolved:
        assert not any("${" in w for w in argv)


LABEL = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
HOST = st.sampled_from(["127.0.0.1:5000", "registry.example.com", "localhost:1",
                        "ml-pipeline-ui.kubeflow.svc.cluster.local"])
KINDS: dict[str, st.SearchStrategy[str]] = {
    "reference": st.builds(lambda h, path, tag, digest: f"{h}/{'/'.join(path)}{tag}{digest}",
                           HOST, st.lists(LABEL, min_size=1, max_size=3),
                           st.sampled_from(["", ":latest", ":run-1.2_x"]),
                           st.sampled_from(["", "@sha256:" + "0a" * 32])),
    "url": st.builds(lambda scheme, h, path: f"{scheme}://{h}{path}",
                     st.sampled_from(["http", "https"]), HOST,
                     st.sampled_from(["", "/", "/v2/models", "/a.b_c~d"])),
    "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    "seconds": st.integers(0, 10**6).map(str),
    "cron": st.sampled_from(["0 0 3 * * *", "*/5 * * * * ?", "0 30 2 ? * MON-FRI"]),
    "parameter": st.builds(lambda n, v: f"{n}={v}",
                           st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                           st.sampled_from(["1", '"a b"', "true", "[1, 2]", "0.5", '"--x"'])),
}


@st.composite
def rendered(draw: st.DrawFn) -> list[str]:
    """A command of render's table, with values drawn from their kinds."""
    command = draw(st.sampled_from(list(JOB_COMMANDS.values())))

    def value(kind: str) -> str:
        word = draw(KINDS[kind])
        assert VALUE_KINDS[kind].fullmatch(word), (kind, word)
        return word

    options = {o: [value(k) for _ in range(draw(st.integers(0, 3)))] if rep else value(k)
               for o, k, rep in command.options}
    return ["python", "-m", "nbship",
            *command.argv([value(k) for k in command.positional], options)]


@PROPS
@given(rendered(), st.sampled_from([[], [JOB_ENV[0]], [JOB_ENV[1]], list(JOB_ENV)]))
def test_every_command_of_renders_table_gets_through(argv: list[str],
                                                     env: list[dict[str, Any]]) -> None:
    assert job_problems({"command": argv, "env": env}, "$", resolved=True) == []
    assert job_problems({"command": argv[:3], "args": argv[3:]}, "$", resolved=True) == []
    smuggled = [*argv, "--token", "t"]
    assert any("'--token' is not an option render writes" in p
               for p in job_problems({"command": smuggled}, "$", resolved=True))
