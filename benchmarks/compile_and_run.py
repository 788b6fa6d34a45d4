"""nbship against its peers, side by side in one run; prints a table.

    .venv/bin/python benchmarks/compile_and_run.py [--repeat N]

Rows (targets from issue 2):
  compile      `nbship compile` (cold: a new output folder) vs `kale --nb` on the
               same notebooks (CLI wall time, median of N);   target: <= 1/5 of Kale
  3-step run   a 3-step notebook's local run (kfp.local SubprocessRunner, no venv,
               no cache): nbship's compiled YAML vs Kale's;   target: <= 1/10 of Kale
  showcase     `nbship run` (cold cache, compile included) vs `papermill` on the
               showcase notebook (CLI wall time);             target: <= 1.3x papermill
  cached rerun `nbship run` again, every step from the cache (CLI wall time, and the
               kfp.local run alone; median of 5);             target: < 0.5 s

Both tools read the same notebook files: a copy of each notebook in the tag
language Kale 2.3 accepts (nbship reads that spelling too). Outputs go to
benchmarks/out/ (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / "benchmarks" / "out"
CORPUS = Path(os.environ.get("NBSHIP_CORPUS", ROOT.parent / "shared" / "corpus"))
SHOWCASE = ROOT / "notebooks" / "marker_classifier.ipynb"
COMPILE_NOTEBOOKS = [
    CORPUS / "kale" / "candies_sharing.ipynb",
    CORPUS / "kale" / "pipeline_parameters_and_metrics.ipynb",
    CORPUS / "kale" / "serving_sklearn_iris.ipynb",
    SHOWCASE,
]
THREE_STEPS = CORPUS / "kale-history" / "base_example_numpy.ipynb"

LOCAL_RUN = """
import contextlib, io, sys, time, warnings
from kfp import local
from kfp.components import load_component_from_file
warnings.simplefilter("ignore")
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[2],
           enable_caching=False)
pipeline = load_component_from_file(sys.argv[1])
started = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    pipeline()
print(time.perf_counter() - started)
"""


def wall(cmd: list[str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def kale_copies(work: Path) -> dict[Path, Path]:
    from nbship.extract.kale_backend import _kale_copy

    copies = {}
    for nb in [*COMPILE_NOTEBOOKS, THREE_STEPS]:
        dst = work / "notebooks" / nb.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        _kale_copy(nb, dst)
        copies[nb] = dst
    return copies


def bench_compile(copies: dict[Path, Path], work: Path, repeat: int) -> list[tuple]:
    rows = []
    for original in COMPILE_NOTEBOOKS:
        nb = copies[original]
        # a fresh output folder each time: a cold compile, as Kale's always is
        ours = [wall([str(BIN / "nbship"), "compile", str(nb), "-o",
                      tempfile.mkdtemp(prefix="compile-", dir=work)]) for _ in range(repeat)]
        kale = [wall([str(BIN / "kale"), "--nb", str(nb), "--output_path", "kale-out"],
                     cwd=nb.parent) for _ in range(repeat)]
        rows.append((f"compile {nb.name}", median(ours), median(kale)))
    return rows


def bench_three_steps(copies: dict[Path, Path], work: Path) -> tuple:
    from nbship.extract.graph import build_graph
    from nbship.extract.kale_backend import compile_with_kale
    from nbship.notebook import read_notebook
    from nbship.pipelines.compile import compile_graph

    nb = copies[THREE_STEPS]
    ours = compile_graph(build_graph(read_notebook(nb)), work / "three-nbship").yaml
    kale = compile_with_kale(nb, work / "three-kale")
    times = []
    for label, yaml_path in (("nbship", ours), ("kale", kale)):
        root = Path(tempfile.mkdtemp(prefix=f"root-{label}-", dir=work))
        done = subprocess.run([sys.executable, "-c", LOCAL_RUN, str(yaml_path), str(root)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{label} local run failed:\n{done.stderr[-3000:]}")
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return (f"3-step local run ({nb.name})", times[0], times[1])


def bench_showcase(work: Path, repeat: int) -> tuple[tuple, tuple, tuple]:
    root = work / "showcase-runs"
    shutil.rmtree(root, ignore_errors=True)
    # a cold run: nothing cached, not even the notebook's analysis
    os.environ["NBSHIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="graph-cache-", dir=work)
    run = [str(BIN / "nbship"), "run", str(SHOWCASE), "--root", str(root), "-o",
           str(work / "showcase-build")]
    cold = wall(run)
    papermill = wall([str(BIN / "papermill"), str(SHOWCASE), str(work / "showcase-out.ipynb"),
                      "--log-level", "ERROR"])
    cached = median([wall(run) for _ in range(max(repeat, 5))])
    records = sorted(root.glob("*/*/provenance.json"))[1:]  # the cached re-runs
    inner = median([json.loads(r.read_text())["run"]["seconds"] for r in records])
    return (("showcase: nbship run vs papermill", cold, papermill),
            ("cached re-run: nbship run (CLI)", cached, None),
            ("cached re-run: kfp.local run alone", inner, None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="compile timings: median of N")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"the shared corpus is not at {CORPUS}; set NBSHIP_CORPUS")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    copies = kale_copies(OUT)
    print(f"nbship benchmarks: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          "seconds, wall clock", flush=True)
    rows = bench_compile(copies, OUT, args.repeat)
    compile_ratio = max(ours / peer for _, ours, peer in rows)
    rows.append(bench_three_steps(copies, OUT))
    rows.extend(bench_showcase(OUT, args.repeat))

    targets = {
        "compile": ("<= 0.20x kale", lambda r: r <= 0.2),
        "3-step": ("<= 0.10x kale", lambda r: r <= 0.1),
        "showcase": ("<= 1.30x papermill", lambda r: r <= 1.3),
    }
    header = f"{'measurement':<48} {'nbship':>8} {'peer':>8} {'ratio':>7}  target"
    print(header)
    print("-" * (len(header) + 22))
    for name, ours, peer in rows:
        key = name.split()[0].rstrip(":")
        if peer is not None:
            ratio = ours / peer
            label, ok = targets.get(key, ("", lambda r: True))
            verdict = f"{label} {'met' if ok(ratio) else 'NOT met'}"
            print(f"{name:<48} {ours:8.2f} {peer:8.2f} {ratio:6.2f}x  {verdict}")
        else:
            verdict = "< 0.5 s " + ("met" if ours < 0.5 else "NOT met")
            print(f"{name:<48} {ours:8.2f} {'':>8} {'':>7}  {verdict}")
    print(f"\nworst compile ratio: {compile_ratio:.2f}x (peer: kale --nb, kubeflow-kale 2.3; "
          "3-step peer: Kale's YAML on kfp.local; showcase peer: papermill)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
