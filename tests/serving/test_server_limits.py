"""`nbship serve` stays up and answers every request (issue 17 §4), on a real server on
127.0.0.1 (the stand-in model of tests/serving/standin.py, served by nbship's server):
large requests neither block health checks nor take unbounded memory, limits are 413s
naming the limit, malformed inputs are 4xx with a message, monitoring never fails a
request that predict() answered, and a keep-alive connection outlives a bad request."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.serving.standin import NAME, V1, V2, digits, started

pytestmark = pytest.mark.slow

IMAGE = np.zeros((8, 8)).tolist()


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[str, Any]]:
    with started() as server:
        yield server


def connect(base: str) -> http.client.HTTPConnection:
    parts = urlsplit(base)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)


def ask(conn: http.client.HTTPConnection, path: str, body: bytes | str,
        headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST on ``conn`` (kept alive), the status and the JSON reply."""
    conn.request("POST", path, body=body.encode() if isinstance(body, str) else body,
                 headers=headers or {"Content-Type": "application/json"})
    reply = conn.getresponse()
    text = reply.read()
    try:
        return reply.status, json.loads(text)
    except ValueError:
        return reply.status, text.decode(errors="replace")


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class Probes:
    """Health and readiness asked every 50 ms from a thread; the slowest answer."""

    PATHS = ("/v2/health/ready", "/v2/health/live", f"/v2/models/{NAME}/ready")

    def __init__(self, base: str) -> None:
        self.base = base
        self.slowest = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            path = self.PATHS[n % len(self.PATHS)]
            n += 1
            started_at = time.perf_counter()
            try:
                with urllib.request.urlopen(self.base + path, timeout=30) as reply:
                    assert reply.status == 200
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.failures.append(f"{path}: {exc}")
            self.slowest = max(self.slowest, time.perf_counter() - started_at)
            self.answers += 1
            time.sleep(0.05)

    def __enter__(self) -> Probes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_health_answers_within_a_second_while_a_large_request_is_predicted() -> None:
    """predict() runs off the event loop: a request whose predict() takes 4 s of Python
    (1000 rows, the default row limit) does not hold up health or readiness."""
    with started("--slow", "4") as (base, _proc):
        conn = connect(base)
        body = json.dumps({"instances": digits()[:1000].tolist()})
        with Probes(base) as probes:
            time.sleep(0.3)
            begun = time.perf_counter()
            status, reply = ask(conn, V1, body)
            took = time.perf_counter() - begun
            time.sleep(0.3)
        assert status == 200 and len(reply["predictions"]) == 1000, reply
        assert took >= 4
        assert not probes.failures, probes.failures
        assert probes.answers >= 20 and probes.slowest < 1.0, \
            f"the slowest of {probes.answers} health checks took {probes.slowest:.2f} s"


def test_a_52_mb_request_is_a_413_naming_the_limit_with_health_up_and_memory_flat(
        standin: tuple[str, Any]) -> None:
    """52 MB of valid images (under the old 64 MiB limit): over the default limit sized
    from the model's input (1000 rows of 8x8 numbers as JSON), refused before it is
    parsed; the body is read away, so the client hears the 413 on a connection that
    stays open."""
    base, proc = standin
    images = digits()
    row = len(json.dumps(images[0].tolist())) + 2
    rows = 52_000_000 // row
    body = json.dumps({"instances": np.tile(images, (rows // len(images) + 1, 1, 1))[:rows]
                       .tolist()}).encode()
    assert 50e6 < len(body) < 64 << 20
    conn = connect(base)
    port = conn.sock.getsockname()[1] if conn.sock else None
    before = peak_rss(proc.pid)
    with Probes(base) as probes:
        begun = time.perf_counter()
        status, reply = ask(conn, V1, body)
        took = time.perf_counter() - begun
    assert status == 413, (status, str(reply)[:300])
    named = re.search(r"limit of (\d+) bytes \(nbship serve --max-body\)", reply["error"])
    assert named and 1 << 20 <= int(named[1]) <= 2 << 20, reply  # 1000 rows of 8x8 numbers
    assert took < 20
    assert not probes.failures and probes.slowest < 1.0, (probes.failures, probes.slowest)
    grown = peak_rss(proc.pid) - before
    assert grown < 100 << 20, f"peak RSS grew {grown / 2**20:.0f} MiB"
    assert ask(conn, V1, json.dumps({"instances": [IMAGE]}))[0] == 200
    assert port is None or conn.sock.getsockname()[1] == port  # the same connection


def test_a_client_waiting_for_100_continue_hears_the_413_without_sending_the_body(
        standin: tuple[str, Any]) -> None:
    """curl asks `Expect: 100-continue` before a body over 1 MB: the 413 comes at once,
    the body is not asked for."""
    base, _ = standin
    conn = connect(base)
    conn.timeout = 10
    conn.putrequest("POST", V1)
    for name, value in (("Content-Type", "application/json"), ("Content-Length", "50000000"),
                        ("Expect", "100-continue")):
        conn.putheader(name, value)
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 413 and "--max-body" in json.loads(reply.read())["error"]


def test_the_largest_request_within_the_limits_takes_bounded_memory(
        standin: tuple[str, Any]) -> None:
    """1000 rows of long floats (just under the default body limit), v1 and v2, 8 at
    a time: answered, and the server's peak memory grows by less than 300 MiB."""
    base, proc = standin
    values = np.random.default_rng(1).random((1000, 8, 8)) * 16
    v1 = json.dumps({"instances": values.tolist()})
    v2 = json.dumps({"inputs": [{"name": "x", "shape": [1000, 8, 8], "datatype": "FP64",
                                 "data": values.ravel().tolist()}]})
    assert 1_000_000 < len(v1) < 1000 * 64 * 24
    before = peak_rss(proc.pid)
    codes: list[int] = []

    def client(n: int) -> None:
        conn = connect(base)
        for _ in range(3):
            codes.append(ask(conn, V1 if n % 2 else V2, v1 if n % 2 else v2)[0])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 24, codes
    grown = peak_rss(proc.pid) - before
    assert grown < 300 << 20, f"peak RSS grew {grown / 2**20:.0f} MiB"


@pytest.mark.parametrize("path", [V1, V2])
def test_more_rows_than_the_row_limit_is_a_413_naming_it(path: str,
                                                         standin: tuple[str, Any]) -> None:
    base, _ = standin
    body = json.dumps({"instances": [IMAGE] * 1001}) if path == V1 else json.dumps(
        {"inputs": [{"name": "x", "shape": [1001, 8, 8], "datatype": "FP32",
                     "data": [0] * (1001 * 64)}]})
    status, reply = ask(connect(base), path, body)
    assert status == 413 and "at most 1000 rows" in reply["error"], (status, reply)


def test_the_limits_are_options() -> None:
    with started("--max-rows", "2", "--max-body", "5000") as (base, _proc):
        conn = connect(base)
        assert ask(conn, V1, json.dumps({"instances": [IMAGE] * 2}))[0] == 200
        status, reply = ask(conn, V1, json.dumps({"instances": [IMAGE] * 3}))
        assert status == 413 and "at most 2 rows" in reply["error"]
        status, reply = ask(conn, V1, json.dumps({"instances": [IMAGE] * 30}))
        assert status == 413 and "limit of 5000 bytes" in reply["error"]
        assert ask(conn, V1, json.dumps({"instances": [IMAGE]}))[0] == 200


def binary(header: dict[str, Any], data: bytes, length: int | str | None = None,
           ) -> tuple[str, bytes, dict[str, str]]:
    """A v2 request in KServe's binary extension: JSON header, then raw tensor bytes."""
    head = json.dumps(header).encode()
    return (V2, head + data, {"Content-Type": "application/octet-stream",
                              "Inference-Header-Content-Length":
                                  str(len(head) if length is None else length)})


FP32 = {"inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32",
                    "parameters": {"binary_data_size": 256}}]}
JSON = {"Content-Type": "application/json"}
MALFORMED: dict[str, tuple[str, bytes | str, dict[str, str]]] = {
    "image-as-8-rows": (V1, json.dumps({"instances": IMAGE}), JSON),
    "v2-image-as-8-rows": (V2, json.dumps({"inputs": [{"name": "x", "shape": [8, 8],
                                                       "datatype": "FP32",
                                                       "data": [0] * 64}]}), JSON),
    "rows-of-7x7": (V1, json.dumps({"instances": np.zeros((2, 7, 7)).tolist()}), JSON),
    "binary-header-not-a-number": binary(FP32, bytes(256), "abc"),
    "binary-header-negative": binary(FP32, bytes(256), -5),
    "binary-header-too-long": binary(FP32, bytes(256), 10**9),
    "binary-header-cuts-the-json": binary(FP32, bytes(256), 7),
    "binary-no-inputs": binary({"outputs": []}, b""),
    "binary-inputs-not-a-list": binary({"inputs": 5}, b""),
    "binary-input-no-shape": binary({"inputs": [{"name": "x", "datatype": "FP32",
                                                 "parameters": {"binary_data_size": 4}}]},
                                    bytes(4)),
    "binary-data-short": binary(FP32, bytes(10)),
    "binary-size-not-a-number": binary({"inputs": [{"name": "x", "shape": [1, 8, 8],
                                                    "datatype": "FP32", "parameters":
                                                    {"binary_data_size": "many"}}]},
                                       bytes(256)),
    "binary-unknown-datatype": binary({"inputs": [{"name": "x", "shape": [1, 8, 8],
                                                   "datatype": "FP128", "parameters":
                                                   {"binary_data_size": 256}}]}, bytes(256)),
    "v2-uint-negative": (V2, json.dumps({"inputs": [{"name": "x", "shape": [1, 64],
                                                     "datatype": "UINT8",
                                                     "data": [-1] * 64}]}), JSON),
    "v2-shape-negative": (V2, json.dumps({"inputs": [{"name": "x", "shape": [-1, 64],
                                                      "datatype": "FP32",
                                                      "data": [0] * 64}]}), JSON),
    "v2-wrong-datatype": (V2, json.dumps({"inputs": [{"name": "x", "shape": [1, 64],
                                                      "datatype": "FP32",
                                                      "data": ["a"] * 64}]}), JSON),
    "too-many-rows": (V1, json.dumps({"instances": [IMAGE] * 1001}), JSON),
    "over-the-body-limit": (V1, json.dumps({"instances": [[[1.0 / 3] * 8] * 8] * 2000}),
                            JSON),
    "cloudevent-binary-garbage": (V1, b"\xff\xfe", {"Content-Type": "application/json",
                                                    "ce-specversion": "1.0", "ce-id": "1",
                                                    "ce-source": "x", "ce-type": "y"}),
}


@pytest.mark.parametrize("path,body,headers", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_a_4xx_and_the_connection_stays_open(
        path: str, body: bytes | str, headers: dict[str, str],
        standin: tuple[str, Any]) -> None:
    """Each bad input: a 4xx with a message; then a good request on the same keep-alive
    connection is answered (a 500 used to close it: the next request was reset)."""
    base, proc = standin
    conn = connect(base)
    conn.connect()
    assert conn.sock is not None
    port = conn.sock.getsockname()[1]
    status, reply = ask(conn, path, body, headers)
    assert 400 <= status < 500, (status, reply)
    assert isinstance(reply, dict) and (reply.get("error") or reply.get("detail")), reply
    assert conn.sock is not None and conn.sock.getsockname()[1] == port, "connection closed"
    status, reply = ask(conn, V1, json.dumps({"instances": [IMAGE]}))
    assert status == 200, reply
    assert conn.sock.getsockname()[1] == port
    assert proc.poll() is None


def test_64_clients_mixing_malformed_and_good_requests_see_no_reset_and_no_5xx(
        standin: tuple[str, Any]) -> None:
    """The issue's load: 64 keep-alive clients, every malformed request above between
    good ones, 10 s. Each answered (a reset connection raises in httpx), none a 5xx."""
    import asyncio

    import httpx

    base, proc = standin
    good = (V1, json.dumps({"instances": [IMAGE]}).encode(), JSON)
    cases = [(path, body.encode() if isinstance(body, str) else body, headers)
             for path, body, headers in MALFORMED.values() if len(body) < 100_000]
    codes: dict[int, int] = {}
    failures: list[str] = []

    async def hammer(seconds: float) -> None:
        stop = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            async def worker(n: int) -> None:
                i = n
                while time.perf_counter() < stop:
                    path, body, headers = cases[i % len(cases)] if i % 2 else good
                    try:
                        reply = await client.post(base + path, content=body, headers=headers)
                    except httpx.TransportError as exc:
                        failures.append(f"{path}: {type(exc).__name__}: {exc}")
                        continue
                    finally:
                        i += 1
                    codes[reply.status_code] = codes.get(reply.status_code, 0) + 1

            await asyncio.gather(*(worker(n) for n in range(64)))

    asyncio.run(hammer(10))
    assert not failures, failures[:5]
    assert not [c for c in codes if c >= 500], codes
    assert codes.get(200, 0) > 100 and sum(n for c, n in codes.items() if c >= 400) > 100, codes
    assert proc.poll() is None


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name + "{") and f'model="{NAME}"' in line)


def test_monitoring_never_fails_a_request_that_predict_answered() -> None:
    """predict() answering class names (strings): the drift window, made for numbers,
    cannot take them; the client gets its predictions, the failure is counted."""
    with started("--labels") as (base, _proc):
        conn = connect(base)
        status, reply = ask(conn, V1, json.dumps({"instances": digits()[:3].tolist()}))
        assert status == 200, reply
        assert all(p.startswith("class-") for p in reply["predictions"])
        assert metric(base, "nbship_monitoring_errors_total") == 1
        assert ask(conn, V1, json.dumps({"instances": [IMAGE]}))[0] == 200
        assert metric(base, "nbship_monitoring_errors_total") == 2


@pytest.mark.parametrize("option", ["--max-rows", "--max-body"])
def test_a_limit_of_zero_is_refused_before_anything_loads(option: str, tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "nbship", "serve", str(tmp_path), option, "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"argument {option}: 0 is not 1 or more" in done.stderr
