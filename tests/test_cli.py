"""The nbship command as a user runs it: exit codes, messages, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, fixture_path


def nbship(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbship", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=300)


def test_help_teaches_the_tags_and_verbs() -> None:
    out = nbship("--help")
    assert out.returncode == 0
    for word in ("check", "compile", "run", "step:NAME", "prev:NAME", "parameters"):
        assert word in out.stdout


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from nbship.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('kfp', 'torch', 'IPython', 'kserve') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_check_clean_notebook_exits_0() -> None:
    out = nbship("check", str(fixture_path("fan_out_fan_in")))
    assert out.returncode == 0
    assert "init -> left: base" in out.stdout


def test_check_problems_exit_1_and_name_the_cell() -> None:
    out = nbship("check", str(fixture_path("undefined_name")))
    assert out.returncode == 1
    assert "cell 2 (id c2), line 2: 'missing' is read here" in out.stdout


def test_check_json_and_mermaid() -> None:
    doc = json.loads(nbship("check", "--format", "json",
                            str(fixture_path("three_numpy_steps"))).stdout)
    assert [s["name"] for s in doc["steps"]] == ["generate", "center", "summarize"]
    assert doc["edges"][0] == {"from": "generate", "to": "center", "kind": "data",
                               "variables": ["data"]}
    graph = nbship("check", "--graph", str(fixture_path("three_numpy_steps"))).stdout
    assert graph.startswith("graph TD") and 'generate -->|"data"| center' in graph


def test_strict_counts_warnings() -> None:
    nb = str(fixture_path("unknown_tag_warns"))
    assert nbship("check", nb).returncode == 0
    assert nbship("check", "--strict", nb).returncode == 1


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("maker, fragment", [
    (lambda d: write(d / "bad.ipynb", '{"cells": [,]}'), "invalid JSON at line 1"),
    (lambda d: write(d / "old.ipynb", json.dumps({"nbformat": 3, "worksheets": []})),
     "nbformat 3 is not supported"),
    (lambda d: write(d / "notes.txt", "just some text"), "invalid JSON"),
    (lambda d: write(d / "list.ipynb", "[1, 2]"), "JSON without 'cells'"),
    (lambda d: write(d / "empty.ipynb", json.dumps({"nbformat": 4, "nbformat_minor": 5,
                                                    "metadata": {}, "cells": []})),
     "no code to run"),
    (lambda d: d / "missing.ipynb", "no such file"),
    (lambda d: d, "is a directory"),
])
@pytest.mark.parametrize("verb", ["check", "compile", "run"])
def test_unusable_input_exits_2_without_traceback(tmp_path: Path, maker, fragment: str,
                                                  verb: str) -> None:
    path = maker(tmp_path)
    out_dir = tmp_path / "out"
    args = [verb, str(path)] + (["-o", str(out_dir)] if verb != "check" else [])
    result = nbship(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert fragment in result.stderr and str(path.name) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_compile_refuses_problems_and_writes_nothing(tmp_path: Path) -> None:
    result = nbship("compile", str(fixture_path("prev_cycle")), "-o", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "the steps form a cycle: a -> b -> a" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_bad_parameter_value_exits_2(tmp_path: Path) -> None:
    result = nbship("run", str(fixture_path("three_numpy_steps")), "-p", "n=many",
                    "--root", str(tmp_path / "runs"), "-o", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "-p n=many: expected an int" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_run_prints_progress_metrics_and_provenance(tmp_path: Path) -> None:
    result = nbship("run", str(fixture_path("three_numpy_steps")), "-p", "n=20",
                    "--root", str(tmp_path / "runs"), "-o", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "nbship run three-numpy-steps: 3 steps on kfp.local (n=20)"
    assert [line.split()[0] for line in lines[1:4]] == ["generate", "center", "summarize"]
    assert "SUCCESS" in result.stdout and "metrics: spread=" in result.stdout
    assert next((tmp_path / "runs").rglob("provenance.json")).exists()


@pytest.mark.slow
def test_failed_run_exits_1_naming_the_cell(tmp_path: Path) -> None:
    result = nbship("run", str(fixture_path("failing_step")), "--root", str(tmp_path / "r"),
                    "-o", str(tmp_path / "b"))
    assert result.returncode == 1
    assert "cell 3 (id c3), line 2: step 'divide' failed: ZeroDivisionError" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("make,message", [
    (lambda d: Path("/dev/zero"), "not a regular file"),
    (lambda d: (subprocess.run(["mkfifo", str(d / "f.ipynb")], check=True), d / "f.ipynb")[1],
     "not a regular file"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "deep.ipynb").write_text('{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}")
     and d / "deep.ipynb", "nested too deeply"),
], ids=["dev-zero", "fifo", "directory", "deep-json"])
def test_what_is_not_a_notebook_file_is_refused_at_once(make: object, message: str,
                                                        tmp_path: Path) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    out = nbship("check", str(path))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_a_cell_python_runs_but_deeply_nested_is_analysed(tmp_path: Path) -> None:
    """Deep, but within names.MAX_NESTING (what every later stage compiles; deeper is a
    problem at check: tests/extract/test_check_compile.py)."""
    from nbship.extract.names import MAX_NESTING
    from tests.conftest import write_notebook

    terms = MAX_NESTING - 10
    nb = write_notebook(tmp_path / "plus.ipynb", [
        (["step:a"], "x = " + " + ".join(["1"] * terms)), (["step:b"], "print(x)")])
    out = nbship("check", str(nb))
    assert out.returncode == 0, out.stderr
    assert "a -> b: x" in out.stdout


@pytest.mark.parametrize("ref", ["../../etc/passwd", "127.0.0.1:5000/releases/Bad Name",
                                 "localhost/releases/x@sha256:zz", "../x/y:tag"])
def test_release_show_refuses_what_is_not_a_reference(ref: str) -> None:
    out = nbship("release", "show", ref)
    assert out.returncode == 1 and "not a registry reference" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_output_folder_that_is_a_file_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    out = nbship("compile", str(fixture_path("fan_out_fan_in")), "-o", str(tmp_path / "taken"))
    assert out.returncode == 1 and "is a file" in out.stderr and "Traceback" not in out.stderr


def test_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "nbship", "check",
                             str(fixture_path("fan_out_fan_in"))], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader left, as `| head -0` does
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err


def test_an_output_folder_that_cannot_be_made_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    out = nbship("compile", str(fixture_path("fan_out_fan_in")), "-o",
                 str(tmp_path / "file" / "sub"))
    assert out.returncode == 1 and "Not a directory" in out.stderr
    assert "Traceback" not in out.stderr
