"""Test settings per notebook: defaults, pyproject.toml, notebook metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbship.ci.config import load_config
from nbship.errors import UnusableInputError


def notebook(path: Path, meta: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": [],
                                "metadata": {"nbship": meta} if meta else {}}))
    return path


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(notebook(tmp_path / "a.ipynb"))
    assert (cfg.parameter_set, cfg.parameters, cfg.nbval, cfg.rtol, cfg.atol) == (
        "ci", {}, "lax", 1e-5, 1e-8)


def test_pyproject_then_notebook_table_then_metadata(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("""
[tool.nbship]
nbval = "strict"
tolerance = { rtol = 0.1 }
[tool.nbship.parameter_sets.ci]
epochs = 1
lr = 0.5
[tool.nbship.notebooks."nbs/a.ipynb"]
parameter_sets = { ci = { epochs = 2 } }
""")
    cfg = load_config(notebook(tmp_path / "nbs" / "a.ipynb",
                               {"parameter_sets": {"ci": {"lr": 0.25}}, "nbval": "lax"}))
    assert cfg.parameters == {"epochs": 2, "lr": 0.25}
    assert cfg.nbval == "lax" and cfg.rtol == 0.1 and cfg.atol == 1e-8
    other = load_config(notebook(tmp_path / "nbs" / "b.ipynb"))
    assert other.parameters == {"epochs": 1, "lr": 0.5} and other.nbval == "strict"


def test_named_set(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "a.ipynb", {"parameter_sets": {"ci": {"n": 1}, "full": {"n": 9}}})
    assert load_config(nb, parameter_set="full").parameters == {"n": 9}
    assert load_config(nb, parameter_set="absent").parameters == {}


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UnusableInputError, match="nbval must be 'strict' or 'lax'"):
        load_config(notebook(tmp_path / "a.ipynb", {"nbval": "sometimes"}))


def test_threads_default_one_and_settable(tmp_path: Path) -> None:
    assert load_config(notebook(tmp_path / "a.ipynb")).threads == 1
    assert load_config(notebook(tmp_path / "b.ipynb", {"threads": 4})).threads == 4


@pytest.mark.parametrize("meta,message", [
    ({"threads": 0}, "threads must be a whole number"),
    ({"threads": "2"}, "threads must be a whole number"),
    ({"threads": True}, "threads must be a whole number"),
    ({"tolerance": {"rtol": "tight"}}, "rtol and atol must be numbers"),
])
def test_bad_numeric_settings_are_clear_errors(tmp_path: Path, meta: dict, message: str) -> None:
    with pytest.raises(UnusableInputError, match=message):
        load_config(notebook(tmp_path / "a.ipynb", meta))
