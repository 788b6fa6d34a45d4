"""`nbship test` against plain `pytest --nbval-lax`, side by side in one run; prints a table.

    .venv/bin/python benchmarks/notebook_tests.py

Same notebooks, same parameters (no parameter set: both run the notebooks' own
defaults; the showcase's copy trains for 2 epochs, as its `ci` set does, so that
both tools run what CI runs), serial and with two workers. nbship does more per notebook: nbval's
cells, a papermill run with value capture, the step-graph check, and the pipeline
on kfp.local compared with the notebook. Target (issue 3): at most 1.5x nbval's
wall time. Outputs go to benchmarks/out/ (ignored by git).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / "benchmarks" / "out" / "notebook-tests"
NOTEBOOKS = [
    ROOT / "notebooks" / "marker_classifier.ipynb",
    ROOT / "tests" / "notebooks" / "three_numpy_steps.ipynb",
    ROOT / "tests" / "notebooks" / "functions_cell_class.ipynb",
    ROOT / "tests" / "notebooks" / "fan_out_fan_in.ipynb",
]
PYPROJECT = """\
[tool.nbship.notebooks."marker_classifier.ipynb"]
tolerance = { rtol = 0.05, atol = 0.02 }   # as in the project's own pyproject.toml
"""


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    tail = (done.stdout.strip().splitlines() or ["?"])[-1]
    for line in reversed(done.stdout.splitlines()):
        if " passed" in line or " failed" in line:
            tail = line.strip("= ")
            break
    return seconds, tail


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    for nb in NOTEBOOKS:
        shutil.copy(nb, OUT / nb.name)
    showcase = OUT / NOTEBOOKS[0].name
    text = showcase.read_text()
    assert '"epochs = 8' in text, "the showcase's parameters cell changed: update the benchmark"
    showcase.write_text(text.replace('"epochs = 8', '"epochs = 2', 1))
    (OUT / "pyproject.toml").write_text(PYPROJECT)
    names = [nb.name for nb in NOTEBOOKS]
    nbval = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-q",
             "-p", "no:cacheprovider", *names]
    nbship = [str(BIN / "nbship"), "test", *names, "--artifacts", "artifacts"]
    print(f"notebook tests: {len(names)} notebooks, {os.cpu_count()} CPUs; seconds, wall clock",
          flush=True)
    header = f"{'workers':<8} {'nbval-lax':>10} {'nbship test':>12} {'ratio':>7}  target"
    print(header)
    print("-" * (len(header) + 18))
    for workers in ("1", "2"):
        # nbval's cells share one kernel per notebook: xdist must keep a file together
        extra = ["-n", workers, "--dist", "loadfile"] if workers != "1" else []
        t_nbval, r_nbval = timed(nbval + extra, OUT)
        shutil.rmtree(OUT / "artifacts", ignore_errors=True)
        t_ours, r_ours = timed(nbship + ["-n", workers], OUT)
        ratio = t_ours / t_nbval
        verdict = "<= 1.50x " + ("met" if ratio <= 1.5 else "NOT met")
        print(f"{workers:<8} {t_nbval:10.2f} {t_ours:12.2f} {ratio:6.2f}x  {verdict}")
        print(f"{'':8} nbval: {r_nbval}; nbship: {r_ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
