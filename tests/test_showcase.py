"""The showcase notebook runs as a pipeline to SUCCESS, accurate and traceable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import run_compiled
from tests.conftest import SHOWCASE

pytestmark = pytest.mark.slow


def test_showcase_graph_is_the_documented_one() -> None:
    graph = build_graph(read_notebook(SHOWCASE))
    assert [s.name for s in graph.steps] == ["load", "preprocess", "train", "evaluate",
                                             "validate"]
    assert set(graph.parameters) == {"epochs", "lr", "seed", "threshold", "data_dir"}
    assert graph.metrics == {"accuracy": "evaluate", "loss": "evaluate"}
    assert graph.problems == []


def test_showcase_pipeline_succeeds_with_accuracy_and_provenance(tmp_path: Path) -> None:
    graph = build_graph(read_notebook(SHOWCASE))
    compiled = compile_graph(graph, tmp_path / "build")
    result = run_compiled(compiled, {}, root=tmp_path / "runs", echo=lambda line: None)
    assert result.status == "SUCCESS"
    assert result.metrics["accuracy"] >= 0.9
    prov = json.loads(result.provenance.read_text())
    model = prov["steps"]["train"]["outputs"]["model"]
    assert model["serializer"] == "torch-module"
    assert prov["steps"]["evaluate"]["inputs"]["model"]["sha256"] == model["sha256"]


def test_validate_gate_fails_the_run_below_threshold(tmp_path: Path) -> None:
    from nbship.errors import RunError

    compiled = compile_graph(build_graph(read_notebook(SHOWCASE)), tmp_path / "build")
    with pytest.raises(RunError) as info:
        run_compiled(compiled, {"epochs": 1, "threshold": 0.999}, root=tmp_path / "runs",
                     echo=lambda line: None)
    assert "below the threshold" in info.value.message
    assert info.value.where is not None and info.value.where.cell == 13
