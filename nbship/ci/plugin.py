"""pytest plugin: ``pytest --nbship PATHS`` tests each notebook four ways.

For ``notebook.ipynb`` it collects, in this order:

* ``notebook.ipynb::check`` — the step graph has no problems (``nbship check``);
* ``notebook.ipynb::nbval::Cell N`` — nbval's own items (its collector, markers and
  sanitizer files), strict or lax as the notebook is configured (nbship.ci.config);
* ``notebook.ipynb::papermill[SET]`` — the notebook run by papermill with the
  parameter set SET (``ci`` by default); the executed notebook is kept;
* ``notebook.ipynb::equivalence[SET]`` — the compiled pipeline run on kfp.local with
  the same parameters computes the same metrics and step-boundary values.

Registered through the ``pytest11`` entry point; inactive unless ``--nbship`` is
given (do not combine with ``--nbval``, which collects the same files again).
"""

from __future__ import annotations

import re
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


class _Background:
    """A subprocess run for an item, its output in a log file."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        import subprocess

        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

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

    The papermill run happens in this process; the pipeline run (`nbship run`, which
    changes directory and redirects output while kfp.local runs) in a subprocess.
    They run one after the other: overlapping them with nbval's kernel was measured
    slower on two cores (torch's threads in three processes fight for the cores).
    """

    graph: Any = None
    config_error: NbshipError | None = None
    pipeline: _Background | None = None
    pipeline_cmd: tuple[list[str], Path]
    notebook_run: Any = None

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        from nbship.ci.config import load_config
        from nbship.extract.graph import build_graph
        from nbship.notebook import read_notebook

        try:
            self.graph = build_graph(read_notebook(self.path, require_code=False))
            self.settings = load_config(self.path,
                                        parameter_set=self.config.getoption("nbship_set"))
        except NbshipError as exc:
            self.config_error = exc
            yield CheckItem.from_parent(self, name="check")
            return
        label = self.settings.parameter_set
        self.artifacts = Path(self.config.getoption("nbship_artifacts")).resolve()
        self.stem = _artifact_stem(self.path)
        yield CheckItem.from_parent(self, name="check")
        from nbval.plugin import IPyNbFile

        nbval = IPyNbFile.from_parent(self, path=self.path, name="nbval")
        nbval.compare_outputs = self.settings.nbval == "strict"
        yield nbval
        yield PapermillItem.from_parent(self, name=f"papermill[{label}]")
        yield EquivalenceItem.from_parent(self, name=f"equivalence[{label}]")

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

    def teardown(self) -> None:
        if self.pipeline is not None:
            self.pipeline.kill()

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
        from nbship.ci.notebook_run import run_notebook

        parent = self.parent
        parent.notebook_run = run_notebook(
            parent.graph, parent.parameters(), parent.artifacts / "notebooks",
            label=parent.settings.parameter_set, stem=parent.stem)


class EquivalenceItem(_NotebookItem):
    """The pipeline computes what the notebook computes."""

    def runtest(self) -> None:
        import json
        import re

        from nbship.ci.equivalence import check_equivalence

        parent = self.parent
        if parent.graph.errors:
            pytest.skip("the step graph has problems (see the check item)")
        if parent.notebook_run is None:
            pytest.skip("the notebook did not run under papermill (see its papermill item)")
        if parent.pipeline is None:
            parent.pipeline = _Background(*parent.pipeline_cmd)
        job = parent.pipeline
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
        report = check_equivalence(parent.graph, parent.notebook_run, provenance,
                                   rtol=settings.rtol, atol=settings.atol,
                                   label=settings.parameter_set)
        self.user_properties.append(("compared", len(report.compared)))
        skipped = [f"{f.name} ({f.verdict.detail})" for f in report.skipped]
        if skipped:
            self.user_properties.append(("not compared", "; ".join(skipped)))
