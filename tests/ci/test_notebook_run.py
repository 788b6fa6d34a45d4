"""The notebook nbship runs under papermill: nbship's own cells fit the notebook's format."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nbship.ci.notebook_run import CAPTURE_TAG, instrument
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.runtime.numerics import Numerics


@pytest.mark.parametrize("minor", [4, 5])
def test_inserted_cells_validate_in_the_notebooks_own_format(tmp_path: Path, minor: int) -> None:
    """nbformat 4.4 has no cell ids: papermill's run of sysexit1.ipynb (papermill's corpus)
    logged 'Notebook JSON is invalid' for the numerics cell's id and failed conformance."""
    nb = new_notebook()
    nb.nbformat_minor = 5
    for tags, source in [(["step:a"], "x = 1"), (["step:b"], "print(x)")]:
        cell = new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    if minor < 5:
        for cell in nb.cells:
            del cell["id"]
        nb.nbformat_minor = minor
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    graph = build_graph(read_notebook(path))
    out = instrument(graph, tmp_path / "captures", Numerics())
    ours = [c for c in out.cells if CAPTURE_TAG in c.metadata.get("tags", [])]
    assert len(ours) == 2  # the numerics cell and step a's capture
    assert ("id" in ours[0]) == (minor >= 5)
    nbformat.validate(out)
