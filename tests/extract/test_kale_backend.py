"""--backend kale converts through kubeflow-kale 2.3 without changing the notebook."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nbship.extract.kale_backend import compile_with_kale
from tests.conftest import SHOWCASE

pytestmark = pytest.mark.kale


def test_kale_compiles_a_kale_notebook(corpus: Path, tmp_path: Path) -> None:
    src = corpus / "kale/candies_sharing.ipynb"
    before = src.read_bytes()
    out = compile_with_kale(src, tmp_path / "k")
    spec = next(yaml.safe_load_all(out.read_text()))
    assert set(spec["root"]["dag"]["tasks"]) == {"sack-step", "kid1-step", "kid2-step", "kid3-step"}
    assert src.read_bytes() == before


def test_kale_accepts_papermill_tags_after_translation(tmp_path: Path) -> None:
    out = compile_with_kale(SHOWCASE, tmp_path / "k")
    spec = next(yaml.safe_load_all(out.read_text()))
    assert "epochs" in spec["root"]["inputDefinitions"]["parameters"]
    assert (tmp_path / "k" / "kale_pipeline.py").exists()
