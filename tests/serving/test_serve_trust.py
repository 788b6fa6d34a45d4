"""Issue 17 §2: no code runs from what a run folder brings. serve.py is read once, checked
and exactly those bytes run (no import by path, no bytecode cache); every provenance field
is under the run's seal; a run folder serves only its own run; names never become paths."""

from __future__ import annotations

import importlib.util
import json
import py_compile
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nbship.errors import ServeError
from nbship.extract.graph import build_graph
from nbship.monitoring.stack import MonitorError, register_target
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import run_compiled, seal_provenance
from nbship.serving.bundle import load_run
from tests.conftest import ROOT, write_notebook
from tests.release.conftest import free_port

pytestmark = pytest.mark.slow

EVIL = "__import__('pathlib').Path({marker!r}).touch()\n"


def tiny_runs(folder: Path, *weights: int) -> list[Path]:
    """A tiny servable notebook (predict multiplies by `weights`) run once per weight:
    the runs' record folders, as `nbship run` leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    nb = write_notebook(folder / "tiny.ipynb", [
        (["parameters"], "w = 2"),
        (["step:make"], "import numpy as np\nweights = np.full(3, float(w))"),
        (["serve"], "def predict(x):\n    return np.asarray(x) * weights"),
    ])
    compiled = compile_graph(build_graph(read_notebook(nb)), folder / "build")
    return [run_compiled(compiled, {"w": w}, root=folder / "runs", echo=lambda line: None
                         ).record_dir for w in weights]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_runs(tmp_path_factory.mktemp("trust"), 2, 3)


def forged(run: Path, into: Path, change: dict[str, object], reseal: bool = False) -> Path:
    """A copy of ``run`` in its own layout under ``into`` (RUNS/NAME/ID) with provenance
    fields changed (``"a.b.c": value``); resealed with this machine's key when asked."""
    copy = into / run.parent.name / run.name
    shutil.copytree(run, copy)
    prov = json.loads((copy / "provenance.json").read_text())
    for dotted, value in change.items():
        *path, last = dotted.split(".")
        doc = prov
        for key in path:
            doc = doc[key]
        doc[last] = value
    if reseal:
        prov = seal_provenance(prov)
    (copy / "provenance.json").write_text(json.dumps(prov))
    return copy


def plant_pyc(module: Path, source: str) -> Path:
    """``source`` compiled as the unchecked-hash pyc Python's import would run for
    ``module`` without looking at ``module`` at all."""
    evil = module.with_name("evil_src.py")
    evil.write_text(source)
    pyc = Path(importlib.util.cache_from_source(str(module)))
    py_compile.compile(str(evil), cfile=str(pyc), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    evil.unlink()
    return pyc


def test_a_planted_pyc_beside_serve_py_never_runs(runs: list[Path], tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    run = forged(runs[0], tmp_path / "runs", {})
    source = (run / "serve.py").read_text()
    pyc = plant_pyc(run / "serve.py", EVIL.format(marker=str(marker)) + source)
    served = load_run(run)
    assert served.predict([1, 1, 1]).tolist() == [2.0, 2.0, 2.0]
    assert not marker.exists(), "the planted __pycache__ ran"
    # nothing was compiled into a cache beside it either
    assert [p.name for p in pyc.parent.iterdir()] == [pyc.name]
    shutil.rmtree(pyc.parent)
    load_run(run)
    assert not (run / "__pycache__").exists()


def test_serve_py_swapped_after_its_check_never_runs(runs: list[Path], tmp_path: Path) -> None:
    """A writer swaps serve.py for another (atomic renames) as fast as it can while the
    run is loaded again and again: every load runs the checked code or refuses."""
    marker = tmp_path / "PWNED"
    run = forged(runs[0], tmp_path / "runs", {})
    good = (run / "serve.py").read_bytes()
    evil = EVIL.format(marker=str(marker)).encode() + good
    stop = threading.Event()

    def swap() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tmp = run / f".swap{n % 2}"
            tmp.write_bytes(evil if n % 2 else good)
            tmp.replace(run / "serve.py")

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    served = refused = 0
    deadline = time.monotonic() + 6
    try:
        while time.monotonic() < deadline and (served < 20 or refused < 20):
            try:
                assert load_run(run).predict([1, 1, 1]).tolist() == [2.0, 2.0, 2.0]
                served += 1
            except ServeError as exc:
                assert "changed since the run" in str(exc) or "is missing" in str(exc)
                refused += 1
            assert not marker.exists(), "a serve.py swapped after its check ran"
    finally:
        stop.set()
        swapper.join()
    assert served and refused  # both sides of the race were seen


@pytest.mark.parametrize("change", [
    {"git.commit": "0" * 40},
    {"metrics.accuracy": 0.999},
    {"pipeline.name": "other-model"},
    {"run.id": "20991231-000000-000000"},
    {"parameters.w": 9},
], ids=["commit", "metrics", "pipeline-name", "run-id", "parameters"])
def test_every_provenance_field_is_under_the_seal(runs: list[Path], tmp_path: Path,
                                                   change: dict[str, object]) -> None:
    run = forged(runs[0], tmp_path / "runs", change)
    with pytest.raises(ServeError, match="seal does not hold"):
        load_run(run)


def test_a_run_folder_cannot_serve_another_runs_model(runs: list[Path], tmp_path: Path) -> None:
    a, b = runs
    prov_b = json.loads((b / "provenance.json").read_text())
    uri_b = prov_b["steps"]["make"]["outputs"]["weights"]["uri"]
    # (1) its record pointed at the other run's value
    pointed = forged(a, tmp_path / "pointed", {"steps.make.outputs.weights.uri": uri_b})
    with pytest.raises(ServeError, match="seal does not hold"):
        load_run(pointed)
    # (2) the other run's sealed provenance (and serve.py) copied into its folder
    moved = forged(a, tmp_path / "moved", {})
    shutil.copy(b / "provenance.json", moved / "provenance.json")
    with pytest.raises(ServeError, match="not its own"):
        load_run(moved)
    # (3) the value at its recorded place replaced by the other run's value
    own = tiny_runs(tmp_path / "own", 2)[0]
    uri = Path(json.loads((own / "provenance.json").read_text())
               ["steps"]["make"]["outputs"]["weights"]["uri"])
    shutil.rmtree(uri)
    shutil.copytree(uri_b, uri)
    with pytest.raises(ServeError, match="not the value the run recorded"):
        load_run(own)
    assert load_run(a).predict([1, 1, 1]).tolist() == [2.0, 2.0, 2.0]
    assert load_run(b).predict([1, 1, 1]).tolist() == [3.0, 3.0, 3.0]


def _serve(run: Path, monitor: Path, timeout: float = 60) -> tuple[int | None, str]:
    """`nbship serve RUN --monitor DIR`: (exit status, output); None when it started
    serving (then it is stopped)."""
    proc = subprocess.Popen([sys.executable, "-m", "nbship", "serve", str(run), "--port",
                             str(free_port()), "--monitor", str(monitor)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        return None, out


@pytest.mark.parametrize("reseal", [False, True], ids=["as-brought", "sealed-here"])
def test_a_pipeline_name_never_becomes_a_path(runs: list[Path], tmp_path: Path,
                                              reseal: bool) -> None:
    """`pipeline.name = "../../outside/victim"` made `serve --monitor` write a file
    outside the monitor's folder (and delete it on stop)."""
    name = "../../outside/victim"
    run = forged(runs[0], tmp_path / "runs", {"pipeline.name": name}, reseal=reseal)
    monitor = tmp_path / "a" / "b" / "monitor"
    monitor.mkdir(parents=True)
    victims = tmp_path / "a" / "b" / "outside"
    code, out = _serve(run, monitor)
    assert code == 1, out
    assert "Traceback" not in out
    if reseal:  # a name nbship would never write, under a seal that holds: still refused
        assert f"the pipeline name {name!r}" in out and "not a name nbship makes" in out
    else:
        assert "seal does not hold" in out
    assert not victims.exists() and not list(monitor.rglob("*.json"))


def test_the_monitors_targets_take_plain_names_only(tmp_path: Path) -> None:
    for name in ("../../outside/victim", "/etc/x", "a/b", "..", "", "Model", "x" * 241):
        with pytest.raises(MonitorError, match="not a name nbship makes"):
            register_target(tmp_path, name, "127.0.0.1:8080", {})
    entry = register_target(tmp_path, "marker-classifier", "127.0.0.1:8080", {"run": "r"})
    assert entry.parent.parent == tmp_path and entry.name == "marker-classifier-8080.json"
    assert json.loads(entry.read_text())[0]["labels"]["model"] == "marker-classifier"
    assert np.array_equal([p.name for p in tmp_path.rglob("*.json")], [entry.name])


def test_a_release_records_only_a_sealed_runs_metrics(runs: list[Path]) -> None:
    """`nbship publish` records the newest local run's metrics (ci_run): a newer run
    folder that was brought, not recorded here, is passed over."""
    from nbship.release.publish import latest_run

    a = runs[1]
    graph = build_graph(read_notebook(a.parents[2] / "tiny.ipynb"))
    assert latest_run(graph, a.parents[1]) == a / "provenance.json"
    newer = a.parent / "29991231-000000-000000"
    shutil.copytree(a, newer)
    prov = json.loads((newer / "provenance.json").read_text())
    prov["metrics"] = {"accuracy": 0.999}
    prov["run"]["id"] = newer.name
    (newer / "provenance.json").write_text(json.dumps(prov))
    try:
        assert latest_run(graph, a.parents[1]) == a / "provenance.json"
    finally:
        shutil.rmtree(newer)


def test_serve_name_never_picks_a_run_folder_brought_from_elsewhere(runs: list[Path]) -> None:
    """`nbship serve NAME` serves the newest run recorded here: a newer folder that was
    brought (its provenance changed: a fake commit) neither shadows it nor is served."""
    from nbship.cli import _run_dir
    from nbship.serving.bundle import newest_run

    a = runs[1]
    newer = a.parent / "29991231-000000-000001"
    shutil.copytree(a, newer)
    prov = json.loads((newer / "provenance.json").read_text())
    prov["run"]["id"], prov["git"]["commit"] = newer.name, "f" * 40
    (newer / "provenance.json").write_text(json.dumps(prov))
    try:
        assert newest_run(a.parent) == a
        assert _run_dir("tiny", a.parents[1]) == a  # what `nbship serve|model push NAME` take
    finally:
        shutil.rmtree(newer)
