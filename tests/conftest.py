"""Shared fixtures: the fixture notebooks, the shared corpus, a graph builder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbship.extract.graph import StepGraph, build_graph
from nbship.notebook import read_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
CORPUS = Path(os.environ.get("NBSHIP_CORPUS", ROOT.parent / "shared" / "corpus"))
SHOWCASE = ROOT / "notebooks" / "marker_classifier.ipynb"


def fixture_path(name: str) -> Path:
    return NOTEBOOKS / f"{name}.ipynb"


def graph_of(name: str) -> StepGraph:
    return build_graph(read_notebook(fixture_path(name)))


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS} (set NBSHIP_CORPUS)")
    return CORPUS
