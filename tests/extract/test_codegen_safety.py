"""Hostile notebooks: compiling never runs their text; only cell bodies are code, in their step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from nbship.errors import CompileError
from nbship.extract.codegen import Provenance, generate, verify_shape
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from tests.conftest import graph_of, write_notebook

PROV = Provenance(notebook="x.ipynb", sha256="0" * 64, commit=None, dirty=False)


def compile_in(tmp_path: Path, name: str, cells: list[tuple[list[str], str]]) -> Path:
    nb = write_notebook(tmp_path / name, cells)
    compiled = compile_graph(build_graph(read_notebook(nb)), tmp_path / "out")
    return compiled.module


def step_body(module: Path, func: str) -> list[ast.stmt]:
    tree = ast.parse(module.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
    with_block = next(s for s in node.body if isinstance(s, ast.With))
    return with_block.body


def test_a_file_name_that_closes_the_docstring_stays_text(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = 'x""";__import__("os").system("touch PWNED");"""y.ipynb'
    module = compile_in(tmp_path, name, [(["step:a"], "a = 1"), (["step:b"], "print(a)")])
    assert not (tmp_path / "PWNED").exists()
    tree = ast.parse(module.read_text())
    assert not any(isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "system"
                   for n in ast.walk(tree))
    assert name in ast.get_docstring(tree)


@pytest.mark.parametrize("source", [
    "x = 1\rimport pathlib; pathlib.Path('PWNED').touch()\rif 0:\r        pass",
    "x = 1\r\nimport pathlib; pathlib.Path('PWNED').touch()\r\n",
    "x = 1\n\x0cimport pathlib; pathlib.Path('PWNED').touch()\n",
    "x = 1\n    \x0c\x0cimport pathlib; pathlib.Path('PWNED').touch()\n",
], ids=["lone-cr", "crlf", "form-feed", "spaces-then-form-feeds"])
def test_line_breaks_python_honours_keep_the_cell_inside_its_step(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = compile_in(tmp_path, "n.ipynb", [(["step:a"], source), (["step:b"], "print(x)")])
    assert not (tmp_path / "PWNED").exists()
    body = step_body(module, "a")
    assert any(isinstance(s, ast.Import) for s in body), "the cell's import is in the step"


def test_a_module_with_anything_outside_its_place_is_refused() -> None:
    graph = graph_of("three_numpy_steps")
    source = generate(graph, base_image="img", provenance=PROV)
    verify_shape(source, graph)
    for tampered in (
        source + "\nimport os\n",
        source.replace("BASE_IMAGE = 'img'", "BASE_IMAGE = __import__('os').getcwd()"),
        source.replace("    with StepRun(", "    print(1)\n    with StepRun(", 1),
        source.replace("):\n    \"\"\"Step", "=print()):\n    \"\"\"Step", 1),
    ):
        with pytest.raises(CompileError, match="not as built"):
            verify_shape(tampered, graph)


def test_a_string_default_cannot_add_yaml_keys(tmp_path: Path) -> None:
    injected = "hello\ndefaultPipelineRoot: gs://attacker-bucket/x\n#"
    module = compile_in(tmp_path, "n.ipynb", [
        (["parameters"], f"note = {injected!r}\nsep = '\\n'\nodd = '\\u2028x: 1\\x85'"),
        (["step:a"], "x = note + sep + odd"), (["step:b"], "print(x)")])
    text = (module.parent / "pipeline.yaml").read_text()
    spec = next(yaml.safe_load_all(text))
    assert "defaultPipelineRoot" not in spec
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["note"]["defaultValue"] == injected
    assert params["sep"]["defaultValue"] == "\n"
    assert params["odd"]["defaultValue"] == "\u2028x: 1\x85"
    header = text[: text.index("components:")]
    assert all(line.startswith("#") for line in header.splitlines() if line)


def test_cell_ids_that_are_not_ids_stay_out_of_code(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "n.ipynb", [(["step:a"], "a = 1"), (["step:b"], "print(a)")])
    text = nb.read_text().replace('"id": "c0"', '"id": "c0) ---\\nimport os #"')
    nb.write_text(text)
    try:
        graph = build_graph(read_notebook(nb))
    except Exception:  # nbformat refusing the id is as good
        return
    source = generate(graph, base_image="img", provenance=PROV)
    assert "\nimport os" not in source
    verify_shape(source, graph)
