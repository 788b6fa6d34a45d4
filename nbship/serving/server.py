"""KServe's ModelServer for one notebook model, listening on 127.0.0.1 only.

kserve 0.21's REST server binds 0.0.0.0 on its own. nbship binds the socket itself
(127.0.0.1:PORT unless ``--host`` says otherwise) and hands it to KServe's
RESTServer (``run(sockets=...)``, uvicorn's public way), so KServe's endpoints,
exception handlers and metrics are all there and nothing listens elsewhere.

Every request gets an answer and the server stays responsive: a request body is at
most ``--max-body`` bytes (by default sized from the model's input: ``--max-rows``
rows of the reference inputs' row as JSON numbers) and at most ``--max-rows`` rows,
else a 413 naming the limit; at most a few inference requests are read at once;
predict() runs off the event loop; what KServe cannot decode (a malformed binary
header, say) is a 400; an unexpected error is a 500 that leaves the keep-alive
connection open.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbship.serving.bundle import Served

if TYPE_CHECKING:
    from nbship.monitoring.drift import Window

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_BODY = 16 << 20  # bytes: the default limit's ceiling (a batch of inputs, not a data set)
MIN_BODY = 1 << 20  # bytes: the default limit's floor
UNSIZED_BODY = 4 << 20  # bytes: the default limit for a model without reference inputs
NUMBER_BYTES = 24  # the most a JSON number and its comma take: -1.2345678901234567e-123,
CONCURRENT = 8  # inference requests read and answered at once

log = logging.getLogger(__name__)


def body_limit(served: Served, max_rows: int) -> int:
    """The default request body limit: ``max_rows`` rows of the model's reference input
    as JSON numbers, between MIN_BODY and MAX_BODY (UNSIZED_BODY without reference
    inputs). JSON decoding holds the interpreter for the whole body, so this also bounds
    how long one request can hold up health checks."""
    from nbship.serving.model import row_shape

    shape = row_shape(served)
    if shape is None:
        return UNSIZED_BODY
    return max(MIN_BODY, min(MAX_BODY, max_rows * math.prod(shape) * NUMBER_BYTES))


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


# KServe's handlers for a client's mistake log it at ERROR with a traceback; the client
# gets the message in the 4xx reply, so the server's console does not need it.
_CLIENT_ERROR_HANDLERS = frozenset({"invalid_input_handler", "model_not_found_handler",
                                    "not_implemented_error_handler",
                                    "unsupported_protocol_error_handler"})


def _no_client_errors(record: object) -> bool:
    return getattr(record, "funcName", "") not in _CLIENT_ERROR_HANDLERS


class Answered:
    """ASGI middleware: an exception nothing else handled is a 500 with a message, logged.

    Raised further, uvicorn would close the connection after Starlette's 500, and a
    keep-alive client's next request on it would be reset.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        from nbship.monitoring.metrics import TooLarge

        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except TooLarge:
            raise  # BodyLimit's, outside, answers it
        except Exception as exc:
            if started:
                raise
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            body = json.dumps({"error": f"internal error: {type(exc).__name__}: {exc}"}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def not_the_protocol(_request: Any, exc: Exception) -> Any:
    """A body that is not a v2 inference request: a 422 naming where, without echoing the
    input back (FastAPI's own reply does, and cannot render NaN or infinity: a 500)."""
    from fastapi.responses import JSONResponse

    errors = [{"loc": [str(part) for part in error.get("loc", ())],
               "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
              for error in getattr(exc, "errors", list)()[:20]]
    where = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
    return JSONResponse({"error": f"the request is not a v2 inference request: {where}",
                         "detail": errors}, status_code=422)


def guard_decoding(dataplane: Any) -> None:
    """KServe's request decoding (JSON, CloudEvents, the v2 binary extension's
    Inference-Header-Content-Length) raising anything but InvalidInput is still the
    client's request at fault: a 400 with the message, not a 500."""
    from kserve.errors import InvalidInput

    decode = dataplane.decode

    def decoding(*args: Any, **kwargs: Any) -> Any:
        try:
            return decode(*args, **kwargs)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - the request's bytes made it raise
            raise InvalidInput(f"the request cannot be decoded: {type(exc).__name__}: "
                               f"{exc}") from None

    dataplane.decode = decoding


class FixedModel:
    """ASGI middleware: the model is fixed when the server starts.

    KServe's model repository extension (``/v2/repository/models/NAME/load|unload``)
    would let any client unload the model (after which every request is a 404 while
    /v2/health/ready still says ready): refused with a 403. nbship serves no explainer
    and no model versions: ``:explain``, ``/versions/...`` and ``model_version=`` are
    404s (the client asked for what is not there) rather than KServe's 501s.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        path = str(scope.get("path", "")) if scope.get("type") == "http" else ""
        if path.startswith("/v2/repository/"):
            status, error = 403, ("nbship serves one model, fixed when the server starts: "
                                  "the model repository (load/unload) is not available")
        elif path.endswith(":explain"):
            status, error = 404, "nbship serves no explainer for this model"
        elif "/versions/" in path or b"model_version=" in scope.get("query_string", b""):
            status, error = 404, ("nbship serves one version of each model: no model "
                                  "versions (leave model_version out)")
        else:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": error}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def monitor(served: Served) -> Window | None:
    """The drift window of ``served``, registered with /metrics; None without a profile."""
    from nbship.monitoring.drift import Window
    from nbship.monitoring.metrics import watch_drift

    if served.profile is None:
        return None
    window = Window(served.profile)
    watch_drift(served.name, window)
    return window


def serve(served: Served, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          announce: Callable[[str], None] = print, verbose: bool = False,
          monitor_root: Path | None = None, max_body: int | None = None,
          max_rows: int | None = None) -> None:
    """Serve ``served`` until SIGINT/SIGTERM (uvicorn's graceful shutdown); ``max_body``
    None: sized from the model's input (:func:`body_limit`)."""
    import logging
    import warnings

    from kserve import ModelServer
    from kserve.protocol.rest.server import RESTServer

    from nbship.monitoring.metrics import BodyLimit, GoldenSignals, describe_model
    from nbship.serving.model import DEFAULT_MAX_ROWS, NotebookModel, TooManyRows

    sock = bind(host, port)
    server = ModelServer(http_port=port, enable_grpc=False, workers=1)
    if not verbose:  # KServe logs every start-up step and request at INFO
        for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("kserve").addFilter(_no_client_errors)
        warnings.filterwarnings("ignore", message=".*deprecated")  # fastapi, about kserve
    window = monitor(served)
    max_rows = DEFAULT_MAX_ROWS if max_rows is None else max_rows
    max_body = body_limit(served, max_rows) if max_body is None else max_body
    model = NotebookModel(served, window, max_rows=max_rows)
    model.load()
    guard_decoding(server.dataplane)
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.model_server import app

    def too_many_rows(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=413)

    app.add_exception_handler(TooManyRows, too_many_rows)
    app.add_exception_handler(RequestValidationError, not_the_protocol)
    app.add_api_route(f"/v2/models/{served.name}/provenance", lambda: served.provenance,
                      methods=["GET"], summary="where the served model comes from")
    describe_model(served.name, served.provenance)
    app.add_middleware(Answered)  # innermost: GoldenSignals counts its 500s
    app.add_middleware(FixedModel)
    app.add_middleware(GoldenSignals, model=served.name)
    app.add_middleware(BodyLimit, limit=max_body,  # outermost: before anything reads it
                       concurrent=CONCURRENT)
    server.register_model(model)
    rest = RESTServer("kserve.model_server:app", server.dataplane,
                      server.model_repository_extension, port)
    bound_port = sock.getsockname()[1]
    announce(f"serving {served.name!r} on http://{host}:{bound_port} "
             f"(v1 /v1/models/{served.name}:predict, v2 /v2/models/{served.name}/infer; "
             f"at most {max_rows} rows and {max_body} bytes a request)")
    entry = None
    if monitor_root is not None:  # nbship monitor's Prometheus finds it here
        from nbship.monitoring.metrics import run_id
        from nbship.monitoring.stack import register_target

        try:
            entry = register_target(monitor_root, served.name, f"{host}:{bound_port}",
                                    {"run": run_id(served.provenance)})
        except OSError as exc:  # a read-only file system in a container: serve anyway
            announce(f"(not registered with nbship monitor: {exc})")
    try:
        rest.run(sockets=[sock])
    finally:
        if entry is not None:
            entry.unlink(missing_ok=True)


def smoke(timeout: float = 60) -> None:
    """Inside the model server's image: start the server (a stand-in model), check
    /v2/health/ready, one v2 /infer and /metrics, print the result, exit."""
    import json
    import os
    import threading
    import time
    import urllib.request

    import numpy as np

    from nbship.monitoring.drift import Profile

    def predict(x: Any) -> Any:
        return np.asarray(x).reshape(len(x), -1).argmax(1)

    reference = np.random.default_rng(0).random((200, 4))
    served = Served(name="smoke", predict=predict, profile=Profile.build(reference,
                                                                         predict(reference)))
    sock = bind(DEFAULT_HOST, 0)
    port = sock.getsockname()[1]
    sock.close()
    threading.Thread(target=serve, args=(served,), daemon=True,
                     kwargs={"port": port, "announce": lambda line: None}).start()
    base = f"http://{DEFAULT_HOST}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            print("serve smoke FAILED: not ready", flush=True)
            os._exit(1)
        time.sleep(0.1)
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                   "data": [0, 1, 0, 0, 0, 0, 0, 1]}]}).encode()
    req = urllib.request.Request(f"{base}/v2/models/smoke/infer", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as reply:
        outputs = json.loads(reply.read())["outputs"][0]["data"]
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    ok = outputs == [1, 3] and "nbship_requests_total" in metrics
    print(f"serve smoke {'ok' if ok else 'FAILED'}: ready, /infer -> {outputs}, /metrics "
          f"{'has' if 'nbship_input_drift_psi' in metrics else 'lacks'} drift", flush=True)
    os._exit(0 if ok else 1)
