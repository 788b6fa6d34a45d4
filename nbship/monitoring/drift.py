"""Drift of a served model's inputs and predictions against a reference profile.

The profile is made once from reference inputs (the data the model learned from)
and the model's predictions on them: each input row is flattened to F features;
up to 16 features are watched one by one, more are watched as 8 groups of
contiguous features (the group's mean per row: pixel blocks of an image, say).
Per feature group it keeps 10 quantile bins (their proportions) and a sample of
up to 1,000 values; for predictions, the class frequencies (integer outputs) or
quantile bins (real-valued outputs).

Serving adds each request's rows to a sliding window (the last 1,000 rows: a few
array operations per request). PSI (population stability index) and the
two-sample Kolmogorov-Smirnov statistic (scipy's ``ks_2samp``) are computed from
the window when /metrics is read, not per request.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

BINS = 10
MAX_FEATURES = 16
GROUPS = 8
SAMPLE = 1000
WINDOW = 1000
EPSILON = 1e-4  # floor for empty bins in PSI


@functools.lru_cache(maxsize=8)
def _grouping(n: int) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Group names for ``n`` features, and the matrix that averages each group (None:
    every feature is its own group)."""
    if n <= MAX_FEATURES:
        return tuple(f"f{i}" for i in range(n)), None
    parts = np.array_split(np.arange(n), GROUPS)
    average = np.zeros((n, len(parts)))
    for g, part in enumerate(parts):
        average[part, g] = 1.0 / len(part)
    return tuple(f"f{p[0]}-f{p[-1]}" for p in parts), average


def feature_groups(inputs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(group names, rows x groups) for a batch of inputs (one matrix product per batch:
    this runs on every request)."""
    rows = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    names, average = _grouping(rows.shape[1])
    return list(names), rows if average is None else rows @ average


def _edges(values: np.ndarray) -> np.ndarray:
    inner = np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1])
    return np.unique(inner)


def _proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"),
                         minlength=len(edges) + 1).astype(np.float64)
    return cast(np.ndarray, counts / max(float(counts.sum()), 1.0))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    e = np.clip(expected, EPSILON, None)
    a = np.clip(actual, EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _is_classes(predictions: np.ndarray) -> bool:
    return predictions.dtype.kind in "biu" or (
        predictions.dtype.kind == "f" and bool(np.all(np.mod(predictions, 1) == 0))
        and len(np.unique(predictions)) <= 100)


@dataclass
class Profile:
    """What normal looks like: per feature group bins and a sample; prediction frequencies."""

    groups: list[str]
    edges: list[list[float]]
    proportions: list[list[float]]
    sample: list[list[float]]
    classes: dict[str, float] | None = None  # prediction -> frequency (integer outputs)
    prediction_edges: list[float] | None = None
    prediction_proportions: list[float] | None = None
    rows: int = 0

    @classmethod
    def build(cls, inputs: Any, predictions: Any) -> Profile:
        names, values = feature_groups(np.asarray(inputs))
        rng = np.random.default_rng(0)
        edges, props, sample = [], [], []
        for g in range(values.shape[1]):
            column = values[:, g]
            e = _edges(column)
            edges.append(e.tolist())
            props.append(_proportions(column, e).tolist())
            pick = rng.choice(len(column), size=min(SAMPLE, len(column)), replace=False)
            sample.append(column[pick].tolist())
        preds = np.asarray(predictions).reshape(len(values), -1)[:, 0]
        classes = prediction_edges = prediction_proportions = None
        if _is_classes(preds):
            keys, counts = np.unique(preds.astype(np.int64), return_counts=True)
            classes = {str(k): float(c) / len(preds) for k, c in zip(keys, counts)}
        else:
            e = _edges(preds.astype(np.float64))
            prediction_edges = e.tolist()
            prediction_proportions = _proportions(preds, e).tolist()
        return cls(groups=names, edges=edges, proportions=props, sample=sample,
                   classes=classes, prediction_edges=prediction_edges,
                   prediction_proportions=prediction_proportions, rows=len(values))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def prediction_psi(self, predictions: Any) -> float:
        """PSI of ``predictions`` against the profile's: class frequencies (classes
        the profile never saw count as new bins) or its quantile bins."""
        preds = np.asarray(predictions).reshape(-1)
        if self.classes is not None:
            keys = sorted(set(self.classes) | {str(int(v)) for v in preds})
            ref = np.array([self.classes.get(k, 0.0) for k in keys])
            live_counts = {k: 0 for k in keys}
            for v in preds:
                live_counts[str(int(v))] += 1
            live = np.array([live_counts[k] for k in keys], dtype=np.float64) / len(preds)
            return psi(ref, live)
        edges = np.asarray(self.prediction_edges or [])
        return psi(np.asarray(self.prediction_proportions or [1.0]), _proportions(preds, edges))

    @classmethod
    def from_dict(cls, doc: Any) -> Profile:
        """A profile from JSON data; ValueError when it is not one (a file may bring anything)."""
        def numbers(value: Any, depth: int) -> bool:
            if depth == 0:
                return isinstance(value, (int, float)) and not isinstance(value, bool)
            return isinstance(value, list) and all(numbers(v, depth - 1) for v in value)

        if not isinstance(doc, dict) or set(doc) != set(cls.__dataclass_fields__):
            raise ValueError("not a drift profile (its fields differ)")
        groups = doc["groups"]
        ok = (isinstance(groups, list) and groups and all(isinstance(g, str) for g in groups)
              and all(numbers(doc[k], 2) and len(doc[k]) == len(groups)
                      for k in ("edges", "proportions", "sample"))
              and all(len(p) == len(e) + 1 for e, p in zip(doc["edges"], doc["proportions"]))
              and isinstance(doc["rows"], int) and not isinstance(doc["rows"], bool))
        classes = doc["classes"]
        if classes is not None:
            ok = ok and isinstance(classes, dict) and all(
                isinstance(k, str) and numbers(v, 0) for k, v in classes.items())
        else:
            pe, pp = doc["prediction_edges"], doc["prediction_proportions"]
            ok = ok and numbers(pe, 1) and numbers(pp, 1) and len(pp) == len(pe) + 1
        if not ok:
            raise ValueError("not a drift profile (a field has the wrong shape)")
        return cls(**doc)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls.from_dict(json.loads(text))


@dataclass
class Window:
    """The last WINDOW rows a server saw (feature groups and predictions), thread-safe."""

    profile: Profile
    size: int = WINDOW
    _values: np.ndarray = field(init=False)
    _predictions: np.ndarray = field(init=False)
    _next: int = 0
    _filled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._values = np.zeros((self.size, len(self.profile.groups)))
        self._predictions = np.zeros(self.size)

    def observe(self, inputs: np.ndarray, predictions: np.ndarray) -> bool:
        """Add a request's rows; False (nothing added) when the rows are not the
        reference's features or there is not one prediction a row."""
        inputs, preds = np.asarray(inputs), np.asarray(predictions)
        if inputs.ndim == 0 or preds.ndim == 0 or len(preds) != len(inputs) \
                or inputs.size == 0 or preds.size == 0:
            return False  # no rows, or not one prediction a row
        names, values = feature_groups(inputs[-self.size:])  # only the last rows stay
        preds = preds[-self.size:]
        if names != self.profile.groups:
            return False  # not the reference's shape (predict() accepted it anyway)
        preds = preds.reshape(len(values), -1)[:, 0].astype(np.float64)
        with self._lock:
            for start in range(0, len(values), self.size):
                chunk, pchunk = values[start:start + self.size], preds[start:start + self.size]
                idx = (self._next + np.arange(len(chunk))) % self.size
                self._values[idx] = chunk
                self._predictions[idx] = pchunk
                self._next = int((self._next + len(chunk)) % self.size)
                self._filled = min(self.size, self._filled + len(chunk))
        return True

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._values[: self._filled].copy(), self._predictions[: self._filled].copy()

    def drift(self) -> dict[str, Any]:
        """PSI and KS per feature group, prediction PSI; empty until the window has rows."""
        from scipy.stats import ks_2samp

        values, preds = self.snapshot()
        if len(values) == 0:
            return {"rows": 0, "input_psi": {}, "input_ks": {}, "prediction_psi": None}
        p = self.profile
        input_psi, input_ks = {}, {}
        for g, name in enumerate(p.groups):
            edges = np.asarray(p.edges[g])
            input_psi[name] = psi(np.asarray(p.proportions[g]), _proportions(values[:, g], edges))
            input_ks[name] = float(ks_2samp(values[:, g], np.asarray(p.sample[g])).statistic)
        return {"rows": len(values), "input_psi": input_psi, "input_ks": input_ks,
                "prediction_psi": p.prediction_psi(preds)}
