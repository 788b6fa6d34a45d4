"""Notebook value vs pipeline value: equal, differs (why), or skipped (listed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LinearRegression

from nbship.ci.compare import DIFFERS, EQUAL, SKIPPED, compare


def test_floats_within_tolerance() -> None:
    assert compare(1.0, 1.0 + 1e-9).status == EQUAL
    v = compare(1.0, 1.1)
    assert v.status == DIFFERS and "1 vs 1.1" in v.detail
    assert compare(1.0, 1.1, rtol=0.2).status == EQUAL


def test_ints_strings_and_containers_are_exact() -> None:
    assert compare(3, 3).status == EQUAL
    assert compare("a", "b").status == DIFFERS
    assert compare({"k": [1, 2.0]}, {"k": [1, 2.0 + 1e-12]}).status == EQUAL
    v = compare({"k": [1, 2]}, {"k": [1, 3]})
    assert v.status == DIFFERS and v.detail.startswith("['k']: [1]")


def test_arrays_report_shape_and_largest_difference() -> None:
    a = np.zeros((2, 3))
    assert compare(a, a.copy()).status == EQUAL
    b = a.copy()
    b[1, 2] = 0.5
    v = compare(a, b)
    assert v.status == DIFFERS and "max |diff| 0.5" in v.detail and "1 element(s)" in v.detail
    assert compare(a, np.zeros((3, 2))).detail == "shape (2, 3) vs (3, 2)"


def test_torch_tensors_and_modules() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 2)
    same = torch.nn.Linear(2, 2)
    same.load_state_dict(lin.state_dict())
    assert compare(lin, same).status == EQUAL
    with torch.no_grad():
        same.weight += 1.0
    assert compare(lin, same).status == DIFFERS
    assert compare(torch.ones(3), torch.ones(3)).status == EQUAL


def test_frames_and_estimators() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0]})
    assert compare(df, df.copy()).status == EQUAL
    assert compare(df, df * 2).status == DIFFERS
    x, y = [[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0]
    assert compare(LinearRegression().fit(x, y), LinearRegression().fit(x, y)).status == EQUAL
    other = LinearRegression().fit(x, [0.0, 2.0, 4.0])
    assert compare(LinearRegression().fit(x, y), other).status == DIFFERS


def test_values_without_equality_are_skipped_not_passed() -> None:
    class Handle:
        pass

    v = compare(Handle(), Handle())
    assert v.status == SKIPPED and "defines no equality" in v.detail


@pytest.mark.parametrize("a, b", [(1, "1"), ([1], (1,))])
def test_different_types_differ(a: object, b: object) -> None:
    assert compare(a, b).status == DIFFERS


def test_a_metric_missing_on_one_side_is_a_mismatch(tmp_path: Path) -> None:
    from nbship.ci.equivalence import compare_runs
    from nbship.ci.notebook_run import NotebookRun
    from nbship.extract.graph import build_graph
    from nbship.notebook import read_notebook
    from nbship.runtime import serializers
    from tests.conftest import write_notebook

    nb = write_notebook(tmp_path / "m.ipynb", [(["step:a"], "acc = 0.9"),
                                               (["pipeline-metrics"], "print(acc)")])
    graph = build_graph(read_notebook(nb))
    serializers.save(0.9, tmp_path / "cap" / "a" / "acc")
    run = NotebookRun(executed=nb, capture_dir=tmp_path / "cap",
                      captured={"a": {"acc": {"status": "saved"}}})
    report = compare_runs(graph, run, {"steps": {}}, {}, rtol=0, atol=0)
    assert [f.name for f in report.mismatches] == ["acc"]
    assert "the pipeline has no value" in report.mismatches[0].verdict.detail
