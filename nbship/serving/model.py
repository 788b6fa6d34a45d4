"""The notebook's predict() as a ``kserve.Model``: REST v1 ``:predict`` and v2 ``/infer``.

Inputs become one numpy array (v1: ``{"instances": [...]}``; v2: the request's first
input tensor). What the model cannot take is the client's mistake and gets a 400
with a message: no instances, ragged or non-numeric data, NaN or infinity, or
predict() refusing the array (its ValueError, TypeError, IndexError or
RuntimeError — wrong shape, wrong dtype), or predict() answering another number of
rows than it was given (an 8x8 image sent as 8 rows). More rows than the server's
row limit is a 413 naming the limit. The server stays up.

predict() runs in a thread pool, off the event loop: health, readiness and /metrics
answer while a large batch is predicted. Monitoring (prediction counts, the drift
window) never fails a request that predict() answered: its errors are counted
(``nbship_monitoring_errors_total``) and logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype

from nbship.monitoring.drift import Window
from nbship.monitoring.metrics import MONITORING_ERRORS, observe_predictions
from nbship.serving.bundle import Served

OUTPUT = "predictions"
DEFAULT_MAX_ROWS = 1000  # rows a request: a batch for an online server, not a data set
WORKERS = 4  # predict() calls at once (threads off the event loop)

log = logging.getLogger(__name__)


class TooManyRows(Exception):
    """A request with more rows than the server takes: a 413 naming the limit."""


def row_shape(served: Served) -> tuple[int, ...] | None:
    """The shape of one row of the serve cell's reference_inputs; None without them."""
    if served.reference_inputs is None:
        return None
    try:
        shape = np.shape(served.reference_inputs)
    except (ValueError, TypeError):
        return None
    return tuple(int(n) for n in shape[1:]) if len(shape) >= 1 else None


class NotebookModel(Model):  # type: ignore[misc]
    """One served notebook model; ``served.predict`` does the work."""

    def __init__(self, served: Served, window: Window | None = None,
                 max_rows: int = DEFAULT_MAX_ROWS) -> None:
        super().__init__(served.name)
        self.served = served
        self.window = window  # drift against the reference profile, when there is one
        self.max_rows = max_rows
        self.row_shape = row_shape(served)
        self._pool: ThreadPoolExecutor | None = None
        self._monitor_failures = 0

    def load(self) -> bool:
        self.ready = True
        return True

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        """:meth:`answer` in the thread pool: the event loop goes on serving meanwhile."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="nbship-predict")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.answer,
                                                                payload)

    def answer(self, payload: Any) -> Any:
        """The reply to one decoded request (v2 InferRequest or v1 JSON object)."""
        if isinstance(payload, InferRequest):
            if not payload.inputs:
                raise InvalidInput("the request has no inputs")
            tensor = payload.inputs[0]
            shape = tensor.shape
            if not isinstance(shape, list) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                raise InvalidInput(f"the shape of input {tensor.name!r} must be a list of "
                                   f"sizes (whole numbers, 0 or more), not {shape!r}"[:300])
            if shape:
                self._check_rows(shape[0])
            array = _input(tensor.as_numpy)
            out = self._call(array)
            output = InferOutput(name=OUTPUT, shape=list(out.shape),
                                 datatype=from_np_dtype(out.dtype))
            output.set_data_from_numpy(out, binary_data=False)
            return InferResponse(response_id=payload.id or str(uuid.uuid4()),
                                 model_name=self.name, infer_outputs=[output])
        if not isinstance(payload, dict) or "instances" not in payload:
            raise InvalidInput('expected a JSON object with "instances": a list of inputs')
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('"instances" must be a non-empty list')
        self._check_rows(len(instances))
        array = _input(lambda: np.asarray(instances))
        return {OUTPUT: self._call(array).tolist()}

    def _check_rows(self, rows: int) -> None:
        if rows > self.max_rows:
            raise TooManyRows(f"the request has {rows} rows; this server takes at most "
                              f"{self.max_rows} rows a request (nbship serve --max-rows): "
                              "send smaller batches")

    def _call(self, array: np.ndarray) -> np.ndarray:
        if array.ndim >= 1:
            self._check_rows(len(array))
        try:
            out = self.served.predict(array)
        except (ValueError, TypeError, IndexError, RuntimeError, KeyError) as exc:
            raise InvalidInput(f"predict() cannot take an input of shape {list(array.shape)} "
                               f"and type {array.dtype}: {type(exc).__name__}: {exc}") from None
        result = np.asarray(out)
        if result.dtype == object:
            raise InvalidInput("predict() returned values that are not numbers or strings")
        rows = len(array) if array.ndim >= 1 else 1
        answered = len(result) if result.ndim >= 1 else 1
        if answered != rows:
            expected = "" if self.row_shape is None else \
                f" (the model's reference inputs are rows of shape {list(self.row_shape)})"
            raise InvalidInput(f"predict() answered {answered} prediction(s) for the "
                               f"{rows} row(s) of an input of shape {list(array.shape)}: each "
                               f"row is one input{expected}")
        self._monitor(array, result)
        return result

    def _monitor(self, array: np.ndarray, result: np.ndarray) -> None:
        """Prediction counts and the drift window; a failure is counted and logged, and
        the client still gets its predictions."""
        try:
            observe_predictions(self.name, result)
            if self.window is not None:
                self.window.observe(array, result)
        except Exception as exc:  # noqa: BLE001 - monitoring must not fail a prediction
            MONITORING_ERRORS.labels(self.name).inc()
            self._monitor_failures += 1
            if math.log10(self._monitor_failures).is_integer():  # the 1st, 10th, 100th...
                log.warning("monitoring left out a request of shape %s (%d so far): %s: %s",
                            list(array.shape), self._monitor_failures, type(exc).__name__,
                            exc)


def _input(make: Callable[[], Any]) -> np.ndarray:
    """The request's array, made by ``make``: rectangular, numeric and finite, else a 400."""
    try:
        array = make()
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the client's data made numpy raise
        raise InvalidInput(f"the input is not a rectangular array: {type(exc).__name__}: "
                           f"{exc}") from None
    if not isinstance(array, np.ndarray) or array.dtype == object:
        raise InvalidInput("the input is not a rectangular array of numbers")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"the input holds {array.dtype} values; numbers are expected")
    if array.dtype.kind == "f":
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise InvalidInput(f"the input holds {bad} NaN or infinite value(s)")
    return array

