"""Inside a step: load inputs, save outputs, log metrics, report failures as notebook cells.

A generated step function looks like::

    def train(epochs: int, in_x: Input[Artifact], out_model: Output[Artifact]):
        from nbship.runtime.step import StepRun
        with StepRun("train", "marker_classifier.ipynb") as nb:
            x = nb.load(in_x, "x")
            # --- cell 7 (id 3f2a) ---
            model = fit(x, epochs)
            nb.save(out_model, "model", model, cell=7)

Each cell's code follows a ``# --- cell N ---`` marker line with its own line
numbers intact, so a failure maps back to the notebook cell and line.
"""

from __future__ import annotations

import json
import linecache
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from nbship.runtime import numerics, serializers

MARKER = re.compile(r"^\s*# --- (?:(?P<role>imports|functions) )?cell (?P<cell>\d+)"
                    r"(?: \(id (?P<id>[^)]*)\))? ---\s*$")
REGION = re.compile(r"^\s*# --- (?P<region>inputs|outputs) (from|for) \w+ steps ---\s*$"
                    r"|^\s*# --- (?P<params>list/dict/None parameters) arrive as JSON text ---\s*$")
SAVED_CELL = re.compile(r"cell=(?P<cell>\d+)(?:, cell_id='(?P<id>[^']*)')?")
FAILURE_DIR_ENV = "NBSHIP_FAILURE_DIR"


class StepFailure(Exception):
    """Raised inside a step for a value that cannot cross the step boundary."""


def rebind_closures(value: Any, cells: dict[str, Any],
                    seen: dict[int, Any] | None = None, filename: str | None = None) -> Any:
    """``value`` (a function or class defined in a notebook step) with each closure cell
    named in ``cells`` replaced by that cell; functions from the same file found in its
    other cells are rebound too. A class is changed in place (its methods)."""
    import types

    seen = {} if seen is None else seen
    if id(value) in seen:
        return seen[id(value)]
    if isinstance(value, type):
        seen[id(value)] = value
        for key, item in list(vars(value).items()):
            wrapper = type(item) if isinstance(item, (staticmethod, classmethod)) else None
            raw = item.__func__ if wrapper is not None else item
            if isinstance(raw, types.FunctionType):
                new = rebind_closures(raw, cells, seen, filename)
                if new is not raw:
                    setattr(value, key, wrapper(new) if wrapper is not None else new)
        return value
    if not isinstance(value, types.FunctionType):
        return value
    code = value.__code__
    if filename is not None and code.co_filename != filename:
        return value  # a library's function: its closures are its own
    if not code.co_freevars or value.__closure__ is None:
        return value
    seen[id(value)] = value  # (a cycle back to it keeps it)
    new_cells: list[Any] = []
    for name, cell in zip(code.co_freevars, value.__closure__):
        if name in cells:
            new_cells.append(cells[name])
            continue
        try:
            inner = cell.cell_contents
        except ValueError:  # an empty cell
            new_cells.append(cell)
            continue
        rebound = rebind_closures(inner, cells, seen, code.co_filename) \
            if isinstance(inner, types.FunctionType) else inner
        new_cells.append(cell if rebound is inner else types.CellType(rebound))
    made = copy_function(value, value.__globals__, tuple(new_cells))
    seen[id(value)] = made
    return made


def copy_function(func: Any, namespace: dict[str, Any], closure: tuple[Any, ...] | None) -> Any:
    """``func`` with other globals and closure cells, its name, defaults and attributes kept."""
    import types

    made = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__,
                              closure)
    made.__kwdefaults__ = func.__kwdefaults__
    made.__dict__.update(func.__dict__)
    made.__qualname__ = func.__qualname__
    made.__doc__ = func.__doc__
    made.__annotations__ = dict(func.__annotations__)
    made.__module__ = func.__module__
    return made


def locate(filename: str, lineno: int) -> dict[str, Any] | None:
    """Map a line of a generated step file to (cell, id, line in cell, source line)."""
    for n in range(lineno, 0, -1):
        region = REGION.match(linecache.getline(filename, n))
        if region:
            source = linecache.getline(filename, lineno).strip()
            saved = SAVED_CELL.search(source)
            return {"region": region["region"] or "parameters", "source": source,
                    "cell": int(saved["cell"]) if saved else None,
                    "cell_id": saved["id"] if saved else None, "line": None, "context": []}
        m = MARKER.match(linecache.getline(filename, n))
        if m:
            return {
                "cell": int(m["cell"]),
                "cell_id": m["id"],
                "role": m["role"] or "step",
                "line": lineno - n,
                "source": linecache.getline(filename, lineno).strip(),
                "context": [linecache.getline(filename, k).rstrip("\n")
                            for k in range(max(n + 1, lineno - 2), lineno + 1)],
            }
    return None


class StepRun:
    """Context manager around a step's body; see the module docstring."""

    def __init__(self, step: str, notebook: str) -> None:
        self.step = step
        self.notebook = notebook
        self.metrics: dict[str, float] = {}
        self._metrics_artifact: Any = None
        frame = sys._getframe(1)
        self._file = frame.f_code.co_filename
        self._started = time.time()

    def __enter__(self) -> StepRun:
        # under `nbship test`: the notebook's numeric settings (threads, deterministic
        # kernels) before the step's first line, as before the notebook's first cell
        numerics.apply()
        return self

    def json_parameter(self, name: str, text: str) -> Any:
        """A list, dict or None parameter, which KFP carries as JSON text (exact ints)."""
        try:
            return json.loads(text)
        except (TypeError, ValueError) as exc:
            raise StepFailure(f"parameter {name!r} is not the JSON text nbship passes: "
                              f"{exc}") from None

    def load(self, artifact: Any, name: str) -> Any:
        try:
            return serializers.load(artifact.path)
        except serializers.UntrustedArtifact as exc:
            raise StepFailure(f"input {name!r} is refused: {exc}") from None

    def save(self, artifact: Any, name: str, value: Any, cell: int, cell_id: str | None = None,
             result: bool = False) -> None:
        """Save a value for downstream steps. ``result``: the bare name ending the step,
        which no step reads (the notebook only displays it): a value that cannot be saved
        is a warning, not a failed step."""
        where = f"cell {cell}" + (f" (id {cell_id})" if cell_id else "")
        chosen = serializers.choose(value)
        if chosen is serializers.FALLBACK:
            print(f"nbship: warning: {name!r} ({type(value).__qualname__}, from {where}) has no "
                  "dedicated serializer; saving it with cloudpickle", file=sys.stderr)
        try:
            meta = serializers.save(value, artifact.path)
        except Exception as exc:
            if result:
                import shutil

                shutil.rmtree(artifact.path, ignore_errors=True)
                print(f"nbship: warning: {name!r}, displayed at the end of {where}, is not "
                      f"kept (no later step reads it): {exc}", file=sys.stderr)
                return
            raise StepFailure(
                f"variable {name!r} of type {type(value).__module__}.{type(value).__qualname__}, "
                f"produced by {where}, cannot be passed to the next step: {exc}") from None
        artifact.metadata.update({"sha256": meta["sha256"], "serializer": meta["serializer"],
                                  "type": meta["type"], "variable": name, "cell": cell})

    def profile(self, artifact: Any, predict: Any, reference: Any) -> None:
        """The serving check: predict() exists and answers the reference inputs; their
        profile (inputs and predictions) is written for drift monitoring."""
        from nbship.files import sha256_file
        from nbship.monitoring.drift import Profile

        if not callable(predict):
            raise StepFailure("the serve cell's `predict` is not a function")
        doc: dict[str, Any] = {"schema": "nbship.profile/v1", "profile": None}
        if reference is not None:
            predictions = predict(reference)  # a failure here names the serve cell's line
            try:
                doc["profile"] = Profile.build(reference, predictions).to_dict()
            except Exception as exc:
                raise StepFailure(f"the serve cell's reference_inputs cannot be profiled "
                                  f"({type(exc).__name__}: {exc}): they must be a batch of "
                                  "inputs predict() takes, e.g. the training inputs") from None
            doc["rows"] = doc["profile"]["rows"]
        path = Path(artifact.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, sort_keys=True))
        artifact.metadata.update({"sha256": sha256_file(path), "serializer": "profile",
                                  "type": "nbship.profile/v1"})

    def share_globals(self, value: Any, namespace: dict[str, Any]) -> Any:
        """A function from an upstream step whose body declares ``global`` names, rebound to
        this step's module namespace (the step declares those names global too).

        Unpickled, a function keeps a dict of its own globals: ``global counter;
        counter += 1`` would change that copy, not the step's ``counter``. In the notebook
        there is one namespace. The globals it brought fill in names the step lacks.
        """
        import types

        if not isinstance(value, types.FunctionType):
            return value
        old = value.__globals__
        done: dict[int, types.FunctionType] = {}

        def rebind(func: types.FunctionType) -> types.FunctionType:
            # the functions it reaches (its globals, its closure: a step's functions are
            # closures over each other) came in the same pickle, with the same globals
            if id(func) in done:
                return done[id(func)]
            shared: types.FunctionType = copy_function(func, namespace, func.__closure__)
            done[id(func)] = shared
            for cell in func.__closure__ or ():
                try:
                    inner = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if isinstance(inner, types.FunctionType) and inner.__globals__ is old:
                    cell.cell_contents = rebind(inner)
            return shared

        for key, item in old.items():
            if key not in namespace:
                namespace[key] = rebind(item) if isinstance(item, types.FunctionType) \
                    and item.__globals__ is old else item
        return rebind(value)

    def rebind(self, value: Any, cells: dict[str, Any]) -> Any:
        """A function or class from an upstream step, pointed at this step's variables.

        Unpickled, a function defined in a step keeps its own copies of the step variables
        it reads (closure cells of that step's function). In the notebook it reads the one
        namespace when called: ``cells`` are this step's cells for those names (generated
        code takes them as ``(lambda: x).__closure__[0]``), so the function sees this
        step's current value and changes this step's object (issue 18, shapes 1 and 2).
        Functions it closes over that come from the same code (a helper, a decorator's
        wrapped function) are pointed at them too.
        """
        return rebind_closures(value, cells)

    def log_metric(self, artifact: Any, name: str, value: Any) -> None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise StepFailure(f"metric {name!r} must be a number, got "
                              f"{serializers.summary(value)}") from None
        if not math.isfinite(number):
            raise StepFailure(f"metric {name!r} is {number}: KFP metrics are finite numbers "
                              "(did the training diverge?)")
        self.metrics[name] = number
        artifact.log_metric(name, number)
        self._metrics_artifact = artifact

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if self._metrics_artifact is not None and exc is None:
            # KFP keeps Metrics in metadata only; a file at the path lets the local cache
            # find the artifact again (it treats a missing file as a cache miss).
            path = Path(self._metrics_artifact.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.metrics, sort_keys=True))
        if exc is None or exc_type is None:
            return False
        if isinstance(exc, SystemExit):
            # exit status 0 would pass for success, with the step's outputs never written
            self._fail(f"the step called exit({exc.code!r}) (sys.exit, exit or quit): a step "
                       "runs its cells to the end, so that its outputs are written", tb)
            raise StepFailure(f"step {self.step!r} called exit({exc.code!r})") from None
        self._fail(f"{exc_type.__name__}: {exc}", tb, exc)
        return False

    def _fail(self, error: str, tb: TracebackType | None, exc: BaseException | None = None,
              ) -> None:
        """Print and record where in the notebook the step failed, and why."""
        where = None
        for frame, lineno in traceback.walk_tb(tb):
            if frame.f_code.co_filename == self._file:
                found = locate(self._file, lineno)
                if found:
                    where = found
        if where and where.get("region") == "outputs" and isinstance(exc, NameError):
            saved = re.search(r"\.save\(\w+, '(?P<var>[^']+)'", where["source"])
            name = saved["var"] if saved else getattr(exc, "name", None) or str(exc)
            error = (f"{name!r} was not defined when the step's cells finished, but a later "
                     "step reads it (is it assigned only inside an if, loop or try?)")
        elif where and where.get("region") == "outputs":
            error = f"{exc}"
        report = {
            "step": self.step,
            "notebook": self.notebook,
            "error": error,
            "seconds": round(time.time() - self._started, 3),
            **(where or {}),
        }
        lines = [f"nbship: step {self.step!r} failed"]
        if where and where.get("cell") is not None:
            cell = f"cell {where['cell']}" + (f" (id {where['cell_id']})" if where["cell_id"]
                                               else "")
            at = f", line {where['line']}" if where.get("line") is not None else ""
            lines[0] += f" at {self.notebook}, {cell}{at}"
            lines += [f"    | {text}" for text in where["context"]]
        lines.append(report["error"])
        print("\n".join(lines), file=sys.stderr)
        out_dir = os.environ.get(FAILURE_DIR_ENV)
        if out_dir:
            try:  # a full disk must not replace the step's own error with an OSError
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                Path(out_dir, f"{self.step}.json").write_text(json.dumps(report, indent=2))
            except OSError as write_error:
                print(f"nbship: (the failure report could not be written: {write_error})",
                      file=sys.stderr)
