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


def _artifact_stem(path: Path) -> str:
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        rel = Path(path.name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", str(rel.with_suffix("")))


class NotebookFile(pytest.File):
    """One notebook: the four kinds of item, sharing the papermill run."""

    graph: Any = None
    config_error: NbshipError | None = None
    notebook_run: Any = None
    notebook_error: BaseException | None = None

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
        yield CheckItem.from_parent(self, name="check")
        from nbval.plugin import IPyNbFile

        nbval = IPyNbFile.from_parent(self, path=self.path, name="nbval")
        nbval.compare_outputs = self.settings.nbval == "strict"
        yield nbval
        yield PapermillItem.from_parent(self, name=f"papermill[{label}]")
        yield EquivalenceItem.from_parent(self, name=f"equivalence[{label}]")

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
        try:
            parent.notebook_run = run_notebook(
                parent.graph, parent.parameters(), parent.artifacts / "notebooks",
                label=parent.settings.parameter_set, stem=_artifact_stem(self.path))
        except BaseException as exc:
            parent.notebook_error = exc
            raise


class EquivalenceItem(_NotebookItem):
    """The pipeline computes what the notebook computes."""

    def runtest(self) -> None:
        from nbship.ci.equivalence import check_equivalence

        parent = self.parent
        if parent.notebook_run is None:
            pytest.skip("the notebook did not run under papermill (see its papermill item)")
        if parent.graph.errors:
            pytest.skip("the step graph has problems (see the check item)")
        settings = parent.settings
        report = check_equivalence(
            parent.graph, parent.notebook_run, parent.parameters(),
            parent.artifacts / "pipelines", rtol=settings.rtol, atol=settings.atol,
            label=settings.parameter_set)
        skipped = [f"{f.name} ({f.verdict.detail})" for f in report.skipped]
        self.user_properties.append(("compared", len(report.compared)))
        if skipped:
            self.user_properties.append(("not compared", "; ".join(skipped)))
