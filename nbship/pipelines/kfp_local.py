"""``nbship kfp`` without ``--host``: the same verbs on this machine (the embedded default).

* **upload** keeps the release's pipeline (pulled by digest) as the current local
  version: ``.nbship/kfp/NAME/versions/<version>/`` (pipeline.yaml, release.json) and
  ``.nbship/kfp/NAME/current.json``;
* **run** runs the release's pipeline.yaml on kfp.local — the very YAML a cluster
  runs — with the notebook's step graph for progress and provenance (the checkout's
  notebook must be the one the release was built from: same sha256);
* **schedule** registers a cron schedule of that release with the local scheduler
  (``nbship scheduler``; one row ``kfp:NAME``, so rescheduling replaces it);
* **status** and **disable** read and remove it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from nbship.errors import UnusableInputError
from nbship.files import write_atomic
from nbship.pipelines.kfp_remote import Release, pull_release

KFP_ROOT = Path(".nbship/kfp")


def _folder(project: Path, name: str) -> Path:
    return project / KFP_ROOT / name


def upload(reference: str, project: Path) -> tuple[Release, bool]:
    """Keep the release's pipeline as the current local version; (release, new)."""
    with tempfile.TemporaryDirectory(prefix="nbship-kfp-") as tmp:
        rel = pull_release(reference, Path(tmp))
        target = _folder(project, rel.name) / "versions" / rel.version_name
        new = not (target / "pipeline.yaml").exists()
        if new:
            target.mkdir(parents=True, exist_ok=True)
            write_atomic(target / "pipeline.yaml", rel.yaml.read_bytes())
            write_atomic(target / "release.json", json.dumps(
                {"reference": rel.reference, "commit": rel.commit, "digest": rel.digest,
                 "name": rel.name}, indent=2) + "\n")
    write_atomic(_folder(project, rel.name) / "current.json",
                 json.dumps({"version": rel.version_name, "reference": rel.reference}) + "\n")
    return dataclasses.replace(rel, yaml=target / "pipeline.yaml"), new


def run_release(reference: str, values: dict[str, Any], *, project: Path,
                trigger: dict[str, Any] | None = None,
                echo: Any = None) -> Any:
    """The release's pipeline on kfp.local (``pipelines.local.RunResult``); progress to
    ``echo`` (default: the terminal, as `nbship run` shows it)."""
    from nbship.extract.cache import analyse
    from nbship.pipelines.compile import compile_graph
    from nbship.pipelines.local import run_compiled

    rel, _ = upload(reference, project)
    notebook = project / rel.notebook["path"]
    if not notebook.is_file():
        raise UnusableInputError(f"the release was built from {rel.notebook['path']}, "
                                 f"which is not in {project}",
                                 hint="run it from the notebook's repository")
    graph = analyse(notebook)
    if graph.notebook.sha256 != rel.notebook["sha256"]:
        raise UnusableInputError(
            f"{notebook} is not the notebook release {rel.reference} was built from "
            f"(sha256 {graph.notebook.sha256[:12]}... here, "
            f"{rel.notebook['sha256'][:12]}... in the release)",
            hint=f"git checkout {rel.commit} -- {rel.notebook['path']}")
    from nbship.extract.codegen import pipeline_name

    compiled = compile_graph(graph, project / ".nbship" / "build" / pipeline_name(graph))
    released = dataclasses.replace(compiled, yaml=rel.yaml)
    return run_compiled(released, values, root=project / ".nbship" / "runs",
                        trigger={**(trigger or {"kind": "manual"}), "release": rel.reference},
                        echo=echo)


def schedule(reference: str, cron: str, values: dict[str, Any], project: Path,
             scheduler_root: Path) -> tuple[str, bool]:
    """Register the release with the local scheduler; (schedule name, replaced one)."""
    from nbship.pipelines.scheduler import RELEASE_PREFIX, Store
    from nbship.pipelines.training import Training

    rel, _ = upload(reference, project)
    name = RELEASE_PREFIX + rel.name
    training = Training(name=name, notebook=project / rel.notebook["path"],
                        cron=cron, parameters=values, release=rel.reference)
    replaced = Store(scheduler_root / "schedules.sqlite").put(training, time.time())
    return name, replaced


def disable(name: str, scheduler_root: Path) -> bool:
    from nbship.pipelines.scheduler import RELEASE_PREFIX, Store

    return Store(scheduler_root / "schedules.sqlite").remove(RELEASE_PREFIX + name)


def status(name: str, project: Path, scheduler_root: Path) -> dict[str, Any]:
    from nbship.pipelines.scheduler import RELEASE_PREFIX, Store

    folder = _folder(project, name)
    current = json.loads((folder / "current.json").read_text()) \
        if (folder / "current.json").is_file() else None
    versions = sorted(p.name for p in (folder / "versions").iterdir()) \
        if (folder / "versions").is_dir() else []
    store = Store(scheduler_root / "schedules.sqlite")
    schedules = [{"name": t.name, "cron": t.cron, "release": t.release,
                  "next_fire": nxt} for t, nxt, _ in store.schedules()
                 if t.name == RELEASE_PREFIX + name]
    runs = [r for r in store.runs(20) if r["name"] == RELEASE_PREFIX + name]
    return {"current": current, "versions": versions, "schedules": schedules, "runs": runs}

