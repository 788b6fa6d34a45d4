"""The corpus's nbval and papermill notebooks behave under the plugin as under the tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ci.conformance import nbval_table, papermill_table

pytestmark = pytest.mark.slow

# nbship refuses these before running them, on purpose (docs/design.md):
# a kernel other than Python cannot become a pipeline.
REFUSED = {"notimplemented_translator.ipynb": "kernel language"}


def test_nbval_items_agree_cell_by_cell(corpus: Path, tmp_path: Path) -> None:
    rows = nbval_table(tmp_path)
    assert len(rows) == 11
    assert [r["notebook"] for r in rows if r["nbship nbval items"] != "same"] == []
    assert {r["notebook"] for r in rows if r["nbval"] != "pass"} == {
        "sample_notebook.ipynb", "test-exceptions-fail-storedmismatch.ipynb",
        "test-latex-fail-randomoutput.ipynb", "test-stream-fail-missingoutput.ipynb"}


def test_papermill_items_agree_with_papermill(corpus: Path, tmp_path: Path) -> None:
    rows = papermill_table(tmp_path)
    assert len(rows) == 22
    for row in rows:
        if row["notebook"] in REFUSED:
            assert REFUSED[row["notebook"]] in row["check"]
            continue
        assert row["nbship papermill item"] == row["papermill"], row
