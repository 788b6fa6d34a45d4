"""The local scheduler's timing: how late cron fires start, how soon new data is noticed,
and what a look at a data folder costs; prints a table.

    .venv/bin/python benchmarks/scheduler.py [--seconds 10]

The scheduler (nbship/pipelines/scheduler.py: croniter for fire times, a 0.25 s
tick, data folders polled every second) runs in this process with its worker's run
replaced by a stopwatch, so what is timed is the scheduling, not a pipeline. Why
polling rather than inotify (watchdog): it works the same on network and container
file systems, and a look at 1,000 files costs what the table says.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nbship.pipelines.scheduler import Scheduler, Store  # noqa: E402
from nbship.pipelines.training import Training, fingerprint  # noqa: E402


class Timed(Scheduler):
    """The scheduler with a stopwatch where the pipeline run would be."""

    started: list[tuple[dict[str, Any], float]]

    def run(self, training: Training, why: dict[str, Any]) -> None:
        self.started.append((why, time.time()))


def measure(seconds: float) -> list[tuple[str, str]]:
    work = Path(tempfile.mkdtemp(prefix="nbship-bench-scheduler-"))
    data = work / "data"
    data.mkdir()
    store = Store(work / "schedules.sqlite")
    store.put(Training("cron", work / "a.ipynb", cron="* * * * * *"), time.time())
    store.put(Training("data", work / "b.ipynb", data=data, data_parameter="data_dir"),
              time.time())
    sched = Timed(store, work, secret="x", echo=lambda line: None)
    sched.started = []
    sched.start()
    loop = threading.Thread(target=sched.serve_forever, daemon=True)
    loop.start()
    drops: list[float] = []
    began = time.time()
    end = began + seconds
    n = 0
    while time.time() < end:
        time.sleep(1.7)
        (data / f"batch-{n}.npz").write_bytes(b"x" * 1000)
        drops.append(time.time())
        n += 1
    time.sleep(2.5)
    sched.stop()
    elapsed = time.time() - began
    cron = [t - dt.datetime.fromisoformat(why["fired_at"]).timestamp()
            for why, t in sched.started if why["kind"] == "cron"]
    seen = sorted(t for why, t in sched.started if why["kind"] == "data")
    latency = [min((s - d for s in seen if s >= d), default=float("nan")) for d in drops]
    rows = [
        ("cron fires (every second)", f"{len(cron)} in {elapsed:.1f} s"),
        ("cron start after its second, median / max",
         f"{statistics.median(cron) * 1000:.0f} / {max(cron) * 1000:.0f} ms"),
        ("new file -> run queued, median / max",
         f"{statistics.median(latency) * 1000:.0f} / {max(latency) * 1000:.0f} ms"),
        ("data runs for data drops", f"{len(seen)} for {len(drops)}"),
    ]
    for count in (10, 1000, 10000):
        folder = work / f"f{count}"
        folder.mkdir()
        for i in range(count):
            (folder / f"{i:05d}.npz").write_bytes(b"")
        started = time.perf_counter()
        for _ in range(5):
            fingerprint(folder)
        rows.append((f"one look at a folder of {count} files",
                     f"{(time.perf_counter() - started) / 5 * 1000:.1f} ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rows = measure(args.seconds)
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
