"""Compare a value the notebook held with the value the pipeline passed, within a tolerance.

``compare`` answers equal, differs (with a one-line reason) or skipped (the
value cannot be compared, e.g. a function or an open handle): a skipped value is
listed in the report, never silently passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nbship.runtime.serializers import is_instance

EQUAL = "equal"
DIFFERS = "differs"
SKIPPED = "skipped"


@dataclass(frozen=True)
class Verdict:
    status: str
    detail: str = ""


def _module(value: Any) -> str:
    return type(value).__module__.split(".")[0]


def _as_array(value: Any) -> Any:
    import numpy as np

    if _module(value) == "torch":
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _arrays(a: Any, b: Any, rtol: float, atol: float) -> Verdict:
    import numpy as np

    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        return Verdict(DIFFERS, f"shape {x.shape} vs {y.shape}")
    if x.dtype != y.dtype:
        return Verdict(DIFFERS, f"dtype {x.dtype} vs {y.dtype}")
    if x.dtype.kind in "fc":
        if np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
            return Verdict(EQUAL)
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        return Verdict(DIFFERS, f"shape {x.shape}, max |diff| {float(diff.max()):.3g}, "
                                f"{int((diff > atol + rtol * np.abs(y)).sum())} element(s) "
                                "outside the tolerance")
    if np.array_equal(x, y):
        return Verdict(EQUAL)
    return Verdict(DIFFERS, f"shape {x.shape}, {int((x != y).sum())} element(s) differ")


def _number(a: Any, b: Any, rtol: float, atol: float) -> Verdict:
    if isinstance(a, float) or isinstance(b, float):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=atol):
            return Verdict(EQUAL)
        return Verdict(DIFFERS, f"{a:.6g} vs {b:.6g}")
    return Verdict(EQUAL) if a == b else Verdict(DIFFERS, f"{a!r} vs {b!r}")


def compare(a: Any, b: Any, *, rtol: float = 1e-5, atol: float = 1e-8) -> Verdict:
    """Compare the notebook's ``a`` with the pipeline's ``b``."""
    # by name: a class from the notebook's own code is rebuilt on the pipeline side
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    if type(a).__name__ != type(b).__name__ and not numbers:
        return Verdict(DIFFERS, f"type {type(a).__qualname__} vs {type(b).__qualname__}")
    if isinstance(a, bool) or a is None or isinstance(a, str | bytes):
        return Verdict(EQUAL) if a == b else Verdict(DIFFERS, f"{a!r:.60} vs {b!r:.60}")
    if isinstance(a, (int, float)):
        return _number(a, b, rtol, atol)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return Verdict(DIFFERS, f"length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            v = compare(x, y, rtol=rtol, atol=atol)
            if v.status != EQUAL:
                return Verdict(v.status, f"[{i}]: {v.detail}")
        return Verdict(EQUAL)
    if isinstance(a, dict):
        if set(a) != set(b):
            return Verdict(DIFFERS, f"keys {sorted(map(str, set(a) ^ set(b)))[:5]} differ")
        for key in a:
            v = compare(a[key], b[key], rtol=rtol, atol=atol)
            if v.status != EQUAL:
                return Verdict(v.status, f"[{key!r}]: {v.detail}")
        return Verdict(EQUAL)
    module = _module(a)
    if module == "numpy" and hasattr(a, "shape"):
        return _arrays(a, b, rtol, atol)
    if module == "numpy":  # numpy scalars
        return _number(a.item(), b.item(), rtol, atol)
    if is_instance(a, "torch.nn", "Module"):  # the notebook's own subclass, compared by weights
        return compare(dict(a.state_dict()), dict(b.state_dict()), rtol=rtol, atol=atol)
    if module == "torch" and hasattr(a, "shape"):
        return _arrays(a, b, rtol, atol)
    if module == "pandas":
        import pandas as pd

        try:
            if isinstance(a, pd.DataFrame):
                pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=rtol, atol=atol)
            else:
                pd.testing.assert_series_equal(a, b, check_exact=False, rtol=rtol, atol=atol)
        except AssertionError as exc:
            return Verdict(DIFFERS, " ".join(str(exc).split())[:160])
        return Verdict(EQUAL)
    if module == "sklearn" and hasattr(a, "get_params"):
        fitted = {k: v for k, v in vars(a).items() if k.endswith("_") and not k.startswith("_")}
        other = {k: v for k, v in vars(b).items() if k.endswith("_") and not k.startswith("_")}
        params = compare(a.get_params(deep=False), b.get_params(deep=False), rtol=rtol, atol=atol)
        if params.status != EQUAL:
            return Verdict(params.status, f"parameters {params.detail}")
        return compare(fitted, other, rtol=rtol, atol=atol)
    if getattr(type(a), "__eq__", None) is getattr(object, "__eq__", None):
        return Verdict(SKIPPED, f"{type(a).__module__}.{type(a).__qualname__} defines no "
                                "equality")
    try:
        same = a == b
    except Exception as exc:  # a strange __eq__
        return Verdict(SKIPPED, f"comparing raised {type(exc).__name__}")
    if isinstance(same, bool):
        return Verdict(EQUAL) if same else Verdict(DIFFERS, "values differ (==)")
    return Verdict(SKIPPED, f"== on {type(a).__qualname__} is not a plain bool")
