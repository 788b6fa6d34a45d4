"""`nbship serve` on the showcase's run: KServe's protocols on 127.0.0.1, the pipeline's
numbers, bad requests answered with a 4xx while the server stays up."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

from nbship.errors import ServeError
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import run_compiled
from nbship.runtime import serializers
from nbship.serving.bundle import load_run
from tests.conftest import ROOT, run_showcase, write_notebook
from tests.release.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def showcase_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The showcase notebook run once (1 epoch), as `nbship run` leaves it."""
    return run_showcase(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(showcase_run: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nbship", "serve", str(showcase_run),
                             "--port", str(port), "--max-body", str(1 << 20)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as reply:
                if reply.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.2)
    yield base, proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def post(url: str, body: bytes | str, content_type: str = "application/json",
         ) -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")


def test_held_out_accuracy_over_v1_is_the_pipelines(server: tuple[str, Any],
                                                    showcase_run: Path) -> None:
    base, _ = server
    prov = json.loads((showcase_run / "provenance.json").read_text())
    outs = prov["steps"]["preprocess"]["outputs"]
    x_test = serializers.load(Path(outs["x_test"]["uri"]))
    y_test = serializers.load(Path(outs["y_test"]["uri"]))
    images = (x_test[:, 0] * 16.0).round()  # back to the scanned pixel values
    status, body = post(f"{base}/v1/models/marker-classifier:predict",
                        json.dumps({"instances": images.tolist()}))
    assert status == 200, body
    accuracy = float((np.asarray(body["predictions"]) == y_test).mean())
    assert accuracy == pytest.approx(prov["metrics"]["accuracy"], abs=1e-9)


def test_a_real_v2_client_gets_what_the_run_predicts(server: tuple[str, Any],
                                                     showcase_run: Path) -> None:
    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    base, _ = server
    images = np.random.default_rng(0).integers(0, 17, size=(5, 8, 8)).astype(np.float32)
    tensor = InferInput(name="images", shape=list(images.shape), datatype="FP32")
    tensor.set_data_from_numpy(images, binary_data=False)

    async def infer() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            return await client.infer(base, InferRequest(model_name="marker-classifier",
                                                         infer_inputs=[tensor]),
                                      model_name="marker-classifier")
        finally:
            await client.close()

    response = asyncio.run(infer())
    got = response.outputs[0].as_numpy()
    expected = load_run(showcase_run).predict(images)
    assert got.tolist() == expected.tolist()


def test_it_listens_on_127_0_0_1_only(server: tuple[str, subprocess.Popen[str]]) -> None:
    import psutil

    _, proc = server
    listening = [c for c in psutil.Process(proc.pid).connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}


V1 = "/v1/models/marker-classifier:predict"
V2 = "/v2/models/marker-classifier/infer"
ONE = np.zeros((1, 8, 8)).tolist()
BAD: dict[str, tuple[str, bytes | str]] = {
    "not-json": (V1, "{instances: nope"),
    "empty-body": (V1, ""),
    "no-instances": (V1, json.dumps({"inputs": ONE})),
    "instances-not-a-list": (V1, json.dumps({"instances": 5})),
    "no-rows": (V1, json.dumps({"instances": []})),
    "ragged": (V1, json.dumps({"instances": [[1, 2], [3]]})),
    "strings": (V1, json.dumps({"instances": [["a"] * 64]})),
    "nan": (V1, '{"instances": [[NaN, 0, 0]]}'),
    "wrong-shape": (V1, json.dumps({"instances": np.zeros((1, 7, 7)).tolist()})),
    "nested-objects": (V1, json.dumps({"instances": [{"a": 1}]})),
    "v2-no-inputs": (V2, json.dumps({"inputs": []})),
    "v2-shape-mismatch": (V2, json.dumps({"inputs": [{"name": "x", "shape": [1, 8, 8],
                                                      "datatype": "FP32", "data": [0] * 5}]})),
    "v2-bytes": (V2, json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                             "data": ["x"]}]})),
    "v2-nan": (V2, json.dumps({"inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32",
                                           "data": ["NaN"] + [0] * 63}]})),
    "v2-missing-fields": (V2, json.dumps({"inputs": [{"name": "x"}]})),
    "unknown-model": ("/v1/models/nope:predict", json.dumps({"instances": ONE})),
    "huge-body": (V1, '{"instances": [' + "0," * 600_000 + "0]}"),
    "huge-body-v2": (V2, '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
                         '"data": [' + "0," * 600_000 + "0]}]}"),
    "unknown-model-v2": ("/v2/models/nope/infer", json.dumps({"inputs": []})),
    "image-as-8-rows": (V1, json.dumps({"instances": ONE[0]})),
    "v2-image-as-8-rows": (V2, json.dumps({"inputs": [{"name": "x", "shape": [8, 8],
                                                       "datatype": "FP32", "data": [0] * 64}]})),
    "too-many-rows": (V1, json.dumps({"instances": ONE * 1001})),
}


@pytest.mark.parametrize("path,body", BAD.values(), ids=BAD.keys())
def test_bad_requests_get_a_4xx_with_a_message(path: str, body: bytes | str,
                                               server: tuple[str, Any]) -> None:
    base, proc = server
    status, reply = post(base + path, body)
    assert 400 <= status < 500, (status, reply)
    assert isinstance(reply, dict) and (reply.get("error") or reply.get("detail")), reply
    assert proc.poll() is None
    status, _ = post(base + V1, json.dumps({"instances": ONE}))
    assert status == 200  # still serving


def test_a_keep_alive_connection_outlives_every_bad_request(server: tuple[str, Any]) -> None:
    """Every bad request above, and malformed binary-extension headers, on one keep-alive
    connection: each a 4xx, each followed by an answered request on the same connection
    (a 500 closed it, and the client's next request was reset)."""
    import http.client

    base, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=30)
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 256}}]}).encode()
    cases = [(path, body.encode() if isinstance(body, str) else body,
              {"Content-Type": "application/json"}) for path, body in BAD.values()]
    for length in ("abc", "-1", "3", str(len(head) + 300)):
        cases.append((V2, head + bytes(256), {"Content-Type": "application/octet-stream",
                                              "Inference-Header-Content-Length": length}))
    conn.connect()
    assert conn.sock is not None
    port = conn.sock.getsockname()[1]
    for path, body, headers in cases:
        conn.request("POST", path, body=body, headers=headers)
        reply = conn.getresponse()
        text = reply.read()
        assert 400 <= reply.status < 500 and json.loads(text), (path, body[:80], text)
        conn.request("POST", V1, body=json.dumps({"instances": ONE}),
                     headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        assert reply.status == 200 and json.loads(reply.read())["predictions"]
        assert conn.sock is not None and conn.sock.getsockname()[1] == port, (path, body[:80])


@pytest.fixture(scope="module")
def served_schema(server: tuple[str, Any]) -> Any:
    """The server's own OpenAPI document, every path naming the served model (so the
    fuzzing reaches predict() instead of 404s), for schemathesis."""
    base, _ = server
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as reply:
        doc = json.loads(reply.read())
    paths = {}
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            operation["parameters"] = [p for p in operation.get("parameters", [])
                                       if p.get("name") != "model_name"]
        paths[path.replace("{model_name}", "marker-classifier")] = operations
    doc["paths"] = paths
    doc["servers"] = [{"url": base}]
    import schemathesis

    return schemathesis.openapi.from_dict(doc)


def test_fuzzing_the_openapi_finds_no_server_error(served_schema: Any,
                                                   server: tuple[str, Any]) -> None:
    """schemathesis's cases for every operation of the server's OpenAPI: never a 5xx."""
    from hypothesis import HealthCheck, given
    from schemathesis.checks import not_a_server_error

    base, proc = server
    tested = []
    for result in served_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            case.call_and_validate(base_url=base, checks=[not_a_server_error], timeout=30)

        call()
        tested.append(operation.label)
    assert "POST /v2/models/marker-classifier/infer" in tested and len(tested) >= 15
    assert proc.poll() is None


def test_the_model_is_fixed_while_it_serves(server: tuple[str, Any]) -> None:
    base, _ = server
    status, body = post(f"{base}/v2/repository/models/marker-classifier/unload", "")
    assert status == 403 and "fixed when the server starts" in body["error"]
    status, body = post(f"{base}/v1/models/marker-classifier:explain",
                        json.dumps({"instances": [[1]]}))
    assert status == 404 and "no explainer" in body["error"]
    with urllib.request.urlopen(f"{base}/v2/models/marker-classifier/ready") as reply:
        assert reply.status == 200  # still there
    status, body = post(f"{base}/v2/models/marker-classifier/versions/2/infer", "{}")
    assert status == 404 and "no model versions" in body["error"]
    with urllib.request.urlopen(f"{base}/v2/models/marker-classifier/provenance") as reply:
        assert json.loads(reply.read())["notebook"]["path"].endswith("marker_classifier.ipynb")


def test_a_run_without_a_serve_cell_is_a_message(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "n.ipynb", [(["step:a"], "a = 1")])
    compiled = compile_graph(build_graph(read_notebook(nb)), tmp_path / "build")
    run = run_compiled(compiled, {}, root=tmp_path / "runs", echo=lambda line: None)
    with pytest.raises(ServeError, match="no cell tagged `serve`"):
        load_run(run.record_dir)
    done = subprocess.run([sys.executable, "-m", "nbship", "serve", str(run.record_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "serve" in done.stderr and "Traceback" not in done.stderr


def test_a_run_folder_from_elsewhere_is_not_executed(showcase_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from nbship import signing

    copy = tmp_path / "run"
    shutil.copytree(showcase_run, copy)
    marker = tmp_path / "PWNED"
    serve_py = copy / "serve.py"
    serve_py.write_text(serve_py.read_text().replace(
        "def build(", f"__import__('pathlib').Path({str(marker)!r}).touch()\n\n\ndef build(", 1))
    prov = json.loads((copy / "provenance.json").read_text())
    prov["serve"]["sha256"] = serializers.sha256_file(serve_py)
    monkeypatch.setenv(signing.KEY_ENV, "ee" * 32)  # sealed with another machine's key
    prov["serve"]["hmac"] = signing.sign(prov["serve"])
    monkeypatch.delenv(signing.KEY_ENV)
    (copy / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(ServeError, match="not recorded by nbship on this machine"):
        load_run(copy)
    assert not marker.exists()
    assert os.path.exists(serve_py)


@pytest.mark.parametrize("name", ["serving_sklearn_iris", "serving_xgboost_iris"])
def test_kales_serving_notebooks_are_told_how_nbship_serves(name: str, corpus: Path) -> None:
    graph = build_graph(read_notebook(corpus / "kale" / f"{name}.ipynb"))
    found = [p for p in graph.warnings if p.kind == "kale-serve"]
    assert found and "tagged `serve`" in found[0].message
    assert "return model.predict(inputs)" in str(found[0].hint)


def test_kales_sklearn_notebook_serves_with_a_serve_cell(corpus: Path, tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell

    nb_path = tmp_path / "iris.ipynb"
    doc = nbformat.read(corpus / "kale" / "serving_sklearn_iris.ipynb", as_version=4)
    cell = new_code_cell("def predict(inputs):\n    return model.predict(inputs)")
    cell.metadata["tags"] = ["serve"]
    if doc.nbformat_minor < 5:  # an nbformat 4.4 notebook: cells have no ids
        del cell["id"]
    doc.cells.append(cell)
    nbformat.write(doc, nb_path)
    graph = build_graph(read_notebook(nb_path))
    assert not graph.errors and graph.serve is not None
    assert graph.serve.inputs == {"model": "train_model"}
    compiled = compile_graph(graph, tmp_path / "build")
    run = run_compiled(compiled, {"N_ESTIMATORS": 20}, root=tmp_path / "runs",
                       echo=lambda line: None)
    served = load_run(run.record_dir)
    flowers = np.array([[6.8, 2.8, 4.8, 1.4], [5.1, 3.5, 1.4, 0.2]])
    prov = json.loads((run.record_dir / "provenance.json").read_text())
    model = serializers.load(Path(prov["steps"]["train_model"]["outputs"]["model"]["uri"]))
    # the notebook splits and fits without a seed: compare with the run's own model
    assert served.predict(flowers).tolist() == model.predict(flowers).tolist()
    assert served.predict(flowers)[1] == 0  # setosa, whatever the split


def _metric(base: str, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def test_metrics_show_golden_signals_and_drift(server: tuple[str, Any]) -> None:
    from sklearn.datasets import load_digits

    base, _ = server
    digits = load_digits().images
    rng = np.random.default_rng(3)
    held = digits[rng.choice(len(digits), 1000, replace=False)]
    for start in range(0, 1000, 100):
        assert post(base + V1, json.dumps({"instances": held[start:start + 100].tolist()}))[0] \
            == 200
    quiet = _metric(base, "nbship_input_drift_psi")
    assert quiet and max(quiet.values()) < 0.25, quiet
    assert max(_metric(base, "nbship_prediction_drift_psi").values()) < 0.25
    shifted = np.clip(np.rot90(held, 1, axes=(1, 2)) + rng.normal(0, 3, held.shape), 0, 16)
    for start in range(0, 1000, 100):
        post(base + V1, json.dumps({"instances": shifted[start:start + 100].tolist()}))
    loud = _metric(base, "nbship_input_drift_psi")
    assert max(loud.values()) > 0.5, loud
    assert max(_metric(base, "nbship_prediction_drift_psi").values()) > 0.25
    assert _metric(base, "nbship_drift_window_rows") == {
        'nbship_drift_window_rows{model="marker-classifier"}': 1000.0}
    requests = _metric(base, "nbship_requests_total")
    assert requests['nbship_requests_total{code="200",model="marker-classifier",protocol="v1"}'] \
        >= 20
    assert any('code="400"' in k for k in requests)  # the bad-request tests' 4xx
    assert _metric(base, "nbship_request_seconds_count")
    assert sum(_metric(base, "nbship_predictions_total").values()) >= 2000
    assert _metric(base, "nbship_requests_in_flight") == {
        'nbship_requests_in_flight{model="marker-classifier"}': 0.0}
    assert _metric(base, "request_predict_seconds_count")  # KServe's own histogram


def test_32_clients_for_30_seconds_no_5xx_no_crash_memory_flat(
        server: tuple[str, subprocess.Popen[str]]) -> None:
    import httpx
    import psutil

    base, proc = server
    bodies = [json.dumps({"instances": ONE}).encode()] * 3 + [
        body.encode() if isinstance(body, str) else body for _path, body in BAD.values()
        if _path == V1]
    codes: dict[int, int] = {}

    async def hammer(seconds: float) -> None:
        stop = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            async def worker(n: int) -> None:
                i = n
                while time.perf_counter() < stop:
                    reply = await client.post(base + V1, content=bodies[i % len(bodies)],
                                              headers={"Content-Type": "application/json"})
                    codes[reply.status_code] = codes.get(reply.status_code, 0) + 1
                    i += 1

            await asyncio.gather(*(worker(n) for n in range(32)))

    asyncio.run(hammer(5))  # warm: allocator pools, caches
    before = psutil.Process(proc.pid).memory_info().rss
    asyncio.run(hammer(30))
    after = psutil.Process(proc.pid).memory_info().rss
    assert proc.poll() is None
    assert not [c for c in codes if c >= 500], codes
    assert codes.get(200, 0) > 100 and codes.get(400, 0) > 100, codes
    assert after - before < 50 * 2**20, f"RSS grew {(after - before) / 2**20:.1f} MiB"
