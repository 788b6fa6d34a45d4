"""Issue 18, shapes 1-3: functions and calls that change or read what the notebook's one
namespace holds. Each shape runs through nbship (compile, kfp.local) and papermill, and
the values agree; tests/extract/test_closure_properties.py generates the variations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_notebook
from tests.extract.both_ways import Cells, graph, notebook_and_pipeline

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


# where codegen cannot follow: a value holding the notebook's code --------------------
HELD: Cells = [  # an instance of a class whose methods change a variable of the notebook
    (["step:setup"], "seen = []"),
    (["step:define"], "class Book:\n    def add(self, v):\n        seen.append(v)\n\n"
                      "book = Book()"),
    (["step:use"], "book.add(1)\nbook.add(2)\nn_seen = len(seen)"),
    (["pipeline-metrics"], "print(n_seen)"),
]


def test_a_value_holding_code_that_changes_a_variable_is_named(tmp_path: Path) -> None:
    g = graph(tmp_path, HELD)
    found = [p for p in g.warnings if p.kind == "closure"]
    assert [(p.where.cell, p.where.line) for p in found] == [(2, 1)]
    assert "'book' holds Book from step 'define'" in found[0].message
    assert "'seen'" in found[0].message
    # ... and it does differ: the notebook prints 2, the pipeline 0
    printed, logged = notebook_and_pipeline(tmp_path, HELD)
    assert printed == {"n_seen": 2.0} and logged == {"n_seen": 0.0}


def test_nbship_test_fails_equivalence_naming_it(tmp_path: Path) -> None:
    """`nbship test` (the pytest plug-in): the equivalence item fails on the metric, and
    its likely cause is check's warning naming the variable."""
    from tests.ci.test_plugin import pytest_run

    (tmp_path / "pyproject.toml").write_text("[tool.nbship.parameter_sets.ci]\n")
    (tmp_path / "nbs").mkdir()
    write_notebook(tmp_path / "nbs" / "held.ipynb", HELD)
    _, results = pytest_run(tmp_path, "--nbship", "nbs")
    outcome, text = results["held::equivalence[ci]"]
    assert outcome == "failure"
    assert "metric 'n_seen' (logged by step 'use'): notebook 2, pipeline 0" in text
    assert "likely cause" in text and "'book' holds Book from step 'define'" in text


@pytest.mark.parametrize("made, named", [
    ("make()", True),  # a factory: returns the closure it defines
    ("[make]", True),  # the function itself, in a list
    ("process(seen)", False),  # what a function computes: data, no code
])
def test_only_values_that_hold_code_are_named(made: str, named: bool, tmp_path: Path) -> None:
    g = graph(tmp_path, [
        (["step:setup"], "seen = [1]"),
        (["step:define"], "def make():\n    def add(v):\n        seen.append(v)\n    return add\n\n"
                          "def process(items):\n    return [i * 2 for i in items] + seen\n\n"
                          f"held = {made}"),
        (["step:use"], "seen.append(5)\nprint(held)")])
    found = [p for p in g.warnings if p.kind == "closure"]
    assert bool(found) == named, found
    if named:
        assert (found[0].where.cell, found[0].where.line) == (2, 2)
        assert "'held' holds make from step 'define'" in found[0].message


def test_data_passed_to_an_objects_method_is_not_passed_on(tmp_path: Path) -> None:
    """model.fit(X, y) changes the model, not X: steps that train on the same data stay
    parallel; np.random.shuffle(x) (a module's function) and rng.shuffle(x) change x."""
    g = graph(tmp_path, [
        (["imports"], "import numpy as np"),
        (["step:data"], "X = [[1], [2]]\ny = [0, 1]\nd = [1, 2, 3]\ne = [4, 5, 6]"),
        (["step:fit_a"], "class M:\n    def fit(self, X, y):\n        return self\n\n"
                         "M().fit(X, y)\nnp.random.shuffle(d)\nrng = np.random.default_rng(0)\n"
                         "rng.shuffle(e)"),
        (["step:fit_b"], "print(len(X), len(y), d, e)")])
    assert g.step("fit_b").inputs == {"X": "data", "y": "data", "d": "fit_a", "e": "fit_a"}
