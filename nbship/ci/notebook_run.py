"""Run a notebook under papermill with a parameter set, capturing each step's outputs.

The notebook is copied with one extra cell after each step that produces values
for later steps (or metrics): it saves them with nbship's own serializers, so
the equivalence check compares like with like. Those cells are removed from the
executed notebook that is kept as a CI artifact. A failure is reported as the
notebook's cell and line, not as a kernel traceback dump.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.errors import Location, NbshipError
from nbship.extract.graph import StepGraph
from nbship.runtime import serializers

CAPTURE_TAG = "nbship-capture"
INDEX_FILE = "captured.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    """Kernel tracebacks and nbval messages without their terminal colours."""
    return _ANSI.sub("", text)
_CELL_LINE = re.compile(r"(?:Cell )?In\s*\[\d*\],? line (\d+)")


class NotebookFailure(NbshipError):
    """A cell of the notebook raised while running under papermill."""


@dataclass
class NotebookRun:
    executed: Path  # the executed notebook (capture cells removed)
    capture_dir: Path
    captured: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> var -> meta
    seconds: float = 0.0


def capture(directory: str, step: str, namespace: dict[str, Any], names: list[str]) -> None:
    """Called from the capture cells inside the kernel: save ``names`` of step ``step``."""
    root = Path(directory)
    index_path = root / INDEX_FILE
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    entry: dict[str, Any] = {}
    for name in names:
        if name not in namespace:
            entry[name] = {"status": "missing"}
            continue
        try:
            meta = serializers.save(namespace[name], root / step / name)
            entry[name] = {"status": "saved", **meta}
        except Exception as exc:  # an open handle, a lock...: listed, never silently passed
            entry[name] = {"status": "unserializable", "error": f"{type(exc).__name__}: {exc}"}
    index[step] = entry
    index_path.write_text(json.dumps(index, indent=2))


def instrument(graph: StepGraph, capture_dir: Path) -> Any:
    """The notebook with a capture cell after each producing step (nbformat node)."""
    import nbformat

    nb = nbformat.read(graph.notebook.path, as_version=4)
    for index, cell in enumerate(nb.cells):
        cell.metadata.setdefault("nbship", {})["index"] = index
    has_parameters_tag = any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    if not has_parameters_tag and graph.parameters:  # Kale's pipeline-parameters cell
        first = min(p.cell.index for p in graph.parameters.values())
        nb.cells[first].metadata.setdefault("tags", []).append("parameters")
    inserts: list[tuple[int, Any]] = []
    for step in graph.steps:
        names = sorted(set(step.outputs) | set(step.metrics))
        if not names:
            continue
        code = (f"# nbship: capture what step {step.name!r} passes on (not kept in the "
                "saved notebook)\n"
                "from nbship.ci.notebook_run import capture as _nbship_capture\n"
                f"_nbship_capture({str(capture_dir)!r}, {step.name!r}, globals(), {names!r})")
        cell = nbformat.v4.new_code_cell(code)
        cell.metadata["tags"] = [CAPTURE_TAG]
        cell.metadata["nbship"] = {"capture": step.name}
        inserts.append((step.cells[-1].index + 1, cell))
    for position, cell in sorted(inserts, key=lambda item: item[0], reverse=True):
        nb.cells.insert(position, cell)
    return nb


def _strip_capture_cells(path: Path) -> Any:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if CAPTURE_TAG not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        cell.metadata.pop("nbship", None)
    nbformat.write(nb, path)
    return nb


def failure_report(notebook: Path, executed: Any, exc: Any) -> NotebookFailure:
    """A papermill failure as the notebook's cell, id, line and source around it."""
    # papermill inserts error banner cells, so exc.cell_index may be off: find the cell it
    # marked as the one that raised
    cell = next((c for c in executed.cells
                 if c.metadata.get("papermill", {}).get("exception")), None)
    meta = (cell.metadata.get("nbship", {}) if cell is not None else {})
    if "capture" in meta:
        return NotebookFailure(
            f"nbship could not capture the values of step {meta['capture']!r}: "
            f"{exc.ename}: {exc.evalue}", where=Location(str(notebook)))
    source = cell.source if cell is not None else exc.source or ""
    return cell_failure(notebook, meta.get("index"), cell.get("id") if cell else None, source,
                        "\n".join(exc.traceback or []), f"{exc.ename}: {exc.evalue}")


def cell_failure(notebook: Path, index: int | None, cell_id: str | None, source: str,
                 traceback: str, error: str) -> NotebookFailure:
    """A failing cell as a person reads it: where, the error, the lines around the failure.

    The line comes from IPython's own traceback (``Cell In[n], line L``); the kernel's
    traceback itself is not repeated.
    """
    lines = [int(n) for n in _CELL_LINE.findall(strip_ansi(traceback))]
    line = lines[-1] if lines else None
    src = source.splitlines()
    shown = []
    if line is not None and src:
        for n in range(max(1, line - 2), min(len(src), line + 1) + 1):
            mark = "-->" if n == line else "   "
            shown.append(f"  {mark} {n:3} | {src[n - 1]}")
    elif src:
        shown = [f"        | {s}" for s in src[:5]]
    message = "\n".join([strip_ansi(error), *shown])
    return NotebookFailure(message, where=Location(str(notebook), index, cell_id, line))


def run_notebook(graph: StepGraph, parameters: dict[str, Any], out_dir: Path,
                 *, label: str, stem: str | None = None) -> NotebookRun:
    """Execute the notebook with papermill; keep ``out_dir/<stem>.<label>.ipynb``."""
    import time

    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    nb_path = graph.notebook.path
    out_dir = out_dir.resolve()  # the kernel runs in the notebook's folder
    out_dir.mkdir(parents=True, exist_ok=True)
    capture_dir = out_dir.parent / "captures" / f"{stem or nb_path.stem}.{label}"
    shutil.rmtree(capture_dir, ignore_errors=True)
    capture_dir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix=".nbship-run-", dir=out_dir))
    source = work / nb_path.name
    nbformat.write(instrument(graph, capture_dir), source)
    executed = out_dir / f"{stem or nb_path.stem}.{label}.ipynb"
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(executed), parameters=parameters, kernel_name="python3",
            cwd=str(nb_path.resolve().parent), progress_bar=False, log_output=False,
            report_mode=False)
    except PapermillExecutionError as exc:
        raw = nbformat.read(executed, as_version=4)
        failure = failure_report(nb_path, raw, exc)
        _strip_capture_cells(executed)
        raise failure from None
    finally:
        source.unlink(missing_ok=True)
        work.rmdir()
    _strip_capture_cells(executed)
    index_path = capture_dir / INDEX_FILE
    expected = [s.name for s in graph.steps if s.outputs or s.metrics]
    captured = json.loads(index_path.read_text()) if index_path.exists() else {}
    lost = [name for name in expected if name not in captured]
    if lost:
        raise NotebookFailure(f"nbship captured no values for step(s) {', '.join(lost)} "
                              f"(expected them under {capture_dir})", where=Location(str(nb_path)))
    return NotebookRun(executed=executed, capture_dir=capture_dir, captured=captured,
                       seconds=time.perf_counter() - started)

