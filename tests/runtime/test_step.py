"""The step wrapper: failures map to notebook cells; values that cannot cross fail clearly."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from nbship.runtime.step import FAILURE_DIR_ENV, StepFailure, StepRun, locate

STEP_FILE = '''\
def step():
    from nbship.runtime.step import StepRun
    with StepRun("divide", "demo.ipynb") as _nbship:
        # --- cell 4 (id abc) ---
        value = 10
        ratio = value / 0
'''


def test_locate_maps_a_generated_line_to_the_cell_line(tmp_path: Path) -> None:
    path = tmp_path / "ephemeral_component.py"
    path.write_text(STEP_FILE)
    found = locate(str(path), 6)
    assert found is not None
    assert (found["cell"], found["cell_id"], found["line"]) == (4, "abc", 2)
    assert found["source"] == "ratio = value / 0"


def test_failure_report_names_cell_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ephemeral_component.py"
    path.write_text(STEP_FILE)
    monkeypatch.setenv(FAILURE_DIR_ENV, str(tmp_path / "failures"))
    namespace: dict = {}
    exec(compile(STEP_FILE, str(path), "exec"), namespace)
    with pytest.raises(ZeroDivisionError):
        namespace["step"]()
    report = json.loads((tmp_path / "failures" / "divide.json").read_text())
    assert (report["cell"], report["line"]) == (4, 2)
    assert report["error"] == "ZeroDivisionError: division by zero"
    err = capsys.readouterr().err
    assert "step 'divide' failed at demo.ipynb, cell 4 (id abc), line 2" in err


def test_unserializable_value_names_variable_type_and_cell(tmp_path: Path) -> None:
    artifact = SimpleNamespace(path=str(tmp_path / "out"), metadata={})
    run = StepRun("s", "nb.ipynb")
    with pytest.raises(StepFailure) as info:
        run.save(artifact, "lock", threading.Lock(), cell=7, cell_id="x1")
    message = str(info.value)
    assert "'lock'" in message and "_thread.lock" in message and "cell 7 (id x1)" in message


def test_fallback_to_cloudpickle_warns_with_the_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = SimpleNamespace(path=str(tmp_path / "out"), metadata={})
    StepRun("s", "nb.ipynb").save(artifact, "pair", (1, 2), cell=3)
    assert "'pair' (tuple, from cell 3) has no dedicated serializer" in capsys.readouterr().err
    assert artifact.metadata["serializer"] == "cloudpickle"


def test_metric_must_be_a_number() -> None:
    run = StepRun("s", "nb.ipynb")
    with pytest.raises(StepFailure, match="metric 'acc' must be a number"):
        run.log_metric(SimpleNamespace(log_metric=lambda *a: None), "acc", "high")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_metric_that_is_not_finite_is_named(value: float) -> None:
    class Sink:
        path = "/nonexistent"

        def log_metric(self, name: str, number: float) -> None:
            raise AssertionError("a non-finite metric reached KFP")

    with pytest.raises(StepFailure, match="metric 'loss' is"):
        StepRun("train", "n.ipynb").log_metric(Sink(), "loss", value)
