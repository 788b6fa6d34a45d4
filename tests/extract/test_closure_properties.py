"""Issue 18, shapes 1-3, generated: functions that read or change what the notebook's one
namespace holds, in every form (nested functions, methods, lambdas, comprehensions,
decorators, nonlocal, augmented assignment, calls through two and three functions,
definitions inside try/if/with), defined in one step and used in another.

For each generated notebook, either `check` names the variable or the pipeline's value
equals the notebook's. The notebook runs as Jupyter runs it (its cells in one namespace);
the pipeline runs its generated step code (codegen.step_source, StepRun, the serializers)
step by step, each step in a namespace of its own and every value crossing a step
boundary saved and loaded as on kfp.local, but in this process (fast enough for
hypothesis). tests/extract/test_closure_shapes.py runs the three shapes on kfp.local.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbship.extract import codegen
from nbship.extract.graph import StepGraph, build_graph
from nbship.notebook import read_notebook
from tests.conftest import write_notebook

Cells = list[tuple[list[str], str]]


class _Metrics:
    def __init__(self, path: str) -> None:
        self.path = path
        self.metadata: dict[str, Any] = {}
        self.logged: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


class _Annotation:
    def __getitem__(self, _kind: Any) -> None:
        return None


def notebook_values(cells: Cells) -> dict[str, Any]:
    """The metrics the notebook prints: its code cells run in one namespace, in order."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    metrics: list[str] = []
    for tags, source in cells:
        if "pipeline-metrics" in tags:
            metrics += [line.strip()[len("print("):-1] for line in source.splitlines()]
            continue
        exec(compile(source, "<cell>", "exec"), namespace)  # noqa: S102 - the test's code
    return {m: float(namespace[m]) for m in metrics}


def pipeline_values(g: StepGraph, folder: Path) -> dict[str, float]:
    """The metrics the pipeline logs: each step's generated code run in order, with values
    saved and loaded between steps (each step in a namespace of its own, as a pod)."""
    logged: dict[str, float] = {}
    for step in g.topological():
        source = "\n".join(codegen.step_source(g, step)).replace("@dsl.component", "@_keep")
        namespace: dict[str, Any] = {"_keep": lambda **_: (lambda f: f), "Input": _Annotation(),
                                     "Output": _Annotation(), "Artifact": None, "Metrics": None,
                                     "BASE_IMAGE": None, "__name__": f"step_{step.func}"}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{step.func}.py"  # on disk: a failing step's traceback shows it
        path.write_text(source)
        exec(compile(source, str(path), "exec"), namespace)  # noqa: S102
        args: dict[str, Any] = {}
        for var, src in step.inputs.items():
            args[codegen.input_arg(var)] = SimpleNamespace(path=str(folder / src / var),
                                                           metadata={})
        for var in step.outputs:
            args[codegen.output_arg(var)] = SimpleNamespace(path=str(folder / step.name / var),
                                                            metadata={})
        metrics = _Metrics(str(folder / step.name / "metrics"))
        if step.metrics:
            args[codegen.METRICS_ARG] = metrics
        namespace[step.func](**args)
        logged.update(metrics.logged)
    return logged


def check_names(g: StepGraph, variables: set[str]) -> bool:
    """`check` says something about one of ``variables`` (an error or a warning)."""
    return any(f"'{v}'" in p.message for p in g.problems for v in variables)


# --- the generator --------------------------------------------------------------------
# Each form defines `change(v)`, which changes `seen` (a list the first step makes), and
# `look()`, which returns `x` (which the caller rebinds) and the sum of `seen`.
FORMS: dict[str, str] = {
    "plain": """
        def change(v):
            seen.append(v)
        def look():
            return x * 1000 + sum(seen)
        """,
    "nested": """
        def change(v):
            def inner():
                seen.append(v)
            inner()
        def look():
            def inner():
                return x * 1000 + sum(seen)
            return inner()
        """,
    "method": """
        class Book:
            def add(self, v):
                seen.append(v)
            @staticmethod
            def total():
                return x * 1000 + sum(seen)
        def change(v):
            Book().add(v)
        def look():
            return Book.total()
        """,
    "lambda": """
        change = lambda v: seen.append(v)
        look = lambda: x * 1000 + sum(seen)
        """,
    "comprehension": """
        def change(v):
            [seen.append(w) for w in [v]]
        def look():
            return sum([x * 1000 for _ in [0]]) + sum(w for w in seen)
        """,
    "decorator": """
        def logged(fn):
            def wrapper(*args):
                return fn(*args)
            return wrapper
        @logged
        def change(v):
            seen.append(v)
        @logged
        def look():
            return x * 1000 + sum(seen)
        """,
    "nonlocal": """
        def change(v):
            done = 0
            def bump():
                nonlocal done
                done += v
                seen.append(done)
            bump()
        def look():
            total = 0
            def add():
                nonlocal total
                total += x * 1000 + sum(seen)
            add()
            return total
        """,
    "augmented": """
        def change(v):
            seen[0] += v
            seen.append(0)
        def look():
            return x * 1000 + seen[0]
        """,
    "item": """
        def change(v):
            seen[len(seen) - 1:] = [seen[-1], v] if seen else [v]
        def look():
            return x * 1000 + sum(seen)
        """,
    # values that hold the notebook's code: codegen cannot point it at the step's variables,
    # `check` names them (a warning, kind "closure")
    "instance": """
        class Book:
            def add(self, v):
                seen.append(v)
            def total(self):
                return x * 1000 + sum(seen)
        book = Book()
        def change(v):
            book.add(v)
        def look():
            return book.total()
        """,
    "factory": """
        def make():
            def add(v):
                seen.append(v)
            return add
        change = make()
        def look():
            return x * 1000 + sum(seen)
        """,
    "argument": """
        def add_to(items, v):
            items.append(v)
        def change(v):
            add_to(seen, v)
        def look():
            return x * 1000 + sum(seen)
        """,
}
# how `change`/`look` reach the names: directly, or through two or three functions
DEPTHS = {
    1: "",
    2: """
        def change2(v):
            return change(v)
        def look2():
            return look()
        """,
    3: """
        def change2(v):
            return change(v)
        def look2():
            return look()
        def change3(v):
            return change2(v)
        def look3():
            return look2()
        """,
}
# where the definitions stand in their cell
WRAPPERS = {
    "top": lambda code: code,
    "try": lambda code: "try:\n" + textwrap.indent(code, "    ") + "except NameError:\n    pass\n",
    "if": lambda code: "if True:\n" + textwrap.indent(code, "    "),
    "with": lambda code: "import contextlib\nwith contextlib.nullcontext():\n"
                         + textwrap.indent(code, "    "),
}
# how the caller calls
CALLS = {
    "direct": "{change}(1)\n{change}(2)\nobserved = {look}()",
    "in a function": "def go():\n    {change}(1)\n    {change}(2)\n    return {look}()\n"
                     "observed = go()",
    "in a comprehension": "[{change}(i) for i in (1, 2)]\nobserved = [{look}() for _ in (0,)][0]",
}


# the forms `check` names rather than computes
NAMED = {"instance", "factory"}


@st.composite
def notebooks(draw: st.DrawFn) -> tuple[str, Cells]:
    form = draw(st.sampled_from(sorted(FORMS)))
    depth = draw(st.sampled_from(sorted(DEPTHS)))
    wrap = draw(st.sampled_from(sorted(WRAPPERS)))
    call = draw(st.sampled_from(sorted(CALLS)))
    split = draw(st.booleans())  # the outer functions in a step of their own
    rebinds = draw(st.booleans())  # the caller rebinds x
    start = "[10]" if form == "augmented" else "[]"
    suffix = "" if depth == 1 else str(depth)
    base = WRAPPERS[wrap](textwrap.dedent(FORMS[form]))
    outer = WRAPPERS[wrap](textwrap.dedent(DEPTHS[depth])) if depth > 1 else ""
    cells: Cells = [(["step:setup"], f"x = 5\nseen = {start}")]
    if split and outer:
        cells += [(["step:define"], base), (["step:wrap"], outer)]
    else:
        cells += [(["step:define"], base + ("\n" + outer if outer else ""))]
    use = ("x = 7\n" if rebinds else "") + CALLS[call].format(change="change" + suffix,
                                                               look="look" + suffix)
    cells += [(["step:use"], use),
              (["step:later"], "after = len(seen) * 100 + sum(seen)"),
              (["pipeline-metrics"], "print(observed)\nprint(after)")]
    return form, cells


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(example=notebooks())
def test_check_names_it_or_the_pipeline_computes_the_notebooks_values(
        example: tuple[str, Cells], tmp_path_factory: Any) -> None:
    form, cells = example
    folder = tmp_path_factory.mktemp("nb")
    g = build_graph(read_notebook(write_notebook(folder / "n.ipynb", cells)))
    assert g.errors == [], g.errors
    code = "\n\n".join(s for _, s in cells)
    named = check_names(g, {"seen", "x"})
    if form in NAMED:
        assert named, code
        # at a step that takes the value, naming the variable its code changes
        assert any(p.kind == "closure" and "'seen'" in p.message and p.where.cell in (2, 3)
                   and p.where.line is not None for p in g.warnings), code
        return
    assert not named, (code, [str(p) for p in g.problems])
    assert pipeline_values(g, folder / "run") == notebook_values(cells), code


def test_the_simulation_sees_the_difference_the_issue_reports(tmp_path: Path) -> None:
    """The in-process runner is not blind: without the calling step's rebinding, the
    function keeps the values of its own step (as before issue 18)."""
    cells: Cells = [(["step:setup"], "x = 5\nseen = []"),
                    (["step:define"], "def change(v):\n    seen.append(v)\n"
                                      "def look():\n    return x * 1000 + sum(seen)"),
                    (["step:use"], "x = 7\nchange(1)\nobserved = look()"),
                    (["pipeline-metrics"], "print(observed)")]
    g = build_graph(read_notebook(write_notebook(tmp_path / "n.ipynb", cells)))
    assert pipeline_values(g, tmp_path / "run") == notebook_values(cells) == {"observed": 7001}
    g.step("use").rebinds.clear()
    assert pipeline_values(g, tmp_path / "run2") == {"observed": 5000}


def _variation(form: str, depth: int, wrap: str, call: str) -> Cells:
    suffix = "" if depth == 1 else str(depth)
    base = WRAPPERS[wrap](textwrap.dedent(FORMS[form]))
    outer = WRAPPERS[wrap](textwrap.dedent(DEPTHS[depth])) if depth > 1 else ""
    use = "x = 7\n" + CALLS[call].format(change="change" + suffix, look="look" + suffix)
    return [(["step:setup"], f"x = 5\nseen = {'[10]' if form == 'augmented' else '[]'}"),
            (["step:define"], base), (["step:wrap"], outer or "pass"), (["step:use"], use),
            (["step:later"], "after = len(seen) * 100 + sum(seen)"),
            (["pipeline-metrics"], "print(observed)\nprint(after)")]


@pytest.mark.parametrize("form, depth, wrap, call", [
    ("decorator", 3, "try", "in a function"),
    ("method", 2, "with", "in a comprehension"),
])
def test_real_runs_agree_with_the_in_process_runner(form: str, depth: int, wrap: str, call: str,
                                                    tmp_path: Path) -> None:
    """A few variations on kfp.local against papermill: the same values as the in-process
    runner gives for them (and as the notebook's)."""
    from tests.extract.both_ways import notebook_and_pipeline

    cells = _variation(form, depth, wrap, call)
    printed, logged = notebook_and_pipeline(tmp_path, cells)
    g = build_graph(read_notebook(tmp_path / "n.ipynb"))
    assert logged == printed == pipeline_values(g, tmp_path / "sim") == notebook_values(cells)
