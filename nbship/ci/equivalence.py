"""Proof that the pipeline computes what the notebook computes.

The compiled pipeline runs on kfp.local with the same parameters as the
papermill run; then (a) its metrics must equal the notebook's, and (b) every
value that crosses a step boundary must equal the value the notebook held right
after the producing step's cells (captured during the papermill run with the
same serializers), within the notebook's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.ci.compare import DIFFERS, EQUAL, SKIPPED, Verdict, compare
from nbship.ci.notebook_run import NotebookRun, metric_key
from nbship.errors import Location, NbshipError
from nbship.extract.graph import StepGraph
from nbship.runtime import serializers
from nbship.runtime.numerics import Numerics


class NotEquivalent(NbshipError):
    """The pipeline's metrics or boundary values differ from the notebook's."""


@dataclass
class Finding:
    kind: str  # metric | value
    name: str
    producer: str
    consumers: list[str]
    verdict: Verdict
    notebook: str = ""
    pipeline: str = ""


@dataclass
class EquivalenceReport:
    findings: list[Finding] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict.status == DIFFERS]

    @property
    def skipped(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict.status == SKIPPED]

    @property
    def compared(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict.status == EQUAL]


def compare_runs(graph: StepGraph, notebook: NotebookRun, provenance: dict[str, Any],
                 pipeline_metrics: dict[str, float], *, rtol: float,
                 atol: float) -> EquivalenceReport:
    report = EquivalenceReport()
    consumers: dict[tuple[str, str], list[str]] = {}
    for step in graph.steps:
        for var, src in step.inputs.items():
            consumers.setdefault((src, var), []).append(step.name)
    for step in graph.steps:
        captured = notebook.captured.get(step.name, {})
        outputs = provenance["steps"].get(step.name, {}).get("outputs", {})
        for var in sorted(step.outputs):
            users = consumers.get((step.name, var), [])
            meta = captured.get(var, {"status": "missing"})
            if meta["status"] != "saved":
                why = meta.get("error") or "not defined after the step's cells"
                report.findings.append(Finding("value", var, step.name, users,
                                               Verdict(SKIPPED, f"notebook side: {why}")))
                continue
            if not outputs.get(var, {}).get("sha256"):  # a displayed value not kept
                report.findings.append(Finding("value", var, step.name, users, Verdict(
                    SKIPPED, "pipeline side: not saved (the step's last line displays it)")))
                continue
            ours = serializers.load(notebook.capture_dir / step.name / var)
            theirs = serializers.load(Path(outputs[var]["uri"]))
            verdict = compare(ours, theirs, rtol=rtol, atol=atol)
            report.findings.append(Finding("value", var, step.name, users, verdict,
                                           serializers.summary(ours),
                                           serializers.summary(theirs)))
    for name, step_name in graph.metrics.items():
        key = metric_key(graph.step(step_name), name)  # where the notebook printed it
        meta = notebook.captured.get(key, {}).get(name, {"status": "missing"})
        if meta["status"] != "saved" or name not in pipeline_metrics:
            side = "the pipeline" if meta["status"] == "saved" else "the notebook"
            report.findings.append(Finding("metric", name, step_name, [],
                                           Verdict(DIFFERS, f"{side} has no value"),
                                           "missing" if side == "the notebook" else "",
                                           "missing" if side == "the pipeline" else ""))
            continue
        ours = float(serializers.load(notebook.capture_dir / key / name))
        theirs = pipeline_metrics[name]
        report.findings.append(Finding("metric", name, step_name, [],
                                       compare(ours, theirs, rtol=rtol, atol=atol),
                                       f"{ours:.6g}", f"{theirs:.6g}"))
    involved = {f.producer for f in report.mismatches} | {
        c for f in report.mismatches for c in f.consumers}
    for problem in graph.warnings:
        # what check said may differ: in-place changes, code holding an earlier step's copies
        if problem.kind in ("mutation", "closure") and any(
                f"'{s}'" in problem.message for s in involved):
            report.hints.append(f"{problem.where}: {problem.message}")
    if report.mismatches and not report.hints:
        report.hints.append("state that is not a variable (random generators, files, "
                            "environment) does not cross step boundaries: set it in the step "
                            "that uses it; or a library computes differently from run to run "
                            "even under the same numeric settings (a kernel with no "
                            "deterministic form): set a tolerance ([tool.nbship] in "
                            "pyproject.toml, or metadata.nbship)")
    return report


def conditions(settings: Numerics | None) -> str:
    """The numeric settings both sides ran under, as the report states them."""
    if settings is None:
        return "each side with its libraries' default settings"
    words = [f"{settings.threads} thread(s) per native thread pool"]
    words += [f"{name}'s deterministic algorithms" for name in settings.libraries]
    return ", ".join([*words, "array memory layouts kept across steps"])


def describe(report: EquivalenceReport, *, label: str, rtol: float, atol: float,
             settings: Numerics | None = None) -> str:
    lines = [f"the pipeline does not compute what the notebook computes (parameter set "
             f"{label!r}, rtol {rtol:g}, atol {atol:g}; both ran with {conditions(settings)}):"]
    for f in report.mismatches:
        if f.kind == "metric":
            lines.append(f"  metric {f.name!r} (logged by step {f.producer!r}): notebook "
                         f"{f.notebook}, pipeline {f.pipeline}")
        else:
            to = ", ".join(repr(c) for c in f.consumers) or "no step"
            lines.append(f"  variable {f.name!r} from step {f.producer!r} to {to}: "
                         f"{f.verdict.detail} (notebook {f.notebook}, pipeline {f.pipeline})")
    for hint in report.hints:
        lines.append(f"  likely cause: {hint}")
    if report.skipped:
        lines.append("  not compared: " + ", ".join(
            f"{f.name!r} ({f.verdict.detail})" for f in report.skipped))
    return "\n".join(lines)


def check_equivalence(graph: StepGraph, notebook: NotebookRun, provenance: dict[str, Any], *,
                      rtol: float, atol: float, label: str,
                      settings: Numerics | None = None) -> EquivalenceReport:
    """Compare a finished pipeline run (its provenance) with the notebook run.

    Raise NotEquivalent naming each variable or metric that differs.
    """
    report = compare_runs(graph, notebook, provenance, provenance.get("metrics", {}),
                          rtol=rtol, atol=atol)
    if report.mismatches:
        raise NotEquivalent(describe(report, label=label, rtol=rtol, atol=atol,
                                     settings=settings),
                            where=Location(str(graph.notebook.path)))
    return report
