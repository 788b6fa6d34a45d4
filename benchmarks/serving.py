"""Serving throughput and latency: nbship's server (golden signals, prediction counts,
drift window) against the same model in a plain kserve.Model without them; prints a table.

    .venv/bin/python benchmarks/serving.py [--seconds 5] [--rounds 3]

Both servers run KServe's ModelServer/RESTServer on 127.0.0.1 in their own process and
serve the showcase's model (one run of the notebook, 1 epoch, made here if none);
the plain one calls the same predict() on `np.asarray(instances)` and returns the
list, nothing else. The load comes from this process: asyncio + httpx, C concurrent
clients sending one 8x8 marker per request, after a warm-up, one server at a time,
at C = 1, 8 and 32: R rounds of S-second slices per server, alternating which server
goes first, the medians reported (the machine's speed drifts by tens of percent).
Targets (issue 9): nbship's throughput at least 0.95x the plain server's, its p99 at
most 1.1x. Two cores serve and load at once here, so absolute figures are low; the
ratio is what the table is for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN = '''
import sys
import numpy as np
from kserve import Model, ModelServer
from kserve.protocol.rest.server import RESTServer
from nbship.serving.bundle import load_run
from nbship.serving.server import bind

served = load_run(__import__("pathlib").Path(sys.argv[1]))


class Plain(Model):
    def load(self):
        self.ready = True
        return True

    def predict(self, payload, headers=None, response_headers=None):
        return {"predictions": served.predict(np.asarray(payload["instances"])).tolist()}


port = int(sys.argv[2])
sock = bind("127.0.0.1", port)
server = ModelServer(http_port=port, enable_grpc=False, workers=1)
model = Plain(served.name)
model.load()
server.register_model(model)
import logging
logging.getLogger("kserve").setLevel(logging.WARNING)
RESTServer("kserve.model_server:app", server.dataplane, server.model_repository_extension,
           port).run(sockets=[sock])
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def showcase_run(work: Path) -> Path:
    nb = work / "marker_classifier.ipynb"
    shutil.copy(ROOT / "notebooks" / "marker_classifier.ipynb", nb)
    done = subprocess.run([sys.executable, "-m", "nbship", "run", str(nb), "-p", "epochs=1",
                           "-p", "threshold=0.5", "--root", str(work / "runs"), "-o",
                           str(work / "build")], cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stdout + done.stderr)
    return next((work / "runs").glob("*/*/provenance.json")).parent


def start(argv: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                        timeout=1) as reply:
                if reply.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"server on {port} did not start")


async def load(url: str, body: bytes, clients: int, seconds: float) -> tuple[int, list[float]]:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                reply = await client.post(url, content=body,
                                          headers={"Content-Type": "application/json"})
                if reply.status_code != 200:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return errors, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="per slice")
    parser.add_argument("--rounds", type=int, default=3,
                        help="slices per server and concurrency, alternating the order")
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    os.environ.setdefault("NBSHIP_KEY_FILE", str(Path(tempfile.gettempdir()) / "nbship-bench-key"))
    work = Path(tempfile.mkdtemp(prefix="nbship-bench-serving-"))
    run = showcase_run(work)
    image = load_digits().images[:1].astype(int).tolist()
    body = json.dumps({"instances": image}).encode()
    ports = {"nbship": free_port(), "plain": free_port()}
    plain_script = work / "plain.py"
    plain_script.write_text(PLAIN)
    servers = {
        "nbship": start([sys.executable, "-m", "nbship", "serve", str(run), "--port",
                         str(ports["nbship"]), "--monitor", str(work / "monitor")],
                        ports["nbship"]),
        "plain": start([sys.executable, str(plain_script), str(run), str(ports["plain"])],
                       ports["plain"]),
    }
    rows = []
    try:
        for port in ports.values():  # warm-up: imports, first torch calls
            url = f"http://127.0.0.1:{port}/v1/models/marker-classifier:predict"
            asyncio.run(load(url, body, 4, 2.0))
        for clients in (1, 8, 32):
            slices: dict[str, list[tuple[float, float, float, int]]] = {n: [] for n in ports}
            for r in range(args.rounds):  # alternate who goes first: the machine drifts
                for name in (list(ports) if r % 2 == 0 else list(ports)[::-1]):
                    url = f"http://127.0.0.1:{ports[name]}/v1/models/marker-classifier:predict"
                    errors, lat = asyncio.run(load(url, body, clients, args.seconds))
                    ms = np.array(lat) * 1000
                    slices[name].append((len(lat) / args.seconds, float(np.percentile(ms, 50)),
                                         float(np.percentile(ms, 99)), errors))
            result = {name: (float(np.median([x[0] for x in got])),
                             float(np.median([x[1] for x in got])),
                             float(np.median([x[2] for x in got])), sum(x[3] for x in got))
                      for name, got in slices.items()}
            spread = [slices["nbship"][i][0] / slices["plain"][i][0]
                      for i in range(args.rounds)]
            rows.append((clients, result, (min(spread), max(spread))))
    finally:
        for proc in servers.values():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"medians of {args.rounds} slices of {args.seconds:g} s per server and concurrency")
    print("| clients | server | req/s | p50 ms | p99 ms | errors | throughput vs plain "
          "(>= 0.95x; per-slice range) | p99 vs plain (<= 1.1x) |")
    print("|---|---|---|---|---|---|---|---|")
    for clients, result, (low, high) in rows:
        plain = result["plain"]
        for name in ("nbship", "plain"):
            rps, p50, p99, errors = result[name]
            ratio = (f"{rps / plain[0]:.2f}x ({low:.2f}-{high:.2f})", f"{p99 / plain[2]:.2f}x") \
                if name == "nbship" else ("", "")
            print(f"| {clients} | {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} | "
                  f"{ratio[0]} | {ratio[1]} |")


if __name__ == "__main__":
    main()
