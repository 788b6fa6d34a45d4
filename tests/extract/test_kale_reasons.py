"""The reasons tests/extract/kale_cases.py gives for each Kale case nbship differs from on
purpose (DELIBERATE), each checked: these tests fail when a reason stops being true.

Also the two Kale features the table once called "not comparable": the trailing bare
variable (kubeflow/kale#783) and the per-step HTML report's tags (report:enabled/disabled).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nbship.errors import UnusableInputError
from nbship.extract.graph import StepGraph, build_graph, report_cells
from nbship.notebook import read_notebook
from tests.conftest import write_notebook
from tests.extract.kale_cases import CASES, DELIBERATE

Cells = list[tuple[list[str], str]]


def graph(tmp_path: Path, cells: Cells) -> StepGraph:
    return build_graph(read_notebook(write_notebook(tmp_path / "n.ipynb", cells),
                                     require_code=False))


def notebook_values(cells: Cells, names: list[str]) -> dict[str, Any]:
    """What the notebook holds at its end: the cells run in one namespace, in order, as a
    kernel runs them (these cells are plain Python, no magics)."""
    namespace: dict[str, Any] = {}
    for tags, source in cells:
        if "skip" in tags or "pipeline-metrics" in tags:
            continue
        exec(compile(source, "<cell>", "exec"), namespace)  # noqa: S102 - the test's own cells
    return {n: namespace[n] for n in names}


def pipeline_metrics(tmp_path: Path, cells: Cells, params: dict[str, str] | None = None,
                     ) -> dict[str, float]:
    """The metrics of the notebook compiled and run by nbship on kfp.local."""
    from nbship.pipelines.compile import compile_graph
    from nbship.pipelines.local import run_compiled
    from nbship.pipelines.params import parse_assignments

    tmp_path.mkdir(parents=True, exist_ok=True)
    g = graph(tmp_path, cells)
    assert g.errors == [], g.errors
    values = parse_assignments([f"{k}={v}" for k, v in (params or {}).items()], g.parameters)
    result = run_compiled(compile_graph(g, tmp_path / "build"), values, root=tmp_path / "runs",
                          echo=lambda line: None)
    assert result.status == "SUCCESS"
    return dict(result.metrics)


def test_every_deliberate_reason_has_a_test_here() -> None:
    backed = {7, 9, 13, 14, 15, 16, 17, 19, 20, 23, 39, 40, 41, 42, 43, 48, 51, 52, 53, 88,
              90, 95, 96, 106, 113}
    assert set(DELIBERATE) == backed, "a new reason needs a test in this module"


def kale_case(case_id: int) -> dict[str, Any]:
    if not CASES.exists():
        pytest.skip(f"{CASES} is not here (the shared corpus; set NBSHIP_CORPUS)")
    return next(c for c in json.loads(CASES.read_text()) if c["id"] == case_id)


# FORWARDING (cases 7, 9, 13-17) -------------------------------------------------------
# Kale's shapes: a function reads a global (x) bound in an earlier step; it is defined in
# one step (inside try:, or nested, or called through other functions) and called in a
# later one. The functions return the value here so that it can be compared.
FORWARDING_CELLS: Cells = [
    (["step:step1"], "x = 5\ny = 6"),
    (["step:step2"], "def foo():\n    return x"),  # case 7
    (["step:nested"], "def outer():\n    def inner():\n        return x\n    return inner()"),  # 9
    (["step:guarded"], "try:\n    def bar():\n        return y\nexcept Exception:\n    pass"),  # 13
    (["step:through"], "def via():\n    return foo()"),  # 14, 15
    (["step:init"], "def init():\n    return x + 1"),
    (["step:chain1"], "def chain():\n    return init() * 10"),  # 16
    (["step:chain2"], "def chain2():\n    return chain() + 1"),  # 16
    (["step:both"], "def result():\n    return foo() + bar()"),  # 17
    (["step:final"], "r7 = foo()\nr9 = outer()\nr13 = bar()\nr14 = via()\nr16 = chain2()\n"
                     "r17 = result()"),
    (["pipeline-metrics"], "print(r7)\nprint(r9)\nprint(r13)\nprint(r14)\nprint(r16)\n"
                           "print(r17)"),
]
RESULTS = ["r7", "r9", "r13", "r14", "r16", "r17"]


def test_forwarding_a_defining_step_passes_on_only_what_it_binds(tmp_path: Path) -> None:
    """Kale adds a function's free variables (x, y) to the outputs of the step that defines
    it and of every step in between; in nbship a step never passes on a value it does not
    bind: the steps defining functions pass on the functions only."""
    g = graph(tmp_path, FORWARDING_CELLS)
    assert g.errors == []
    defining = {s.name: sorted(s.outputs) for s in g.steps if s.name not in ("step1", "final")}
    assert defining == {"step2": ["foo"], "nested": ["outer"], "guarded": ["bar"],
                        "through": ["via"], "init": ["init"], "chain1": ["chain"],
                        "chain2": ["chain2"], "both": ["result"]}
    assert not any(v in s.outputs for s in g.steps if s.name != "step1" for v in ("x", "y"))
    # and no step takes x or y from a step that does not bind them
    assert all(g.step(src).name == "step1" for s in g.steps for v, src in s.inputs.items()
               if v in ("x", "y"))


def test_forwarding_the_pipeline_computes_the_notebooks_values(tmp_path: Path) -> None:
    """... and the functions still compute what the notebook computes."""
    want = notebook_values(FORWARDING_CELLS, RESULTS)
    got = pipeline_metrics(tmp_path, FORWARDING_CELLS)
    assert {n: got[n] for n in RESULTS} == {n: float(v) for n, v in want.items()}
    assert want == {"r7": 5, "r9": 5, "r13": 6, "r14": 5, "r16": 61, "r17": 11}


@pytest.mark.parametrize("case_id", [7, 9, 13, 14, 15, 16, 17])
def test_forwarding_on_kales_own_cases(case_id: int, tmp_path: Path) -> None:
    """Kale's exact cases: each step takes what Kale's takes, from the step that binds it;
    what Kale's steps pass on besides are names one of the case's functions reads (its
    free variables) that the step does not bind, only took as an input."""
    import ast

    case = kale_case(case_id)
    parents: dict[str, list[str]] = {}
    for parent, child in case["edges"]:
        parents.setdefault(child, []).append(parent)
    g = graph(tmp_path, [([f"step:{s['name']}", *(f"prev:{p}" for p in parents.get(
        s["name"], []))], s["source"]) for s in case["steps"]])
    assert g.errors == []
    free = {node.id for s in case["steps"] for func in ast.walk(ast.parse(s["source"]))
            if isinstance(func, ast.FunctionDef) for node in ast.walk(func)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)} - {"print"}
    assert free
    for step in g.steps:
        kale = case["expected"][step.name]
        assert set(step.inputs) == set(kale["ins"]), step.name
        assert all(name in g.step(src).produces for name, src in step.inputs.items())
        forwarded = set(kale["outs"]) - set(step.outputs)
        assert set(step.outputs) <= set(kale["outs"]), step.name
        assert forwarded <= free and forwarded <= set(step.inputs), step.name
        assert not forwarded & set(step.produces), step.name


# marshal candidates (cases 19, 20, 23) ------------------------------------------------
@pytest.mark.parametrize("case_id", [19, 20, 23])
def test_a_step_passes_on_only_what_its_cells_bind(case_id: int, tmp_path: Path) -> None:
    """Kale's marshal candidates include names the cell only reads or calls; a later step
    reading such a name takes it from the step that binds it, never from this one."""
    source = kale_case(case_id)["cells"][0]
    upstream = "import numpy as np\nimport os\na = np.ones((2, 2))\n" \
               "class my_context:\n    def __init__(self, p):\n        self.p = p\n" \
               "    def __enter__(self):\n        return self\n" \
               "    def __exit__(self, *exc):\n        return False\n" \
               "    def use(self):\n        return self.p\nparam = 3"
    g = graph(tmp_path, [(["step:up"], upstream), (["step:cell"], source),
                         (["step:later"], "z = (a, my_context, param, print)")])
    assert g.errors == []
    cell = g.step("cell")
    read_only = set(kale_case(case_id)["expected"]["target"]) - set(cell.produces) - {"np", "os"}
    assert read_only  # print; a, print; my_context, param
    assert not read_only & set(cell.outputs)
    assert g.step("later").inputs == {n: "cell" if n in cell.produces else "up"
                                      for n in ("a", "my_context", "param")}


# parameters (cases 39-43) --------------------------------------------------------------
def test_a_none_parameter_is_an_optional_parameter(tmp_path: Path) -> None:
    """Case 39: `a = None` is a parameter (Kale refuses it): optional in the YAML, None
    by default and given with -p."""
    import yaml

    from nbship.pipelines.compile import compile_graph

    cells: Cells = [(["parameters"], "a = None"),
                    (["step:s"], "given = 0.0 if a is None else float(a)"),
                    (["pipeline-metrics"], "print(given)")]
    g = graph(tmp_path, cells)
    assert g.errors == [] and g.parameters["a"].type == "none"
    compiled = compile_graph(g, tmp_path / "build")
    spec = yaml.safe_load(Path(compiled.yaml).read_text())
    assert spec["root"]["inputDefinitions"]["parameters"]["a"]["isOptional"] is True
    assert pipeline_metrics(tmp_path / "default", cells) == {"given": 0.0}
    assert pipeline_metrics(tmp_path / "given", cells, {"a": "0.5"}) == {"given": 0.5}


@pytest.mark.parametrize("case_id", [40, 41, 42])
def test_a_parameters_cell_statement_is_warned_about_not_refused(case_id: int,
                                                                 tmp_path: Path) -> None:
    """Cases 40-42 (`a + 1`, `a, b = 3`, `a = b = 3`): Kale refuses the cell; nbship warns
    at the line and compiles the rest (papermill's parameters cells hold such lines)."""
    source = kale_case(case_id)["cells"][0]
    g = graph(tmp_path, [(["parameters"], "n = 1\n" + source), (["step:a"], "m = n")])
    assert g.errors == []
    warned = [p for p in g.warnings if p.kind == "parameter" and p.where.line == 2]
    assert warned, g.problems
    assert "n" in g.parameters


def test_a_list_parameter_arrives_exactly(tmp_path: Path) -> None:
    """Case 43: `a = [2]` is a list parameter (Kale refuses it); values travel as JSON
    text and arrive with their types."""
    cells: Cells = [(["parameters"], "a = [2]"),
                    (["step:s"], "n = len(a)\nints = float(all(type(v) is int for v in a))\n"
                                 "total = float(sum(a))"),
                    (["pipeline-metrics"], "print(n)\nprint(ints)\nprint(total)")]
    g = graph(tmp_path, cells)
    assert g.errors == [] and g.parameters["a"].type == "list"
    got = pipeline_metrics(tmp_path, cells, {"a": "[1, 2, 3]"})
    assert got == {"n": 3.0, "ints": 1.0, "total": 6.0}


# metrics (cases 48, 51-53, 95, 113) ----------------------------------------------------
def test_metric_names_keep_the_variables_name(tmp_path: Path) -> None:
    """Cases 48, 113: `print(test_var)` is the metric `test_var` (Kale: `test-var`), and
    KFP v2 takes it."""
    cells: Cells = [(["step:s"], "test_var = 0.25"), (["pipeline-metrics"], "print(test_var)")]
    assert graph(tmp_path, cells).metrics == {"test_var": "s"}
    assert pipeline_metrics(tmp_path, cells) == {"test_var": 0.25}


def test_parameters_as_metrics_are_logged_by_the_last_step_above(tmp_path: Path) -> None:
    """Case 113: parameters printed in the metrics cell are logged by the last step above
    it (Kale: the first)."""
    case = kale_case(113)
    cells = [(m.get("tags", []), src) for m, src in zip(case["cell_metadata"], case["cells"])]
    g = graph(tmp_path, cells)
    assert g.errors == []
    assert g.metrics == {"d1": "sum_matrix", "d2": "sum_matrix", "sum_result": "sum_matrix"}


@pytest.mark.parametrize("case_id", [51, 52, 53])
def test_a_bare_name_in_the_metrics_cell_is_a_metric(case_id: int, tmp_path: Path) -> None:
    """Cases 51-53: a bare `name` line is a metric (Jupyter displays it), not an error."""
    source = kale_case(case_id)["cells"][0]
    names = [w for w in source.replace("print(", " ").replace(")", " ").split()]
    cells: Cells = [(["step:s"], "\n".join(f"{n} = {i + 1}" for i, n in enumerate(names))),
                    (["pipeline-metrics"], source)]
    g = graph(tmp_path, cells)
    assert g.errors == []
    assert sorted(g.metrics) == sorted(names)
    assert pipeline_metrics(tmp_path, cells) == {n: float(i + 1) for i, n in enumerate(names)}


def test_a_metrics_cell_may_stand_anywhere(tmp_path: Path) -> None:
    """Case 95: a metrics cell followed by other cells is accepted (Kale: it must be last);
    its metric is the value printed where it stands, and check warns when a later step
    changes it."""
    cells: Cells = [(["step:a"], "acc = 0.5"), (["pipeline-metrics"], "print(acc)"),
                    (["imports"], "import math"), (["step:b"], "acc = math.sqrt(acc)")]
    g = graph(tmp_path, cells)
    assert g.errors == []
    assert g.metrics == {"acc": "a"}
    assert any("acc" in p.message and p.kind == "metrics" for p in g.warnings), g.problems
    assert pipeline_metrics(tmp_path, cells) == {"acc": 0.5}


# tags (cases 88, 90, 96, 106; 89 agrees) -----------------------------------------------
def test_an_unknown_tag_is_a_warning(tmp_path: Path) -> None:
    """Case 88: `random_value` is a warning (Kale refuses it); the notebook compiles."""
    g = graph(tmp_path, [(["step:a", "random_value"], "x = 1")])
    assert g.errors == []
    assert [p.message for p in g.warnings] == ["unknown tag 'random_value' (ignored)"]


def test_a_tag_that_is_not_a_string_refuses_the_notebook(tmp_path: Path) -> None:
    """Case 89 (agrees): nbformat's schema refuses a tag that is not a string."""
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "code", "id": "c0", "source": "x = 1", "outputs": [],
                   "execution_count": None, "metadata": {"tags": [0]}}]}))
    with pytest.raises(UnusableInputError, match="not a valid nbformat 4 notebook"):
        read_notebook(path)


def test_settings_on_a_cell_without_a_step_name_apply_to_the_step_it_joins(
        tmp_path: Path) -> None:
    """Cases 90, 96, 106: prev:, secret: and report: on an untagged-for-step cell (Kale
    refuses them) apply to the step the cell joins."""
    g = graph(tmp_path, [(["step:first"], "a = 1"), (["step:second"], "b = 2"),
                         (["prev:first", "secret:db-credentials:password:DB_PASSWORD",
                           "report:disabled"], "c = b")])
    assert g.errors == []
    second = g.step("second")
    assert [c.index for c in second.cells] == [1, 2]
    assert second.prev == ["first"]
    assert second.secrets == [("db-credentials", "password", "DB_PASSWORD")]
    assert second.report is False and report_cells(second) == []
    assert any(e.src == "first" and e.dst == "second" for e in g.edges)


# the trailing bare variable (cases 62-73, kubeflow/kale#783) ---------------------------
def test_a_step_ending_with_a_bare_name_keeps_it_as_an_output(tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:load"], "data = [3, 1, 2]"),
                         (["step:train"], "model = sorted(data)\nmodel"),
                         (["step:show"], "n = len(data)\nprint(n)"),
                         (["step:shown"], "k = 1\nk;"),
                         (["step:last"], "m = 1\nm\n"), ([], "# a comment only")])
    assert g.errors == []
    assert g.step("train").results == {"model": g.step("train").produces["model"]}
    assert "model" in g.step("train").outputs
    assert g.step("show").results == {}  # print(n) is not a bare name
    assert g.step("shown").results == {}  # `k;`: Jupyter displays nothing
    assert list(g.step("last").results) == ["m"]  # the last cell with statements


def test_a_trailing_name_the_step_does_not_bind_or_a_parameter_is_not_kept(
        tmp_path: Path) -> None:
    g = graph(tmp_path, [(["parameters"], "p = 1"), (["step:a"], "x = 2"),
                         (["step:b"], "y = x + p\nx"), (["step:c"], "p"),
                         (["step:d"], "import math\nmath")])
    assert g.errors == []
    assert [s.results for s in g.steps] == [{}, {}, {}, {}]
    assert "x" not in g.step("b").outputs


def test_the_pipeline_keeps_the_trailing_value_the_notebook_displays(tmp_path: Path) -> None:
    from nbship.extract.codegen import step_source
    from nbship.pipelines.compile import compile_graph
    from nbship.pipelines.local import run_compiled
    from nbship.runtime import serializers

    cells: Cells = [(["step:load"], "data = [3, 1, 2]"),
                    (["step:train"], "model = {'order': sorted(data)}\nmodel"),
                    (["step:lock"], "import threading\nlock = threading.Lock()\nlock")]
    g = graph(tmp_path, cells)
    assert g.errors == []
    code = "\n".join(step_source(g, g.step("train")))
    assert "nbship_out_model: Output[Artifact]" in code
    assert "nbship_step.save(nbship_out_model, 'model', model, cell=1, cell_id='c1', " \
           "result=True)" in code
    result = run_compiled(compile_graph(g, tmp_path / "build"), {}, root=tmp_path / "runs",
                          echo=lambda line: None)
    assert result.status == "SUCCESS"  # the lock cannot be saved: a warning, not a failure
    doc = json.loads(Path(result.provenance).read_text())
    kept = doc["steps"]["train"]["outputs"]["model"]
    assert serializers.load(Path(kept["uri"])) == {"order": [1, 2, 3]}
    assert notebook_values(cells, ["model"])["model"] == {"order": [1, 2, 3]}
    assert not doc["steps"]["lock"]["outputs"]["lock"]["sha256"]
    log = (result.record_dir / "run.log").read_text()
    assert "'lock', displayed at the end of cell 2 (id c2), is not kept" in log


def test_nbship_test_compares_the_trailing_value_with_the_notebooks(tmp_path: Path) -> None:
    """The kept value is compared like any value crossing a step: here the seed does not
    cross the step boundary, and equivalence names the displayed variable."""
    import subprocess
    import sys

    write_notebook(tmp_path / "h.ipynb", [(["step:seed"], "import random\nrandom.seed(0)"),
                                          (["step:draw"], "v = random.random()\nv")])
    done = subprocess.run([sys.executable, "-m", "nbship", "test", "h.ipynb"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "variable 'v' from step 'draw' to no step" in done.stdout


# the report: tag (cases 103-106) -----------------------------------------------------
def test_report_tags_set_the_steps_report(tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a"], "x = 1"), ([], "print(x)"),
                         (["step:b", "report:disabled"], "y = x"),
                         (["step:c", "report:enabled"], "z = y")])
    assert g.errors == [] and g.warnings == []
    assert [(s.name, s.report, [c.index for c in report_cells(s)]) for s in g.steps] == [
        ("a", None, [0, 1]), ("b", False, []), ("c", True, [3])]
    from nbship.extract.report import to_json

    doc = json.loads(to_json(g))
    assert [s["report"] for s in doc["steps"]] == [
        {"enabled": True, "cells": [0, 1]}, {"enabled": False, "cells": []},
        {"enabled": True, "cells": [3]}]


def test_a_bad_report_tag_is_named(tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a", "report:off", "reports:disabled"], "x = 1")])
    assert [p.message for p in g.warnings] == [
        "tag 'report:off': use report:enabled or report:disabled"]
    assert [p.message for p in g.errors] == [
        "tag 'reports:disabled' is not an nbship tag (ignored); did you mean "
        "'report:disabled'?"]
