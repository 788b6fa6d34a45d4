"""Issue 18, shapes 1-3: functions and calls that change or read what the notebook's one
namespace holds. Each shape runs through nbship (compile, kfp.local) and papermill, and
the values agree; tests/extract/test_closure_properties.py generates the variations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nbship.extract.graph import StepGraph, build_graph
from nbship.notebook import read_notebook
from tests.conftest import write_notebook

Cells = list[tuple[list[str], str]]


def graph(tmp_path: Path, cells: Cells) -> StepGraph:
    return build_graph(read_notebook(write_notebook(tmp_path / "n.ipynb", cells)))


def notebook_and_pipeline(tmp_path: Path, cells: Cells,
                          ) -> tuple[dict[str, float], dict[str, float]]:
    """The metrics cell's printed values under papermill, and the metrics nbship's run of
    the same notebook on kfp.local logs."""
    import nbformat
    import papermill

    from nbship.pipelines.compile import compile_graph
    from nbship.pipelines.local import run_compiled

    path = write_notebook(tmp_path / "n.ipynb", cells)
    g = build_graph(read_notebook(path))
    assert g.errors == [], g.errors
    result = run_compiled(compile_graph(g, tmp_path / "build"), {}, root=tmp_path / "runs",
                          echo=lambda line: None)
    assert result.status == "SUCCESS"
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(path), str(out), kernel_name="python3", progress_bar=False)
    done = nbformat.read(out, as_version=4)
    printed: dict[str, float] = {}
    for cell in done.cells:
        if "pipeline-metrics" not in cell.metadata.get("tags", []):
            continue
        names = [ast.parse(line).body[0] for line in cell.source.splitlines() if line.strip()]
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        for stmt, shown in zip(names, text.splitlines()):
            assert isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            arg = stmt.value.args[0]
            assert isinstance(arg, ast.Name)
            printed[arg.id] = float(shown)
    return printed, dict(result.metrics)


# the three notebooks, each with a metric that shows the difference
SHAPE_1: Cells = [  # a function that changes what it closes over
    (["step:setup"], "seen = []"),
    (["step:define"], "def record(v):\n    seen.append(v)"),
    (["step:use"], "record(1)\nrecord(2)\nprint('seen:', seen)\nn_seen = len(seen)"),
    (["step:later"], "total = sum(seen)"),
    (["pipeline-metrics"], "print(n_seen)\nprint(total)"),
]
SHAPE_2: Cells = [  # closures reached through try: and through another function
    (["step:step1"], "x = 5"),
    (["step:step2"], "try:\n    def foo():\n        return x\nexcept Exception:\n    pass\n\n"
                     "def bar():\n    return foo()"),
    (["step:step3"], "x = 10\nshown = bar()\nprint(shown)"),
    (["pipeline-metrics"], "print(shown)"),
]
SHAPE_3: Cells = [  # an in-place change through a call
    (["step:load"], "import random\ndeck = list(range(10))"),
    (["step:shuffle"], "random.seed(0)\nrandom.shuffle(deck)"),
    (["step:deal"], "hand = deck[:3]\nprint('hand:', hand)\nfirst = hand[0] * 100 + hand[1] * 10 "
                    "+ hand[2]"),
    (["pipeline-metrics"], "print(first)"),
]


@pytest.mark.parametrize("cells", [SHAPE_1, SHAPE_2, SHAPE_3], ids=["shape1", "shape2", "shape3"])
def test_the_pipeline_computes_what_the_notebook_computes(cells: Cells, tmp_path: Path) -> None:
    printed, logged = notebook_and_pipeline(tmp_path, cells)
    assert printed and logged == printed


def test_a_function_changing_what_it_closes_over_passes_the_change_on(tmp_path: Path) -> None:
    g = graph(tmp_path, SHAPE_1)
    use = g.step("use")
    assert use.rebinds == {"record": ["seen"]}
    assert "seen" in use.outputs and g.step("later").inputs["seen"] == "use"
    assert not [p for p in g.problems if p.kind == "closure"]


def test_functions_reached_through_functions_read_the_callers_variables(tmp_path: Path) -> None:
    g = graph(tmp_path, SHAPE_2)
    step3 = g.step("step3")
    assert step3.inputs == {"bar": "step2", "foo": "step2"}
    assert step3.rebinds == {"bar": ["foo"], "foo": ["x"]}
    assert g.problems == []


def test_a_value_passed_to_a_call_is_passed_on_changed(tmp_path: Path) -> None:
    g = graph(tmp_path, SHAPE_3)
    assert g.step("deal").inputs == {"deck": "shuffle"}
    assert g.step("shuffle").outputs.keys() == {"deck"}


def test_a_function_reading_a_name_the_caller_binds_later_gets_the_upstream_value(
        tmp_path: Path) -> None:
    # foo() is called before this step binds x: it must see the x of step a, loaded here
    g = graph(tmp_path, [(["step:a"], "x = 5"), (["step:b"], "def foo():\n    return x"),
                         (["step:c"], "y = foo()\nx = 10")])
    c = g.step("c")
    assert c.inputs == {"foo": "b", "x": "a"} and c.rebinds == {"foo": ["x"]}
