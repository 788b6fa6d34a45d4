"""pytest plugin: ``pytest --nbship PATHS`` tests each notebook four ways.

For ``notebook.ipynb`` it collects, in this order:

* ``notebook.ipynb::check`` — the step graph has no problems (``nbship check``);
* ``notebook.ipynb::papermill[SET]`` — the notebook run by papermill with the
  parameter set SET (``ci`` by default); the executed notebook is kept;
* ``notebook.ipynb::nbval::Cell N`` — nbval's own items (its collector, markers,
  sanitizer files and output comparison), strict or lax as the notebook is
  configured (nbship.ci.config), checking the cells' outputs in that same run;
* ``notebook.ipynb::equivalence[SET]`` — the compiled pipeline run on kfp.local with
  the same parameters computes the same metrics and step-boundary values.

The notebook executes once (papermill, every cell, values captured at the step
boundaries) and the pipeline once: nbval's items take their cells' outputs from
that execution instead of a kernel of their own (see ``NbvalCell``).

Registered through the ``pytest11`` entry point; inactive unless ``--nbship`` is
given (do not combine with ``--nbval``, which collects the same files again).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbship.errors import NbshipError

ARTIFACTS_DEFAULT = ".nbship/test"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nbship", "nbship: notebooks as pipeline tests")
    group.addoption("--nbship", action="store_true",
                    help="collect .ipynb files as nbship tests (check, nbval, papermill, "
                    "equivalence)")
    group.addoption("--nbship-set", default=None, metavar="NAME",
                    help="parameter set to run with (default: as configured, else 'ci')")
    group.addoption("--nbship-no-html", action="store_true",
                    help="do not render the executed notebooks as HTML")
    group.addoption("--nbship-artifacts", default=ARTIFACTS_DEFAULT, metavar="DIR",
                    help="where executed notebooks and pipeline runs go "
                    f"(default: {ARTIFACTS_DEFAULT})")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("nbship", False):
        config.addinivalue_line("markers", "nbship: a test generated from a notebook")
        option = config.option
        # nbval's kernel runs in this environment, as papermill's and kfp.local's steps do
        if not getattr(option, "nbval_kernel_name", None):
            option.nbval_current_env = True
        # the notebook's kernel and its pipeline run side by side: OpenMP's default
        # busy-waiting threads (torch, numpy's BLAS) would take the cores from each other
        # (the showcase's training 3 s -> 10 s on two cores); passive waiting costs nothing
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Any:
    opt = parent.config.option
    if (getattr(opt, "nbship", False) and file_path.suffix == ".ipynb"
            and not (getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False))
            and ".ipynb_checkpoints" not in file_path.parts):
        return NotebookFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """nbval's failures, for nbship's notebooks, read like the notebook (no kernel dump)."""
    outcome = yield
    report = outcome.get_result()
    notebook = getattr(item.parent, "parent", None)
    if (report.failed and call.excinfo is not None and isinstance(notebook, NotebookFile)
            and hasattr(item, "cell")):
        report.longrepr = _nbval_failure(item, notebook, call.excinfo.value)


def _nbval_failure(item: Any, notebook: NotebookFile, exc: BaseException) -> str:
    import re

    from nbship.ci.notebook_run import cell_failure, strip_ansi

    # nbval numbers code cells from 0, as nbship's Notebook lists them
    cells = notebook.graph.notebook.cells if notebook.graph is not None else []
    number = getattr(item, "cell_num", -1)
    index = cells[number].index if 0 <= number < len(cells) else None
    traceback = str(getattr(exc, "inner_traceback", "") or "")
    message = strip_ansi(str(exc))
    if "exception" in message:  # the cell raised: the error is the traceback's last line
        last = [ln for ln in strip_ansi(traceback).splitlines() if ln.strip()]
        error = last[-1] if last else message
        detail = ""
    else:  # e.g. outputs differ (strict): nbval's own comparison says how
        error = f"{message.rstrip('.')} (nbval)" if message else "nbval failed"
        if "differ" in message:
            error = "outputs differ from the ones saved in the notebook"
        detail, traceback = strip_ansi(traceback).strip(), ""
    failure = cell_failure(notebook.path, index, item.cell.get("id"), item.cell.source,
                           traceback, error)
    text = str(failure) + (f"\n{detail}" if detail else "")
    return re.sub(r"\n{3,}", "\n\n", text) + f"\n(nbval item {item.name})"


def _artifact_stem(path: Path) -> str:
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        rel = Path(path.name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", str(rel.with_suffix("")))


def _cli_value(value: Any) -> str:
    """A parameter value as ``nbship run -p`` parses it back."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _render_quietly(executed: Path) -> None:
    from nbship.ci.notebook_run import render_html

    try:
        render_html(executed)
    except Exception as exc:  # a page a person may open: never a test failure
        print(f"nbship: no HTML render of {executed}: {exc}")


class _Background:
    """A subprocess run for an item, its output in a log file."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        import subprocess

        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **env})

    def wait(self, timeout: float = 3600) -> int:
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


class NotebookFile(pytest.File):
    """One notebook: the four kinds of item.

    The notebook executes once, under papermill in this process (``execution``),
    and nbval's items read their cells' outputs from that run. The pipeline run
    (`nbship run`, which changes directory and redirects output while kfp.local
    runs) starts in a subprocess as the notebook starts: the two are independent,
    and the equivalence item waits for the pipeline and compares. Side by side on
    two cores they need OpenMP's passive waiting (set in ``pytest_configure``).
    """

    graph: Any = None
    settings: Any = None
    config_error: NbshipError | None = None
    pipeline: _Background | None = None
    pipeline_cmd: tuple[list[str], Path] | None = None
    notebook_run: Any = None
    execution_error: BaseException | None = None
    html: threading.Thread | None = None

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        from nbship.ci.config import load_config
        from nbship.extract.graph import build_graph
        from nbship.notebook import read_notebook

        try:  # both or neither: the items use graph and settings together
            graph = build_graph(read_notebook(self.path, require_code=False))
            settings = load_config(self.path, parameter_set=self.config.getoption("nbship_set"))
        except NbshipError as exc:
            self.config_error = exc
            yield CheckItem.from_parent(self, name="check")
            return
        self.graph, self.settings = graph, settings
        label = self.settings.parameter_set
        self.artifacts = Path(self.config.getoption("nbship_artifacts")).resolve()
        self.stem = _artifact_stem(self.path)
        yield CheckItem.from_parent(self, name="check")
        yield PapermillItem.from_parent(self, name=f"papermill[{label}]")
        nbval_file, _ = _nbval_classes()
        nbval = nbval_file.from_parent(self, path=self.path, name="nbval")
        nbval.compare_outputs = self.settings.nbval == "strict"
        yield nbval
        yield EquivalenceItem.from_parent(self, name=f"equivalence[{label}]")

    @property
    def code_positions(self) -> list[int]:
        """nbval's cell number (code cells from 0) -> the cell's position in the notebook."""
        return [cell.index for cell in self.graph.notebook.cells]

    def execution(self) -> Any:
        """The notebook's one papermill run (NotebookRun), made on first use."""
        if self.notebook_run is None and self.execution_error is None:
            from nbship.ci.notebook_run import run_notebook

            if self.equivalence_selected():
                self.start_pipeline()
            try:
                self.notebook_run = run_notebook(
                    self.graph, self.parameters(), self.artifacts / "notebooks",
                    label=self.settings.parameter_set, stem=self.stem,
                    cell_timeout=getattr(self.config.option, "nbval_cell_timeout", None),
                    settings=self.numerics)
            except Exception as exc:  # e.g. a dead kernel: every item that needs the run says so
                self.execution_error = exc
            else:
                if not self.config.getoption("nbship_no_html"):
                    self.html = threading.Thread(target=_render_quietly,
                                                 args=(self.notebook_run.executed,))
                    self.html.start()
        if self.execution_error is not None:
            raise self.execution_error
        return self.notebook_run

    def setup(self) -> None:
        import sys

        if self.graph is None:
            return
        try:
            params = self.parameters()
        except NbshipError:
            return  # reported by the papermill item
        label = self.settings.parameter_set
        logs = self.artifacts / "logs"
        if not self.graph.errors:
            cmd = [sys.executable, "-m", "nbship", "run", str(self.path),
                   "--root", str(self.artifacts / "pipelines" / "runs"),
                   "-o", str(self.artifacts / "pipelines" / "build" / self.stem)]
            for name, value in params.items():
                cmd += ["-p", f"{name}={_cli_value(value)}"]
            self.pipeline_cmd = (cmd, logs / f"{self.stem}.{label}.pipeline.log")

    @functools.cached_property
    def numerics(self) -> Any:
        """The numeric settings the notebook and its pipeline both run under: the same
        threads, the deterministic kernels of the libraries the notebook imports (read
        once: the kernel, the pipeline run and the report use them)."""
        from nbship.extract.names import imported_modules
        from nbship.runtime.numerics import Numerics

        modules = imported_modules(c.tree for c in self.graph.codes.values())
        return Numerics.for_modules({m.split(".")[0] for m in modules}, self.settings.threads)

    def equivalence_selected(self) -> bool:
        """Whether this run includes the notebook's equivalence item (not e.g. -k Cell)."""
        return any(isinstance(item, EquivalenceItem) and item.parent is self
                   for item in self.session.items)

    def start_pipeline(self) -> None:
        """The pipeline runs (a subprocess) while the notebook runs: they are independent."""
        if self.pipeline is None and self.pipeline_cmd is not None:
            cmd, log = self.pipeline_cmd
            self.pipeline = _Background(cmd, log, self.numerics.to_env())

    def teardown(self) -> None:
        if self.pipeline is not None:
            self.pipeline.kill()
        if self.html is not None:
            self.html.join()

    def parameters(self) -> dict[str, Any]:
        from nbship.errors import ParameterError

        values = dict(self.settings.parameters)
        for name, value in values.items():
            declared = self.graph.parameters.get(name)
            if declared is None:
                raise ParameterError(
                    f"parameter set {self.settings.parameter_set!r} sets {name!r}, which the "
                    "notebook's parameters cell does not declare",
                    hint="settings from: " + "; ".join(self.settings.source))
            ok = type(value).__name__ == declared.type or (
                declared.type == "float" and type(value) is int)
            if not ok:
                raise ParameterError(
                    f"parameter set {self.settings.parameter_set!r}: {name} = {value!r} is "
                    f"not a {declared.type} (the parameters cell says {declared.value!r})")
        return values


class _NotebookItem(pytest.Item):
    parent: NotebookFile

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, NbshipError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}::{self.name}"


class CheckItem(_NotebookItem):
    """The step graph has no problems."""

    def runtest(self) -> None:
        if self.parent.config_error is not None:
            raise self.parent.config_error
        graph = self.parent.graph
        if graph.errors:
            from nbship.errors import AnalysisError

            raise AnalysisError("the step graph has problems (nbship check):\n" + "\n".join(
                "  " + str(p).replace("\n", "\n  ") for p in graph.errors))


class PapermillItem(_NotebookItem):
    """The notebook runs top to bottom under papermill with the parameter set."""

    def runtest(self) -> None:
        run = self.parent.execution()
        if run.failure is not None:
            raise run.failure


@functools.cache
def _nbval_classes() -> tuple[Any, Any]:
    """nbval's collector and cell item, reading outputs from the notebook's papermill run."""
    from nbval.plugin import IPyNbCell, IPyNbFile, coalesce_streams

    class NbvalCell(IPyNbCell):  # type: ignore[misc]
        """nbval's item for one cell; the outputs come from papermill's execution.

        ``runtest`` follows nbval's own after its kernel has replied — an error output
        fails the cell unless it is marked to raise, an unrun reference cell must have
        no outputs, then the comparison — calling nbval's helpers for the parts that
        decide (``coalesce_streams``, ``compare_outputs`` with its sanitizers,
        ``raise_cell_error`` and nbval's report).
        """

        def runtest(self) -> None:
            if self.options["skip"]:
                pytest.skip()
            notebook: NotebookFile = self.parent.parent
            try:
                run = notebook.execution()
            except Exception:
                raise NbshipError("not run: the notebook's papermill run stopped (see its "
                                  "papermill item)") from None
            positions = notebook.code_positions
            if not 0 <= self.cell_num < len(positions):
                raise NbshipError(f"nbval's cell {self.cell_num} is not a code cell nbship "
                                  "read; please report this notebook")
            outs = list(run.outputs.get(positions[self.cell_num], []))
            self.test_outputs = outs
            for out in outs:
                if out.output_type == "error" and not self.options["check_exception"]:
                    self.raise_cell_error("Cell execution caused an exception",
                                          "\n" + "\n".join(out.get("traceback", [])))
            outs[:] = coalesce_streams(outs)
            if self.cell.execution_count is None and self.cell.outputs:
                self.raise_cell_error("Unrun reference cell has outputs")
            if (self.options["check"] and self.cell.execution_count is not None
                    and not self.compare_outputs(outs, coalesce_streams(self.cell.outputs))):
                self.raise_cell_error("Cell outputs differ",
                                      "\n".join(self.comparison_traceback))

    class NbvalFile(IPyNbFile):  # type: ignore[misc]
        """nbval's collector (markers, options, sanitizers) without a kernel of its own."""

        def setup(self) -> None:
            self.setup_sanitize_files()

        def collect(self) -> Iterator[pytest.Item]:
            for item in super().collect():
                yield NbvalCell.from_parent(self, name=item.name, cell_num=item.cell_num,
                                            cell=item.cell, options=item.options)

    return NbvalFile, NbvalCell


class EquivalenceItem(_NotebookItem):
    """The pipeline computes what the notebook computes."""

    def runtest(self) -> None:
        import json
        import re

        from nbship.ci.equivalence import check_equivalence

        parent = self.parent
        if parent.graph.errors:
            pytest.skip("the step graph has problems (see the check item)")
        try:
            run = parent.execution()
        except Exception:
            run = None
        if run is None or run.failure is not None:
            pytest.skip("the notebook did not run under papermill (see its papermill item)")
        parent.start_pipeline()
        job = parent.pipeline
        assert job is not None
        code = job.wait()
        log = job.log.read_text()
        if code != 0:
            start = log.find("nbship: error: ")
            message = log[start + len("nbship: error: "):] if start >= 0 else log[-2000:]
            raise NbshipError("the pipeline run failed: " + message.strip())
        found = re.search(r"^provenance: (.+)$", log, re.MULTILINE)
        if not found:
            raise NbshipError(f"the pipeline run left no provenance; see {job.log}")
        provenance = json.loads(Path(found[1].strip()).read_text())
        settings = parent.settings
        from nbship.ci.equivalence import conditions

        numerics = parent.numerics
        report = check_equivalence(parent.graph, run, provenance,
                                   rtol=settings.rtol, atol=settings.atol,
                                   label=settings.parameter_set, settings=numerics)
        self.user_properties.append(("compared", len(report.compared)))
        self.user_properties.append(("numerics", conditions(numerics)))
        skipped = [f"{f.name} ({f.verdict.detail})" for f in report.skipped]
        if skipped:
            self.user_properties.append(("not compared", "; ".join(skipped)))
