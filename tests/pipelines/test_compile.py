"""Compilation: KFP v2 IR, deterministic bytes, round trip, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nbship.errors import AnalysisError
from nbship.pipelines.compile import check_round_trip, compile_graph
from tests.conftest import graph_of


def test_compile_writes_module_yaml_and_graph(tmp_path: Path) -> None:
    compiled = compile_graph(graph_of("three_numpy_steps"), tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [".nbship-build.json", "pipeline.py", "pipeline.yaml", "step-graph.json"]
    spec = yaml.safe_load(compiled.yaml.read_text())
    assert set(spec) >= {"components", "deploymentSpec", "pipelineInfo", "root", "schemaVersion"}
    assert set(spec["root"]["dag"]["tasks"]) == {"generate", "center", "summarize"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["n"]["parameterType"] == "NUMBER_INTEGER"
    assert params["n"]["defaultValue"] == 50


def test_compiled_yaml_is_deterministic(tmp_path: Path) -> None:
    a = compile_graph(graph_of("three_numpy_steps"), tmp_path / "a")
    b = compile_graph(graph_of("three_numpy_steps"), tmp_path / "b")
    assert a.yaml.read_bytes() == b.yaml.read_bytes()


def test_yaml_carries_notebook_hash_and_no_pip_install(tmp_path: Path) -> None:
    graph = graph_of("three_numpy_steps")
    compiled = compile_graph(graph, tmp_path)
    text = compiled.yaml.read_text()
    assert graph.notebook.sha256 in yaml.safe_load(text)["pipelineInfo"]["description"]
    assert "pip install" not in text
    executor = yaml.safe_load(text)["deploymentSpec"]["executors"]["exec-generate"]
    assert executor["container"]["image"] == "nbship-env:latest"


def test_round_trip_check_rejects_a_broken_spec(tmp_path: Path) -> None:
    compiled = compile_graph(graph_of("three_numpy_steps"), tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text(compiled.yaml.read_text().replace("schemaVersion:", "schemaVersionX:"))
    with pytest.raises(Exception, match="PipelineSpec"):
        check_round_trip(broken)


def test_kubernetes_settings_go_to_the_platform_spec(tmp_path: Path) -> None:
    compiled = compile_graph(graph_of("task_settings_tags"), tmp_path)
    docs = list(yaml.safe_load_all(compiled.yaml.read_text()))
    assert len(docs) == 2
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert platform["podMetadata"]["labels"] == {"team": "vision"}
    assert platform["secretAsEnv"][0]["secretName"] == "db-creds"
    resources = docs[0]["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["cpuLimit"] == 2.0
    assert docs[0]["root"]["dag"]["tasks"]["train"]["cachingOptions"] == {}


def test_problems_stop_compilation_and_leave_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    compile_graph(graph_of("three_numpy_steps"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(AnalysisError) as info:
        compile_graph(graph_of("undefined_name"), out)
    assert info.value.where is not None and info.value.where.cell == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_kfp_failure_leaves_no_temporary_files(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import nbship.pipelines.compile as comp

    def boom(module: Path, yaml_path: Path) -> None:
        yaml_path.write_text("half")
        raise RuntimeError("kfp said no")

    monkeypatch.setattr(comp, "_compile_module", boom)
    with pytest.raises(comp.CompileError, match="kfp said no"):
        compile_graph(graph_of("three_numpy_steps"), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_unchanged_compile_does_not_run_kfp_again(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import nbship.pipelines.compile as comp

    first = compile_graph(graph_of("three_numpy_steps"), tmp_path)

    def must_not_run(module: Path, yaml_path: Path) -> None:
        raise AssertionError("KFP compiled an unchanged pipeline")

    monkeypatch.setattr(comp, "_compile_module", must_not_run)
    again = compile_graph(graph_of("three_numpy_steps"), tmp_path)
    assert again.yaml_sha256 == first.yaml_sha256
    with pytest.raises(comp.CompileError):  # a different notebook compiles anew
        compile_graph(graph_of("fan_out_fan_in"), tmp_path)


def test_a_tampered_yaml_is_rebuilt(tmp_path: Path) -> None:
    first = compile_graph(graph_of("three_numpy_steps"), tmp_path)
    first.yaml.write_text("tampered")
    again = compile_graph(graph_of("three_numpy_steps"), tmp_path)
    assert again.yaml_sha256 == first.yaml_sha256
    assert "tampered" not in again.yaml.read_text()
