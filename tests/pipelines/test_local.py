"""Runs through kfp.local: cache, partial re-runs, failures that name the cell, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from nbship.errors import RunError
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import RunResult, run_compiled
from tests.conftest import fixture_path

pytestmark = pytest.mark.slow


def run(nb: Path, tmp: Path, **params: object) -> RunResult:
    compiled = compile_graph(build_graph(read_notebook(nb)), tmp / "build")
    return run_compiled(compiled, dict(params), root=tmp / "runs", echo=lambda line: None)


def statuses(result: RunResult) -> dict[str, str]:
    return {name: ("cached" if t.cached else t.status) for name, t in result.tasks.items()}


def edit_cell(nb: Path, cell_id: str, source: str) -> None:
    doc = nbformat.read(nb, as_version=4)
    next(c for c in doc.cells if c.get("id") == cell_id).source = source
    nbformat.write(doc, nb)


@pytest.fixture
def numpy_nb(tmp_path: Path) -> Path:
    dst = tmp_path / "three_numpy_steps.ipynb"
    shutil.copy(fixture_path("three_numpy_steps"), dst)
    return dst


def test_run_succeeds_with_metrics_and_provenance(numpy_nb: Path, tmp_path: Path) -> None:
    result = run(numpy_nb, tmp_path)
    assert result.status == "SUCCESS"
    assert statuses(result) == {"generate": "SUCCESS", "center": "SUCCESS",
                                "summarize": "SUCCESS"}
    assert set(result.metrics) == {"spread", "biggest"} and result.metrics["spread"] > 0
    prov = json.loads(result.provenance.read_text())
    assert prov["notebook"]["sha256"] == read_notebook(numpy_nb).sha256
    assert prov["parameters"] == {"n": 50, "seed": 0}
    assert prov["versions"]["kfp"].startswith("2.")
    assert prov["steps"]["center"]["cells"] == [{"index": 4, "id": "c4"}]
    data_out = prov["steps"]["generate"]["outputs"]["data"]
    assert data_out["serializer"] == "numpy" and len(data_out["sha256"]) == 64
    assert prov["steps"]["center"]["inputs"]["data"] == {"from": "generate",
                                                         "sha256": data_out["sha256"]}
    assert len(prov["pipeline"]["yaml_sha256"]) == 64


def test_unchanged_rerun_is_served_from_cache(numpy_nb: Path, tmp_path: Path) -> None:
    first = run(numpy_nb, tmp_path)
    again = run(numpy_nb, tmp_path)
    assert set(statuses(again).values()) == {"cached"}
    assert again.metrics == first.metrics


def test_changed_step_reruns_with_descendants_only(numpy_nb: Path, tmp_path: Path) -> None:
    first = run(numpy_nb, tmp_path)
    edit_cell(numpy_nb, "c4", "centered = (data - data.mean()) * 2")
    second = run(numpy_nb, tmp_path)
    assert statuses(second) == {"generate": "cached", "center": "SUCCESS",
                                "summarize": "SUCCESS"}
    # the downstream step saw the new input, not a stale cached result
    assert second.metrics["spread"] == pytest.approx(2 * first.metrics["spread"])


def test_changed_parameter_reruns_the_steps_that_read_it(numpy_nb: Path, tmp_path: Path) -> None:
    run(numpy_nb, tmp_path)
    result = run(numpy_nb, tmp_path, n=80)
    assert statuses(result) == {"generate": "SUCCESS", "center": "SUCCESS",
                                "summarize": "SUCCESS"}
    assert json.loads(result.provenance.read_text())["parameters"]["n"] == 80


def test_failure_names_cell_and_line_then_resumes_from_cache(tmp_path: Path) -> None:
    nb = tmp_path / "failing_step.ipynb"
    shutil.copy(fixture_path("failing_step"), nb)
    with pytest.raises(RunError) as info:
        run(nb, tmp_path)
    err = info.value
    assert err.where is not None
    assert (err.where.cell, err.where.cell_id, err.where.line) == (3, "c3", 2)
    assert "ZeroDivisionError" in err.message and "ratio = value / divisor" in err.message
    failed = json.loads(next((tmp_path / "runs").rglob("provenance.json")).read_text())
    assert failed["run"]["status"] == "FAILURE"
    assert failed["steps"]["divide"]["status"] == "FAILURE"
    assert failed["steps"]["report"]["status"] == "NOT_RUN"

    edit_cell(nb, "c3", "half = value / 2\nratio = value / max(divisor, 1)")
    fixed = run(nb, tmp_path)
    assert statuses(fixed) == {"prepare": "cached", "divide": "SUCCESS", "report": "SUCCESS"}


def test_a_variable_never_assigned_is_named_with_its_cell(tmp_path: Path) -> None:
    with pytest.raises(RunError) as info:
        run(fixture_path("conditional_output"), tmp_path)
    err = info.value
    assert "'result' was not defined when the step's cells finished" in err.message
    assert err.where is not None and err.where.cell == 2 and err.where.line is None


def test_steps_run_in_the_notebooks_folder(tmp_path: Path) -> None:
    nb = tmp_path / "nbdir" / "reads_relative_file.ipynb"
    nb.parent.mkdir()
    shutil.copy(fixture_path("reads_relative_file"), nb)
    result = run(nb, tmp_path)
    assert result.metrics == {"value": 7.0}


def test_notebook_without_tags_runs_as_one_step(tmp_path: Path) -> None:
    # the implicit step is named after the notebook: the pipeline must not be
    result = run(fixture_path("no_tags_one_step"), tmp_path)
    assert result.status == "SUCCESS" and list(result.tasks) == ["no-tags-one-step"]
