"""Where the notebook and the pipeline could disagree: follow the notebook, or say so."""

from __future__ import annotations

from pathlib import Path

from nbship.extract.graph import StepGraph, build_graph
from nbship.notebook import read_notebook
from tests.conftest import write_notebook


def graph(tmp_path: Path, cells: list[tuple[list[str], str]]) -> StepGraph:
    return build_graph(read_notebook(write_notebook(tmp_path / "n.ipynb", cells)))


def test_untagged_cells_extend_kales_blocks_but_not_papermills_parameters(tmp_path: Path,
                                                                          ) -> None:
    g = graph(tmp_path, [(["pipeline-parameters"], "epochs = 3"), ([], "lr = 0.1"),
                         (["imports"], "import math"), ([], "import json"),
                         (["step:a"], "x = math.sqrt(epochs * lr)\ny = json.dumps(x)")])
    assert set(g.parameters) == {"epochs", "lr"}
    assert [c.index for c in g.imports_cells] == [2, 3]
    assert not g.errors
    g = graph(tmp_path, [(["parameters"], "epochs = 3"), ([], "lr = 0.1"),
                         (["step:a"], "x = epochs * lr")])
    assert set(g.parameters) == {"epochs"}  # papermill's tag names one cell


def test_a_metric_is_the_value_the_notebook_prints(tmp_path: Path) -> None:
    g = graph(tmp_path, [(["step:a"], "acc = 0.5"), (["pipeline-metrics"], "print(acc)"),
                         (["step:b"], "acc = 0.9")])
    assert g.metrics == {"acc": "a"}
    warning = next(p for p in g.warnings if p.kind == "metrics")
    assert warning.where.cell == 1 and "'b'" in warning.message


def test_a_function_reading_a_name_the_caller_rebinds_reads_the_callers_value(
        tmp_path: Path) -> None:
    # issue 18, shape 2: foo() reads the caller's x (codegen points it at the step's x),
    # so there is nothing to warn about (tests/extract/test_closure_shapes.py runs it)
    g = graph(tmp_path, [(["step:a"], "x = 5"), (["step:b"], "def foo():\n    print(x)"),
                         (["step:c"], "y = 1\nx = 10\nfoo()")])
    assert g.step("c").rebinds == {"foo": ["x"]}
    assert not [p for p in g.problems if p.kind == "closure"]


def test_a_file_one_step_writes_and_another_reads_is_named(tmp_path: Path) -> None:
    g = graph(tmp_path, [
        (["step:a"], "import joblib\nmodel = 1\njoblib.dump(model, 'lgb.jl')"),
        (["step:b"], "import joblib\nm = joblib.load('lgb.jl')\nprint(open('notes.txt').read())")])
    found = [p for p in g.warnings if p.kind == "file-handoff"]
    assert [(p.where.cell, p.where.line) for p in found] == [(1, 2)]
    assert "'lgb.jl' is written by step 'a'" in found[0].message
