"""nbship_predictions_total keeps a bounded number of time series per model."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY

from nbship.monitoring.metrics import MAX_CLASSES, observe_predictions


def _series(model: str) -> dict[str, float]:
    return {s.labels["class"]: s.value for metric in REGISTRY.collect()
            if metric.name == "nbship_predictions" for s in metric.samples
            if s.name.endswith("_total") and s.labels.get("model") == model}


def test_an_integer_regression_does_not_make_a_series_of_every_value() -> None:
    observe_predictions("counted", np.arange(3 * MAX_CLASSES))
    observe_predictions("counted", np.arange(5 * MAX_CLASSES, 6 * MAX_CLASSES))
    observe_predictions("counted", np.array([0, 0, 1]))
    series = _series("counted")
    assert len(series) == MAX_CLASSES + 1
    assert series["other"] == 3 * MAX_CLASSES
    assert series["0"] == 3 and series["1"] == 2
    assert sum(series.values()) == 4 * MAX_CLASSES + 3
