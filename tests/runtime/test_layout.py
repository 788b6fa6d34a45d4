"""An array's strides survive a step boundary; forged strides never make a view that
reaches outside its buffer (nbship.runtime.layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbship.runtime import layout, serializers


def channels_last_batch() -> np.ndarray:
    base = np.arange(6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8)[:, None, :, :]
    return base[np.arange(6)]  # fancy indexing: strides (256, 4, 32, 4)


def test_numpy_strides_come_back(tmp_path: Path) -> None:
    x = channels_last_batch()
    assert x.strides == (256, 4, 32, 4)
    meta = serializers.save(x, tmp_path / "x")
    assert meta["layout"] == {"strides": [256, 4, 32, 4]}
    back = serializers.load(tmp_path / "x")
    assert back.strides == x.strides and np.array_equal(back, x)
    assert back.flags.writeable and back.flags.c_contiguous


def test_transposed_and_fortran_arrays_come_back(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4).transpose(2, 0, 1)
    serializers.save(a, tmp_path / "a")
    back = serializers.load(tmp_path / "a")
    assert back.strides == a.strides and np.array_equal(back, a)
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    serializers.save(f, tmp_path / "f")
    assert serializers.load(tmp_path / "f").strides == f.strides


def test_canonical_and_gapped_arrays_record_nothing(tmp_path: Path) -> None:
    assert "layout" not in serializers.save(np.ones((3, 4)), tmp_path / "c")
    gapped = np.arange(20.0).reshape(4, 5)[:, ::2]
    assert "layout" not in serializers.save(gapped, tmp_path / "g")
    back = serializers.load(tmp_path / "g")
    assert np.array_equal(back, gapped) and back.flags.c_contiguous


def test_torch_strides_come_back(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(channels_last_batch())
    assert t.is_contiguous(memory_format=torch.channels_last)
    meta = serializers.save(t, tmp_path / "t")
    assert meta["layout"] == {"strides": [64, 1, 8, 1]}
    back = serializers.load(tmp_path / "t")
    assert back.stride() == t.stride() and torch.equal(back, t)
    assert back.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("strides", [
    [1 << 40, 4, 32, 4],        # far outside the buffer
    [256, 4, 32, -4],           # backwards
    [256, 4, 4, 4],             # two axes over the same bytes
    [512, 4, 32, 4],            # a gap
    "not a list", [256, 4, 32], [256.0, 4, 32, 4],
])
def test_forged_layout_is_ignored(tmp_path: Path, strides: object) -> None:
    x = channels_last_batch()
    serializers.save(x, tmp_path / "x")
    meta_path = tmp_path / "x" / serializers.META
    meta = json.loads(meta_path.read_text())
    meta["layout"] = {"strides": strides}
    meta_path.write_text(json.dumps(meta))
    back = serializers.load(tmp_path / "x")
    assert np.array_equal(back, x) and back.flags.c_contiguous
    assert back.strides == (256, 256, 32, 4)  # np.load's own


dims = st.lists(st.integers(1, 4), min_size=1, max_size=4)


@settings(max_examples=80, deadline=None)
@given(shape=dims, order=st.randoms(use_true_random=False), itemsize=st.sampled_from([1, 4, 8]),
       ones=st.lists(st.integers(-64, 64), min_size=4, max_size=4))
def test_any_dense_layout_round_trips(shape: list[int], order: object, itemsize: int,
                                      ones: list[int]) -> None:
    dtype = {1: np.uint8, 4: np.float32, 8: np.float64}[itemsize]
    axes = list(range(len(shape)))
    order.shuffle(axes)  # type: ignore[attr-defined]
    a = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape).transpose(axes)
    # a length-1 axis may carry any stride: PyTorch reads it
    strides = [s if n > 1 else ones[i] * itemsize for i, (n, s) in
               enumerate(zip(a.shape, a.strides))]
    a = np.lib.stride_tricks.as_strided(a, a.shape, strides)
    kept = layout.numpy_record(a)
    back = layout.numpy_restore(np.ascontiguousarray(a), kept)
    assert np.array_equal(back, a) and back.strides == a.strides


@settings(max_examples=200, deadline=None)
@given(shape=dims, strides=st.lists(st.integers(-(1 << 50), 1 << 50), min_size=1, max_size=4),
       itemsize=st.sampled_from([1, 4, 8]))
def test_a_view_never_leaves_its_buffer(shape: list[int], strides: list[int],
                                        itemsize: int) -> None:
    if layout.dense_strides(shape, strides, itemsize):
        span = sum((n - 1) * s for n, s in zip(shape, strides))
        assert all(s > 0 for n, s in zip(shape, strides) if n > 1)
        assert span + itemsize == int(np.prod(shape)) * itemsize
