"""Print a StepGraph: plain text for people, JSON for tools, Mermaid for pictures."""

from __future__ import annotations

import json
from typing import Any

from nbship.extract.graph import StepGraph, report_cells


def _cells(step_cells: list[Any]) -> str:
    return ", ".join(str(c.index) for c in step_cells)


def to_text(graph: StepGraph) -> str:
    nb = graph.notebook
    lines = [f"{nb.path}  ({len(graph.steps)} steps, sha256 {nb.sha256[:12]})", ""]
    lines.append("steps:")
    width = max((len(s.name) for s in graph.steps), default=4)
    for s in graph.steps:
        extras = []
        if s.params:
            extras.append("params " + ", ".join(s.params))
        if s.metrics:
            extras.append("metrics " + ", ".join(s.metrics))
        if s.image:
            extras.append(f"image {s.image}")
        if s.limits:
            extras.append("limits " + ", ".join(f"{k}={v}" for k, v in s.limits.items()))
        if s.cache is False:
            extras.append("cache disabled")
        if s.report is False:
            extras.append("report disabled")
        if s.results:
            extras.append("keeps " + ", ".join(sorted(s.results)) + " (its last line)")
        extra = ("  [" + "; ".join(extras) + "]") if extras else ""
        lines.append(f"  {s.name:<{width}}  cells {_cells(s.cells)}{extra}")
    lines.append("")
    lines.append("edges:")
    if not graph.edges:
        lines.append("  (none)")
    for e in graph.edges:
        carried = ", ".join(e.variables) if e.variables else "(order only, prev:)"
        lines.append(f"  {e.src} -> {e.dst}: {carried}")
    lines.append("")
    lines.append("parameters:")
    if not graph.parameters:
        lines.append("  (none)")
    for p in graph.parameters.values():
        lines.append(f"  {p.name}: {p.type} = {p.value!r}")
    lines.append("")
    lines.append("metrics:")
    if not graph.metrics:
        lines.append("  (none)")
    for name, step in graph.metrics.items():
        lines.append(f"  {name} (logged by {step})")
    lines.append("")
    if graph.serve is not None:
        serve = graph.serve
        reads = ", ".join(f"{v} (from {src})" for v, src in sorted(serve.inputs.items()))
        lines.append("serve:")
        lines.append(f"  cells {_cells(serve.cells)}: predict() reads {reads or 'no step value'}"
                     + (f"; params {', '.join(serve.params)}" if serve.params else ""))
        lines.append("")
    n_err, n_warn = len(graph.errors), len(graph.warnings)
    lines.append(f"problems: {n_err} error(s), {n_warn} warning(s)")
    for problem in graph.problems:
        lines.append("  " + str(problem).replace("\n", "\n  "))
    return "\n".join(lines) + "\n"


def to_json(graph: StepGraph) -> str:
    nb = graph.notebook
    doc = {
        "notebook": str(nb.path),
        "sha256": nb.sha256,
        "steps": [
            {
                "name": s.name,
                "cells": [{"index": c.index, "id": c.id} for c in s.cells],
                "reads": sorted(s.inputs),
                "writes": sorted(s.outputs),
                "inputs": s.inputs,
                "parameters": s.params,
                "metrics": s.metrics,
                "prev": s.prev,
                "imports_cells": [c.index for c in s.imports_cells],
                "functions_cells": [c.index for c in s.functions_cells],
                "image": s.image,
                "cache": s.cache,
                "limits": s.limits,
                "labels": s.labels,
                "annotations": s.annotations,
                "secrets": [list(x) for x in s.secrets],
                # the bare name ending the step (displayed by Jupyter), kept as an output
                "results": sorted(s.results),
                # Kale's per-step HTML report: the cells whose outputs it shows
                "report": {"enabled": s.report is not False,
                           "cells": [c.index for c in report_cells(s)]},
            }
            for s in graph.steps
        ],
        "edges": [{"from": e.src, "to": e.dst, "kind": e.kind, "variables": list(e.variables)}
                  for e in graph.edges],
        "parameters": {p.name: {"type": p.type, "default": p.value, "cell": p.cell.index}
                       for p in graph.parameters.values()},
        "metrics": graph.metrics,
        "serve": None if graph.serve is None else {
            "cells": [{"index": c.index, "id": c.id} for c in graph.serve.cells],
            "inputs": graph.serve.inputs,
            "parameters": graph.serve.params,
            "imports_cells": [c.index for c in graph.serve.imports_cells],
            "functions_cells": [c.index for c in graph.serve.functions_cells],
        },
        "problems": [p.to_json() for p in graph.problems],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_mermaid(graph: StepGraph) -> str:
    lines = ["graph TD"]
    for s in graph.steps:
        lines.append(f'    {s.func}["{s.name}<br/>cells {_cells(s.cells)}"]')
    for e in graph.edges:
        if e.variables:
            label = ", ".join(e.variables).replace('"', "'")
            lines.append(f'    {graph.step(e.src).func} -->|"{label}"| {graph.step(e.dst).func}')
        else:
            lines.append(f"    {graph.step(e.src).func} -.-> {graph.step(e.dst).func}")
    return "\n".join(lines) + "\n"
