"""Generated notebooks against check, compile and run (hypothesis).

Whatever the names, tags, parameter literals, line endings, whitespace and unicode:
never a traceback (only nbship's own errors), never notebook code executed at
check/compile time (a marker file), a clean `check` always compiles (names never
collide), and parameter values reach the pipeline exactly.

The budget is bounded (profile "ci": NBSHIP_HYPOTHESIS_EXAMPLES, default 40 per
property); `NBSHIP_HYPOTHESIS_EXAMPLES=500 pytest tests/test_properties.py` digs deeper.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbship.errors import NbshipError
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from tests.conftest import write_notebook

EXAMPLES = int(os.environ.get("NBSHIP_HYPOTHESIS_EXAMPLES", "40"))
settings.register_profile("nbship", max_examples=EXAMPLES, deadline=None,
                          derandomize="NBSHIP_HYPOTHESIS_RANDOM" not in os.environ,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile("nbship")

MARKER = "NBSHIP_PROPERTY_MARKER"
IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
# Any text a file name may hold (no '/' or NUL), unicode included.
FILE_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                     min_size=1, max_size=30).filter(
    lambda s: s not in (".", "..") and len(s.encode("utf-8", "surrogatepass")) < 200)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])
INDENTS = st.sampled_from(["", " ", "\t", "\f", "    \f", "\f\f", " \f "])
ANY_TEXT = st.text(max_size=20)
JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 60), 2 ** 60),
                        st.floats(allow_nan=True, allow_infinity=True), ANY_TEXT)
LITERALS = st.one_of(JSON_LEAVES, st.lists(JSON_LEAVES, max_size=4),
                     st.dictionaries(st.one_of(ANY_TEXT, st.integers()), JSON_LEAVES,
                                     max_size=3))
TAGS = st.one_of(
    st.builds(lambda n: f"step:{n}", st.one_of(IDENT, ANY_TEXT)),
    st.builds(lambda n: f"prev:{n}", IDENT),
    st.sampled_from(["imports", "functions", "skip", "pipeline-metrics", "nbval-skip",
                     "cache:disabled", "limit:cpu:2", "limit:memory:1Gi", "limit:cpu:lots"]),
    st.builds(lambda k, v: f"annotation:{k}:{v}", IDENT, ANY_TEXT),
    st.builds(lambda k, v: f"label:{k}:{v}", IDENT, ANY_TEXT),
    st.builds(lambda a, b, c: f"secret:{a}:{b}:{c}", ANY_TEXT, IDENT, ANY_TEXT),
    ANY_TEXT,
)


@st.composite
def cell_sources(draw: st.DrawFn, names: list[str]) -> str:
    """Python lines (some hostile) joined by any line ending Python honours."""
    end = draw(LINE_ENDS)
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 6))
        name = draw(st.sampled_from(names))
        if kind == 0:
            lines.append(f"{name} = {draw(LITERALS)!r}")
        elif kind == 1:
            lines.append(f"print({name})")
        elif kind == 2:
            lines.append(f"# {draw(ANY_TEXT)}")
        elif kind == 3:
            lines.append(f"__import__('pathlib').Path({MARKER!r}).touch()")
        elif kind == 4:
            lines.append(f"def f_{name}():{end}    return {name}")
        elif kind == 5:
            lines.append(f"{draw(INDENTS)}{name} = {name} if 1 else 0")
        else:
            lines.append(draw(ANY_TEXT))
    return end.join(lines)


@st.composite
def notebooks(draw: st.DrawFn) -> tuple[str, list[tuple[list[str], str]]]:
    names = draw(st.lists(IDENT, min_size=1, max_size=4, unique=True))
    cells: list[tuple[list[str], str]] = []
    if draw(st.booleans()):
        params = draw(st.dictionaries(IDENT, LITERALS, min_size=1, max_size=3))
        cells.append(([draw(st.sampled_from(["parameters", "pipeline-parameters"]))],
                      "\n".join(f"{k} = {v!r}" for k, v in params.items())))
    for _ in range(draw(st.integers(1, 4))):
        tags = draw(st.lists(TAGS, max_size=2))
        cells.append((tags, draw(cell_sources(names))))
    return draw(FILE_NAMES) + ".ipynb", cells


def _check_and_compile(name: str, cells: list[tuple[list[str], str]], folder: Path) -> Any:
    nb = write_notebook(folder / name, cells)
    try:
        graph = build_graph(read_notebook(nb))
    except NbshipError:
        return None  # refused with a message: fine
    try:
        compiled = compile_graph(graph, folder / "out")
    except NbshipError as exc:
        assert graph.errors, f"check was clean but compile failed: {exc}"
        assert "bug in nbship" not in str(exc)
        return None
    assert not graph.errors
    return compiled


@given(notebooks())
def test_check_and_compile_never_trace_back_nor_run_notebook_code(
        notebook: tuple[str, list[tuple[list[str], str]]]) -> None:
    name, cells = notebook
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cwd = os.getcwd()
        os.chdir(folder)  # a marker touched by escaped code would land here
        try:
            _check_and_compile(name, cells, folder)
        finally:
            os.chdir(cwd)
        assert not (folder / MARKER).exists(), "notebook code ran while compiling"


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (1 is not 1.0 here); NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(st.dictionaries(IDENT, LITERALS, min_size=1, max_size=4))
def test_parameter_defaults_reach_the_pipeline_exactly_or_are_refused(
        params: dict[str, Any]) -> None:
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    uses = "print(" + ", ".join(params) + ")"
    with tempfile.TemporaryDirectory() as tmp:
        compiled = _check_and_compile("p.ipynb", [(["parameters"], source), (["step:a"], uses)],
                                      Path(tmp))
        if compiled is None:
            return  # refused by check, with cell and line
        spec = next(yaml.safe_load_all(compiled.yaml.read_text()))
        defaults = {k: v.get("defaultValue") for k, v in
                    spec["root"]["inputDefinitions"]["parameters"].items()}
        for name, value in params.items():
            kind = compiled.graph.parameters[name].type
            got = json.loads(defaults[name]) if kind in ("list", "dict", "none") else \
                defaults[name]
            if kind == "int":
                got = int(got)
            assert _same(got, value), (name, value, got)


@pytest.mark.slow
@settings(max_examples=max(3, EXAMPLES // 10))
@given(st.lists(st.one_of(st.integers(-(2 ** 53), 2 ** 53), st.none(), ANY_TEXT,
                          st.floats(allow_nan=False, allow_infinity=False)), max_size=4),
       st.dictionaries(ANY_TEXT, st.integers(-(2 ** 53), 2 ** 53), max_size=3))
def test_values_reach_the_running_steps_exactly(items: list[Any], table: dict[str, int]) -> None:
    from nbship.pipelines.local import run_compiled

    check = ("import json, pathlib\n"
             "pathlib.Path('seen.json').write_text(json.dumps([items, table]))")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        compiled = _check_and_compile("r.ipynb", [
            (["parameters"], f"items = {items!r}\ntable = {table!r}"),
            (["step:a"], check)], folder)
        assert compiled is not None
        run_compiled(compiled, {}, root=folder / "runs", echo=lambda line: None)
        seen = json.loads((folder / "seen.json").read_text())
        assert _same(seen, [items, table])
