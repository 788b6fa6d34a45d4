"""Continuous training: what starts a run of a notebook's pipeline, and on which data.

One vocabulary for this machine and for a cluster, kept in pyproject.toml::

    [tool.nbship.training."notebooks/marker_classifier.ipynb"]
    cron = "0 */30 * * * *"          # 6 fields, seconds first (KFP's recurring runs)
    data = "data/markers"            # a folder or a file: new content starts a run
    data_parameter = "data_dir"      # the notebook parameter that receives the data
    parameters = { epochs = 2 }      # the runs' parameters
    webhook = true                   # POST /trigger/NAME with the shared secret
    registry = "127.0.0.1:5000"      # push each passing run's model as a model release

Paths are relative to the pyproject.toml's folder. A run started by new data gets
the data as an immutable **snapshot**: ``.nbship/data/<sha256>/`` holds a copy of
the source's files (copies, not hard links: a file rewritten in place would change
a linked snapshot), and that folder is the parameter's value. So the value changes
exactly when the content does (kfp.local's cache key includes parameter values,
not files read from disk), and a run never sees a file that lands while it runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.errors import UnusableInputError

SNAPSHOTS = Path(".nbship/data")


@dataclass(frozen=True)
class Training:
    """The triggers of one notebook's training."""

    name: str  # the pipeline's name (from the notebook's file name)
    notebook: Path  # absolute
    cron: str | None = None
    data: Path | None = None  # absolute
    data_parameter: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    webhook: bool = False
    release: str | None = None  # runs this release's pipeline (`nbship kfp schedule`)
    registry: str | None = None  # where a passing run's model is pushed (model release)

    def spec(self) -> dict[str, Any]:
        """What the scheduler stores (JSON)."""
        doc = {"notebook": str(self.notebook), "cron": self.cron,
               "data": str(self.data) if self.data else None,
               "data_parameter": self.data_parameter, "parameters": self.parameters,
               "webhook": self.webhook}
        if self.registry:
            doc["registry"] = self.registry
        return {**doc, "release": self.release} if self.release else doc

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> Training:
        return cls(name=name, notebook=Path(spec["notebook"]), cron=spec.get("cron"),
                   data=Path(spec["data"]) if spec.get("data") else None,
                   data_parameter=spec.get("data_parameter"),
                   parameters=dict(spec.get("parameters") or {}),
                   webhook=bool(spec.get("webhook")), release=spec.get("release"),
                   registry=spec.get("registry"))


def check_cron(expr: str, origin: str) -> str:
    """A 6-field cron expression, seconds first (as KFP's recurring runs take it)."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) != 6 or not croniter.is_valid(expr, second_at_beginning=True):
        raise UnusableInputError(
            f"{origin}: cron {expr!r} is not a 6-field cron expression",
            hint="seconds minutes hours day-of-month month day-of-week, e.g. "
            "'0 0 3 * * *' (03:00 every day) or '*/10 * * * * *' (every 10 seconds)")
    return " ".join(fields)


def next_fire(expr: str, after: float) -> float:
    """The first time (epoch seconds, UTC) after ``after`` that ``expr`` names."""
    from croniter import croniter

    start = dt.datetime.fromtimestamp(after, dt.UTC)
    return float(croniter(expr, start, second_at_beginning=True).get_next(float))


def read_config(pyproject: Path) -> list[Training]:
    """Every ``[tool.nbship.training."NOTEBOOK"]`` table of ``pyproject``, checked (none
    when there is no pyproject.toml: the scheduler then runs what ``nbship kfp schedule``
    registered)."""
    from nbship.extract.codegen import pipeline_name
    from nbship.extract.graph import build_graph
    from nbship.notebook import read_notebook

    if not pyproject.exists():
        return []
    try:
        doc = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UnusableInputError(f"{pyproject}: {exc}") from None
    tables = doc.get("tool", {}).get("nbship", {}).get("training", {})
    if not isinstance(tables, dict):
        raise UnusableInputError(f"{pyproject}: [tool.nbship.training] must be a table of "
                                 "notebooks")
    base = pyproject.resolve().parent
    out: list[Training] = []
    for rel, table in sorted(tables.items()):
        origin = f"{pyproject} [tool.nbship.training.{rel!r}]"
        if not isinstance(table, dict):
            raise UnusableInputError(f"{origin} must be a table")
        unknown = set(table) - {"cron", "data", "data_parameter", "parameters", "webhook",
                                "registry"}
        if unknown:
            raise UnusableInputError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))}",
                                     hint="cron, data, data_parameter, parameters, webhook, "
                                     "registry")
        notebook = (base / rel).resolve()
        if not notebook.is_file():
            raise UnusableInputError(f"{origin}: no notebook at {notebook}")
        graph = build_graph(read_notebook(notebook))
        cron = check_cron(str(table["cron"]), origin) if "cron" in table else None
        data = (base / str(table["data"])).resolve() if "data" in table else None
        param = table.get("data_parameter")
        if data is not None and (not isinstance(param, str) or param not in graph.parameters):
            raise UnusableInputError(
                f"{origin}: data needs data_parameter, the notebook parameter that receives "
                f"the data's folder (parameters: {', '.join(graph.parameters) or 'none'})")
        if data is not None and graph.parameters[str(param)].type != "str":
            raise UnusableInputError(f"{origin}: parameter {param!r} must be a string (a path)")
        params = table.get("parameters", {})
        if not isinstance(params, dict) or set(params) - set(graph.parameters):
            raise UnusableInputError(f"{origin}: parameters must name the notebook's "
                                     f"parameters ({', '.join(graph.parameters)})")
        webhook = table.get("webhook", False)
        if not isinstance(webhook, bool):
            raise UnusableInputError(f"{origin}: webhook is true or false")
        if cron is None and data is None and not webhook:
            raise UnusableInputError(f"{origin}: nothing starts a run",
                                     hint="set cron, data or webhook")
        registry = table.get("registry")
        if registry is not None and (not isinstance(registry, str) or graph.serve is None):
            raise UnusableInputError(f"{origin}: registry is where each passing run's model "
                                     "is pushed: a string, for a notebook with a serve cell")
        out.append(Training(pipeline_name(graph), notebook, cron, data,
                            str(param) if data is not None else None, dict(params), webhook,
                            registry=registry))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise UnusableInputError(f"{pyproject}: two notebooks with the same pipeline name")
    return out


def _files(source: Path) -> list[Path]:
    """The source's files (a file source: itself), sorted; names starting with a dot are
    left out, folders reached through symbolic links are not entered (as ``rglob``).

    The folder changes while it is walked (a writer adds and removes sub-folders): a
    folder that vanishes or cannot be listed meanwhile is passed over, never an error;
    the next poll sees what the folder became."""
    if source.is_file():
        return [source]
    out: list[Path] = []
    folders = [source]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(Path(entry.path))
                        elif entry.is_file() and not entry.name.startswith("."):
                            out.append(Path(entry.path))
                    except OSError:  # gone between listing and looking
                        continue
        except OSError:  # gone, replaced by a file, unreadable: nothing to add from it
            continue
    return sorted(out)


def fingerprint(source: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times: cheap, to notice that something changed."""
    out = []
    for path in _files(source):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path.relative_to(source.parent)), st.st_size, st.st_mtime_ns))
    return tuple(out)


def data_digest(source: Path) -> str | None:
    """sha256 of the source's content (relative names and bytes); None when it is empty.

    A file removed between the listing and its reading is left out (the digest is of
    what is there; a snapshot checks it again). Other read errors are OSErrors."""
    files = _files(source)
    if not files:
        return None
    h = hashlib.sha256()
    root = source.parent if source.is_file() else source
    read = 0
    for path in files:
        try:  # never waits: a file replaced by a FIFO meanwhile is passed over below
            f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
        except FileNotFoundError:
            continue
        with f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0")
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
        read += 1
    return h.hexdigest() if read else None


def snapshot(source: Path, digest: str, root: Path) -> Path:
    """A copy of the source's files under ``root/<digest>/`` (made once).

    A folder source becomes that folder; a file source a folder holding that file.
    Made aside and renamed in, so a snapshot is whole or absent."""
    target = root / digest
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    stage = root / f".{digest}.{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    base = source.parent if source.is_file() else source
    stage.mkdir()
    for path in _files(source):
        dst = stage / path.relative_to(base)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst)
        except FileNotFoundError:  # removed since it was listed: the digests then differ
            continue
        except OSError:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    if data_digest(stage if source.is_dir() else stage / source.name) != digest:
        shutil.rmtree(stage, ignore_errors=True)
        raise UnusableInputError(f"{source} changed while it was being snapshotted",
                                 hint="the next poll takes it again")
    try:
        os.rename(stage, target)
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        if not target.is_dir():
            raise
    return target
