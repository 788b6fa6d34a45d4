"""Values that cross a step boundary: one serializer per type, cloudpickle last.

Each value is written into a directory (the KFP artifact's path) as ``value.<ext>``
plus ``nbship.json`` naming the serializer, the Python type and the sha256 of the
bytes. The registry is ordered: the first serializer whose ``accepts`` says yes
wins. Heavy libraries are imported only when a value of theirs shows up.

Loading checks the bytes against the recorded sha256 before a serializer opens
them. Serializers whose format can run code on load (pickle, cloudpickle, joblib:
``safe=False``) also need the metadata's HMAC made with this machine's key
(nbship.signing): an artifact another folder or machine brings is refused, never
unpickled.

Other serializers plug in through the ``nbship.serializers`` entry point group: each
entry point names a :class:`Serializer`; they are tried before the built-in ones::

    [project.entry-points."nbship.serializers"]
    polars = "my_package.nbship_polars:SERIALIZER"
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbship import signing
from nbship.files import sha256_file
from nbship.runtime import layout

META = "nbship.json"
ENTRY_POINT_GROUP = "nbship.serializers"


@dataclass(frozen=True)
class Serializer:
    """How one kind of value is written to ``filename`` and read back.

    ``safe``: loading cannot run code (JSON, .npy without pickle, safetensors). A
    serializer with ``safe=False`` is only ever given files this machine's nbship wrote.
    """

    name: str
    filename: str
    accepts: Callable[[Any], bool]
    save: Callable[[Any, Path], None]
    load: Callable[[Path], Any]
    safe: bool = False
    # an array's strides, which the file does not keep (nbship.runtime.layout): what
    # ``layout`` records goes into the metadata, ``restore`` puts it back on load
    layout: Callable[[Any], dict[str, Any] | None] | None = None
    restore: Callable[[Any, Any], Any] | None = None


def _module_of(value: Any) -> str:
    return type(value).__module__.split(".")[0]


def is_instance(value: Any, module: str, qualname: str) -> bool:
    """isinstance against a class of a library that may not be imported (or installed)."""
    mod = sys.modules.get(module.split(".")[0])
    if mod is None:
        return False
    obj: Any = sys.modules.get(module)
    if obj is None:
        return False
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return isinstance(value, obj)


# JSON: only when the value comes back exactly (tuples would come back as lists).
def _json_exact(value: Any) -> bool:
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) is float:
        return True
    if type(value) is list:
        return all(_json_exact(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _json_exact(v) for k, v in value.items())
    return False


def _json_save(value: Any, path: Path) -> None:
    path.write_text(json.dumps(value, allow_nan=True))


def _json_load(path: Path) -> Any:
    return json.loads(path.read_text())


def _npy_save(value: Any, path: Path) -> None:
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, value, allow_pickle=False)


def _npy_load(path: Path) -> Any:
    import numpy as np

    return np.load(path, allow_pickle=False)


def _npy_accepts(value: Any) -> bool:
    return is_instance(value, "numpy", "ndarray") and value.dtype != object


def _tensor_save(value: Any, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"tensor": value.detach().contiguous()}, str(path))


def _tensor_load(path: Path) -> Any:
    from safetensors.torch import load_file

    return load_file(str(path))["tensor"]


def _module_save(value: Any, path: Path) -> None:
    """nn.Module: architecture pickled on the meta device (no weights); weights: safetensors."""
    import copy

    import cloudpickle
    from safetensors.torch import save_file

    path.mkdir()
    state = {k: v.detach().contiguous().clone() for k, v in value.state_dict().items()}
    save_file(state, str(path / "weights.safetensors"))
    skeleton = copy.deepcopy(value).to("meta")
    (path / "architecture.pkl").write_bytes(cloudpickle.dumps(skeleton))


def _module_load(path: Path) -> Any:
    import cloudpickle
    from safetensors.torch import load_file

    skeleton = cloudpickle.loads((path / "architecture.pkl").read_bytes())
    skeleton.load_state_dict(load_file(str(path / "weights.safetensors")), assign=True)
    return skeleton


def _pandas_save(value: Any, path: Path) -> None:
    value.to_pickle(path)


def _pandas_load(path: Path) -> Any:
    import pandas as pd

    return pd.read_pickle(path)


def _joblib_save(value: Any, path: Path) -> None:
    import joblib

    joblib.dump(value, path)


def _joblib_load(path: Path) -> Any:
    import joblib

    return joblib.load(path)


# skops refuses, unless trusted, every type outside its own list; nbship trusts what the
# scientific stack defines (estimators built from these), never code a file names
SKOPS_TRUSTED_MODULES = frozenset({"sklearn", "numpy", "scipy"})


def _skops_save(value: Any, path: Path) -> None:
    import skops.io

    skops.io.dump(value, path)


def _skops_load(path: Path) -> Any:
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    foreign = [t for t in untrusted if t.split(".", 1)[0] not in SKOPS_TRUSTED_MODULES]
    if foreign:
        raise UntrustedArtifact(f"{path}: types outside scikit-learn, numpy and scipy: "
                                f"{', '.join(sorted(foreign))}")
    return skops.io.load(path, trusted=untrusted)


def _sklearn_accepts(value: Any) -> bool:
    return _module_of(value) == "sklearn" and hasattr(value, "get_params")


def _cloudpickle_save(value: Any, path: Path) -> None:
    import cloudpickle

    path.write_bytes(cloudpickle.dumps(value))


def _cloudpickle_load(path: Path) -> Any:
    import cloudpickle

    return cloudpickle.loads(path.read_bytes())


BUILTIN: list[Serializer] = [
    Serializer("json", "value.json", _json_exact, _json_save, _json_load, safe=True),
    Serializer("numpy", "value.npy", _npy_accepts, _npy_save, _npy_load, safe=True,
               layout=layout.numpy_record, restore=layout.numpy_restore),
    Serializer(
        "torch-tensor",
        "value.safetensors",
        lambda v: is_instance(v, "torch", "Tensor") and not v.is_sparse,
        _tensor_save,
        _tensor_load,
        safe=True,
        layout=layout.torch_record,
        restore=layout.torch_restore,
    ),
    Serializer(
        "torch-module",
        "module",
        lambda v: is_instance(v, "torch.nn", "Module"),
        _module_save,
        _module_load,
    ),
    Serializer(
        "pandas",
        "value.pandas.pkl",
        lambda v: is_instance(v, "pandas", "DataFrame") or is_instance(v, "pandas", "Series"),
        _pandas_save,
        _pandas_load,
    ),
    Serializer("sklearn", "value.joblib", _sklearn_accepts, _joblib_save, _joblib_load),
    # model releases convert scikit-learn values to skops (no pickle); steps keep joblib,
    # which takes any estimator
    Serializer("skops", "value.skops", lambda v: False, _skops_save, _skops_load, safe=True),
]
FALLBACK = Serializer("cloudpickle", "value.pkl", lambda v: True, _cloudpickle_save,
                      _cloudpickle_load)
_plugins: list[Serializer] | None = None


def plugins() -> list[Serializer]:
    """The serializers that installed packages register (``nbship.serializers``), once."""
    global _plugins
    if _plugins is None:
        from importlib.metadata import entry_points

        found: list[Serializer] = []
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plug-in must not stop every step
                print(f"nbship: warning: serializer plug-in {ep.name!r} ({ep.value}) does not "
                      f"load: {exc}", file=sys.stderr)
                continue
            if isinstance(obj, Serializer) and obj.name not in {s.name for s in BUILTIN}:
                found.append(obj)
            else:
                print(f"nbship: warning: serializer plug-in {ep.name!r} is not a "
                      "nbship Serializer with a name of its own; ignored", file=sys.stderr)
        _plugins = found
    return _plugins


def registry() -> list[Serializer]:
    """Plug-ins first, then the built-in serializers (cloudpickle comes last, in ``choose``)."""
    return [*plugins(), *BUILTIN]


def by_name(name: str) -> Serializer | None:
    return next((s for s in [*registry(), FALLBACK] if s.name == name), None)


def choose(value: Any) -> Serializer:
    for s in registry():
        try:
            if s.accepts(value):
                return s
        except Exception:  # a strange object must not break the choice
            continue
    return FALLBACK


def digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and bytes, sorted)."""
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            p = Path(root, name)
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def save(value: Any, directory: str | os.PathLike[str],
         using: Serializer | None = None) -> dict[str, Any]:
    """Write ``value`` into ``directory`` (with ``using``, or the serializer that accepts it
    first); return its metadata (serializer, type, sha256)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    s = using or choose(value)
    target = d / s.filename
    s.save(value, target)
    meta: dict[str, Any] = {
        "serializer": s.name,
        "type": f"{type(value).__module__}.{type(value).__qualname__}",
        "file": s.filename,
        "sha256": digest(target),
    }
    kept = s.layout(value) if s.layout is not None else None
    if kept is not None:
        meta["layout"] = kept
    if not s.safe:
        meta[signing.SIGNATURE] = signing.sign(meta)
    (d / META).write_text(json.dumps(meta, indent=2))
    return meta


class UntrustedArtifact(Exception):
    """An artifact that does not verify: changed bytes, or code-running format from elsewhere."""


def check(directory: str | os.PathLike[str], sha256: str | None = None) -> dict[str, Any]:
    """The metadata of what ``save`` wrote, after checking its bytes (and origin, for
    pickles); with ``sha256``, the value must also be the one a (sealed) record names.
    UntrustedArtifact otherwise."""
    d = Path(directory)
    try:
        meta = json.loads((d / META).read_text())
    except (OSError, ValueError) as exc:
        raise UntrustedArtifact(f"{d}: no readable {META} ({exc})") from None
    if not isinstance(meta, dict):
        raise UntrustedArtifact(f"{d}: {META} is not an object")
    s = by_name(str(meta.get("serializer")))
    if s is None:
        raise UntrustedArtifact(f"{d}: unknown serializer {meta.get('serializer')!r} (a "
                                "plug-in that is not installed here?)")
    if meta.get("file") != s.filename:
        raise UntrustedArtifact(f"{d}: file {meta.get('file')!r} is not {s.name}'s")
    if sha256 is not None and meta.get("sha256") != sha256:
        raise UntrustedArtifact(f"{d}: not the value the run recorded (sha256 "
                                f"{str(meta.get('sha256'))[:16]}..., the run's {sha256[:16]}...)")
    target = d / s.filename
    if not target.exists() or digest(target) != meta.get("sha256"):
        raise UntrustedArtifact(f"{d}: the value's bytes do not match the sha256 recorded "
                                "when it was saved")
    if not s.safe and not signing.signed(meta):
        raise UntrustedArtifact(
            f"{d}: a {s.name} value that this machine's nbship did not write; it is not "
            f"opened, since loading it could run code (set {signing.KEY_ENV} to the same "
            "key for every step when steps run on several machines)")
    return meta


def load(directory: str | os.PathLike[str], sha256: str | None = None) -> Any:
    """Read back what ``save`` wrote, after checking its bytes (and origin, for pickles);
    with ``sha256``, the value must also be the one a (sealed) record names."""
    meta = check(directory, sha256)
    s = by_name(str(meta["serializer"]))
    assert s is not None
    if s.safe:
        value = s.load(Path(directory) / s.filename)
    else:  # a format that can run code: what is opened is exactly what was checked
        with tempfile.TemporaryDirectory(prefix="nbship-load-") as tmp:
            private, source = Path(tmp), Path(directory)
            shutil.copyfile(source / META, private / META)  # one read of each: a swap
            if (source / s.filename).is_dir():              # after this cannot reach them
                shutil.copytree(source / s.filename, private / s.filename)
            else:
                shutil.copyfile(source / s.filename, private / s.filename)
            meta = check(private, sha256)
            value = s.load(private / s.filename)
    if s.restore is not None and "layout" in meta:
        value = s.restore(value, meta["layout"])
    return value


def summary(value: Any) -> str:
    """A short description of a value for messages."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} shape {tuple(shape)}"
    if is_instance(value, "torch.nn", "Module"):
        count = sum(p.numel() for p in value.parameters())
        return f"{type(value).__name__} ({count} parameters)"
    text = repr(value).split("\n")[0]
    if isinstance(value, float) and math.isfinite(value):
        text = f"{value:.6g}"
    return text if len(text) <= 60 else text[:57] + "..."
