"""An array's memory layout, kept across a step boundary.

``np.save`` and safetensors write an array's values, not its strides: an array the
notebook held as a C-contiguous view with an odd stride on a length-1 axis (what
``x[:, None, :, :]`` followed by fancy indexing gives), or in Fortran order, or
transposed, comes back in the next step with the canonical strides. The values are
equal, but the libraries that read them may take another path: PyTorch reads
strides ``(64, 1, 8, 1)`` on an ``(N, 1, 8, 8)`` batch as channels-last and runs
another convolution kernel, whose sums round differently, and training amplifies
that into different weights (docs/design.md, "Equivalence on any CPU").

So a serializer records the layout of a *dense* array (every element stored once,
in some axis order, no gaps) as its strides, and the loading step rebuilds exactly
those strides over a fresh buffer of the array's own size. Strides read back from
metadata are checked to describe a dense layout of that shape and item size before
any view is made, so a forged record can never make a view reach outside its buffer;
an array that is not dense (a slice with gaps) is recorded as nothing and comes back
C-contiguous, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAX_STRIDE = 1 << 48


def dense_strides(shape: Sequence[int], strides: Sequence[int], itemsize: int) -> bool:
    """Whether ``strides`` lay out every element of ``shape`` once, with no gap, each
    stepped axis forward (a positive stride).

    Axes of length 1 are never stepped along, so any stride is dense for them (and
    that stride is what PyTorch's layout detection reads).
    """
    if len(shape) != len(strides) or itemsize <= 0:
        return False
    if any(type(n) is not int or n < 0 for n in shape):
        return False
    if any(type(s) is not int or abs(s) > MAX_STRIDE for s in strides):
        return False
    if math.prod(shape) == 0:
        return False
    stepped = sorted((s, n) for n, s in zip(shape, strides) if n > 1)
    expected = itemsize
    for stride, n in stepped:
        if stride != expected:
            return False
        expected *= n
    return True


def record(shape: Sequence[int], strides: Sequence[int], itemsize: int,
           canonical: Sequence[int]) -> dict[str, Any] | None:
    """What to keep in a value's metadata: ``{"strides": [...]}``, or None when the
    array is C-contiguous with canonical strides (nothing to restore) or not dense."""
    strides = [int(s) for s in strides]
    if list(canonical) == strides:
        return None
    if not dense_strides(list(shape), strides, itemsize):
        return None
    return {"strides": strides}


def _checked(layout: Any, shape: Sequence[int], itemsize: int) -> list[int] | None:
    strides = layout.get("strides") if isinstance(layout, dict) else None
    if not isinstance(strides, list) or not dense_strides(list(shape), strides, itemsize):
        return None
    return strides


def c_strides(shape: Sequence[int], itemsize: int) -> list[int]:
    """The strides of a C-contiguous array of ``shape`` (numpy's and PyTorch's default)."""
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= max(n, 1)
    return out[::-1]


def numpy_record(array: Any) -> dict[str, Any] | None:
    return record(array.shape, array.strides, array.itemsize,
                  c_strides(array.shape, array.itemsize))


def numpy_restore(array: Any, layout: Any) -> Any:
    """``array``'s values with the recorded strides (a copy), or ``array`` as it is."""
    import numpy as np

    strides = _checked(layout, array.shape, array.itemsize)
    if strides is None:
        return array
    base = np.empty(array.size, dtype=array.dtype)
    # dense_strides: positive strides, each element of base used once, none outside it
    view = np.lib.stride_tricks.as_strided(base, array.shape, strides)
    view[...] = array
    return view


def torch_record(tensor: Any) -> dict[str, Any] | None:
    # PyTorch strides count elements, not bytes
    return record(list(tensor.shape), list(tensor.stride()), 1,
                  c_strides(list(tensor.shape), 1))


def torch_restore(tensor: Any, layout: Any) -> Any:
    import torch

    strides = _checked(layout, list(tensor.shape), 1)
    if strides is None:
        return tensor
    out = torch.empty_strided(tuple(tensor.shape), tuple(strides), dtype=tensor.dtype,
                              device=tensor.device)
    out.copy_(tensor)
    return out
