"""`pytest --nbship` end to end on a small project: one parallel run, outcomes read from
JUnit XML. Covers hidden state, strict vs lax, parameter sets, tolerance, a failing
cell's report, a notebook without tags, and parallel workers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from tests.conftest import fixture_path

pytestmark = pytest.mark.slow


def write_notebook(path: Path, cells: list[tuple[list[str], str]], meta: dict | None = None,
                   outputs: dict[int, str] | None = None) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    if meta:
        nb.metadata["nbship"] = meta
    for i, (tags, source) in enumerate(cells):
        cell = new_code_cell(source, id=f"c{i}")
        cell.metadata["tags"] = tags
        if outputs and i in outputs:
            cell.execution_count = i + 1
            cell.outputs = [new_output("stream", name="stdout", text=outputs[i])]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


NOISE = [(["parameters"], "seed = 0"),
         (["step:seeded"], "import random\nrandom.seed(seed)"),
         (["step:noise"], "noise = 1.0 + random.random() * 1e-9"),
         (["pipeline-metrics"], "print(noise)")]
COUNT = [(["parameters"], "n = 1000"),
         (["step:make"], "values = list(range(n))"),
         (["step:count"], "count = len(values)\nprint('count', count)"),
         (["pipeline-metrics"], "print(count)")]
STALE = [([], "print('fresh')")]
# the skip cell runs in the notebook, never in the pipeline: it counts the notebook's executions
RUNS_ONCE = [(["skip"], "with open('runs.log', 'a') as f:\n    f.write('ran\\n')"),
             (["step:one"], "x = 1"),
             (["pipeline-metrics"], "print(x)")]
# A convolution trained on a batch whose strides PyTorch reads as channels-last (what
# fancy indexing of x[:, None] gives): with the batch's layout lost at the step boundary,
# the pipeline's weights differed from the notebook's in the last bits (issue 17).
LAYOUT = [(["imports"], "import numpy as np\nimport torch"),
          (["step:data"], "base = np.random.default_rng(0).random((256, 8, 8)).astype("
                          "np.float32)[:, None]\nx = base[np.arange(256)]\nprint(x.strides)"),
          (["step:train"], "torch.manual_seed(0)\nconv = torch.nn.Conv2d(1, 16, 3, padding=1)\n"
                           "opt = torch.optim.SGD(conv.parameters(), lr=0.1)\n"
                           "for _ in range(20):\n"
                           "    opt.zero_grad()\n"
                           "    batch_loss = conv(torch.from_numpy(x)).pow(2).mean()\n"
                           "    batch_loss.backward()\n"
                           "    opt.step()\n"
                           "weights = conv.weight.detach().numpy().copy()\n"
                           "loss = float(batch_loss)\n"
                           "threads = torch.get_num_threads()\n"
                           "deterministic = int(torch.are_deterministic_algorithms_enabled())\n"
                           "print('threads', threads, 'deterministic', deterministic)"),
          (["step:report"], "print(weights.sum())"),
          (["pipeline-metrics"], "print(loss)\nprint(threads)\nprint(deterministic)")]
SHOWS_PARAMETER = [(["parameters"], "n = 1000"),
                   (["step:show"], "print('n', n)")]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "pyproject.toml").write_text(
        '[tool.nbship.parameter_sets.ci]\n\n'
        '[tool.nbship.notebooks."nbs/count.ipynb"]\n'
        'parameter_sets = { ci = { n = 3 }, big = { n = 50 } }\n')
    nbs = root / "nbs"
    nbs.mkdir()
    for name in ("hidden_state", "failing_step", "no_tags_one_step"):
        shutil.copy(fixture_path(name), nbs / f"{name}.ipynb")
    write_notebook(nbs / "count.ipynb", COUNT)
    write_notebook(nbs / "noise_tolerated.ipynb", NOISE)
    write_notebook(nbs / "noise_exact.ipynb", NOISE, meta={"tolerance": {"rtol": 0, "atol": 0}})
    write_notebook(nbs / "stale_lax.ipynb", STALE, meta={"nbval": "lax"}, outputs={0: "stale\n"})
    write_notebook(nbs / "stale_strict.ipynb", STALE, meta={"nbval": "strict"},
                   outputs={0: "stale\n"})
    write_notebook(nbs / "runs_once.ipynb", RUNS_ONCE)
    write_notebook(nbs / "layout_exact.ipynb", LAYOUT, meta={"tolerance": {"rtol": 0, "atol": 0}})
    write_notebook(nbs / "bad_magic.ipynb", [([], "x = 1\n%undefined-line-magic")])
    write_notebook(nbs / "shows_parameter.ipynb", SHOWS_PARAMETER,
                   meta={"nbval": "strict", "parameter_sets": {"ci": {"n": 3}}},
                   outputs={1: "n 1000\n"})
    return root


def pytest_run(project: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                     dict[str, tuple[str, str]]]:
    junit = project / f"junit-{len(list(project.glob('junit-*')))}.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", *args], cwd=project, capture_output=True,
                          text=True, timeout=600)
    results: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).iter("testcase"):
        key = f"{case.get('classname', '').split('.')[-2]}::{case.get('name')}"
        child = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        outcome = child.tag if child is not None else "passed"
        text = (child.get("message", "") + (child.text or "")) if child is not None else ""
        results[key] = (outcome, text)
    return done, results


@pytest.fixture(scope="module")
def parallel(project: Path) -> dict[str, tuple[str, str]]:
    _, results = pytest_run(project, "--nbship", "nbs", "-n", "2", "--dist", "loadfile")
    return results


def test_hidden_state_fails_equivalence_naming_variable_and_steps(
        parallel: dict[str, tuple[str, str]]) -> None:
    outcome, text = parallel["hidden_state::equivalence[ci]"]
    assert outcome == "failure"
    assert "metric 'total' (logged by step 'total'): notebook 6, pipeline 3" in text
    assert "`items.append(...)` may change 'items'" in text and "step 'make'" in text
    assert parallel["hidden_state::papermill[ci]"][0] == "passed"


def test_hidden_state_passes_plain_nbval(project: Path) -> None:
    done, results = pytest_run(project, "--nbval-lax", "nbs/hidden_state.ipynb")
    assert done.returncode == 0
    assert results and all(outcome == "passed" for outcome, _ in results.values())


def test_failing_cell_reads_like_the_notebook(parallel: dict[str, tuple[str, str]]) -> None:
    outcome, text = parallel["failing_step::papermill[ci]"]
    assert outcome == "failure"
    assert "failing_step.ipynb, cell 3 (id c3), line 2: ZeroDivisionError" in text
    assert "-->   2 | ratio = value / divisor" in text
    assert "Traceback" not in text
    assert parallel["failing_step::equivalence[ci]"][0] == "skipped"
    nbval_outcome, nbval_text = parallel["failing_step::Cell 2"]  # nbval's item, same format
    assert nbval_outcome == "failure"
    assert "failing_step.ipynb, cell 3 (id c3), line 2: ZeroDivisionError" in nbval_text
    assert "Traceback" not in nbval_text and "\x1b[" not in nbval_text


def test_parameter_set_reaches_notebook_and_pipeline(project: Path,
                                                     parallel: dict[str, tuple[str, str]]
                                                     ) -> None:
    assert parallel["count::equivalence[ci]"][0] == "passed"
    executed = nbformat.read(project / ".nbship/test/notebooks/nbs__count.ci.ipynb", 4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "n = 3" in injected[0].source
    assert "count 3" in "".join(o.get("text", "") for c in executed.cells for o in c.outputs)


def test_named_parameter_set(project: Path) -> None:
    done, results = pytest_run(project, "--nbship", "nbs/count.ipynb", "--nbship-set", "big")
    assert done.returncode == 0, done.stdout[-2000:]
    assert "count::equivalence[big]" in results
    executed = (project / ".nbship/test/notebooks/nbs__count.big.ipynb").read_text()
    assert "n = 50" in executed


def test_tolerance_decides_float_noise(parallel: dict[str, tuple[str, str]]) -> None:
    assert parallel["noise_tolerated::equivalence[ci]"][0] == "passed"
    outcome, text = parallel["noise_exact::equivalence[ci]"]
    assert outcome == "failure" and "metric 'noise'" in text and "rtol 0, atol 0" in text


def test_same_numerics_and_layout_make_torch_training_exact(
        project: Path, parallel: dict[str, tuple[str, str]]) -> None:
    """Bit for bit (rtol 0, atol 0): the batch keeps its strides across the boundary, and
    the kernel and the steps run with one thread and PyTorch's deterministic algorithms."""
    outcome, text = parallel["layout_exact::equivalence[ci]"]
    assert outcome == "passed", text
    executed = (project / ".nbship/test/notebooks/nbs__layout_exact.ci.ipynb").read_text()
    assert "threads 1 deterministic 1" in executed
    assert "(256, 4, 32, 4)" in executed  # the layout PyTorch reads as channels-last
    assert "_nbship_numerics" not in executed  # nbship's set-up cell is not kept


def test_strict_compares_stored_outputs_lax_does_not(
        parallel: dict[str, tuple[str, str]]) -> None:
    assert parallel["stale_lax::Cell 0"][0] == "passed"
    outcome, text = parallel["stale_strict::Cell 0"]
    assert outcome == "failure"
    assert "stale_strict.ipynb, cell 0 (id c0): outputs differ from the ones saved" in text


def test_one_notebook_execution_serves_nbval_and_papermill(
        project: Path, parallel: dict[str, tuple[str, str]]) -> None:
    items = {k: v[0] for k, v in parallel.items() if k.startswith("runs_once::")}
    assert items == {"runs_once::check": "passed", "runs_once::papermill[ci]": "passed",
                     "runs_once::Cell 0": "passed", "runs_once::Cell 1": "passed",
                     "runs_once::Cell 2": "passed", "runs_once::equivalence[ci]": "passed"}
    assert (project / "nbs/runs.log").read_text() == "ran\n"


def test_nbval_items_check_the_run_with_the_parameter_set(
        parallel: dict[str, tuple[str, str]]) -> None:
    # the saved output says n 1000; CI ran with the set's n = 3, and strict nbval says so
    outcome, text = parallel["shows_parameter::Cell 1"]
    assert outcome == "failure" and "outputs differ" in text and "n 3" in text
    assert parallel["shows_parameter::papermill[ci]"][0] == "passed"


def test_an_error_without_a_traceback_shows_what_ipython_printed(
        parallel: dict[str, tuple[str, str]]) -> None:
    # a UsageError has no error output, only stderr; papermill calls it CellExecutionError
    outcome, text = parallel["bad_magic::papermill[ci]"]
    assert outcome == "failure"
    assert ("bad_magic.ipynb, cell 0 (id c0): CellExecutionError: UsageError: Line magic "
            "function `%undefined-line-magic` not found.") in text


def test_nbval_items_after_a_failing_cell_still_run(
        parallel: dict[str, tuple[str, str]]) -> None:
    # papermill stops at cell 3; nbval, like its own kernel, runs cell 4 too
    outcome, text = parallel["failing_step::Cell 3"]
    assert outcome == "failure" and "NameError: name 'ratio' is not defined" in text


def test_notebook_without_tags_passes_every_item(parallel: dict[str, tuple[str, str]]) -> None:
    items = {k: v for k, v in parallel.items() if k.startswith("no_tags_one_step::")}
    assert set(items) >= {"no_tags_one_step::check", "no_tags_one_step::Cell 0",
                          "no_tags_one_step::papermill[ci]", "no_tags_one_step::equivalence[ci]"}
    assert all(outcome == "passed" for outcome, _ in items.values())


def test_nbship_test_command_writes_junit_and_html(project: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "nbship", "test", "nbs/count.ipynb",
                           "nbs/no_tags_one_step.ipynb", "--artifacts", "out"],
                          cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "2 notebook(s), 2 worker(s)" in done.stdout
    assert (project / "out/junit.xml").exists()
    assert (project / "out/notebooks/nbs__count.ci.html").exists()
    assert (project / "out/notebooks/nbs__no_tags_one_step.ci.ipynb").exists()


def test_a_cell_past_the_timeout_is_named_and_the_run_stops(tmp_path: Path) -> None:
    write_notebook(tmp_path / "slow.ipynb", [(["step:a"], "import time\nx = 1"),
                                             (["step:b"], "time.sleep(30)\ny = x")])
    done, results = pytest_run(tmp_path, "--nbship", "slow.ipynb", "--nbval-cell-timeout", "2")
    outcome, text = results["slow::papermill[ci]"]
    assert outcome == "failure"
    assert ("slow.ipynb, cell 1 (id c1): CellTimeoutError: the cell ran longer than 2 s "
            "(--nbval-cell-timeout)") in text and "Traceback" not in text
    assert "not run: the notebook's papermill run stopped" in results["slow::Cell 1"][1]
    assert results["slow::equivalence[ci]"][0] == "skipped"


def test_selecting_only_nbval_items_does_not_run_the_pipeline(tmp_path: Path) -> None:
    shutil.copy(fixture_path("three_numpy_steps"), tmp_path / "nb.ipynb")
    done, results = pytest_run(tmp_path, "--nbship", "nb.ipynb", "-k", "Cell")
    assert done.returncode == 0 and results
    assert all(name.startswith("nb::Cell") for name in results)
    assert not list(tmp_path.glob(".nbship/test/logs/*.pipeline.log"))
    done, results = pytest_run(tmp_path, "--nbship", "nb.ipynb")
    assert results["nb::equivalence[ci]"][0] == "passed"
    assert list(tmp_path.glob(".nbship/test/logs/*.pipeline.log"))


def test_bad_settings_and_unreadable_notebooks_fail_their_check_only(tmp_path: Path) -> None:
    write_notebook(tmp_path / "bad_settings.ipynb", [(["step:a"], "x = 1")],
                   meta={"nbval": "sometimes"})
    deep = '{"cells": [], "nbformat": 4, "nbformat_minor": 5, "metadata": {"a": ' + \
        "[" * 5000 + "]" * 5000 + "}}"
    (tmp_path / "deep.ipynb").write_text(deep)
    write_notebook(tmp_path / "fine.ipynb", [(["step:a"], "x = 1"), (["step:b"], "y = x")])
    done, results = pytest_run(tmp_path, "--nbship", ".")
    assert "AttributeError" not in done.stdout + done.stderr
    outcome, text = results["bad_settings::check"]
    assert outcome == "failure" and "sometimes" in text
    assert results["deep::check"][0] == "failure"
    assert results["fine::equivalence[ci]"][0] == "passed"
