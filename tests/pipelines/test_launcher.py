"""Steps start from a warm fork server; the results are the ones a cold start gives."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.launcher import (
    LAUNCH_ENV,
    _split,
    imported_modules,
    third_party_modules,
)
from nbship.pipelines.local import RunResult, run_compiled


def cell(source: str, *tags: str) -> nbformat.NotebookNode:
    return new_code_cell(source, metadata={"tags": list(tags)})


@pytest.fixture
def notebook_importing_a_local_module(tmp_path: Path) -> Path:
    """A step that imports helper.py from the notebook's folder and reports how it started."""
    (tmp_path / "helper.py").write_text("def triple(x):\n    return 3 * x\n")
    nb = new_notebook(cells=[
        cell("import multiprocessing\nimport numpy as np\nimport helper", "imports"),
        cell("n = 4", "parameters"),
        cell("values = np.arange(n)", "step:make"),
        cell("total = int(helper.triple(values).sum())\n"
             "forked = int(multiprocessing.parent_process() is not None)", "step:use",
             "prev:make"),
        cell("print(total)\nprint(forked)", "pipeline-metrics"),
    ])
    path = tmp_path / "local_module.ipynb"
    nbformat.write(nb, path)
    return path


def run(nb: Path, root: Path) -> RunResult:
    compiled = compile_graph(build_graph(read_notebook(nb)), root / "build")
    return run_compiled(compiled, {}, root=root / "runs", echo=lambda line: None)


@pytest.mark.slow
def test_fork_server_and_cold_start_compute_the_same(
        notebook_importing_a_local_module: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    forked = run(notebook_importing_a_local_module, tmp_path / "fork")
    monkeypatch.setenv(LAUNCH_ENV, "subprocess")
    cold = run(notebook_importing_a_local_module, tmp_path / "cold")
    assert forked.status == cold.status == "SUCCESS"
    # the notebook's own module is imported by the step, from the notebook's folder
    assert forked.metrics["total"] == cold.metrics["total"] == 3 * (0 + 1 + 2 + 3)
    # the first run's steps came from the fork server, the second's from kfp.local's subprocess
    assert forked.metrics["forked"] == 1 and cold.metrics["forked"] == 0


def test_only_installed_third_party_modules_are_preloaded(
        notebook_importing_a_local_module: Path) -> None:
    tree = ast.parse("import numpy as np\nimport helper\nimport os.path\n"
                     "from json import dumps\nfrom . import sibling\nimport not_installed_xyz")
    names = imported_modules([tree, None])
    assert names == ["numpy", "helper", "os.path", "json", "not_installed_xyz"]
    preload = third_party_modules(names, notebook_importing_a_local_module.parent)
    # helper.py lives next to the notebook: each step imports its current text itself
    assert "numpy" in preload and "helper" not in preload and "not_installed_xyz" not in preload


def test_other_commands_fall_back_to_kfp_local() -> None:
    script = ('program_path=$(mktemp -d)\nprintf "%s" "$0" > '
              '"$program_path/ephemeral_component.py"\n'
              'python3 -m kfp.dsl.executor_main --component_module_path '
              '"$program_path/ephemeral_component.py" "$@"\n')
    assert _split(["sh", "-ec", script, "CODE", "--executor_input", "{}"]) == (
        "CODE", ["--executor_input", "{}"])
    assert _split(["python3", "-m", "kfp.dsl.executor_main", "--executor_input", "{}"]) is None
    assert _split(["sh", "-ec", "echo hi", "CODE"]) is None
