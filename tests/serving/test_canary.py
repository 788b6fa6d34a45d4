"""`nbship canary`: the same inputs to the stable and the canary server; a canary that
predicts like the stable one passes, one that does not fails (exit 1), with the figures."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import run_compiled
from nbship.serving.canary import Criteria, Side, compare, verdict
from tests.conftest import ROOT, run_showcase, write_notebook
from tests.release.conftest import free_port

pytestmark = pytest.mark.slow


def test_the_figures_and_the_verdict() -> None:
    stable = Side([0.01] * 100, 0, [i % 10 for i in range(100)])
    same = Side([0.012] * 100, 0, [i % 10 for i in range(100)])
    figures = compare(stable, same)
    assert figures["agreement"] == 1.0 and figures["prediction_psi"] < 0.01
    assert all(passed for _, passed, _ in verdict(figures, Criteria()))
    broken = Side([0.05] * 100, 5, [0] * 95 + [None] * 5)
    checks = dict((n, p) for n, p, _ in verdict(compare(stable, broken), Criteria()))
    assert checks == {"errors": False, "latency": False, "agreement": False,
                      "prediction drift": False}
    real = compare(Side([0.01] * 50, 0, list(np.linspace(0, 1, 50))),
                   Side([0.01] * 50, 0, list(np.linspace(0, 1, 50) + 5)))
    assert real["agreement"] == 0.0 and real["prediction_psi"] > 1


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The showcase's run served twice (stable, good canary) and a constant model."""
    run = run_showcase(tmp_path_factory.mktemp("stable"))
    const = tmp_path_factory.mktemp("const")
    nb = write_notebook(const / "constant_model.ipynb", [
        (["step:make"], "import numpy as np\nanswer = 0"),
        (["serve"], "def predict(images):\n    return np.full(len(np.asarray(images)), answer)"),
    ])
    bad = run_compiled(compile_graph(build_graph(read_notebook(nb)), const / "build"), {},
                       root=const / "runs", echo=lambda line: None).record_dir
    urls, procs = {}, []
    for name, folder in (("stable", run), ("good", run), ("bad", bad)):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "nbship", "serve", str(folder),
                                       "--port", str(port), "--monitor",
                                       str(const / "monitor")], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        yield run, urls
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def canary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbship", "canary", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_a_canary_like_the_stable_passes_and_a_different_one_fails(
        servers: tuple[Path, dict[str, str]]) -> None:
    run, urls = servers
    for name, model in (("stable", "marker-classifier"), ("good", "marker-classifier"),
                        ("bad", "constant-model")):
        ready = canary("ready", urls[name], "--model", model, "--timeout", "120")
        assert ready.returncode == 0, ready.stdout + ready.stderr
    good = canary("judge", "--stable", urls["stable"], "--canary", urls["good"], "--model",
                  "marker-classifier", "--reference", str(run), "--requests", "100")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "canary: pass (100 requests each)" in good.stdout
    assert "SPINNAKER_PROPERTY_canary_verdict=pass" in good.stdout
    bad = canary("judge", "--stable", urls["stable"], "--canary", urls["bad"], "--model",
                 "marker-classifier", "--canary-model", "constant-model", "--reference",
                 str(run), "--requests", "100")
    assert bad.returncode == 1 and "SPINNAKER_PROPERTY_canary_verdict=fail" in bad.stdout
    assert re.search(r"FAIL  agreement +0\.\d+ of the same inputs", bad.stdout), bad.stdout
    assert "FAIL  prediction drift" in bad.stdout and "Traceback" not in bad.stderr
    # the stable server answered everything while it was judged
    with urllib.request.urlopen(f"{urls['stable']}/v2/health/ready", timeout=5) as reply:
        assert reply.status == 200


def test_ready_gives_up_after_its_timeout() -> None:
    started = time.monotonic()
    done = canary("ready", f"http://127.0.0.1:{free_port()}", "--model", "x", "--timeout", "2")
    assert done.returncode == 1 and "not ready after 2 s" in done.stdout
    assert time.monotonic() - started < 30
