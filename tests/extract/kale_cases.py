"""Kale's own unit-test expectations (shared/corpus/kale-tests/cases.json) against nbship.

    .venv/bin/python -m tests.extract.kale_cases      # prints the verdict table

Each case gets one verdict:

* ``agree``: nbship's analysis gives what Kale's test asserts;
* ``differs``: it does not; every such case is in DELIBERATE with the reason nbship
  differs on purpose (tests/extract/test_kale_cases.py fails on any other);
* ``not comparable``: a Kale AST helper nbship has no counterpart of (NO_COUNTERPART);
  never a Kale feature nbship lacks (test_kale_cases.py checks).

Kale "raises" is compared with nbship's `check` reporting an error for the cell.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbship.extract.graph import StepGraph, build_graph
from nbship.notebook import Cell, parse_tags, read_notebook

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("NBSHIP_CORPUS", ROOT.parent / "shared" / "corpus"))
CASES = CORPUS / "kale-tests" / "cases.json"

AGREE, DIFFERS, NOT_COMPARABLE = "agree", "differs", "not comparable"

# Kale helpers that nbship has no counterpart of: comparing would measure nothing.
NO_COUNTERPART = {
    "get_function_and_class_names": "a Kale AST helper; nbship has no such query",
    "get_list_tuple_names": "a Kale AST helper; nbship has no such query",
    "get_function_calls": "a Kale AST helper; nbship has no such query",
    "parse_functions": "a Kale helper returning function source text",
    "link_fns_to_inputs_vars": "a Kale AST helper; nbship has no such query",
    "link_fns_to_return_vars": "a Kale AST helper; nbship has no such query",
}

FORWARDING = ("Kale's steps pass on again the values a function reads (and the functions it "
              "calls) that they only took as inputs; in nbship a step passes on only what it "
              "binds: the calling step takes the same inputs, each from the step that binds "
              "it, and computes the notebook's value")
# case id -> why nbship differs on purpose; tests/extract/test_kale_reasons.py checks each
DELIBERATE: dict[int, str] = {
    7: FORWARDING, 9: FORWARDING, 13: FORWARDING, 14: FORWARDING, 15: FORWARDING,
    16: FORWARDING, 17: FORWARDING,
    19: "Kale's marshal candidates include names a cell only reads or calls (print); nbship "
        "passes on only what a cell binds",
    20: "Kale's marshal candidates include names a cell only reads or calls (a, print); "
        "nbship passes on only what a cell binds",
    23: "Kale's marshal candidates include the names a with statement reads (my_context, "
        "param); nbship passes on only what the cell binds",
    39: "None parameters are optional parameters (KFP supports them; ploomber's and Elyra's "
        "notebooks use them)",
    40: "a statement in a parameters cell that is not `name = literal` is warned about, not "
        "refused: papermill's parameters cells hold such lines",
    41: "a statement in a parameters cell that is not `name = literal` is warned about, not "
        "refused: papermill's parameters cells hold such lines",
    42: "a statement in a parameters cell that is not `name = literal` is warned about, not "
        "refused: papermill's parameters cells hold such lines",
    43: "list parameters are KFP parameters (they travel as JSON text, exactly)",
    48: "metric names keep the variable's name: KFP v2 metric keys allow '_' (Kale's '-' "
        "came from KFP v1)",
    51: "a bare `name` line in a metrics cell is a metric, as Jupyter displays it",
    52: "a bare `name` line in a metrics cell is a metric, as Jupyter displays it",
    53: "a bare `name` line in a metrics cell is a metric, as Jupyter displays it",
    88: "unknown tags are a warning, never a failure: users mix tools (DESIGN.md section 3)",
    90: "a prev: tag on a cell without a step name applies to the step the cell joins",
    95: "a metrics cell may stand anywhere: its metrics are the values printed where it "
        "stands (check warns when a later step changes one)",
    96: "a secret: tag on a cell without a step name applies to the step the cell joins",
    106: "a report: tag on a cell without a step name applies to the step the cell joins",
    113: "metric names keep the variable's name (KFP v2 metric keys allow '_'; Kale's '-' "
         "came from KFP v1), and parameters listed as metrics are logged by the last step "
         "above the metrics cell, not the first",
}


def _cells(case: dict[str, Any]) -> list[tuple[list[str], str]]:
    metadata = case.get("cell_metadata")
    if isinstance(metadata, list):
        return [([str(t) for t in (m or {}).get("tags", [])], src)
                for m, src in zip(metadata, case["cells"])]
    return [([], src) for src in case["cells"]]


def _graph(cells: list[tuple[list[str], str]], folder: Path) -> StepGraph:
    from tests.conftest import write_notebook

    return build_graph(read_notebook(write_notebook(folder / "case.ipynb", cells),
                                     require_code=False))


def _errors_in(graph: StepGraph, kind: str | None = None) -> list[str]:
    return [p.message for p in graph.errors if kind is None or p.kind == kind]


def _undefined(source: str, folder: Path) -> set[str]:
    graph = _graph([(["step:a"], source)], folder)
    return {p.message.split("'")[1] for p in graph.errors if p.kind == "undefined-name"}


def _bound(source: str, folder: Path) -> set[str] | None:
    graph = _graph([(["step:a"], source)], folder)
    if _errors_in(graph, "syntax"):
        return None
    return set(graph.steps[0].produces) | set(graph.codes[graph.steps[0].cells[0].index].imports)


def _pyflakes(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    found = _undefined(case["cells"][0], folder)
    return _same(sorted(found), sorted(case["expected"]["target"]))


def _marshal(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    found = _bound(case["cells"][0], folder)
    if "raises" in case["expected"]:
        return (AGREE, "syntax error reported") if found is None else (DIFFERS, "accepted")
    return _same(sorted(found or ()), sorted(case["expected"]["target"]))


def _both(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    src = case["cells"][0]
    exp = case["expected"]
    ok = set(exp["pyflakes_report_contains"]) <= _undefined(src, folder) and \
        set(exp["get_marshal_candidates_contains"]) <= (_bound(src, folder) or set())
    return (AGREE, "") if ok else (DIFFERS, "")


def _free_variables(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    from nbship.extract.graph import _functions_free_names

    cells = [(["step:a"], case["cells"][0])]
    if case["imports_and_functions"].strip():
        cells.insert(0, (["imports"], case["imports_and_functions"]))
    graph = _graph(cells, folder)
    free = _functions_free_names(graph.steps[0])
    imported = {n for c in graph.imports_cells for n in graph.codes[c.index].imports}
    from nbship.extract.graph import _NOTEBOOK_BUILTINS

    found = {f: sorted(v - imported - _NOTEBOOK_BUILTINS) for f, v in free.items()}
    return _same(found, {f: v[0] for f, v in case["expected"]["target"].items()})


def _parameters(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    graph = _graph([(["parameters"], case["cells"][0]), (["step:a"], "pass")], folder)
    if "raises" in case["expected"]:
        errors = _errors_in(graph, "parameter")
        return (AGREE, errors[0]) if errors else (DIFFERS, "accepted: " + ", ".join(
            f"{p.name} ({p.type})" for p in graph.parameters.values()) or "ignored, warned")
    found = {p.name: [p.type, p.value] for p in graph.parameters.values()}
    return _same(found, case["expected"]["target"])


def _metrics_cell(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    source = case["cells"][0]
    names = sorted({w for w in source.replace("(", " ").replace(")", " ").split()
                    if w.isidentifier() and w not in ("print", "def")})
    binder = "\n".join(f"{n} = 1" for n in names) or "pass"
    graph = _graph([(["step:a"], binder), (["pipeline-metrics"], source)], folder)
    found = {name: name for name in graph.metrics}
    if "raises" in case["expected"]:
        errors = _errors_in(graph)
        return (AGREE, errors[0]) if errors else (DIFFERS, f"metrics {sorted(found)}")
    return _same(found, case["expected"]["target"])


def _tags(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    metadata = case.get("cell_metadata") or {}
    raw_tags = metadata.get("tags", [])
    if not all(isinstance(t, str) for t in raw_tags):
        return _refused_notebook(raw_tags, folder, "raises" in case["expected"])
    tags = [str(t) for t in raw_tags]
    cell = Cell(index=0, id=None, source="", tags=tags, execution_count=None)
    notes = parse_tags(cell)
    exp = case["expected"]
    if "raises" in exp:
        errors = [n.message for n in notes if n.error]
        return (AGREE, errors[0]) if errors else (DIFFERS, "accepted" + (
            f" with a warning: {notes[0].message}" if notes else ""))
    target = exp["target"]
    if "generate_html_report" in exp["function"]:
        return _same(cell.report, target)
    if "step_names" in target:
        names = [cell.step] if cell.role == "step" and cell.step else [] if cell.role == "step" \
            else [{"parameters": "pipeline-parameters"}.get(cell.role, cell.role)]
        prev = cell.prev if cell.role == "step" else []
        return _same({"step_names": names, "prev_steps": prev}, target)
    if "annotations" in exp["function"]:
        return _same(cell.annotations, target)
    secrets = {env: {"secret_name": name, "secret_key": key} for name, key, env in cell.secrets}
    return _same(secrets, target)


def _refused_notebook(tags: list[Any], folder: Path, kale_raises: bool) -> tuple[str, str]:
    """Tags that are not strings: nbformat's schema refuses the notebook (exit 2)."""
    from nbship.errors import UnusableInputError

    path = folder / "case.ipynb"
    path.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                    "display_name": "Python 3"}},
        "cells": [{"cell_type": "code", "id": "c0", "source": "x = 1", "outputs": [],
                   "execution_count": None, "metadata": {"tags": tags}}]}))
    try:
        read_notebook(path)
    except UnusableInputError as exc:
        return (AGREE if kale_raises else DIFFERS), f"refused: {exc}"
    return (DIFFERS if kale_raises else AGREE), "accepted"


def _trailing(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    """Kale's get_trailing_variable on a cell, against nbship's analysis of the cell (what
    a step ending with it keeps as an output: graph._trailing_results)."""
    graph = _graph([(["step:a"], case["cells"][0])], folder)
    return _same(graph.codes[graph.steps[0].cells[0].index].trailing_name,
                 case["expected"]["target"])


def _parameters_source(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    graph = _graph(_cells(case), folder)
    return _same("\n".join(c.source for c in graph.parameters_cells),
                 case["expected"]["target"])


def _metrics_position(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    graph = _graph([*_cells(case), (["step:a"], "x = 1")], folder)
    return (AGREE, "") if graph.errors else (DIFFERS, "a metrics cell anywhere is accepted")


def _dependencies(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    cells: list[tuple[list[str], str]] = []
    if case["imports_and_functions"].strip():
        cells.append((["imports"], case["imports_and_functions"]))
    params = case.get("pipeline_parameters") or {}
    if params:
        import ast

        values = ast.literal_eval(case["pipeline_parameters_python_repr"])
        cells.append((["pipeline-parameters"], "\n".join(
            f"{name} = {value!r}" for name, (value, _kind) in values.items())))
    parents: dict[str, list[str]] = {}
    for parent, child in case["edges"]:
        parents.setdefault(child, []).append(parent)
    for step in case["steps"]:
        tags = [f"step:{step['name']}", *(f"prev:{p}" for p in parents.get(step["name"], []))]
        cells.append((tags, step["source"]))
    return _compare_steps(_graph(cells, folder), {
        name: v for name, v in case["expected"].items() if isinstance(v, dict)})


def _compare_steps(graph: StepGraph, expected: dict[str, dict[str, Any]],
                   metrics: bool = False) -> tuple[str, str]:
    found: dict[str, dict[str, Any]] = {}
    for step in graph.steps:
        entry: dict[str, Any] = {"ins": sorted(step.inputs), "outs": sorted(step.outputs)}
        if metrics:
            entry["metrics"] = {m: m for m in step.metrics}
        found[step.func] = entry
    wanted = {name: {k: v for k, v in exp.items() if k in ("ins", "outs", "metrics")}
              for name, exp in expected.items()}
    return _same(found, wanted)


def _e2e(case: dict[str, Any], folder: Path) -> tuple[str, str]:
    name = case["source_test"].rsplit("/", 1)[-1].rstrip("]")
    graph = build_graph(read_notebook(CORPUS / "kale-tests" / "notebooks" / name))
    return _compare_steps(graph, case["expected"]["steps"], metrics=True)


def _same(found: Any, expected: Any) -> tuple[str, str]:
    if found == expected:
        return AGREE, ""
    return DIFFERS, f"nbship {json.dumps(found, sort_keys=True)}, Kale " \
                    f"{json.dumps(expected, sort_keys=True)}"


HANDLERS: dict[str, Callable[[dict[str, Any], Path], tuple[str, str]]] = {
    "pyflakes_report": _pyflakes,
    "get_marshal_candidates": _marshal,
    "pyflakes_report+get_marshal_candidates": _both,
    "detect_fns_free_variables": _free_variables,
    "parse_assignments_expressions": _parameters,
    "parse_metrics_print_statements": _metrics_cell,
    "parse_cell_metadata": _tags,
    "get_trailing_variable": _trailing,
    "get_pipeline_parameters_source": _parameters_source,
    "get_pipeline_metrics_source": _metrics_position,
    "dependencies_detection": _dependencies,
    "notebook_to_dsl_e2e": _e2e,
}


def verdicts() -> list[dict[str, Any]]:
    """One row per case: id, kind, verdict, detail (the difference, or the reason)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="nbship-kale-") as tmp:
        for case in json.loads(CASES.read_text()):
            kind = case["kind"]
            if kind in NO_COUNTERPART:
                verdict, detail = NOT_COMPARABLE, NO_COUNTERPART[kind]
            else:
                folder = Path(tmp) / str(case["id"])
                folder.mkdir()
                verdict, detail = HANDLERS[kind](case, folder)
            rows.append({"id": case["id"], "kind": kind, "verdict": verdict,
                         "detail": detail, "reason": DELIBERATE.get(case["id"], "")})
    return rows


def main() -> None:
    rows = verdicts()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
        why = row["reason"] or row["detail"]
        print(f"{row['id']:>4}  {row['kind']:<40} {row['verdict']:<15} {why[:90]}")
    print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
