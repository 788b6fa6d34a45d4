"""A finished run -> the notebook's ``predict``, with the values the serve cell reads.

A run keeps ``serve.py`` (the serve cells as ``build(values...) -> predict``, written
by compile) beside ``provenance.json``, whose ``serve`` entry names the values and the
steps that produced them. Each value is loaded with nbship's serializers (checked
against its sha256; pickles only when this machine wrote them), the module is
checked against the sha256 and HMAC the run recorded, then run. A run folder that
another machine or a cloned repository brings is refused, not executed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbship import signing
from nbship.errors import ServeError
from nbship.files import sha256_file
from nbship.modules import imported

if TYPE_CHECKING:
    from nbship.monitoring.drift import Profile

PROVENANCE = "provenance.json"


@dataclass(frozen=True)
class Served:
    """What a model server needs: a name, the predict function, and where it came from."""

    name: str
    predict: Callable[[Any], Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    profile: Profile | None = None  # the reference profile drift is measured against
    reference_inputs: Any = None  # the serve cell's reference_inputs (canary judging)


def newest_run(folder: Path) -> Path:
    """The newest successful run with something to serve in ``folder`` (.nbship/runs/NAME)."""
    runs = sorted((p for p in folder.glob("*/" + PROVENANCE)), reverse=True) \
        if folder.is_dir() else []
    for prov in runs:
        try:
            doc = json.loads(prov.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("run", {}).get("status") == "SUCCESS" and doc.get("serve"):
            return prov.parent
    raise ServeError(f"no successful run with a serve cell in {folder}",
                     hint="nbship run NOTEBOOK first (its notebook needs a cell tagged serve)")


def check_run(run_dir: Path, prov: Any) -> dict[str, Any]:
    """The run's signed ``serve`` entry, after checking the run succeeded and its serve.py
    is the one recorded; ServeError naming what is wrong."""
    entry = prov.get("serve") if isinstance(prov, dict) else None
    if not isinstance(entry, dict):
        raise ServeError(f"the run in {run_dir} has nothing to serve: its notebook has no "
                         "cell tagged `serve`",
                         hint="tag a cell `serve` that defines predict(inputs), run again")
    status = prov.get("run", {}).get("status")
    if status != "SUCCESS":
        raise ServeError(f"the run in {run_dir} did not succeed ({status}); its values may "
                         "be missing or stale", hint="serve a successful run")
    if not signing.signed(entry):
        raise ServeError(f"the run in {run_dir} was not recorded by nbship on this machine; "
                         "its serving code is not run",
                         hint="serve a run made here, or a model release (nbship model push)")
    module = run_dir / str(entry.get("module"))
    if not module.is_file() or sha256_file(module) != entry.get("sha256"):
        raise ServeError(f"{module} is missing or changed since the run")
    return entry


def read_provenance(run_dir: Path) -> dict[str, Any]:
    prov_path = run_dir / PROVENANCE
    try:
        prov = json.loads(prov_path.read_text())
    except FileNotFoundError:
        raise ServeError(f"{run_dir} is not a run folder (no {PROVENANCE})",
                         hint="give a folder under .nbship/runs/NAME/, e.g. the path "
                         "`nbship run` prints after 'provenance:'") from None
    except (OSError, ValueError) as exc:
        raise ServeError(f"{prov_path} cannot be read: {exc}") from None
    if not isinstance(prov, dict):
        raise ServeError(f"{prov_path} is not a run's provenance")
    return prov


def load_run(run_dir: Path) -> Served:
    """The run's predict function, ready to call; ServeError naming what is missing."""
    from nbship.runtime import serializers

    prov = read_provenance(run_dir)
    entry = check_run(run_dir, prov)
    module = run_dir / str(entry["module"])
    values: dict[str, Any] = {}
    for var, info in entry.get("inputs", {}).items():
        output = prov["steps"].get(info["from"], {}).get("outputs", {}).get(var)
        if not output:
            raise ServeError(f"the run recorded no value {var!r} from step {info['from']!r}")
        try:
            values[var] = serializers.load(Path(output["uri"]))
        except serializers.UntrustedArtifact as exc:
            raise ServeError(f"value {var!r} is refused: {exc}") from None
        except OSError as exc:
            raise ServeError(f"value {var!r} cannot be read: {exc}",
                             hint="the run's artifacts were removed?") from None
    for name in entry.get("parameters", []):
        values[name] = prov["parameters"][name]
    check = entry.get("check") or {}
    recorded = check.get("profile") if isinstance(check, dict) else None
    profile = None
    if isinstance(recorded, dict):
        profile = read_profile(Path(str(recorded.get("uri"))), recorded.get("sha256"))
    name = str(prov.get("pipeline", {}).get("name") or "model")
    predict, reference = build_served(module, values)
    return Served(name=name, predict=predict, reference_inputs=reference,
                  provenance=_summary(prov), profile=profile)


def read_profile(path: Path, sha256: Any) -> Profile | None:
    """The drift profile the pipeline's serving check wrote (None: no reference inputs)."""
    from nbship.monitoring.drift import Profile

    try:
        if sha256_file(path) != sha256:
            raise ServeError(f"the drift profile {path} changed since it was recorded")
        doc = json.loads(path.read_text())
        return None if doc.get("profile") is None else Profile.from_dict(doc["profile"])
    except (OSError, ValueError, AttributeError) as exc:
        raise ServeError(f"the drift profile {path} cannot be read: {exc}") from None


def build_served(module_path: Path, values: dict[str, Any]
                 ) -> tuple[Callable[[Any], Any], Any]:
    """Run the serve module's build() with the values: (predict, reference_inputs)."""
    try:
        with imported(module_path, "nbship_serve") as module:
            predict, reference = module.build(**values)
    except Exception as exc:
        raise ServeError(f"the serve cell failed while building predict(): "
                         f"{type(exc).__name__}: {exc}", hint=f"see {module_path}") from None
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
