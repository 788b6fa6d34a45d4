"""Run a compiled pipeline YAML on ``kfp.local`` (SubprocessRunner, no venv, caching on).

kfp.local keys its cache on (component name, image, full command — which holds
the step's code —, arguments — parameter values and input artifacts' URI and
metadata —, env). A task that re-runs writes new output URIs, so every
descendant misses the cache: a changed step re-runs with its descendants only,
and a step whose inputs changed is never served a stale result. nbship also puts
each output's sha256 into the artifact metadata, so the key names the content.

Progress and provenance come from wrapping kfp.local's per-task executor
(``kfp.local.orchestrator.task_executor.execute_single_task``); the step logs go
to ``run.log`` in the run's record folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from nbship import __version__, signing
from nbship.environ import environ
from nbship.errors import Location, RunError
from nbship.extract.codegen import METRICS_ARG, OUTPUT_PREFIX, PROFILE_ARG, SERVE_STEP, serve_step
from nbship.extract.graph import StepGraph
from nbship.files import sha256_file, write_atomic
from nbship.pipelines import kfp_internals, launcher
from nbship.pipelines.compile import CompiledPipeline
from nbship.pipelines.kfp_import import import_kfp
from nbship.pipelines.launcher import imported_modules, third_party_modules
from nbship.pipelines.params import to_kfp
from nbship.runtime.step import FAILURE_DIR_ENV

DEFAULT_ROOT = Path(".nbship/runs")


@dataclass
class TaskRecord:
    task: str
    status: str = "running"
    cached: bool = False
    seconds: float = 0.0
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunResult:
    status: str
    record_dir: Path
    provenance: Path
    metrics: dict[str, float]
    tasks: dict[str, TaskRecord]
    seconds: float
    parameters: dict[str, Any]


class _Tracker:
    """Wraps kfp.local's task executor and cache: progress, each task's outputs, honest cache.

    A task whose process ends with status 0 but without all the outputs its component
    declares (a cell called ``os._exit(0)``) is a failure, and its outputs are never
    cached; a cache entry that lacks declared outputs is a miss.
    """

    def __init__(self, echo: Callable[[str], None], width: int, failures: Path,
                 steps: dict[str, str]) -> None:
        self.echo = echo
        self.steps = steps  # task name -> step name
        self.width = width
        self.failures = failures
        self.records: dict[str, TaskRecord] = {}
        self.local = threading.local()
        self.lock = threading.Lock()

    def _complete(self, outputs: Any) -> bool:
        expected = getattr(self.local, "expected", None)
        return expected is None or (isinstance(outputs, dict) and expected <= set(outputs))

    def _report(self, task: str, error: str) -> None:
        """A failure report as a step writes one, unless the step wrote its own."""
        step = self.steps.get(task, task)
        path = self.failures / f"{step}.json"
        if not path.exists():
            with contextlib.suppress(OSError):
                self.failures.mkdir(parents=True, exist_ok=True)
                write_atomic(path, json.dumps({"step": step, "error": error}))

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from kfp.local import cache as kcache
        from kfp.local import status as kstatus
        from kfp.local.orchestrator import task_executor

        original_exec = task_executor.execute_single_task
        original_get = kcache.LocalCache.get
        original_put = kcache.LocalCache.put
        tracker = self

        def get(cache_self: Any, key: str) -> Any:
            found = original_get(cache_self, key)
            if found is not None and not tracker._complete(found):
                found = None  # an entry from a step that ended early: run it again
            tracker.local.hit = found is not None
            return found

        def put(cache_self: Any, key: str, outputs: Any) -> None:
            if tracker._complete(outputs):
                original_put(cache_self, key, outputs)

        def execute(task_name: str, **kwargs: Any) -> Any:
            tracker.local.hit = False
            launcher.last_exit.code = None
            spec = kwargs["components"][kwargs["task_spec"].component_ref.name]
            outs = spec.output_definitions
            tracker.local.expected = set(outs.artifacts) | set(outs.parameters)
            rec = TaskRecord(task_name)
            with tracker.lock:
                tracker.records[task_name] = rec
            started = time.perf_counter()
            outputs, status = original_exec(task_name=task_name, **kwargs)
            code = getattr(launcher.last_exit, "code", None)
            if status.name == "SUCCESS" and not tracker._complete(outputs):
                missing = sorted(tracker.local.expected - set(outputs or {}))
                shown = ", ".join(m.removeprefix(OUTPUT_PREFIX) for m in missing)
                tracker._report(task_name, f"the step's process ended (exit status {code}) "
                                f"before its outputs ({shown}) were written: does a cell "
                                "call sys.exit() or os._exit()?")
                outputs, status = {}, kstatus.Status.FAILURE
            elif status.name != "SUCCESS" and code:
                tracker._report(task_name, f"the step's process {launcher.describe_exit(code)}")
            tracker.local.expected = None
            rec.seconds = time.perf_counter() - started
            rec.cached = bool(getattr(tracker.local, "hit", False))
            rec.status = status.name
            rec.outputs = {k: {"uri": v.uri, "metadata": dict(v.metadata)}
                           for k, v in (outputs or {}).items() if hasattr(v, "uri")}
            if rec.cached:
                word = "cached"
            elif rec.status == "SUCCESS":
                word = f"ran    {rec.seconds:5.2f}s"
            else:
                word = f"FAILED {rec.seconds:5.2f}s"
            tracker.echo(f"  {task_name:<{tracker.width}}  {word}")
            return outputs, status

        task_executor.execute_single_task = execute
        kcache.LocalCache.get = get
        kcache.LocalCache.put = put
        try:
            yield
        finally:
            task_executor.execute_single_task = original_exec
            kcache.LocalCache.get = original_get
            kcache.LocalCache.put = original_put


def _write_json(path: Path, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=2, default=str) + "\n")


def preload_modules(graph: StepGraph) -> list[str]:
    """The installed libraries the notebook imports: the steps' fork server loads them once."""
    return third_party_modules(imported_modules(c.tree for c in graph.codes.values()),
                               graph.notebook.path.resolve().parent)


def warm_up(graph: StepGraph) -> None:
    """Start the steps' fork server early (``nbship run`` calls it before compiling)."""
    launcher.warm_up(preload_modules(graph))


def run_compiled(compiled: CompiledPipeline, arguments: dict[str, Any], *,
                 root: Path = DEFAULT_ROOT, echo: Callable[[str], None] | None = None,
                 trigger: dict[str, Any] | None = None) -> RunResult:
    """Run ``compiled.yaml`` on kfp.local; raise RunError naming the notebook cell on failure.

    ``trigger`` says why the run started (an alert, a schedule); provenance keeps it.
    """
    import_kfp()
    from kfp import local
    from kfp.components import load_component_from_file

    kfp_internals.require(fork_server=launcher.enabled())

    out: TextIO = sys.stdout
    say = echo or (lambda line: print(line, file=out, flush=True))
    graph = compiled.graph
    base = root.resolve() / compiled.name
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    record_dir = base / run_id
    failures = record_dir / "failures"
    record_dir.mkdir(parents=True, exist_ok=True)
    artifacts = base / "artifacts"
    defaults = {p.name: p.value for p in graph.parameters.values()}
    values = {**defaults, **arguments}

    components = [*graph.steps, *([serving] if (serving := serve_step(graph)) else [])]
    width = max((len(s.task) for s in components), default=4)
    tracker = _Tracker(say, width, failures, {s.task: s.name for s in components})
    started = time.perf_counter()
    status = "SUCCESS"
    error: BaseException | None = None
    log_path = record_dir / "run.log"
    with open(log_path, "w") as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(artifacts),
                   enable_caching=True, raise_on_error=True)
        pipeline = load_component_from_file(str(compiled.yaml))
        # steps run in the notebook's folder, as the notebook's cells do in Jupyter
        notebook_dir = graph.notebook.path.resolve().parent
        with tracker.installed(), launcher.installed(preload_modules(graph)), \
                environ(FAILURE_DIR_ENV, str(failures)), \
                contextlib.chdir(notebook_dir), \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                pipeline(**to_kfp(graph.parameters, values))
            except Exception as exc:  # kfp.local raises RuntimeError for a failed task
                status = "FAILURE"
                error = exc
    seconds = time.perf_counter() - started

    logged: dict[str, float] = {}
    for rec in tracker.records.values():
        for out_name, art in rec.outputs.items():
            if out_name == METRICS_ARG:
                logged.update({k: v for k, v in art["metadata"].items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)})
    metrics = {name: logged[name] for name in graph.metrics if name in logged}

    prov_path = record_dir / "provenance.json"
    try:
        if compiled.serve is not None:  # the run keeps the serving code it was made with
            write_atomic(record_dir / compiled.serve.name, compiled.serve.read_bytes())
        doc = provenance(compiled, values, tracker.records, metrics, run_id, status, seconds)
        doc["trigger"] = trigger or {"kind": "manual"}
        _write_json(prov_path, seal_provenance(doc))
    except OSError as exc:
        if error is None:
            raise
        # a full disk must not replace the step's own error: report both
        failed = _run_error(compiled, failures, log_path, error)
        failed.hint = f"{failed.hint}; provenance.json could not be written: {exc.strerror}"
        raise failed from None
    result = RunResult(status=status, record_dir=record_dir, provenance=prov_path,
                       metrics=metrics, tasks=tracker.records, seconds=seconds,
                       parameters=values)
    if error is not None:
        raise _run_error(compiled, failures, log_path, error)
    return result


def seal_provenance(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as JSON reads it back, sealed: an HMAC with this machine's key over every
    field (run, pipeline name, commit, metrics, values, serve entry...). ``nbship serve``,
    ``model push`` and the monitoring use a run's provenance only when its seal holds
    (``serving.bundle.read_sealed``)."""
    plain: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    plain.pop(signing.SIGNATURE, None)
    plain[signing.SIGNATURE] = signing.sign(plain)
    return plain


def _failure_report(failures: Path) -> dict[str, Any] | None:
    """The first readable failure report a step (or the tracker) wrote, if any."""
    for path in sorted(failures.glob("*.json")) if failures.is_dir() else []:
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # half-written (a full disk): the log still tells
        if isinstance(rep, dict) and "step" in rep and "error" in rep:
            return rep
    return None


def _run_error(compiled: CompiledPipeline, failures: Path, log_path: Path,
               error: BaseException) -> RunError:
    nb = compiled.graph.notebook
    rep = _failure_report(failures)
    if rep is not None:
        where = Location(str(nb.path), rep.get("cell"), rep.get("cell_id"), rep.get("line"))
        context = "\n".join(f"    | {line}" for line in rep.get("context", []))
        msg = f"step {rep['step']!r} failed: {rep['error']}"
        if context:
            msg += "\n" + context
        return RunError(msg, where=where,
                        hint=f"fix the cell and run again: steps that finished come from the "
                        f"cache. Full log: {log_path}")
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
    except OSError:
        tail = []
    return RunError(f"the pipeline failed: {error}\n" + "\n".join("    " + t for t in tail),
                    where=Location(str(nb.path)), hint=f"full log: {log_path}")


def _serve_check(rec: TaskRecord | None) -> dict[str, Any]:
    """The pipeline's serving check: did predict() build, and where is the drift profile."""
    if rec is None:
        return {"task": SERVE_STEP, "status": "NOT_RUN"}
    profile = rec.outputs.get(PROFILE_ARG)
    return {"task": SERVE_STEP, "status": rec.status, "cached": rec.cached,
            "seconds": round(rec.seconds, 3),
            "profile": {"uri": profile["uri"], "sha256": profile["metadata"].get("sha256")}
            if profile else None}


def provenance(compiled: CompiledPipeline, values: dict[str, Any],
               records: dict[str, TaskRecord], metrics: dict[str, float], run_id: str,
               status: str, seconds: float) -> dict[str, Any]:
    import kfp

    graph = compiled.graph
    by_task = {s.task: s for s in graph.steps}
    outputs_of: dict[str, dict[str, Any]] = {}
    steps: dict[str, Any] = {}
    for tname, step in by_task.items():
        rec = records.get(tname)
        outs = {}
        for out_name, art in (rec.outputs if rec else {}).items():
            if out_name.startswith(OUTPUT_PREFIX):
                md = art["metadata"]
                outs[out_name[len(OUTPUT_PREFIX):]] = {"sha256": md.get("sha256"), "serializer":
                                      md.get("serializer"), "type": md.get("type"),
                                      "uri": art["uri"]}
        outputs_of[step.name] = outs
        steps[step.name] = {
            "task": tname,
            "cells": [{"index": c.index, "id": c.id} for c in step.cells],
            "imports_cells": [c.index for c in step.imports_cells],
            "functions_cells": [c.index for c in step.functions_cells],
            "status": rec.status if rec else "NOT_RUN",
            "cached": rec.cached if rec else False,
            "seconds": round(rec.seconds, 3) if rec else None,
            "outputs": outs,
        }
    for step in graph.steps:
        steps[step.name]["inputs"] = {
            var: {"from": src, "sha256": outputs_of.get(src, {}).get(var, {}).get("sha256")}
            for var, src in sorted(step.inputs.items())
        }
    prov = compiled.provenance
    # the data the pipeline started from: what the steps without upstream inputs produced
    entering = {step.name: {var: out.get("sha256") for var, out in sorted(
        outputs_of.get(step.name, {}).items())} for step in graph.steps if not step.inputs}
    data = {"sha256": hashlib.sha256(json.dumps(entering, sort_keys=True).encode()).hexdigest(),
            "from": entering}
    serve_entry: dict[str, Any] | None = None
    if graph.serve is not None and compiled.serve is not None:
        serve_entry = {
            "module": compiled.serve.name,
            "sha256": sha256_file(compiled.serve),
            "cells": [{"index": c.index, "id": c.id} for c in graph.serve.cells],
            "inputs": {var: {"from": src,
                             "sha256": outputs_of.get(src, {}).get(var, {}).get("sha256")}
                       for var, src in sorted(graph.serve.inputs.items())},
            "parameters": list(graph.serve.params),
            "check": _serve_check(records.get(SERVE_STEP)),
        }
    return {
        "run": {"id": run_id, "status": status, "seconds": round(seconds, 3),
                "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
        "git": {"commit": prov.commit, "dirty": prov.dirty},
        "notebook": {"path": str(graph.notebook.path), "sha256": graph.notebook.sha256},
        "pipeline": {"name": compiled.name, "yaml": str(compiled.yaml),
                     "yaml_sha256": compiled.yaml_sha256, "module": str(compiled.module)},
        "parameters": values,
        "metrics": metrics,
        "data": data,
        "versions": {"nbship": __version__, "kfp": kfp.__version__,
                     "python": sys.version.split()[0]},
        "steps": steps,
        "serve": serve_entry,
    }
