"""A finished run -> the notebook's ``predict``, with the values the serve cell reads.

A run keeps ``serve.py`` (the serve cells as ``build(values...) -> predict``, written
by compile) beside ``provenance.json``, whose ``serve`` entry names the values and the
steps that produced them. ``provenance.json`` carries a seal: an HMAC with this
machine's key over every field (``pipelines.local.seal_provenance``), so the pipeline
name, run id, commit, metrics, the values' places and sha256s, and serve.py's sha256
are all what nbship wrote here. A run folder that another machine or a cloned
repository brings, or one edited since, is refused, not executed. The run must be in
its own folder (``RUNS/NAME/RUN_ID``), names that become paths match
``files.PATH_NAME``, each value is loaded with nbship's serializers and must be the one
the run recorded (sha256; pickles only when this machine wrote them), and serve.py's
bytes are read once, checked against the recorded sha256, and exactly those bytes run
(``modules.executed``: no import by path, no bytecode cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbship import signing
from nbship.errors import ServeError
from nbship.files import path_name
from nbship.modules import executed

if TYPE_CHECKING:
    from nbship.monitoring.drift import Profile

PROVENANCE = "provenance.json"
MAX_PROVENANCE = 16 << 20  # bytes: a run's record, not a data set
MAX_MODULE = 16 << 20  # bytes: the serve cells
MAX_PROFILE = 64 << 20  # bytes: the reference inputs' profile
_MODULE_FILE = re.compile(r"[a-z_][a-z0-9_]{0,63}\.py")  # serve.py: a file beside provenance


@dataclass(frozen=True)
class Served:
    """What a model server needs: a name, the predict function, and where it came from."""

    name: str
    predict: Callable[[Any], Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    profile: Profile | None = None  # the reference profile drift is measured against
    reference_inputs: Any = None  # the serve cell's reference_inputs (canary judging)


def read_file(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, read once (at most ``limit``); ServeError otherwise. A FIFO
    or a device is refused without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ServeError(f"{what} {path} is missing") from None
    except OSError as exc:
        raise ServeError(f"{what} {path} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ServeError(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise ServeError(f"{what} {path} is larger than {limit >> 20} MiB")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ServeError(f"{what} {path} is larger than {limit >> 20} MiB")
    return data


def newest_run(folder: Path) -> Path:
    """The newest successful run with something to serve in ``folder`` (.nbship/runs/NAME),
    among the runs this machine's nbship recorded (sealed): a folder brought from
    elsewhere never shadows them."""
    runs = sorted((p for p in folder.glob("*/" + PROVENANCE)), reverse=True) \
        if folder.is_dir() else []
    foreign = 0
    for prov in runs:
        try:
            doc = json.loads(read_file(prov, MAX_PROVENANCE, "the provenance"))
        except (ServeError, ValueError):
            continue
        if not isinstance(doc, dict) or not signing.signed(doc):
            foreign += 1
            continue
        run = doc.get("run")
        if isinstance(run, dict) and run.get("status") == "SUCCESS" and doc.get("serve"):
            return prov.parent
    raise ServeError(f"no successful run with a serve cell in {folder}"
                     + (f" ({foreign} run folder(s) there were not recorded by nbship on this "
                        "machine, or were changed since, and are ignored)" if foreign else ""),
                     hint="nbship run NOTEBOOK first (its notebook needs a cell tagged serve)")


def read_provenance(run_dir: Path) -> dict[str, Any]:
    """The run's provenance.json as it is (not yet checked: see ``read_sealed``)."""
    prov_path = run_dir / PROVENANCE
    if not prov_path.exists():
        raise ServeError(f"{run_dir} is not a run folder (no {PROVENANCE})",
                         hint="give a folder under .nbship/runs/NAME/, e.g. the path "
                         "`nbship run` prints after 'provenance:'")
    try:
        prov = json.loads(read_file(prov_path, MAX_PROVENANCE, "the provenance"))
    except ValueError as exc:
        raise ServeError(f"{prov_path} cannot be read: {exc}") from None
    if not isinstance(prov, dict):
        raise ServeError(f"{prov_path} is not a run's provenance")
    return prov


def read_sealed(run_dir: Path) -> dict[str, Any]:
    """The run's provenance, after checking its seal (this machine's nbship wrote every
    field, and nothing changed since), its names, and that ``run_dir`` is the run's own
    folder (``RUNS/PIPELINE/RUN_ID``); ServeError naming what does not hold."""
    prov = read_provenance(run_dir)
    if not signing.signed(prov):
        raise ServeError(f"the run in {run_dir} was not recorded by nbship on this machine, or "
                         f"its {PROVENANCE} changed since: its seal does not hold, so nothing "
                         "it names is served, pushed or run",
                         hint="serve or push a run made here (runs recorded by an nbship "
                         "without provenance seals: run again), or a model release "
                         "(nbship model push)")
    where = str(run_dir / PROVENANCE)
    run, pipeline = prov.get("run"), prov.get("pipeline")
    if not isinstance(run, dict) or not isinstance(pipeline, dict) \
            or not isinstance(prov.get("steps"), dict):
        raise ServeError(f"{where} is not a run's provenance (run, pipeline, steps)")
    name = path_name(pipeline.get("name"), "the pipeline name", error=ServeError, where=where)
    run_id = path_name(run.get("id"), "the run id", error=ServeError, where=where)
    here = run_dir.resolve()
    if (here.parent.name, here.name) != (name, run_id):
        raise ServeError(f"{run_dir} holds the provenance of run {run_id} of {name!r}, not "
                         f"its own: a run is served from its own folder (RUNS/{name}/{run_id})",
                         hint="give the run's own folder, as `nbship run` printed it")
    return prov


def check_run(run_dir: Path, prov: dict[str, Any]) -> dict[str, Any]:
    """The serve entry of a sealed run (``read_sealed``), after checking the run succeeded
    and has something to serve; ServeError naming what is wrong."""
    entry = prov.get("serve")
    if not isinstance(entry, dict):
        raise ServeError(f"the run in {run_dir} has nothing to serve: its notebook has no "
                         "cell tagged `serve`",
                         hint="tag a cell `serve` that defines predict(inputs), run again")
    status = prov["run"].get("status")
    if status != "SUCCESS":
        raise ServeError(f"the run in {run_dir} did not succeed ({status}); its values may "
                         "be missing or stale", hint="serve a successful run")
    module = entry.get("module")
    if not (isinstance(module, str) and _MODULE_FILE.fullmatch(module)
            and isinstance(entry.get("sha256"), str) and isinstance(entry.get("inputs"), dict)
            and isinstance(entry.get("parameters", []), list)):
        raise ServeError(f"the serve entry of {run_dir / PROVENANCE} is not one nbship writes")
    return entry


def serve_source(run_dir: Path, entry: dict[str, Any]) -> bytes:
    """serve.py's bytes, read once and checked against the sha256 the run recorded: what
    is run is exactly what was checked."""
    module = run_dir / str(entry["module"])
    source = read_file(module, MAX_MODULE, "the serving code")
    if hashlib.sha256(source).hexdigest() != entry["sha256"]:
        raise ServeError(f"{module} changed since the run (its sha256 is not the one the run "
                         "recorded); it is not run", hint="run the notebook again")
    return source


def value_place(prov: dict[str, Any], entry: dict[str, Any], var: str) -> tuple[Path, str]:
    """(folder, sha256) of the value ``var`` the serve cell reads, as the sealed run
    recorded it; ServeError when the record does not hold together."""
    info = entry["inputs"][var]
    step = info.get("from") if isinstance(info, dict) else None
    steps = prov["steps"]
    output = steps.get(step, {}).get("outputs", {}).get(var) \
        if isinstance(step, str) and isinstance(steps.get(step), dict) else None
    if not isinstance(output, dict) or not output.get("uri"):
        raise ServeError(f"the run recorded no value {var!r} from step {step!r}")
    sha256 = output.get("sha256")
    if not isinstance(sha256, str) or sha256 != info.get("sha256"):
        raise ServeError(f"the run's record of value {var!r} does not hold together (sha256)")
    return Path(str(output["uri"])), sha256


def load_run(run_dir: Path) -> Served:
    """The run's predict function, ready to call; ServeError naming what is missing."""
    from nbship.runtime import serializers

    prov = read_sealed(run_dir)
    entry = check_run(run_dir, prov)
    source = serve_source(run_dir, entry)
    values: dict[str, Any] = {}
    for var in entry["inputs"]:
        if not (isinstance(var, str) and var.isidentifier()):
            raise ServeError(f"the serve entry of {run_dir / PROVENANCE} names a value "
                             f"{var!r}, not a Python name")
        folder, sha256 = value_place(prov, entry, var)
        try:
            values[var] = serializers.load(folder, sha256=sha256)
        except serializers.UntrustedArtifact as exc:
            raise ServeError(f"value {var!r} is refused: {exc}") from None
        except OSError as exc:
            raise ServeError(f"value {var!r} cannot be read: {exc}",
                             hint="the run's artifacts were removed?") from None
    parameters = prov.get("parameters")
    for name in entry.get("parameters", []):
        if not isinstance(parameters, dict) or name not in parameters:
            raise ServeError(f"the run recorded no parameter {name!r}")
        values[name] = parameters[name]
    check = entry.get("check") or {}
    recorded = check.get("profile") if isinstance(check, dict) else None
    profile = None
    if isinstance(recorded, dict):
        profile = read_profile(Path(str(recorded.get("uri"))), recorded.get("sha256"))
    name = prov["pipeline"]["name"]
    predict, reference = build_served(source, str(run_dir / entry["module"]), values)
    return Served(name=name, predict=predict, reference_inputs=reference,
                  provenance=_summary(prov), profile=profile)


def read_profile(path: Path, sha256: Any) -> Profile | None:
    """The drift profile the pipeline's serving check wrote (None: no reference inputs)."""
    from nbship.monitoring.drift import Profile

    data = read_file(path, MAX_PROFILE, "the drift profile")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ServeError(f"the drift profile {path} changed since it was recorded")
    try:
        doc = json.loads(data)
        return None if doc.get("profile") is None else Profile.from_dict(doc["profile"])
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ServeError(f"the drift profile {path} cannot be read: {exc}") from None


def build_served(source: bytes, filename: str, values: dict[str, Any]
                 ) -> tuple[Callable[[Any], Any], Any]:
    """Run the serve module (exactly ``source``, already checked) and its build() with the
    values: (predict, reference_inputs)."""
    try:
        with executed(source, filename, "nbship_serve") as module:
            predict, reference = module.build(**values)
    except Exception as exc:
        raise ServeError(f"the serve cell failed while building predict(): "
                         f"{type(exc).__name__}: {exc}", hint=f"see {filename}") from None
    if not callable(predict):
        raise ServeError("the serve cell's predict is not a function")
    return predict, reference


def _summary(prov: dict[str, Any]) -> dict[str, Any]:
    """The provenance a server shows: where its model came from."""
    return {
        "run": prov.get("run", {}).get("id"),
        "commit": prov.get("git", {}).get("commit"),
        "dirty": prov.get("git", {}).get("dirty"),
        "notebook": prov.get("notebook", {}),
        "pipeline_yaml_sha256": prov.get("pipeline", {}).get("yaml_sha256"),
        "parameters": prov.get("parameters", {}),
        "metrics": prov.get("metrics", {}),
        "serve": {k: v for k, v in prov.get("serve", {}).items() if k != signing.SIGNATURE},
    }
