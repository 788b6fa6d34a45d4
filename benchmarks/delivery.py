"""A model's delivery, rehearsed from release to promoted: wall time, and the share of it
spent waiting; and what the traffic split costs a request. Prints tables.

    .venv/bin/python benchmarks/delivery.py [--canary-seconds N] [--kayenta] [--rounds 3]

Made here first (not timed): the embedded registry on a free port, two runs of the
showcase (seeds 0 and 1, its default 8 epochs) pushed as model releases, and a release
record naming a server image. Then, timed: `nbship deploy render` of that release and
the candidate, and `nbship deploy rehearse` of the model delivery with the first model in
production (--stable), the judgment answered (--judge continue) and 20 requests/s sent
throughout: canary deployed, readiness, the canary judged for --canary-seconds (the judge
job; with --kayenta, Kayenta's analysis from the rehearsal's Prometheus), promotion, the
old server drained and stopped. "Waiting" is readiness, observation (the judgment) and
manual judgment: time a real delivery spends the same way, whatever runs it.

There is no peer to run beside: Spinnaker does not run here. The router's cost is
measured against its peer, no router: the same model server asked directly and through
the split (one client, sequential, `--requests` each, alternating rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER = "127.0.0.1:5000/nbship-server@sha256:" + "6" * 64
STEPS = "127.0.0.1:5000/nbship-steps@sha256:" + "5" * 64


def release(registry: str, folder: Path) -> str:
    """A release record as `nbship publish` lays it out, naming a server image (the
    rehearsal runs the server from this venv, so no image is built)."""
    from tests.conftest import push_release

    folder.mkdir(parents=True, exist_ok=True)
    record = {"schema": "nbship.release/v1", "name": "marker-classifier",
              "commit": "0" * 40, "manifests": [], "steps": {},
              "notebook": {"path": "notebooks/marker_classifier.ipynb", "sha256": "0" * 64},
              "images": {name: {"reference": ref, "digest": ref.split("@")[1]}
                         for name, ref in (("nbship-steps", STEPS), ("nbship-server", SERVER))}}
    return push_release(registry, folder, record, b"# not run by the delivery\n")


def router_cost(model: str, requests: int, rounds: int) -> list[tuple[str, float, float]]:
    """(route, median ms, p99 ms): one model server asked directly and through a Router."""
    import numpy as np

    from nbship.release.model import load_model
    from nbship.serving.canary import infer, wait_ready
    from nbship.serving.router import Router
    from nbship.spinnaker.local_cluster import free_port

    rows = np.asarray(load_model(model).reference_inputs)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "nbship", "serve", model, "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    router = Router()
    router.start()
    direct = f"http://127.0.0.1:{port}"
    router.route({direct: 100})
    took: dict[str, list[float]] = {"direct": [], "through the split": []}
    try:
        if not wait_ready(direct, "marker-classifier", 120):
            raise SystemExit("the model server did not get ready")
        for url in (direct, router.url):  # warm-up
            for i in range(50):
                infer(url, "marker-classifier", rows[i])
        for r in range(rounds):
            order = [("direct", direct), ("through the split", router.url)]
            for name, url in order if r % 2 == 0 else order[::-1]:
                for i in range(requests):
                    value, seconds = infer(url, "marker-classifier", rows[i % len(rows)])
                    if value is None:
                        raise SystemExit(f"a request {name} failed")
                    took[name].append(seconds * 1000)
    finally:
        router.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    return [(name, statistics.median(v), float(np.percentile(v, 99)))
            for name, v in took.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canary-seconds", type=int, default=None,
                        help="30 for the judge job, 60 with --kayenta: Orca plans Kayenta's "
                        "intervals in whole minutes (RunCanaryIntervalsStage) and render "
                        "refuses less")
    parser.add_argument("--kayenta", action="store_true",
                        help="judge with Kayenta's analysis (needs Prometheus)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.canary_seconds is None:
        args.canary_seconds = 60 if args.kayenta else 30

    from nbship.release import model, registry
    from nbship.spinnaker.local_cluster import free_port
    from nbship.spinnaker.rehearse import Options, rehearse
    from nbship.spinnaker.render import render
    from tests.conftest import run_showcase, showcase_project

    work = Path(tempfile.mkdtemp(prefix="nbship-bench-delivery-"))
    os.environ.setdefault("NBSHIP_KEY_FILE", str(work / "key"))
    state = registry.up(work / "registry", free_port())
    try:
        print("setting up (not timed): registry, two showcase runs, model releases ...",
              flush=True)
        refs = []
        for seed in (0, 1):  # the showcase's own epochs and gate
            (work / f"seed{seed}").mkdir()
            run = run_showcase(work / f"seed{seed}", epochs=8, seed=seed, threshold=0.9)
            pushed = model.push(run, state.address, echo=lambda line: None)
            refs.append(f"{pushed.reference.registry}/{pushed.reference.repository}"
                        f"@{pushed.digest}")
        stable, candidate = refs
        rel = release(state.address, work / "release")
        project = showcase_project(
            work / "project",
            f"[tool.nbship.deploy]\ncanary_seconds = {args.canary_seconds}\n"
            + ('canary_config = "nbship-model-server"\n' if args.kayenta else "")
            + '[tool.nbship.training."notebooks/marker_classifier.ipynb"]\n'
            'cron = "0 0 3 * * *"\n')
        began = time.perf_counter()
        render(rel, project / "spinnaker", pyproject=project / "pyproject.toml",
               model=candidate)
        rendered = time.perf_counter() - began
        os.chdir(project)
        record, _ = rehearse(project / "spinnaker" / "marker-classifier-model-delivery.json",
                             Options(jobs="venv", stable=stable, judge="continue",
                                     root=project / "deploy"),
                             echo=lambda line: None)
        total = time.perf_counter() - began
        costs = router_cost(stable, args.requests, args.rounds)
    finally:
        registry.down(work / "registry")
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)

    stages: list[dict[str, Any]] = record["stages"]
    waited = sum(s.get("seconds", 0) for s in stages if s.get("waiting"))
    print(f"\nmodel delivery, release -> promoted ({record['status']}; judged by "
          f"{'Kayenta' if args.kayenta else 'the judge job'} for {args.canary_seconds} s)")
    print(f"{'step':<40} {'seconds':>8}  waiting")
    print(f"{'render (5 pipelines, validated)':<40} {rendered:>8.2f}")
    for s in stages:
        note = "yes" if s.get("waiting") else "(skipped)" if s["status"] == "SKIPPED" else ""
        print(f"{s['refId'] + ' ' + s['name']:<40} {s.get('seconds', 0):>8.2f}  {note}")
    rest = total - rendered - sum(s.get("seconds", 0) for s in stages)
    print(f"{'production before, load, settle, record':<40} {rest:>8.2f}")
    print(f"{'total':<40} {total:>8.2f}")
    print(f"waiting: {waited:.1f} s of {total:.1f} s ({100 * waited / total:.0f} %)")
    print(f"traffic: {record['traffic']['sent']} requests during the rehearsal, "
          f"{record['traffic']['failed']} failed")
    print(f"\ntraffic split cost ({args.rounds} rounds x {args.requests} sequential requests "
          "each, one model server)")
    print(f"{'route':<20} {'median ms':>10} {'p99 ms':>8}")
    for name, median, p99 in costs:
        print(f"{name:<20} {median:>10.2f} {p99:>8.2f}")
    print(f"added by the split: {costs[1][1] - costs[0][1]:+.2f} ms median")


if __name__ == "__main__":
    main()
