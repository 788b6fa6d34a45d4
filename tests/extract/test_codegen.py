"""The generated pipeline module: readable, valid Python, cells mapped by markers."""

from __future__ import annotations

import ast

from nbship.extract.codegen import Provenance, generate
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.runtime.step import MARKER
from tests.conftest import SHOWCASE, graph_of

PROV = Provenance(notebook="x.ipynb", sha256="0" * 64, commit="abc123", dirty=False)


def source_of(name: str) -> str:
    return generate(graph_of(name), base_image="img:1", provenance=PROV)


def test_generated_module_is_valid_python_with_one_component_per_step() -> None:
    tree = ast.parse(source_of("fan_out_fan_in"))
    funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert funcs == ["init", "left", "right", "join", "pipeline"]


def test_multiline_strings_are_not_reindented() -> None:
    src = source_of("multiline_string_kept")
    assert '\n  indented line\nlast"""' in src
    ast.parse(src)


def test_every_cell_has_a_marker_that_the_runtime_recognises() -> None:
    src = source_of("functions_cell_class")
    found = [MARKER.match(line) for line in src.splitlines()]
    cells = [(m["role"], int(m["cell"]), m["id"]) for m in found if m]
    assert ("functions", 2, "c2") in cells
    assert (None, 3, "c3") in cells and (None, 4, "c4") in cells


def test_inputs_loaded_outputs_saved_metrics_logged() -> None:
    src = source_of("three_numpy_steps")
    assert "data = nbship_step.load(nbship_in_data, 'data')  # from step 'generate'" in src
    assert ("nbship_step.save(nbship_out_centered, 'centered', centered, cell=4, "
            "cell_id='c4')") in src
    assert "nbship_step.log_metric(nbship_metrics, 'spread', spread)" in src
    assert "def pipeline(\n    n: int = 50,\n    seed: int = 0,\n):" in src


def test_imports_cells_follow_the_functions_cells_that_need_them() -> None:
    src = source_of("functions_cell_class")
    step_b = src.split("def b(")[1].split("def pipeline(")[0]
    assert step_b.index("import statistics") < step_b.index("def average(values):")


def test_steps_without_imports_get_no_imports_cell() -> None:
    src = source_of("kale_block_spelling")
    assert "import json" in src.split("def load(")[1].split("def parse(")[0]
    assert "imports cell" not in source_of("fan_out_fan_in")


def test_unused_imports_are_commented_out_per_step() -> None:
    graph = build_graph(read_notebook(SHOWCASE))
    src = generate(graph, base_image="img:1", provenance=PROV)
    load = src.split("def load(")[1].split("def preprocess(")[0]
    assert "# import torch  # not used by this step" in load
    assert "        from sklearn.datasets import load_digits\n" in load


def test_pip_install_lines_do_not_run() -> None:
    src = source_of("pip_install_line")
    assert "pass  # not run in the pipeline (the image has it): !pip install" in src


def test_task_settings_reach_the_pipeline_function() -> None:
    src = source_of("task_settings_tags")
    assert "_train.set_cpu_limit('2')" in src
    assert "_train.set_memory_limit('4Gi')" in src
    assert "set_accelerator_type('nvidia.com/gpu').set_accelerator_limit('1')" in src
    assert "_train.set_caching_options(False)" in src
    assert "kubernetes.add_pod_label(_train, 'team', 'vision')" in src
    assert "kubernetes.use_secret_as_env(_train, secret_name='db-creds'" in src
    assert "@dsl.component(base_image='python:3.11-slim'" in src


def test_generation_is_deterministic() -> None:
    assert source_of("fan_out_fan_in") == source_of("fan_out_fan_in")
