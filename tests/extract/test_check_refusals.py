"""What KFP, Kubernetes or the generated code would refuse later, `check` refuses now.

Each case: a notebook `check` once passed and `compile` then failed on ("a bug in
nbship"), or one whose run would fail on a cluster. Either it compiles, or `check`
names the cell and line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from tests.conftest import write_notebook

CASES: dict[str, tuple[list[tuple[list[str], str]], str]] = {
    "step-named-dsl": ([(["step:dsl"], "a = 1")], "taken by the generated pipeline module"),
    "step-named-kubernetes": ([(["step:kubernetes", "label:a:b"], "a = 1")],
                              "taken by the generated"),
    "step-named-pipeline": ([(["step:pipeline"], "a = 1")], "taken by the generated"),
    "step-and-parameter-share-a-name": (
        [(["parameters"], "train = 3"), (["step:train"], "print(train)")],
        "has the name of the parameter"),
    "dunder-parameter": ([(["parameters"], "__x = 1"), (["step:a"], "print(__x)")],
                         "KFP parameter names"),
    "non-ascii-parameter": ([(["parameters"], "größe = 1"), (["step:a"], "print(größe)")],
                            "KFP parameter names"),
    "infinite-parameter": ([(["parameters"], "lr = 1e400"), (["step:a"], "print(lr)")],
                           "not a number JSON"),
    "int-key-in-dict-parameter": ([(["parameters"], "d = {2: 3}"), (["step:a"], "print(d)")],
                                  "not a string"),
    "huge-int-parameter": ([(["parameters"], "n = 9007199254740993"), (["step:a"], "print(n)")],
                           "beyond 2\\*\\*53"),
    "tuple-in-list-parameter": ([(["parameters"], "p = [(1, 2)]"), (["step:a"], "print(p)")],
                                "tuple values"),
    "cpu-limit-not-a-quantity": ([(["step:a", "limit:cpu:lots"], "a = 1")], "CPU quantity"),
    "memory-limit-not-a-quantity": ([(["step:a", "limit:memory:4 GB"], "a = 1")],
                                    "memory quantity"),
    "limit-kfp-cannot-set": ([(["step:a", "limit:ephemeral-storage:1Gi"], "a = 1")],
                             "KFP sets no 'ephemeral-storage' limit"),
    "secret-name-uppercase": ([(["step:a", "secret:DB-creds:password:DB_PASSWORD"], "a = 1")],
                              "not a Kubernetes secret name"),
    "secret-env-starts-with-digit": (
        [(["step:a", "secret:db-credentials:password:1_INVALID"], "a = 1")],
        "not an environment variable name"),
    "user-variable-_nbship": ([(["step:a"], "_nbship = 1"), (["step:b"], "print(_nbship)")],
                              "nbship's own"),
    "user-variable-nbship_metrics": ([(["step:a"], "nbship_metrics = 1")], "nbship's own"),
    "user-variable-nbship_out_x": ([(["step:a"], "nbship_out_x = 1")], "nbship's own"),
}


@pytest.mark.parametrize("cells,message", CASES.values(), ids=CASES.keys())
def test_check_refuses_with_cell_and_line(cells: list[tuple[list[str], str]], message: str,
                                          tmp_path: Path) -> None:
    graph = build_graph(read_notebook(write_notebook(tmp_path / "n.ipynb", cells)))
    matching = [p for p in graph.errors if re.search(message, p.message)]
    assert matching, [str(p) for p in graph.problems]
    assert matching[0].where.cell is not None


COMPILES: dict[str, list[tuple[list[str], str]]] = {
    "parameter-in_x-beside-variable-x": [
        (["parameters"], "in_x = 1"), (["step:a"], "x = in_x + 1"), (["step:b"], "print(x)")],
    "user-out_dir-beside-variable-dir": [
        (["parameters"], "out_dir = 'o'"), (["step:a"], "dir = 1"),
        (["step:b"], "print(dir, out_dir)")],
    "none-inside-dict-parameter": [
        (["parameters"], "cfg = {'a': None, 'b': [1, None]}"), (["step:a"], "print(cfg)")],
    "none-parameter": [(["parameters"], "upstream = None"), (["step:a"], "print(upstream)")],
    "task-variable-names-free": [
        (["parameters"], "train_task = 1"), (["step:train"], "print(train_task)")],
    "annotation-with-colons": [
        (["step:a", "annotation:example.com/started-at:2026-09-25T10:00:00Z",
          "annotation:docs:https://example.com/x"], "a = 1")],
}


@pytest.mark.parametrize("cells", COMPILES.values(), ids=COMPILES.keys())
def test_these_compile(cells: list[tuple[list[str], str]], tmp_path: Path) -> None:
    graph = build_graph(read_notebook(write_notebook(tmp_path / "n.ipynb", cells)))
    assert not graph.errors, [str(p) for p in graph.errors]
    compile_graph(graph, tmp_path / "out")


def test_tag_values_split_at_the_first_colon_as_kale_does(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "n.ipynb", [(
        ["step:a", "annotation:docs:https://example.com/x",
         "annotation:example.com/started-at:2026-09-25T10:00:00Z", "label:team:ml:vision"],
        "a = 1")])
    step = build_graph(read_notebook(nb)).steps[0]
    assert step.annotations == {"docs": "https://example.com/x",
                                "example.com/started-at": "2026-09-25T10:00:00Z"}
    assert step.labels == {"team": "ml:vision"}


def test_notebooks_with_non_ascii_names_stay_distinct(tmp_path: Path) -> None:
    from nbship.extract.codegen import pipeline_name

    names = set()
    for stem in ("日本", "中文", "résumé", "resume"):
        nb = write_notebook(tmp_path / f"{stem}.ipynb", [(["step:a"], "a = 1")])
        names.add(pipeline_name(build_graph(read_notebook(nb))))
    assert len(names) == 4 and "resume" in names


def test_a_module_beside_the_notebook_is_local_not_missing(tmp_path: Path) -> None:
    (tmp_path / "helper_for_test.py").write_text("def f():\n    return 1\n")
    nb = write_notebook(tmp_path / "n.ipynb", [
        (["step:a"], "import helper_for_test\na = helper_for_test.f()"),
        (["step:b"], "print(a)")])
    graph = build_graph(read_notebook(nb))
    assert not [p for p in graph.problems if p.kind == "missing-module"]
    assert graph.steps[0].local_modules == ["helper_for_test.py"]
    assert graph.steps[1].local_modules == []
