"""Run a notebook under papermill with a parameter set, capturing each step's outputs.

The notebook is copied with one extra cell after each step that produces values
for later steps (or metrics): it saves them with nbship's own serializers, so
the equivalence check compares like with like. Those cells are removed from the
executed notebook that is kept as a CI artifact. A failure is reported as the
notebook's cell and line, not as a kernel traceback dump.

One execution serves every item of a notebook: papermill runs all the cells, as
nbval's kernel does (nbclient's ``allow_errors``), and nbship records which
cells' execution replied with an error. The papermill verdict is the one
papermill gives when it stops at the first error that is not allowed
(``papermill_verdict``: papermill's own ``raise_for_execution_errors`` over the
cells up to that point); nbval's items compare every cell's outputs.
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
from nbship.extract.graph import Step, StepGraph
from nbship.runtime import serializers
from nbship.runtime.numerics import Numerics

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
    # the notebook's cell position -> its outputs in this run (every cell ran)
    outputs: dict[int, list[Any]] = field(default_factory=dict)
    failure: NotebookFailure | None = None  # what papermill itself fails on, if anything


# Metrics a step logs where the metrics cell stands inside it (Step.metric_after) are
# captured there, under the step's name with this suffix; its other values at its end.
MID_STEP = "@metrics"


def metric_key(step: Step, name: str) -> str:
    """Where the notebook run keeps metric ``name`` of ``step`` (a capture's step key)."""
    return step.name + MID_STEP if name in step.metric_after else step.name


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


def instrument(graph: StepGraph, capture_dir: Path, settings: Numerics | None = None) -> Any:
    """The notebook with a capture cell after each producing step (nbformat node), and
    with ``settings``, a first cell that applies them (nbship.runtime.numerics)."""
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
        mid: dict[int, list[str]] = {}
        for metric, after in step.metric_after.items():
            mid.setdefault(after, []).append(metric)
        for after, metrics in mid.items():  # the values the notebook prints there
            code = (f"# nbship: capture the metrics of step {step.name!r} where the metrics "
                    "cell stands (not kept in the saved notebook)\n"
                    "from nbship.ci.notebook_run import capture as _nbship_capture\n"
                    f"_nbship_capture({str(capture_dir)!r}, {step.name + MID_STEP!r}, "
                    f"globals(), {sorted(metrics)!r})")
            cell = nbformat.v4.new_code_cell(code)
            cell.metadata["tags"] = [CAPTURE_TAG]
            cell.metadata["nbship"] = {"capture": step.name}
            inserts.append((after + 1, cell))
        names = sorted(set(step.outputs) | {m for m in step.metrics
                                              if m not in step.metric_after})
        if not names and not step.metrics:
            continue
        code = (f"# nbship: capture what step {step.name!r} passes on (not kept in the "
                "saved notebook)\n"
                "from nbship.ci.notebook_run import capture as _nbship_capture\n"
                f"_nbship_capture({str(capture_dir)!r}, {step.name!r}, globals(), {names!r})")
        cell = nbformat.v4.new_code_cell(code)
        cell.metadata["tags"] = [CAPTURE_TAG]
        cell.metadata["nbship"] = {"capture": step.name}
        inserts.append((step.cells[-1].index + 1, cell))
    if settings is not None:
        code = ("# nbship: the numeric settings the pipeline's steps run under (not kept in "
                "the saved notebook)\n"
                "from nbship.runtime.numerics import apply as _nbship_numerics\n"
                "_nbship_numerics()")
        cell = nbformat.v4.new_code_cell(code)
        cell.metadata["tags"] = [CAPTURE_TAG]
        cell.metadata["nbship"] = {"numerics": True}
        inserts.append((0, cell))
    for position, cell in sorted(inserts, key=lambda item: item[0], reverse=True):
        if nb.nbformat_minor < 5:  # cell ids are nbformat 4.5's: older notebooks refuse them
            cell.pop("id", None)
        nb.cells.insert(position, cell)
    return nb


def papermill_verdict(executed: Any, errored: set[int], work: Path) -> Any:
    """The PapermillExecutionError papermill raises for this run, or None.

    Papermill stops at the first cell whose execution replied with an error that
    nbclient does not allow (a ``raises-exception`` tag allows one); it then fails
    on what its own ``raise_for_execution_errors`` finds in the cells up to there.
    ``errored`` holds the positions of the cells whose reply was an error.
    """
    import copy

    from papermill.exceptions import PapermillExecutionError
    from papermill.execute import raise_for_execution_errors

    stop = next((i for i in sorted(errored)
                 if "raises-exception" not in executed.cells[i].metadata.get("tags", [])), None)
    upto = copy.deepcopy(executed)
    if stop is not None:
        upto.cells = upto.cells[:stop + 1]
        # what papermill records when nbclient raises (e.g. a UsageError has no error output)
        upto.cells[stop].metadata.setdefault("papermill", {})["exception"] = True
    cells = list(upto.cells)
    try:  # on an error it inserts banner cells into upto: `cells` keeps the indices
        raise_for_execution_errors(upto, str(work / "verdict.ipynb"))
    except PapermillExecutionError as exc:
        exc.cell = cells[exc.cell_index]
        return exc
    return None


def failure_report(notebook: Path, exc: Any) -> NotebookFailure:
    """A papermill failure as the notebook's cell, id, line and source around it."""
    cell = exc.cell
    meta = cell.metadata.get("nbship", {})
    if "capture" in meta:
        return NotebookFailure(
            f"nbship could not capture the values of step {meta['capture']!r}: "
            f"{exc.ename}: {exc.evalue}", where=Location(str(notebook)))
    error = f"{exc.ename}: {exc.evalue}"
    if not exc.evalue:  # e.g. a UsageError: IPython prints it to stderr, no error output
        stderr = "".join(o.get("text", "") for o in cell.get("outputs", [])
                         if o.get("output_type") == "stream" and o.get("name") == "stderr")
        lines = [ln for ln in strip_ansi(stderr).splitlines() if ln.strip()]
        error = f"{exc.ename}: {lines[-1]}" if lines else exc.ename
    return cell_failure(notebook, meta.get("index"), cell.get("id"), cell.source,
                        "\n".join(exc.traceback or []), error)


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


def _current_env_kernels(env: dict[str, str] | None = None) -> type:
    """A kernel manager for a Python kernel of this environment (nbval's kernel spec),
    its process started with ``env`` added to this one's.

    The kernel runs with this interpreter, as nbval's ``--nbval-current-env`` and
    kfp.local's steps do; it starts 0.4 s sooner than ipykernel's installed spec
    (no ``-Xfrozen_modules=off``, no debugger).
    """
    import os

    from jupyter_client.manager import AsyncKernelManager
    from nbval.kernel import NbvalKernelspecManager

    extra = dict(env or {})

    class CurrentEnvKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("kernel_spec_manager", NbvalKernelspecManager())
            super().__init__(**kwargs)

        # AsyncKernelManager's start_kernel is a coroutine; the stubs type KernelManager's
        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
            # kw reaches Popen (jupyter_client: "e.g. Popen kwargs"), env among them
            kw["env"] = {**kw.get("env", os.environ), **extra}
            await super().start_kernel(**kw)

    return CurrentEnvKernelManager


def run_notebook(graph: StepGraph, parameters: dict[str, Any], out_dir: Path,
                 *, label: str, stem: str | None = None,
                 cell_timeout: float | None = None,
                 settings: Numerics | None = None) -> NotebookRun:
    """Execute every cell with papermill; keep ``out_dir/<stem>.<label>.ipynb``.

    With ``settings``, the kernel runs under those numeric settings (its environment
    and a first cell), as the pipeline's steps do when they are compared.

    A cell that fails does not raise here: the run's ``failure`` says what papermill
    fails on, and ``outputs`` holds every cell's outputs for nbval's items.
    """
    import time

    import nbformat
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError
    from papermill.execute import ERROR_MARKER_TAG

    nb_path = graph.notebook.path
    out_dir = out_dir.resolve()  # the kernel runs in the notebook's folder
    out_dir.mkdir(parents=True, exist_ok=True)
    capture_dir = out_dir.parent / "captures" / f"{stem or nb_path.stem}.{label}"
    shutil.rmtree(capture_dir, ignore_errors=True)
    capture_dir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix=".nbship-run-", dir=out_dir))
    source = work / nb_path.name
    nbformat.write(instrument(graph, capture_dir, settings), source)
    executed = out_dir / f"{stem or nb_path.stem}.{label}.ipynb"
    errored: set[int] = set()
    started_cells: list[Any] = []

    def on_cell_error(cell: Any, cell_index: int, execute_reply: Any) -> None:
        errored.add(cell_index)

    def on_cell_execute(cell: Any, cell_index: int) -> None:
        started_cells.append(cell)

    from nbval.kernel import CURRENT_ENV_KERNEL_NAME

    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(executed), parameters=parameters,
            kernel_name=CURRENT_ENV_KERNEL_NAME,
            kernel_manager_class=_current_env_kernels(settings.to_env() if settings else None),
            cwd=str(nb_path.resolve().parent), progress_bar=False, log_output=False,
            report_mode=False, allow_errors=True, on_cell_error=on_cell_error,
            on_cell_execute=on_cell_execute, execution_timeout=cell_timeout,
            shutdown_kernel="immediate")  # a graceful one waits 2.6 s for torch to unload
    except PapermillExecutionError:
        pass  # papermill_verdict below decides, as papermill would have stopped
    except (CellTimeoutError, DeadKernelError) as exc:  # the run stopped inside a cell
        shutil.rmtree(work, ignore_errors=True)
        cell = started_cells[-1] if started_cells else None
        if cell is None:
            raise NotebookFailure(f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                                  where=Location(str(nb_path))) from None
        what = (f"CellTimeoutError: the cell ran longer than {cell_timeout:g} s "
                "(--nbval-cell-timeout)" if isinstance(exc, CellTimeoutError)
                else "DeadKernelError: the kernel died while the cell ran")
        raise cell_failure(nb_path, cell.metadata.get("nbship", {}).get("index"),
                           cell.get("id"), cell.source, "", what) from None
    seconds = time.perf_counter() - started
    raw = nbformat.read(executed, as_version=4)
    raw.cells = [c for c in raw.cells if ERROR_MARKER_TAG not in c.metadata.get("tags", [])]
    try:
        verdict = papermill_verdict(raw, errored, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failure = failure_report(nb_path, verdict) if verdict is not None else None
    outputs = {c.metadata["nbship"]["index"]: list(c.get("outputs", [])) for c in raw.cells
               if "index" in c.metadata.get("nbship", {})}
    raw.cells = [c for c in raw.cells if CAPTURE_TAG not in c.metadata.get("tags", [])]
    for cell in raw.cells:
        cell.metadata.pop("nbship", None)
    nbformat.write(raw, executed)
    index_path = capture_dir / INDEX_FILE
    captured = json.loads(index_path.read_text()) if index_path.exists() else {}
    if failure is None:
        expected = [s.name for s in graph.steps if s.outputs or s.metrics]
        lost = [name for name in expected if name not in captured]
        if lost:
            failure = NotebookFailure(
                f"nbship captured no values for step(s) {', '.join(lost)} "
                f"(expected them under {capture_dir})", where=Location(str(nb_path)))
    return NotebookRun(executed=executed, capture_dir=capture_dir, captured=captured,
                       seconds=seconds, outputs=outputs, failure=failure)


def render_html(executed: Path) -> Path:
    """An HTML page beside an executed notebook (nbconvert), for people to open."""
    from nbconvert import HTMLExporter

    from nbship.files import write_atomic

    body, _ = HTMLExporter().from_filename(str(executed))
    html = executed.with_suffix(".html")
    write_atomic(html, body)
    return html
