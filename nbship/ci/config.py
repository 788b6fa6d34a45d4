"""How a notebook is tested: parameter set, nbval strictness, comparison tolerance.

Settings come from, later ones winning:

1. defaults: parameter set ``ci``, nbval ``lax``, tolerance rtol 1e-5 / atol 1e-8;
2. ``[tool.nbship]`` in the nearest pyproject.toml above the notebook::

       [tool.nbship]
       nbval = "strict"                       # or "lax"
       parameter_set = "ci"
       tolerance = { rtol = 1e-3, atol = 1e-6 }
       threads = 1                            # per native thread pool, both sides
       [tool.nbship.parameter_sets.ci]        # applies to every notebook
       epochs = 1
       [tool.nbship.notebooks."notebooks/marker_classifier.ipynb"]   # one notebook
       nbval = "lax"
       parameter_sets = { ci = { epochs = 2 } }

3. the notebook's own metadata, ``metadata.nbship`` with the same keys.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.errors import Location, UnusableInputError
from nbship.runtime.numerics import DEFAULT_THREADS

DEFAULT_SET = "ci"


@dataclass
class TestConfig:
    parameter_set: str = DEFAULT_SET
    parameters: dict[str, Any] = field(default_factory=dict)
    nbval: str = "lax"  # strict | lax
    rtol: float = 1e-5
    atol: float = 1e-8
    threads: int = DEFAULT_THREADS  # the notebook's and the pipeline's (runtime.numerics)
    source: list[str] = field(default_factory=list)  # where the settings came from


def find_pyproject(start: Path) -> Path | None:
    for folder in [start.resolve(), *start.resolve().parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _apply(cfg: TestConfig, table: dict[str, Any], set_name: str, origin: str,
           where: Location) -> None:
    if not table:
        return
    cfg.source.append(origin)
    if "nbval" in table:
        mode = str(table["nbval"])
        if mode not in ("strict", "lax"):
            raise UnusableInputError(f"{origin}: nbval must be 'strict' or 'lax', not {mode!r}",
                                     where=where)
        cfg.nbval = mode
    tol = table.get("tolerance") or {}
    if not isinstance(tol, dict):
        raise UnusableInputError(f"{origin}: tolerance must be a table {{rtol, atol}}",
                                 where=where)
    try:
        cfg.rtol = float(tol.get("rtol", cfg.rtol))
        cfg.atol = float(tol.get("atol", cfg.atol))
    except (TypeError, ValueError):
        raise UnusableInputError(f"{origin}: tolerance's rtol and atol must be numbers",
                                 where=where) from None
    if "threads" in table:
        threads = table["threads"]
        if type(threads) is not int or not 1 <= threads <= 1024:
            raise UnusableInputError(f"{origin}: threads must be a whole number from 1, not "
                                     f"{threads!r}", where=where)
        cfg.threads = threads
    sets = table.get("parameter_sets") or {}
    values = sets.get(set_name) or {}
    if not isinstance(values, dict):
        raise UnusableInputError(f"{origin}: parameter set {set_name!r} must be a table",
                                 where=where)
    cfg.parameters.update(values)


def load_config(notebook: Path, *, parameter_set: str | None = None) -> TestConfig:
    """The test settings of ``notebook`` (see the module docstring)."""
    where = Location(str(notebook))
    pyproject = find_pyproject(notebook.parent)
    tool: dict[str, Any] = {}
    if pyproject is not None:
        try:
            tool = tomllib.loads(pyproject.read_text()).get("tool", {}).get("nbship", {})
        except tomllib.TOMLDecodeError as exc:
            raise UnusableInputError(f"{pyproject}: {exc}") from None
    try:
        meta = json.loads(notebook.read_text()).get("metadata", {}).get("nbship", {})
    except (OSError, ValueError):
        meta = {}
    set_name = parameter_set or meta.get("parameter_set") or tool.get("parameter_set") \
        or DEFAULT_SET
    cfg = TestConfig(parameter_set=set_name)
    _apply(cfg, {k: v for k, v in tool.items() if k != "notebooks"}, set_name,
           f"{pyproject} [tool.nbship]", where)
    if pyproject is not None:
        for key, table in (tool.get("notebooks") or {}).items():
            target = (pyproject.parent / key).resolve()
            if target == notebook.resolve() or Path(key).name == notebook.name == key:
                _apply(cfg, table, set_name, f"{pyproject} [tool.nbship.notebooks.{key!r}]",
                       where)
    _apply(cfg, meta, set_name, f"{notebook.name} metadata.nbship", where)
    return cfg
