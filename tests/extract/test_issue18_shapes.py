"""Issue 18, shapes 4-9: where the pipeline could compute something other than the notebook.

Each shape either runs through nbship (compile, kfp.local) and through papermill, and the
values agree, or `check` names it: cell, line and variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbship.extract.graph import StepGraph, build_graph
from nbship.notebook import read_notebook
from tests.conftest import write_notebook
from tests.extract.both_ways import Cells, graph, notebook_and_pipeline


def by_kind(g: StepGraph, kind: str) -> list[Any]:
    return [p for p in g.problems if p.kind == kind]


# shape 9: a None parameter given -p ----------------------------------------------
@pytest.mark.parametrize("text", ["0.5", "3", "True", "None", "abc", "1e3", "-7", " 5 "])
def test_none_parameter_is_read_as_papermill_reads_p(text: str, tmp_path: Path) -> None:
    from papermill.cli import _resolve_type

    from nbship.pipelines.params import parse_assignments

    g = graph(tmp_path, [(["parameters"], "threshold = None"), (["step:a"], "x = threshold")])
    got = parse_assignments([f"threshold={text}"], g.parameters)["threshold"]
    want = _resolve_type(text)
    assert got == want and type(got) is type(want)


@pytest.mark.slow
def test_none_parameter_given_p_arrives_as_papermill_gives_it(tmp_path: Path) -> None:
    printed, logged = notebook_and_pipeline(tmp_path, [
        (["parameters"], "threshold = None"),
        (["step:a"], "is_float = float(isinstance(threshold, float))\nhalf = threshold / 2"),
        (["pipeline-metrics"], "print(is_float)\nprint(half)"),
    ], {"threshold": "0.5"})
    assert printed == {"is_float": 1.0, "half": 0.25}
    assert logged == printed


# shape 6: tags above the first step -------------------------------------------------
def test_settings_on_cells_above_the_first_step_apply_to_it(tmp_path: Path) -> None:
    from nbship.pipelines.compile import compile_graph

    g = graph(tmp_path, [
        (["secret:db-creds:password:DB_PASSWORD", "limit:memory:4Gi"], "import os"),
        (["prev:other", "label:team:ml"], "a = 1"),
        (["step:load", "limit:cpu:2"], "x = a + 1"),
        (["step:other"], "y = 2"),
    ])
    assert g.errors == [] and [s.name for s in g.steps] == ["load", "other"]
    load = g.step("load")
    assert load.secrets == [("db-creds", "password", "DB_PASSWORD")]
    assert load.limits == {"memory": "4Gi", "cpu": "2"} and load.labels == {"team": "ml"}
    assert load.prev == ["other"]
    compiled = compile_graph(g, tmp_path / "build")
    source = compiled.module.read_text()
    assert "_load.after(_other)" in source
    yaml = compiled.yaml.read_text()
    assert "secretAsEnv" in yaml and "DB_PASSWORD" in yaml and "4Gi" in yaml.replace("'", "")


def test_the_first_steps_own_tags_win_over_the_cells_above(tmp_path: Path) -> None:
    g = graph(tmp_path, [(["image:python:3.10", "limit:cpu:1"], "a = 1"),
                         (["step:load", "image:python:3.11", "limit:cpu:2"], "x = a")])
    assert g.step("load").image == "python:3.11" and g.step("load").limits == {"cpu": "2"}


# shape 7: typos of nbship's own tags ----------------------------------------------------
@pytest.mark.parametrize("tag, meant", [
    ("Skip", "skip"), ("pipeline-metric", "pipeline-metrics"), ("step-train", "step:train"),
    ("Step:train", "step:train"), ("pipeline_parameters", "pipeline-parameters"),
    ("Imports", "imports"), ("function", "functions"), ("pipline-metrics", "pipeline-metrics"),
    ("limits:memory:4Gi", "limit:memory:4Gi"), ("Parameters", "parameters"),
    ("secrets:db:password:DB_PASSWORD", "secret:db:password:DB_PASSWORD"),
])
def test_a_near_miss_of_an_nbship_tag_is_an_error_naming_the_tag_meant(
        tag: str, meant: str, tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a"], "x = 1"), ([tag], "y = x"), (["step:b"], "z = x")])
    found = [p for p in g.errors if p.kind == "tag"]
    assert [p.where.cell for p in found] == [1]
    assert repr(tag) in found[0].message and f"did you mean {meant!r}" in found[0].message


@pytest.mark.parametrize("tag", ["my-own-tag", "boxplot", "papermill-error-cell-tag",
                                 "random_value", "hide_input", "ship", "metrics", "thebe-init"])
def test_other_tools_tags_stay_warnings(tag: str, tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a", tag], "x = 1")])
    assert g.errors == [] and [p.kind for p in g.warnings] == ["tag"]


# shape 8: a metrics line that cannot be logged --------------------------------------------
@pytest.mark.parametrize("line, reads", [
    ("print(round(acc, 2))", ["'acc'"]), ("print('acc:', acc)", ["'acc'"]),
    ("print(acc, loss)", ["'acc'", "'loss'"]), ("print(acc * 100)", ["'acc'"]),
    ("print(scores['f1'])", ["'scores'"]),
])
def test_a_metrics_line_that_cannot_be_logged_is_an_error_naming_it(
        line: str, reads: list[str], tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a"], "acc = 0.912\nloss = 0.1\nscores = {'f1': 0.5}"),
                         (["pipeline-metrics"], f"print(loss)\n{line}")])
    found = [p for p in g.errors if p.kind == "metrics"]
    assert [(p.where.cell, p.where.line) for p in found] == [(1, 2)]
    assert all(r in found[0].message for r in reads) and line[:20] in found[0].message
    assert g.metrics == {"loss": "a"}


@pytest.mark.parametrize("last", ["round(acc, 2)", "acc * 100", "scores['f1']"])
def test_a_computed_value_the_metrics_cell_displays_is_an_error_naming_it(
        last: str, tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a"], "acc = 0.912\nscores = {'f1': 0.5}"),
                         (["pipeline-metrics"], f"print(acc)\n{last}")])
    found = [p for p in g.errors if p.kind == "metrics"]
    assert [(p.where.cell, p.where.line) for p in found] == [(1, 2)]
    assert last in found[0].message


def test_method_calls_and_lines_before_the_last_stay_warnings(tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a"], "acc = 0.9\nhist = [1]"),
                         (["pipeline-metrics"], "acc * 100\nprint(acc)\nhist.copy()")])
    assert g.errors == [] and g.metrics == {"acc": "a"}


def test_printed_text_in_a_metrics_cell_stays_a_warning(tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a"], "acc = 0.9"),
                         (["pipeline-metrics"], "print('summary')\nprint(f'acc {acc:.2f}')\n"
                                                "print(acc)")])
    assert g.errors == [] and g.metrics == {"acc": "a"}
    assert [p.kind for p in g.warnings] == ["metrics"]


# shape 5: a metrics cell in the middle of a step ---------------------------------------
MIDDLE: Cells = [
    (["step:train"], "acc = 0.9\nloss = 0.25"),
    (["pipeline-metrics"], "print(acc)\nprint(loss)"),
    ([], "acc = 0.5"),
    (["step:later"], "loss = 0.75"),
]


def test_a_metric_is_logged_where_the_metrics_cell_stands_in_its_step(tmp_path: Path) -> None:
    g = graph(tmp_path, MIDDLE)
    assert g.errors == [] and g.metrics == {"acc": "train", "loss": "train"}
    assert g.step("train").metric_after == {"acc": 0, "loss": 0}
    rebound = [p for p in g.warnings if p.kind == "metrics"]
    assert [(p.where.cell, p.where.line) for p in rebound] == [(1, 2)]  # 'later' changes loss


def test_a_metric_bound_only_below_the_metrics_cell_in_its_step_is_an_error(
        tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:train"], "x = 1"), (["pipeline-metrics"], "print(acc)"),
                         ([], "acc = 0.5")])
    found = [p for p in g.errors if p.kind == "metrics"]
    assert [(p.where.cell, p.where.line) for p in found] == [(1, 1)]
    assert "'acc'" in found[0].message and "only below" in found[0].message


@pytest.mark.slow
def test_a_mid_step_metric_is_the_value_the_notebook_prints(tmp_path: Path) -> None:
    printed, logged = notebook_and_pipeline(tmp_path, MIDDLE)
    assert printed == {"acc": 0.9, "loss": 0.25}
    assert logged == printed


# shape 4: `global` in a function --------------------------------------------------------
GLOBAL_IN_A_FUNCTION: Cells = [
    (["step:prep"], "counter = 0\n\ndef bump():\n    global counter\n    counter += 1\n\n"
                    "bump()\nbump()"),
    (["step:report"], "total = counter * 10\n"),
    (["functions"], "def add(n):\n    global counter\n    counter += n"),
    (["step:again"], "counter = total\nadd(5)\nglobal seen\nseen = counter; global total\n"
                     "final = float(counter)"),
    (["pipeline-metrics"], "print(counter)\nprint(total)\nprint(final)"),
]


def test_global_names_are_the_steps_own(tmp_path: Path) -> None:
    from nbship.extract.codegen import Provenance, generate

    g = graph(tmp_path, GLOBAL_IN_A_FUNCTION)
    assert g.errors == []
    prov = Provenance(notebook="n.ipynb", sha256="0" * 64, commit=None, dirty=False)
    source = generate(g, base_image="x", provenance=prov)
    assert "    global counter  # declared" in source
    assert "    global counter, seen, total  # declared" in source
    assert "pass  # declared global for the whole step: global seen" in source
    compile(source, "pipeline.py", "exec")  # no `global` after the name is used


@pytest.mark.slow
def test_a_function_changing_a_global_changes_the_steps_variable(tmp_path: Path) -> None:
    printed, logged = notebook_and_pipeline(tmp_path, [
        (["step:prep"], "counter = 0"),
        ([], "def bump():\n    global counter\n    counter += 1"),
        ([], "bump()"),
        (["step:report"], "print(counter)\nshown = counter"),
        (["pipeline-metrics"], "print(shown)"),
    ])
    assert printed == {"shown": 1.0} and logged == printed


@pytest.mark.slow
def test_globals_from_functions_cells_and_cells_agree_with_the_notebook(tmp_path: Path,
                                                                        ) -> None:
    printed, logged = notebook_and_pipeline(tmp_path, GLOBAL_IN_A_FUNCTION)
    assert printed == {"counter": 25.0, "total": 20.0, "final": 25.0}
    assert logged == printed


CALLED_IN_LATER_STEPS: Cells = [
    (["step:prep"], "counter = 0\ndef bump():\n    global counter\n    counter += 1\nbump()"),
    (["functions"], "def setup(seed):\n    global cfg\n    cfg = {'seed': seed}"),
    (["step:report"], "bump()\nbump()\nsetup(7)"),
    (["step:later"], "shown = counter + 0.5\nseed = cfg['seed']\nbump()\nagain = counter"),
    (["pipeline-metrics"], "print(shown)\nprint(seed)\nprint(again)"),
]


def test_a_function_with_global_called_by_a_later_step_changes_that_steps_variable(
        tmp_path: Path) -> None:
    g = graph(tmp_path, CALLED_IN_LATER_STEPS)
    assert g.errors == []
    report, later = g.step("report"), g.step("later")
    assert report.shared_functions == {"bump": ["counter"]}
    assert report.inputs == {"bump": "prep", "counter": "prep"}
    assert later.inputs == {"bump": "prep", "cfg": "report", "counter": "report"}


@pytest.mark.slow
def test_a_function_with_global_called_by_a_later_step_agrees_with_the_notebook(
        tmp_path: Path) -> None:
    printed, logged = notebook_and_pipeline(tmp_path, CALLED_IN_LATER_STEPS)
    assert printed == {"shown": 3.5, "seed": 7.0, "again": 4.0}
    assert logged == printed


def test_a_class_whose_method_declares_global_used_by_a_later_step_is_named(
        tmp_path: Path) -> None:
    g = graph(tmp_path, [
        (["step:prep"], "counter = 0\nclass C:\n    def bump(self):\n        global counter\n"
                        "        counter += 1"),
        (["step:report"], "x = 1\nC().bump()\nprint(counter)"),
    ])
    found = [p for p in g.errors if p.kind == "global"]
    assert [(p.where.cell, p.where.line) for p in found] == [(1, 2)]
    assert "C" in found[0].message and "'counter'" in found[0].message
    assert "functions" in (found[0].hint or "")


def test_a_parameter_declared_global_is_named(tmp_path: Path) -> None:
    g = graph(tmp_path, [
        (["parameters"], "rate = 0.5"),
        (["step:a"], "x = rate\ndef halve():\n    global rate\n    rate = rate / 2\nhalve()"),
    ])
    found = [p for p in g.errors if p.kind == "global"]
    assert [(p.where.cell, p.where.line) for p in found] == [(1, 3)]
    assert "'rate'" in found[0].message


GLOBAL_VARIATIONS: Cells = [
    (["step:prep"], """c1 = c2 = c3 = c4 = c5 = c6 = 0
def bump1():
    global c1
    c1 += 1
def outer2():
    def inner():
        global c2
        c2 += 2
    inner()
class K3:
    def m(self):
        global c3
        c3 += 3
def deco(fn):
    def wrapper():
        global c4
        c4 += 4
        return fn()
    return wrapper
@deco
def g4():
    return 0
def counter5():
    n = 0
    def step():
        nonlocal n
        global c5
        n += 1
        c5 += n
    step()
    step()
def a6():
    b6()
def b6():
    c6_()
def c6_():
    global c6
    c6 += 6
bump1(); outer2(); K3().m(); g4(); counter5(); a6()
[bump1() for _ in range(2)]
(lambda: a6())()"""),
    (["step:mid"], "a6()"),
    (["step:later"], "bump1()\nouter2()\ntotal = c1 + c2 + c3 + c4 + c5 + c6"),
    (["pipeline-metrics"], "\n".join(f"print({n})" for n in
                                     ["c1", "c2", "c3", "c4", "c5", "c6", "total"])),
]


@pytest.mark.slow
def test_variations_of_global_agree_with_the_notebook(tmp_path: Path) -> None:
    """Nested functions, methods, decorators, nonlocal beside global, augmented assignment,
    comprehensions, lambdas, and calls through three functions, in one step and across."""
    printed, logged = notebook_and_pipeline(tmp_path, GLOBAL_VARIATIONS)
    assert printed == {"c1": 4.0, "c2": 4.0, "c3": 3.0, "c4": 4.0, "c5": 3.0, "c6": 18.0,
                       "total": 36.0}
    assert logged == printed


@pytest.mark.slow
def test_equivalence_takes_a_mid_step_metric_where_the_notebook_prints_it(
        tmp_path: Path) -> None:
    """`nbship test`'s equivalence compares the pipeline's metric with the value captured
    where the metrics cell stands, not at the end of the step."""
    import json

    from nbship.ci.equivalence import check_equivalence
    from nbship.ci.notebook_run import run_notebook
    from nbship.pipelines.compile import compile_graph
    from nbship.pipelines.local import run_compiled

    path = write_notebook(tmp_path / "n.ipynb", MIDDLE)
    g = build_graph(read_notebook(path))
    result = run_compiled(compile_graph(g, tmp_path / "build"), {}, root=tmp_path / "runs",
                          echo=lambda line: None)
    notebook = run_notebook(g, {}, tmp_path / "out", label="t")
    assert notebook.captured["train@metrics"]["acc"]["status"] == "saved"
    report = check_equivalence(g, notebook, json.loads(result.provenance.read_text()),
                               rtol=0, atol=0, label="t")
    metrics = {f.name: (f.notebook, f.pipeline) for f in report.findings if f.kind == "metric"}
    assert metrics == {"acc": ("0.9", "0.9"), "loss": ("0.25", "0.25")}


def test_global_in_the_serve_cells_names_builds_variable(tmp_path: Path) -> None:
    """The model server runs the serve cells inside build(): a `global` in predict() names
    the variable the cells set, as in the notebook (a request counter)."""
    import types

    from nbship.extract.codegen import serve_source

    g = graph(tmp_path, [(["step:train"], "scale = 2"),
                         (["serve"], "calls = 0\ndef predict(inputs):\n    global calls\n"
                                     "    calls += 1\n    return [x * scale for x in inputs]")])
    assert g.errors == []
    module = types.ModuleType("serve")
    exec(compile(serve_source(g), "serve.py", "exec"), module.__dict__)
    predict, _reference = module.build(scale=2)
    assert predict([1, 2]) == [2, 4] and predict([3]) == [6]
    assert module.calls == 2


# shape 4, any arrangement: `global` never makes the generated module fail to compile ---
_NAMES = ["a", "b"]
_SNIPPETS = [
    "{n} = 1", "{n} += 1", "print({n})", "global {n}\n{n} = 3",
    "def f_{n}():\n    global {n}\n    {n} = 2", "def g_{n}():\n    global {n}\n    {n} += 1",
    "f_{n}()", "g_{n}()", "x_{n} = [g_{n}() for _ in range(2)]",
    "def h_{n}():\n    g_{n}()",  "h_{n}()",
]


@st.composite
def _global_notebooks(draw: st.DrawFn) -> Cells:
    cells: Cells = []
    for i in range(draw(st.integers(1, 5))):
        tag = draw(st.sampled_from([[f"step:s{i}"], [], ["functions"]]))
        lines = [draw(st.sampled_from(_SNIPPETS)).format(n=draw(st.sampled_from(_NAMES)))
                 for _ in range(draw(st.integers(1, 3)))]
        cells.append((tag if i else ["step:s0"], "\n".join(["a = b = 0"] * (not i) + lines)))
    return cells


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(cells=_global_notebooks())
def test_global_in_any_arrangement_compiles_or_is_named(cells: Cells, tmp_path: Path) -> None:
    from nbship.extract.codegen import Provenance, generate

    g = graph(tmp_path, cells)
    if g.errors:
        return
    prov = Provenance(notebook="n.ipynb", sha256="0" * 64, commit=None, dirty=False)
    source = generate(g, base_image="x", provenance=prov)
    compile(source, "pipeline.py", "exec")  # e.g. no name used before its `global`
