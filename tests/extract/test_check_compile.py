"""check <=> compile (issue 17 §9): what `nbship check` accepts compiles (and runs); what
cannot compile is a problem at `check`, naming the cell and the line, never a traceback.

Deeply nested code is the case that broke it: `x = 1 + 1 + ...` with 3000 terms passed
check (analysed with a raised recursion limit) and crashed compile with RecursionError
(the generated module re-parsed at the default limit, deeper in the stack)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nbship.errors import NbshipError
from nbship.extract.graph import build_graph
from nbship.extract.names import MAX_NESTING, CellCode, analyse, nesting
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from tests.conftest import ROOT


def write_notebook(path: Path, cells: list[tuple[str, list[str]]]) -> Path:
    doc = {"nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {"tags": tags},
                   "execution_count": None, "outputs": [], "source": source}
                  for i, (source, tags) in enumerate(cells)]}
    path.write_text(json.dumps(doc))
    return path


def nbship(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbship", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def chain(n: int) -> str:
    return "x = " + " + ".join(["1"] * n)


def test_the_3000_term_sum_is_a_problem_at_check_and_compile_says_the_same(
        tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "deep.ipynb", [
        ("a = 2\n" + chain(3000), ["step:first"]), ("y = x * a\nprint(y)", ["step:second"])])
    check = nbship("check", str(nb), cwd=tmp_path)
    assert check.returncode == 1, check.stdout + check.stderr
    where = f"{nb}, cell 0 (id c0), line 2: syntax error: nested 3001 levels deep"
    assert where in check.stdout
    compiled = nbship("compile", str(nb), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert compiled.returncode == 1 and where in compiled.stderr, compiled.stderr
    for out in (check, compiled):
        assert "Traceback" not in out.stdout + out.stderr
        assert "RecursionError" not in out.stdout + out.stderr


def test_the_deepest_accepted_cell_compiles_and_runs(tmp_path: Path) -> None:
    """MAX_NESTING deep is accepted by check, compiled, and run on kfp.local."""
    terms = MAX_NESTING - 1  # Module > Assign > (terms - 1) BinOps > Constant
    tree = analyse(chain(terms)).tree
    assert tree is not None and nesting(tree) == (MAX_NESTING, 1)
    nb = write_notebook(tmp_path / "deep.ipynb", [
        (chain(terms), ["step:first"]), ("y = x * 2\nprint(y)", ["step:second"])])
    check = nbship("check", str(nb), cwd=tmp_path)
    assert check.returncode == 0 and "0 error(s)" in check.stdout, check.stdout
    run = nbship("run", str(nb), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_one_level_more_is_refused_whatever_the_stack_depth() -> None:
    """The verdict does not depend on how deep in the stack check runs (Python's own
    limit does: 2983 terms parse at the top of the stack, 2383 two hundred frames down)."""
    def at(depth: int, terms: int) -> CellCode:
        return at(depth - 1, terms) if depth else analyse(chain(terms))

    for terms, ok in ((MAX_NESTING - 1, True), (MAX_NESTING, False), (2900, False)):
        for depth in (0, 300, 700):
            assert (at(depth, terms).syntax_error is None) == ok, (terms, depth)


# --- the property: over deep constructs of every kind, in every kind of cell, check has no
# errors exactly when compile succeeds, and compile never raises anything but NbshipError ---

CONSTRUCTS: dict[str, Callable[[int], str]] = {
    "sum": chain,
    "minus": lambda n: "x = " + "-" * n + "1",
    "not": lambda n: "x = " + "not " * n + "True",
    "lambda": lambda n: "x = (" + "lambda: " * n + "1)",
    "ternary": lambda n: "x = " + "1 if True else " * n + "1",
    "attribute": lambda n: "x = (1)" + ".real" * n,
    "calls": lambda n: "x = 'a'" + ".strip()" * n,
    "slices": lambda n: "x = 'abc'" + "[:]" * n,
    "brackets": lambda n: "x = " + "[" * min(n, 199) + "]" * min(n, 199),
    "dicts": lambda n: "x = " + "{'k': " * min(n, 199) + "1" + "}" * min(n, 199),
    "ifs": lambda n: "x = 1\n" + "".join(" " * i + "if x:\n" for i in range(min(n, 99)))
    + " " * min(n, 99) + "x = 2",
}
DEPTHS = st.one_of(st.integers(1, 40), st.integers(MAX_NESTING - 12, MAX_NESTING + 12),
                   st.sampled_from([150, 199, 200, 201, 500, 2000, 2990, 3000, 5000]))
PLACES = st.sampled_from(["step", "functions", "parameters", "serve", "imports", "metrics",
                          "skip"])


def _cells(place: str, code: str) -> list[tuple[str, list[str]]]:
    if place == "parameters":
        return [(code, ["parameters"]), ("print(x)", ["step:use"])]
    if place == "functions":
        body = "\n".join("    " + line for line in code.splitlines())
        return [(f"def f():\n{body}\n    return x", ["functions"]), ("y = f()", ["step:use"])]
    if place == "serve":
        return [("model = 1", ["step:train"]),
                (code + "\ndef predict(inputs):\n    return [model for _ in inputs]", ["serve"])]
    if place == "imports":
        return [(f"import os\n{code}", ["imports"]), ("print(os.sep)", ["step:use"])]
    if place == "metrics":
        return [("x = 1", ["step:make"]), (f"{code}\nprint(x)", ["pipeline-metrics"])]
    if place == "skip":
        return [("x = 1", ["step:make"]), (code, ["skip"]), ("print(x)", ["step:use"])]
    return [(code, ["step:make"]), ("print(x)", ["step:use"])]


@settings(max_examples=int(os.environ.get("NBSHIP_CHECK_COMPILE_EXAMPLES", "60")),
          deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(construct=st.sampled_from(sorted(CONSTRUCTS)), depth=DEPTHS, place=PLACES)
@example(construct="sum", depth=3000, place="step")
@example(construct="sum", depth=MAX_NESTING - 1, place="step")
@example(construct="brackets", depth=199, place="parameters")
@example(construct="dicts", depth=199, place="parameters")
@example(construct="lambda", depth=MAX_NESTING, place="functions")
def test_check_and_compile_agree(construct: str, depth: int, place: str,
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("nb")
    nb = write_notebook(folder / "n.ipynb", _cells(place, CONSTRUCTS[construct](depth)))
    graph = build_graph(read_notebook(nb))
    try:
        compile_graph(graph, folder / "out")
    except NbshipError as exc:
        assert graph.errors, f"check saw no error, compile refused: {exc.message}"
        assert "cell " in str(exc.where) and "line " in str(exc.where), str(exc)
        return
    assert not graph.errors, [p.message for p in graph.errors]
    assert (folder / "out" / "pipeline.yaml").is_file()


def test_a_deep_cell_checked_from_a_small_thread_stack_is_a_problem_not_a_crash() -> None:
    """Parsing recurses in C: a server's worker thread (the JupyterLab extension checks in
    one) with a small stack crashed (SIGSEGV) on a 30000-term sum before; in a process of
    its own here, so a crash is a failure, not the end of the test run."""
    script = (
        "import threading\n"
        "threading.stack_size(512 * 1024)\n"
        "from nbship.extract.names import analyse\n"
        "out = []\n"
        "def go():\n"
        "    for n in (5000, 30000, 200000):\n"
        "        out.append(analyse('x = ' + ' + '.join(['1'] * n)).syntax_error)\n"
        "t = threading.Thread(target=go)\n"
        "t.start()\n"
        "t.join()\n"
        "print(repr(out))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    found = ast.literal_eval(done.stdout)
    assert [line for line, _ in found] == [1, 1, 1]
    assert "nested 5001 levels deep" in found[0][1] and "nested 30001" in found[1][1]
    assert "too deeply nested to parse" in found[2][1]
