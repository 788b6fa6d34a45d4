"""A stand-in for the showcase's model, served by nbship's real server in a process of
its own (``python -m tests.serving.standin --port P``): 8x8 images in, a class out,
``predict`` reshaping its input to (-1, 64) as the showcase's does (so an image sent as
8 rows is one image to it), a drift profile from scikit-learn's digits. Starts in
seconds: no notebook run, no training. ``--slow S`` makes a request of more than one
row spend S seconds in Python (holding the GIL as a model written in Python would);
``--labels`` makes predict() answer class names (as a scikit-learn classifier trained
on string labels does), which the drift window, made for numbers, cannot take.

:func:`started` runs one for a test and stops it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

NAME = "standin"
V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"


def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.asarray(load_digits().images)


def model(slow: float = 0.0, labels: bool = False) -> Any:
    from nbship.monitoring.drift import Profile
    from nbship.serving.bundle import Served

    weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)

    def predict(images: Any) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32).reshape(-1, 64) / 16.0
        if slow and len(x) > 1:
            end = time.perf_counter() + slow
            while time.perf_counter() < end:
                sum(range(1000))
        return np.asarray((x @ weights).argmax(1))

    def named(images: Any) -> np.ndarray:
        return np.array([f"class-{n}" for n in predict(images)])

    reference = digits()
    return Served(name=NAME, predict=named if labels else predict,
                  profile=Profile.build(reference, predict(reference)),
                  reference_inputs=reference, provenance={"run": {"id": "standin"}})


def main() -> None:
    from nbship.serving.server import serve

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--max-body", type=int, default=None)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--labels", action="store_true")
    args = parser.parse_args()
    limits = {k: v for k, v in (("max_body", args.max_body), ("max_rows", args.max_rows))
              if v is not None}
    serve(model(args.slow, args.labels), port=args.port,
          announce=lambda line: print(line, flush=True), **limits)


@contextlib.contextmanager
def started(*options: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A stand-in server on 127.0.0.1 (its base URL and process) for the block."""
    from tests.conftest import ROOT
    from tests.release.conftest import free_port

    port = free_port()
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would stop the server
    proc = subprocess.Popen([sys.executable, "-m", "tests.serving.standin", "--port", str(port),
                             *options], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the stand-in server stopped: {log.read()}")
            assert time.monotonic() < deadline, "the stand-in server did not become ready"
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


if __name__ == "__main__":
    main()
