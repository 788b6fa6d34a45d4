"""StepGraph -> a readable KFP v2 pipeline module (Python source).

One ``@dsl.component`` function per step whose body is that step's cells, with
the loading of its inputs and the saving of its outputs around them; the
``imports`` and ``functions`` cells a step needs are copied in. Each cell
follows a ``# --- cell N (id X) ---`` marker with its line numbers intact
(multi-line strings are not re-indented), which is how a failing step names the
notebook cell and line.
"""

from __future__ import annotations

import io
import tokenize
from dataclasses import dataclass

from nbship import __version__
from nbship.extract.graph import Step, StepGraph
from nbship.notebook import Cell

INDENT = " " * 8  # inside `def ...:` and `with StepRun(...):`
RUNTIME = "_nbship"


@dataclass(frozen=True)
class Provenance:
    notebook: str
    sha256: str
    commit: str | None
    dirty: bool

    def describe(self) -> str:
        at = f"commit {self.commit}" + (" (dirty)" if self.dirty else "") if self.commit \
            else "no git commit"
        return (f"Compiled by nbship {__version__} from notebook {self.notebook} "
                f"(sha256 {self.sha256}) at {at}.")


def pipeline_name(graph: StepGraph) -> str:
    """The notebook's name in KFP's spelling; never a step's (KFP would confuse the two)."""
    import re

    stem = re.sub(r"[^a-z0-9]+", "-", graph.notebook.path.stem.lower()).strip("-") or "notebook"
    if stem in {s.task for s in graph.steps}:
        stem += "-pipeline"
    return stem


def _indent_cell(python: str) -> list[str]:
    """Indent a cell's lines, leaving continuation lines of multi-line strings untouched."""
    lines = python.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    inside: set[int] = set()  # 1-based line numbers that continue a string token
    try:
        for tok in tokenize.generate_tokens(io.StringIO(python).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                inside.update(range(tok.start[0] + 1, tok.end[0] + 1))
            elif tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1) and tok.end[0] > tok.start[0]:
                inside.update(range(tok.start[0] + 1, tok.end[0] + 1))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    out = []
    for n, line in enumerate(lines, start=1):
        if n in inside or not line.strip():
            out.append(line if n in inside else "")
        else:
            out.append(INDENT + line)
    return out


def _marker(cell: Cell, role: str | None = None) -> str:
    head = f"{role} cell" if role else "cell"
    ident = f" (id {cell.id})" if cell.id else ""
    return f"{INDENT}# --- {head} {cell.index}{ident} ---"


def _cell_code(graph: StepGraph, cell: Cell, used_imports: set[str] | None = None) -> list[str]:
    code = graph.codes[cell.index]
    python = code.python
    lines = python.split("\n")
    for m in code.magics:
        if m.install and 0 < m.line <= len(lines):
            lines[m.line - 1] = f"pass  # not run in the pipeline (the image has it): {m.text}"
    for first, last in code.future_imports:  # only legal at the top of a module
        for n in range(first - 1, last):
            lines[n] = ("pass  # module-level, left out: " if n == first - 1 else "# ") + \
                lines[n].strip()
    if used_imports is not None:
        _comment_unused_imports(python, lines, used_imports)
    return _indent_cell("\n".join(lines))


def _comment_unused_imports(python: str, lines: list[str], used: set[str]) -> None:
    """In a cell of imports only, comment out the imports this step does not use.

    Importing torch costs seconds per step; line numbers stay as in the notebook.
    A cell with any other statement is kept whole (the statement may need them all).
    """
    import ast

    try:
        body = ast.parse(python).body
    except SyntaxError:
        return
    if not all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body):
        return
    for stmt in body:
        assert isinstance(stmt, (ast.Import, ast.ImportFrom))
        bound = {a.asname or a.name.split(".")[0] for a in stmt.names}
        if bound & used:
            continue
        end = stmt.end_lineno or stmt.lineno
        for n in range(stmt.lineno - 1, end):
            if lines[n].strip():
                lines[n] = "# " + lines[n] + ("  # not used by this step" if n == end - 1 else "")


def _annotation(kind: str) -> str:
    return {"int": "int", "float": "float", "str": "str", "bool": "bool", "list": "list",
            "dict": "dict"}[kind]


def step_source(graph: StepGraph, step: Step) -> list[str]:
    args: list[str] = []
    for p in step.params:
        args.append(f"{p}: {_annotation(graph.parameters[p].type)}")
    for var in sorted(step.inputs):
        args.append(f"in_{var}: Input[Artifact]")
    for var in sorted(step.outputs):
        args.append(f"out_{var}: Output[Artifact]")
    if step.metrics:
        args.append("nbship_metrics: Output[Metrics]")
    image = repr(step.image) if step.image else "BASE_IMAGE"
    cells = ", ".join(str(c.index) for c in step.cells)
    out = [
        f"@dsl.component(base_image={image}, install_kfp_package=False)",
        f"def {step.func}(",
        *[f"    {a}," for a in args],
        "):",
        f'    """Step {step.name!r}: cells {cells} of {graph.notebook.name}."""',
    ]
    uses_ipython = any(graph.codes[c.index].magics and not all(
        m.install for m in graph.codes[c.index].magics)
        for c in [*step.imports_cells, *step.functions_cells, *step.cells])
    if uses_ipython:
        out.append("    from nbship.runtime.magics import get_ipython")
    out += [
        "    from nbship.runtime.step import StepRun",
        "",
        f"    with StepRun({step.name!r}, {graph.notebook.name!r}) as {RUNTIME}:",
    ]
    body: list[str] = []
    for cell in step.imports_cells:
        body += [_marker(cell, "imports"), *_cell_code(graph, cell, step.import_names)]
    if step.carried_imports:
        body.append(f"{INDENT}# imports made in earlier steps' cells")
        body += [INDENT + stmt for stmt in step.carried_imports]
    for cell in step.functions_cells:
        body += [_marker(cell, "functions"), *_cell_code(graph, cell)]
    if step.inputs:
        body.append(f"{INDENT}# --- inputs from upstream steps ---")
        for var in sorted(step.inputs):
            body.append(f"{INDENT}{var} = {RUNTIME}.load(in_{var}, {var!r})"
                        f"  # from step {step.inputs[var]!r}")
    for cell in step.cells:
        body += [_marker(cell), *_cell_code(graph, cell)]
    if step.outputs or step.metrics:
        body.append(f"{INDENT}# --- outputs for downstream steps ---")
    for var in sorted(step.outputs):
        cell, _line = step.outputs[var]
        cid = f", cell_id={cell.id!r}" if cell.id else ""
        body.append(f"{INDENT}{RUNTIME}.save(out_{var}, {var!r}, {var}, cell={cell.index}{cid})")
    for metric in step.metrics:
        body.append(f"{INDENT}{RUNTIME}.log_metric(nbship_metrics, {metric!r}, {metric})")
    if not any(line.strip() and not line.strip().startswith("#") for line in body):
        body.append(f"{INDENT}pass")
    return out + body


def _task_settings(step: Step, var: str) -> list[str]:
    lines: list[str] = []
    if step.cache is False:
        lines.append(f"    {var}.set_caching_options(False)")
    for key, value in step.limits.items():
        if key == "cpu":
            lines.append(f"    {var}.set_cpu_limit({value!r})")
        elif key == "memory":
            lines.append(f"    {var}.set_memory_limit({value!r})")
        elif "gpu" in key or "/" in key:
            lines.append(f"    {var}.set_accelerator_type({key!r}).set_accelerator_limit("
                         f"{value!r})")
    for k, v in step.labels.items():
        lines.append(f"    kubernetes.add_pod_label({var}, {k!r}, {v!r})")
    for k, v in step.annotations.items():
        lines.append(f"    kubernetes.add_pod_annotation({var}, {k!r}, {v!r})")
    for name, key, env in step.secrets:
        lines.append(f"    kubernetes.use_secret_as_env({var}, secret_name={name!r}, "
                     f"secret_key_to_env={{{key!r}: {env!r}}})")
    return lines


def generate(graph: StepGraph, *, base_image: str, provenance: Provenance) -> str:
    """The pipeline module's source. Deterministic: same graph and inputs, same text."""
    needs_k8s = any(s.labels or s.annotations or s.secrets for s in graph.steps)
    name = pipeline_name(graph)
    head = [
        f'"""KFP v2 pipeline {name!r}, generated by nbship {__version__} from '
        f'{graph.notebook.name}.',
        "",
        "Do not edit: change the notebook and run `nbship compile` again.",
        f"Notebook sha256: {provenance.sha256}",
        f"Git commit: {provenance.commit or 'none'}{' (dirty)' if provenance.dirty else ''}",
        '"""',
        "",
        "from kfp import dsl",
        "from kfp.dsl import Artifact, Input, Metrics, Output",
    ]
    if needs_k8s:
        head.append("from kfp import kubernetes")
    head += [
        "",
        f"BASE_IMAGE = {base_image!r}",
        f"DESCRIPTION = {provenance.describe()!r}",
        "",
    ]
    parts = ["\n".join(head)]
    for step in graph.steps:
        parts.append("\n".join(step_source(graph, step)))
    params = [f"    {p.name}: {_annotation(p.type)} = {p.value!r}," for p in
              graph.parameters.values()]
    pipe = [f"@dsl.pipeline(name={name!r}, description=DESCRIPTION)", "def pipeline("]
    pipe += params
    pipe.append("):")
    task_var = {s.name: f"{s.func}_task" for s in graph.steps}
    data_pairs = {(e.src, e.dst) for e in graph.edges if e.variables}
    for step in graph.topological():
        kwargs = [f"{p}={p}" for p in step.params]
        kwargs += [f"in_{v}={task_var[step.inputs[v]]}.outputs['out_{v}']"
                   for v in sorted(step.inputs)]
        pipe.append(f"    {task_var[step.name]} = {step.func}({', '.join(kwargs)})")
        for e in graph.edges:
            if e.dst == step.name and not e.variables and (e.src, e.dst) not in data_pairs:
                pipe.append(f"    {task_var[step.name]}.after({task_var[e.src]})")
        pipe += _task_settings(step, task_var[step.name])
    if not graph.steps:
        pipe.append("    pass")
    parts.append("\n".join(pipe))
    return "\n\n\n".join(parts) + "\n"
