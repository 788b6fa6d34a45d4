"""Runs that end badly: every way a step can stop is a message, and nothing bad is cached."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nbship.errors import ParameterError, RunError
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import RunResult, run_compiled
from nbship.pipelines.params import parse_assignments
from tests.conftest import ROOT, write_notebook

pytestmark = pytest.mark.slow


def run(nb: Path, tmp: Path, *assignments: str) -> RunResult:
    graph = build_graph(read_notebook(nb))
    values = parse_assignments(list(assignments), graph.parameters)
    compiled = compile_graph(graph, tmp / "build")
    return run_compiled(compiled, values, root=tmp / "runs", echo=lambda line: None)


@pytest.mark.parametrize("ending,message", [
    ("import sys\nsys.exit(0)", r"called exit\(0\)"),
    ("exit()", r"called exit\(None\)"),
    ("import os\nos._exit(0)", r"ended \(exit status 0\) before its outputs \(a\)"),
    ("import os\nos._exit(3)", "exited with status 3"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "killed by signal SIGKILL"),
], ids=["sys.exit(0)", "exit()", "os._exit(0)", "os._exit(3)", "SIGKILL"])
def test_a_step_that_stops_early_fails_by_name_and_is_not_cached(
        ending: str, message: str, tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "n.ipynb", [(["step:first"], "a = 1\n" + ending),
                                               (["step:second"], "print(a)")])
    for _ in range(2):  # the second run must not be served an empty cache entry
        with pytest.raises(RunError, match=message) as info:
            run(nb, tmp_path)
        assert "step 'first' failed" in str(info.value)
        assert "{" not in str(info.value).splitlines()[0]


def test_list_and_dict_parameters_keep_their_ints(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "n.ipynb", [
        (["parameters"], "items = [1, 2, 3]\ncfg = {'n': 4503599627370497, 'k': [None, 2]}\n"
         "upstream = None"),
        (["step:a"], "r = list(range(items[-1]))\nkinds = [type(v).__name__ for v in "
         "(items[0], cfg['n'], cfg['k'][1])]\nseen = upstream"),
        (["step:b"], "assert r == list(range(items[-1])), r\nassert kinds == ['int'] * 3, kinds\n"
         "assert cfg['n'] == 4503599627370497\nassert seen == upstream")])
    assert run(nb, tmp_path).status == "SUCCESS"
    result = run(nb, tmp_path, "items=[4, 5]", "upstream=s3://bucket/x")
    assert result.parameters["items"] == [4, 5] and result.parameters["upstream"] == \
        "s3://bucket/x"


@pytest.mark.parametrize("assignment,message", [
    ("n=9007199254740993", "beyond 2\\*\\*53"),
    ("rate=nan", "not a number"),
    ("rate=inf", "not a number"),
    ("items=[1, NaN]", "not a number"),
    ("cfg={\"a\": [Infinity]}", "not a number"),
])
def test_parameter_values_that_would_change_on_the_way_are_refused(
        assignment: str, message: str, tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "n.ipynb", [
        (["parameters"], "n = 1\nrate = 0.5\nitems = [1]\ncfg = {}"),
        (["step:a"], "print(n, rate, items, cfg)")])
    graph = build_graph(read_notebook(nb))
    with pytest.raises(ParameterError, match=message) as info:
        parse_assignments([assignment], graph.parameters)
    assert info.value.exit_code == 2


def test_editing_a_local_module_reruns_the_steps_that_import_it(tmp_path: Path) -> None:
    (tmp_path / "helper_mod.py").write_text("def f():\n    return 1\n")
    nb = write_notebook(tmp_path / "n.ipynb", [
        (["step:a"], "import helper_mod\nvalue = helper_mod.f()"),
        (["step:b"], "print(value)")])
    first = run(nb, tmp_path)
    assert not first.tasks["a"].cached
    assert run(nb, tmp_path).tasks["a"].cached
    (tmp_path / "helper_mod.py").write_text("def f():\n    return 2\n")
    third = run(nb, tmp_path)
    assert not third.tasks["a"].cached
    assert third.tasks["a"].outputs["nbship_out_value"]["metadata"]["sha256"] != \
        first.tasks["a"].outputs["nbship_out_value"]["metadata"]["sha256"]


def test_sigterm_stops_the_run_its_step_and_its_temporary_folders(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pid_file = tmp_path / "step.pid"
    nb = write_notebook(tmp_path / "n.ipynb", [
        (["step:slow"], f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))"
         "\ntime.sleep(120)\nx = 1"), (["step:after"], "print(x)")])
    # a temporary folder of the run's own: other tests' runs (xdist) make step folders too;
    # short, since the fork server's AF_UNIX socket lives there (108 bytes at most)
    tmp = Path(tempfile.mkdtemp(prefix="nbs-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    proc = subprocess.Popen([sys.executable, "-m", "nbship", "run", str(nb), "--root",
                             str(tmp_path / "runs"), "-o", str(tmp_path / "build")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TMPDIR": str(tmp)})
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    step_pid = int(pid_file.read_text())
    assert list(tmp.glob("nbship-step-*"))  # the step's folder, while it runs
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "stopped (SIGTERM)" in err and "Traceback" not in err
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(step_pid, 0)
    assert not list(tmp.glob("nbship-step-*"))


def test_a_failure_report_that_cannot_be_written_leaves_the_steps_own_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        ) -> None:
    from nbship.runtime import step as runtime_step

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the failures folder would go (as with a full disk)")
    monkeypatch.setenv(runtime_step.FAILURE_DIR_ENV, str(blocked / "failures"))
    with pytest.raises(ZeroDivisionError):
        with runtime_step.StepRun("a", "n.ipynb"):
            1 / 0  # noqa: B018
    err = capsys.readouterr().err
    assert "ZeroDivisionError: division by zero" in err
    assert "the failure report could not be written" in err
