"""What the steps' image installs: the requirements resolved once, on the build host, as wheels.

The steps need kfp's executor, nbship's step runtime (numpy, safetensors,
cloudpickle for the values between steps) and the libraries the notebook imports,
at the versions installed here (the versions the notebook was tested with).
``pip wheel`` resolves that list once into a folder of wheels (torch's CPU wheel
included, taken from where pip finds it on this machine); the lock names every
wheel with its sha256, and the image installs exactly those with ``--no-index``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nbship.errors import ReleaseError
from nbship.extract.graph import StepGraph
from nbship.files import sha256_file
from nbship.release.tools import run

# what every step needs, whatever the notebook imports (kfp's executor, nbship's serializers)
RUNTIME = ["kfp", "numpy", "safetensors", "cloudpickle"]
# installed distributions nbship never puts in the steps' image
NEVER = {"nbship", "pip", "setuptools", "wheel"}
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


@dataclass(frozen=True)
class LockedWheel:
    name: str
    version: str
    file: str
    sha256: str


@dataclass
class Wheelhouse:
    directory: Path
    wheels: list[LockedWheel]

    @property
    def size(self) -> int:
        return sum((self.directory / w.file).stat().st_size for w in self.wheels)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def step_requirements(graph: StepGraph, modules: list[str]) -> list[str]:
    """``name==version`` for what the steps need, as installed here (sorted)."""
    owners = md.packages_distributions()
    names = set(RUNTIME)
    for module in modules:
        names.update(owners.get(module, []))
    if any(code.magics for code in graph.codes.values()):
        names.add("ipython")  # nbship.runtime.magics runs the steps' magics
    # a module that is not installed is reported by `nbship check` as missing
    pins = {canonical(n): pin for n in names
            if canonical(n) not in NEVER and (pin := installed_pin(n)) is not None}
    return [pins[k] for k in sorted(pins)]


def installed_pin(name: str) -> str | None:
    """``name==version`` as installed here, or None when it is not installed."""
    try:
        return f"{canonical(name)}=={md.version(name)}"
    except md.PackageNotFoundError:
        return None


def _lock(directory: Path) -> list[LockedWheel]:
    wheels = []
    for path in sorted(directory.glob("*.whl")):
        found = _WHEEL.match(path.name)
        if not found:
            raise ReleaseError(f"not a wheel file name: {path.name}")
        wheels.append(LockedWheel(canonical(found["name"]), found["version"], path.name,
                                  sha256_file(path)))
    return wheels


def _cached(dest: Path, fill: Callable[[Path], None]) -> Wheelhouse:
    """The wheelhouse in ``dest``, made once by ``fill(tmp)`` and renamed into place."""
    lock_file = dest / "lock.json"
    if lock_file.exists():
        doc = json.loads(lock_file.read_text())
        return Wheelhouse(dest, [LockedWheel(**w) for w in doc["wheels"]])
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        wheels = _lock(tmp)
        (tmp / "lock.json").write_text(json.dumps(
            {"wheels": [w.__dict__ for w in wheels]}, indent=1) + "\n")
        if dest.exists():  # made meanwhile by another process: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _cached(dest, fill)


def resolve(pins: list[str], cache: Path, echo: Callable[[str], None]) -> Wheelhouse:
    """The wheels of ``pins`` and everything they need (``pip wheel``), cached by the pins."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}-{sys.platform}-{os.uname().machine}"
    key = hashlib.sha256("\n".join([tag, *pins]).encode()).hexdigest()[:16]

    def fill(tmp: Path) -> None:
        echo(f"  resolving {len(pins)} requirements into wheels (pip wheel, once)")
        (tmp / "requirements.in").write_text("\n".join(pins) + "\n")
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp),
             "-r", str(tmp / "requirements.in")], "resolving the steps' requirements")
        (tmp / "requirements.in").unlink()

    return _cached(cache / "wheels" / key, fill)


def source_tree() -> Path:
    """The folder nbship is built from (its pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists() or not (root / "nbship").is_dir():
        raise ReleaseError("nbship is not installed from its source tree; building images "
                           "needs it (pip install -e .)")
    return root


def nbship_wheel(cache: Path, code_digest: str, echo: Callable[[str], None]) -> Wheelhouse:
    """nbship's own wheel, built reproducibly (fixed timestamps), cached by its code."""

    def fill(tmp: Path) -> None:
        echo("  building nbship's wheel")
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
             str(tmp), str(source_tree())], "building nbship's wheel",
            env={"SOURCE_DATE_EPOCH": "315532800"})

    return _cached(cache / "wheels" / f"nbship-{code_digest[:16]}", fill)
