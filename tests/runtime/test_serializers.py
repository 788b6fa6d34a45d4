"""Each type crosses a step boundary with its own serializer, and comes back equal."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from nbship.runtime import serializers
from tests.conftest import Planted


def roundtrip(value: object, tmp_path: Path) -> tuple[object, dict]:
    meta = serializers.save(value, tmp_path / "v")
    return serializers.load(tmp_path / "v"), meta


@pytest.mark.parametrize("value", [1, 2.5, "text", True, None, [1, [2, "x"]], {"a": {"b": 1.5}}])
def test_jsonable_builtins_use_json(value: object, tmp_path: Path) -> None:
    back, meta = roundtrip(value, tmp_path)
    assert back == value and type(back) is type(value)
    assert meta["serializer"] == "json"


def test_tuples_do_not_become_lists(tmp_path: Path) -> None:
    back, meta = roundtrip((1, 2), tmp_path)
    assert back == (1, 2) and meta["serializer"] == "cloudpickle"


def test_numpy_arrays_use_npy(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    back, meta = roundtrip(arr, tmp_path)
    assert meta["serializer"] == "numpy" and (tmp_path / "v" / "value.npy").exists()
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == np.float32


def test_torch_tensors_use_safetensors(tmp_path: Path) -> None:
    t = torch.randn(3, 2)
    back, meta = roundtrip(t, tmp_path)
    assert meta["serializer"] == "torch-tensor"
    assert torch.equal(back, t)


def test_torch_modules_keep_class_and_weights(tmp_path: Path) -> None:
    class Tiny(torch.nn.Module):  # defined locally, as in a step function
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    model = Tiny()
    back, meta = roundtrip(model, tmp_path)
    assert meta["serializer"] == "torch-module"
    assert (tmp_path / "v" / "module" / "weights.safetensors").exists()
    x = torch.randn(4, 3)
    assert torch.equal(back(x), model(x))  # type: ignore[operator]
    assert type(back).__name__ == "Tiny"


def test_pandas_frames(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    back, meta = roundtrip(df, tmp_path)
    assert meta["serializer"] == "pandas"
    pd.testing.assert_frame_equal(back, df)  # type: ignore[arg-type]


def test_sklearn_estimators(tmp_path: Path) -> None:
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    back, meta = roundtrip(model, tmp_path)
    assert meta["serializer"] == "sklearn"
    assert list(back.predict([[0.0], [3.0]])) == [0, 1]  # type: ignore[attr-defined]


def test_other_objects_fall_back_to_cloudpickle(tmp_path: Path) -> None:
    back, meta = roundtrip(lambda v: v + 1, tmp_path)
    assert meta["serializer"] == "cloudpickle"
    assert back(1) == 2  # type: ignore[operator]


def test_metadata_records_type_and_hash(tmp_path: Path) -> None:
    meta = serializers.save(np.zeros(3), tmp_path / "v")
    on_disk = json.loads((tmp_path / "v" / serializers.META).read_text())
    assert on_disk == meta
    assert meta["type"] == "numpy.ndarray" and len(meta["sha256"]) == 64
    assert meta["sha256"] == serializers.save(np.zeros(3), tmp_path / "w")["sha256"]


def test_unpicklable_value_raises(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        serializers.save(threading.Lock(), tmp_path / "v")


def test_changed_bytes_are_refused_before_a_serializer_opens_them(tmp_path: Path) -> None:
    serializers.save(np.arange(3), tmp_path / "v")
    np.save(tmp_path / "v" / "value.npy", np.arange(4))
    with pytest.raises(serializers.UntrustedArtifact, match="sha256"):
        serializers.load(tmp_path / "v")


def test_a_pickle_another_machine_wrote_is_never_opened(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudpickle

    from nbship import signing

    marker = tmp_path / "PWNED"
    serializers.save((1, 2), tmp_path / "v")  # a tuple: cloudpickle
    (tmp_path / "v" / "value.pkl").write_bytes(cloudpickle.dumps(Planted(marker)))
    meta = json.loads((tmp_path / "v" / "nbship.json").read_text())
    meta["sha256"] = serializers.digest(tmp_path / "v" / "value.pkl")  # a consistent forgery
    (tmp_path / "v" / "nbship.json").write_text(json.dumps(meta))
    with pytest.raises(serializers.UntrustedArtifact, match="did not write"):
        serializers.load(tmp_path / "v")
    monkeypatch.setenv(signing.KEY_ENV, "cd" * 32)  # signed, but with another machine's key
    meta["hmac"] = signing.sign(meta)
    monkeypatch.delenv(signing.KEY_ENV)
    (tmp_path / "v" / "nbship.json").write_text(json.dumps(meta))
    with pytest.raises(serializers.UntrustedArtifact, match="did not write"):
        serializers.load(tmp_path / "v")
    assert not marker.exists()


def test_pickles_this_machine_wrote_load(tmp_path: Path) -> None:
    serializers.save((1, 2), tmp_path / "v")
    assert serializers.load(tmp_path / "v") == (1, 2)


def test_a_serializer_plugs_in_through_an_entry_point(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "frac_serializer.py").write_text(
        "from fractions import Fraction\n"
        "from pathlib import Path\n"
        "from nbship.runtime.serializers import Serializer\n"
        "SERIALIZER = Serializer('fraction', 'value.frac', lambda v: isinstance(v, Fraction),\n"
        "    lambda v, p: Path(p).write_text(str(v)),\n"
        "    lambda p: Fraction(Path(p).read_text()), safe=True)\n")
    dist = tmp_path / "frac_serializer-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: frac-serializer\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[nbship.serializers]\nfraction = frac_serializer:SERIALIZER\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(serializers, "_plugins", None)
    from fractions import Fraction

    back, meta = roundtrip(Fraction(1, 3), tmp_path)
    assert meta["serializer"] == "fraction" and back == Fraction(1, 3)
    assert "hmac" not in meta  # a safe format needs no signature
