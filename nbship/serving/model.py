"""The notebook's predict() as a ``kserve.Model``: REST v1 ``:predict`` and v2 ``/infer``.

Inputs become one numpy array (v1: ``{"instances": [...]}``; v2: the request's first
input tensor). What the model cannot take is the client's mistake and gets a 400
with a message: no instances, ragged or non-numeric data, NaN or infinity, or
predict() refusing the array (its ValueError, TypeError, IndexError or
RuntimeError — wrong shape, wrong dtype). The server stays up.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype

from nbship.monitoring.drift import Window
from nbship.monitoring.metrics import observe_predictions
from nbship.serving.bundle import Served

OUTPUT = "predictions"


class NotebookModel(Model):  # type: ignore[misc]
    """One served notebook model; ``served.predict`` does the work."""

    def __init__(self, served: Served, window: Window | None = None) -> None:
        super().__init__(served.name)
        self.served = served
        self.window = window  # drift against the reference profile, when there is one

    def load(self) -> bool:
        self.ready = True
        return True

    def predict(self, payload: Any, headers: dict[str, str] | None = None,
                response_headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            if not payload.inputs:
                raise InvalidInput("the request has no inputs")
            array = _input(lambda: payload.inputs[0].as_numpy())
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
        array = _input(lambda: np.asarray(instances))
        return {OUTPUT: self._call(array).tolist()}

    def _call(self, array: np.ndarray) -> np.ndarray:
        try:
            out = self.served.predict(array)
        except (ValueError, TypeError, IndexError, RuntimeError, KeyError) as exc:
            raise InvalidInput(f"predict() cannot take an input of shape {list(array.shape)} "
                               f"and type {array.dtype}: {type(exc).__name__}: {exc}") from None
        result = np.asarray(out)
        if result.dtype == object:
            raise InvalidInput("predict() returned values that are not numbers or strings")
        observe_predictions(self.name, result)
        if self.window is not None:
            self.window.observe(array, result)
        return result


def _input(make: Any) -> np.ndarray:
    """The request's array, made by ``make``: rectangular, numeric and finite, else a 400."""
    try:
        array = make()
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"the input is not a rectangular array: {exc}") from None
    if not isinstance(array, np.ndarray) or array.dtype == object:
        raise InvalidInput("the input is not a rectangular array of numbers")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"the input holds {array.dtype} values; numbers are expected")
    if array.dtype.kind == "f":
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise InvalidInput(f"the input holds {bad} NaN or infinite value(s)")
    return array

