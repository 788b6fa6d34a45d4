"""Real notebooks from other projects (../shared/corpus): the Kale-tagged ones compile,
the runnable ones run, and one that needs a missing library fails naming the cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbship.errors import RunError
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import run_compiled

KALE_NOTEBOOKS = [
    "kale/candies_sharing.ipynb",
    "kale/cifar10_classification.ipynb",
    "kale/dog-breed-v2.ipynb",
    "kale/open-vaccine.ipynb",
    "kale/pipeline_parameters_and_metrics.ipynb",
    "kale/serving_sklearn_iris.ipynb",
    "kale/serving_xgboost_iris.ipynb",
    "kale/taxicab_pipeline.ipynb",
    "kale/titanic/titanic_dataset_ml.ipynb",
    "kale-history/base_example_numpy.ipynb",
    "kale-history/pipeline_parameters_and_metrics_block.ipynb",
    "kale-history/test_tag_parsing.ipynb",
    "kale-history/v2_Example.ipynb",
    "kale-history/v2_iris_example.ipynb",
]


@pytest.mark.parametrize("name", KALE_NOTEBOOKS)
def test_kale_notebook_compiles(corpus: Path, name: str, tmp_path: Path) -> None:
    graph = build_graph(read_notebook(corpus / name))
    assert graph.errors == []
    compiled = compile_graph(graph, tmp_path)
    assert compiled.yaml.exists() and len(graph.steps) >= 2


def test_missing_library_is_a_warning_naming_the_cell(corpus: Path) -> None:
    graph = build_graph(read_notebook(corpus / "kale/dog-breed-v2.ipynb"))
    missing = {p.message.split("'")[1]: p.where for p in graph.warnings
               if p.kind == "missing-module"}
    assert "tensorflow" in missing and missing["tensorflow"].cell == 8


@pytest.mark.slow
@pytest.mark.parametrize("name, metrics", [
    ("kale/candies_sharing.ipynb", set()),
    ("kale/pipeline_parameters_and_metrics.ipynb", {"d1", "d2", "sum_result"}),
    ("kale-history/base_example_numpy.ipynb", set()),
    ("kale-history/test_tag_parsing.ipynb", set()),
])
def test_runnable_kale_notebook_runs(corpus: Path, name: str, metrics: set[str],
                                     tmp_path: Path) -> None:
    compiled = compile_graph(build_graph(read_notebook(corpus / name)), tmp_path / "b")
    result = run_compiled(compiled, {}, root=tmp_path / "runs", echo=lambda line: None)
    assert result.status == "SUCCESS"
    assert set(result.metrics) == metrics


@pytest.mark.slow
def test_step_needing_a_missing_library_fails_naming_the_cell(tmp_path: Path) -> None:
    from tests.conftest import write_notebook

    nb = write_notebook(tmp_path / "n.ipynb", [
        (["step:load"], "x = 1"),
        (["step:plot"], "import nbship_no_such_plotting_library as plt\nplt.plot(x)")])
    graph = build_graph(read_notebook(nb))
    assert [p.kind for p in graph.warnings] == ["missing-module"]
    compiled = compile_graph(graph, tmp_path / "b")
    with pytest.raises(RunError) as info:
        run_compiled(compiled, {}, root=tmp_path / "runs", echo=lambda line: None)
    assert info.value.where is not None and info.value.where.cell == 1
    assert "No module named 'nbship_no_such_plotting_library'" in info.value.message


def test_statements_that_are_not_parameters_or_metrics_are_one_warning_per_cell(
        corpus: Path) -> None:
    graph = build_graph(read_notebook(corpus / "kale-history/v2_iris_example.ipynb"))
    by_kind = {p.kind: p for p in graph.warnings if p.kind in ("parameter", "metrics")}
    assert "7 statement(s) in the parameters cell" in by_kind["parameter"].message
    assert "(lines 2, 25-30)" in by_kind["parameter"].message
    assert by_kind["metrics"].where.cell == 9
    assert len(graph.parameters) == 13
