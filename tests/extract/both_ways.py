"""Run a notebook both ways: its metrics cell's printed values under papermill, and the
metrics nbship's pipeline of it logs on kfp.local (issue 18's shape tests)."""

from __future__ import annotations

import ast
from pathlib import Path

from nbship.extract.graph import StepGraph, build_graph
from nbship.notebook import read_notebook
from tests.conftest import write_notebook

Cells = list[tuple[list[str], str]]


def graph(tmp_path: Path, cells: Cells) -> StepGraph:
    return build_graph(read_notebook(write_notebook(tmp_path / "n.ipynb", cells)))


def notebook_and_pipeline(tmp_path: Path, cells: Cells, params: dict[str, str] | None = None,
                          ) -> tuple[dict[str, float], dict[str, float]]:
    """The metrics cell's printed values under papermill (given ``-p`` as papermill's CLI
    reads it) and the metrics of the same notebook run by nbship (``-p`` as nbship run
    reads it)."""
    import papermill
    from papermill.cli import _resolve_type

    from nbship.pipelines.compile import compile_graph
    from nbship.pipelines.local import run_compiled
    from nbship.pipelines.params import parse_assignments

    params = params or {}
    path = write_notebook(tmp_path / "n.ipynb", cells)
    g = build_graph(read_notebook(path))
    assert g.errors == [], g.errors
    values = parse_assignments([f"{k}={v}" for k, v in params.items()], g.parameters)
    result = run_compiled(compile_graph(g, tmp_path / "build"), values, root=tmp_path / "runs",
                          echo=lambda line: None)
    assert result.status == "SUCCESS"

    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(path), str(out), kernel_name="python3", progress_bar=False,
                               parameters={k: _resolve_type(v) for k, v in params.items()})
    import nbformat

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
