"""StepGraph -> a readable KFP v2 pipeline module (Python source).

One ``@dsl.component`` function per step whose body is that step's cells, with
the loading of its inputs and the saving of its outputs around them; the
``imports`` and ``functions`` cells a step needs are copied in. Each cell
follows a ``# --- cell N (id X) ---`` marker with its line numbers intact
(multi-line strings are not re-indented), which is how a failing step names the
notebook cell and line.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from nbship import __version__
from nbship.errors import CompileError
from nbship.extract.graph import SERVE_FUNCTION, Parameter, Step, StepGraph, notebook_slug
from nbship.notebook import Cell, is_accelerator

INDENT = " " * 8  # inside `def ...:` and `with StepRun(...):`
# Every name the generated code binds inside a step starts with RESERVED_PREFIX; the
# analysis refuses user names with it (graph.RESERVED_PREFIXES), so none can collide.
RUNTIME = "nbship_step"
METRICS_ARG = "nbship_metrics"
INPUT_PREFIX = "nbship_in_"
OUTPUT_PREFIX = "nbship_out_"
_CELL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def input_arg(var: str) -> str:
    """The step function argument that brings ``var`` from upstream."""
    return INPUT_PREFIX + var


def output_arg(var: str) -> str:
    """The step function argument that carries ``var`` downstream."""
    return OUTPUT_PREFIX + var


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
    stem = notebook_slug(graph.notebook)
    if stem in {s.task for s in graph.steps}:
        stem += "-pipeline"
    return stem


def python_lines(text: str) -> list[str]:
    """Split ``text`` into lines exactly where Python's tokenizer ends them (\\n, \\r\\n, \\r)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _drop_formfeeds(line: str) -> str:
    """A form feed in the indentation resets Python's column to 0: keep what counts after it.

    Prepending spaces before a form feed would not indent the line at all, so the line
    would leave the step function. Dropping the leading whitespace up to the last form
    feed gives the same indentation Python computes.
    """
    body = line.lstrip(" \t\f")
    leading = line[: len(line) - len(body)]
    if "\f" in leading:
        leading = leading[leading.rindex("\f") + 1:]
    return leading + body


def _indent_cell(python: str, indent: str = INDENT) -> list[str]:
    """Indent a cell's lines, leaving continuation lines of multi-line strings untouched."""
    lines = python_lines(python)
    python = "\n".join(lines)
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
            out.append(indent + _drop_formfeeds(line))
    return out


def safe_cell_id(cell: Cell) -> str | None:
    """The cell's id where it is nbformat's id syntax; anything else is left out of code."""
    return cell.id if cell.id and _CELL_ID.match(cell.id) else None


def _marker(cell: Cell, role: str | None = None, indent: str = INDENT) -> str:
    head = f"{role} cell" if role else "cell"
    cid = safe_cell_id(cell)
    ident = f" (id {cid})" if cid else ""
    return f"{indent}# --- {head} {cell.index}{ident} ---"


def _cell_code(graph: StepGraph, cell: Cell, used_imports: set[str] | None = None,
               indent: str = INDENT) -> list[str]:
    code = graph.codes[cell.index]
    python = code.python
    lines = python_lines(python)
    for m in code.magics:
        if m.install and 0 < m.line <= len(lines):
            text = " ".join(python_lines(m.text))
            lines[m.line - 1] = f"pass  # not run in the pipeline (the image has it): {text}"
    for stmt in _module_level_globals(python):  # the step declares them once, at its top
        _blank_statement(lines, stmt, "pass  # declared global for the whole step: ")
    for first, last in code.future_imports:  # only legal at the top of a module
        for n in range(first - 1, last):
            lines[n] = ("pass  # module-level, left out: " if n == first - 1 else "# ") + \
                lines[n].strip()
    if used_imports is not None:
        _comment_unused_imports(python, lines, used_imports)
    return _indent_cell("\n".join(lines), indent)


def _parse(python: str) -> ast.Module | None:
    try:
        return ast.parse(python)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _module_level_globals(python: str) -> list[ast.Global]:
    """`global` statements of a cell outside any function or class: in the notebook they
    name module variables, which they are already."""
    tree = _parse(python)
    found: list[ast.Global] = []
    stack: list[ast.AST] = list(tree.body) if tree else []
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Global):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                   ast.Lambda, ast.expr)):
            stack.extend(ast.iter_child_nodes(node))
    return found


def global_names(graph: StepGraph, cells: list[Cell]) -> list[str]:
    """Every name a `global` statement in ``cells`` declares (in functions or not), sorted.

    Cells run inside the step's function: the step declares these names global at its
    top, so the cells' assignments and the functions' `global` statements name the same
    variable, as the notebook's one namespace does (a function that does
    `global counter; counter += 1` changes the `counter` the cells set).
    """
    names: set[str] = set()
    for cell in cells:
        tree = _parse(graph.codes[cell.index].python)
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Global):
                names.update(node.names)
    return sorted(names)


def _blank_statement(lines: list[str], stmt: ast.stmt, comment: str) -> None:
    """Replace a one-line statement with ``pass`` (line numbers and other statements on the
    line stay)."""
    if stmt.end_lineno != stmt.lineno or stmt.end_col_offset is None:
        return
    raw = lines[stmt.lineno - 1].encode("utf-8", "surrogatepass")
    start, end = stmt.col_offset, stmt.end_col_offset
    text = raw[start:end].decode("utf-8", "surrogatepass")
    if raw[:start].strip() == b"" and raw[end:].strip() in (b"", b";"):
        lines[stmt.lineno - 1] = (raw[:start].decode("utf-8", "surrogatepass") + comment
                                  + text)
    else:
        lines[stmt.lineno - 1] = (raw[:start] + b"pass" + raw[end:]).decode(
            "utf-8", "surrogatepass")


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


# list and dict parameters travel as JSON text: KFP's struct values keep numbers as
# doubles only ([1, 2] would arrive as [1.0, 2.0]). A `None` parameter is an optional
# string, also as JSON text (null or "text"): kfp.local cannot run a KFP optional input
# that has no default (kfp 2.17.3: "Unknown value type").
JSON_KINDS = frozenset({"list", "dict", "none"})


def _annotation(kind: str) -> str:
    return {"int": "int", "float": "float", "str": "str", "bool": "bool", "list": "str",
            "dict": "str", "none": "str"}[kind]


def _default(param: Parameter) -> str:
    if param.type in JSON_KINDS:
        return repr(json.dumps(param.value, sort_keys=False))
    return repr(param.value)


# A serve cell may bind this to inputs like the ones the model learned from (e.g. the
# training images): the pipeline profiles them, the server watches drift against that.
REFERENCE = "reference_inputs"
# The pipeline's serving check: a component after the steps that runs the serve cells on
# the run's values (predict() must build) and records the reference profile for drift.
SERVE_STEP = "nbship-serve"
PROFILE_ARG = "nbship_profile"


def serve_step(graph: StepGraph) -> Step | None:
    """The serve cells as the pipeline's last component (task ``nbship-serve``), if any."""
    if graph.serve is None:
        return None
    return dataclasses.replace(graph.serve, name=SERVE_STEP, outputs={}, metrics=[])


def step_source(graph: StepGraph, step: Step) -> list[str]:
    serving = step.name == SERVE_STEP
    args: list[str] = []
    for p in step.params:
        args.append(f"{p}: {_annotation(graph.parameters[p].type)}")
    for var in sorted(step.inputs):
        args.append(f"{input_arg(var)}: Input[Artifact]")
    for var in sorted(step.outputs):
        args.append(f"{output_arg(var)}: Output[Artifact]")
    if step.metrics:
        args.append(f"{METRICS_ARG}: Output[Metrics]")
    if serving:
        args.append(f"{PROFILE_ARG}: Output[Artifact]")
    image = repr(step.image) if step.image else "BASE_IMAGE"
    cells = ", ".join(str(c.index) for c in step.cells)
    doc = (f"Serving check: serve cells {cells} of {graph.notebook.name} build predict(); "
           "the reference profile for drift." if serving
           else f"Step {step.name!r}: cells {cells} of {graph.notebook.name}.")
    out = [
        f"@dsl.component(base_image={image}, install_kfp_package=False)",
        f"def {step.func}(",
        *[f"    {a}," for a in args],
        "):",
        f"    {_docstring(doc)}",
    ]
    shared = {n for names in step.shared_functions.values() for n in names}
    declared = [n for n in sorted(shared.union(global_names(
        graph, [*step.functions_cells, *step.cells]))) if n not in step.params]
    # (a parameter declared global is a check error)
    if declared:
        out.append(f"    global {', '.join(declared)}  # declared global in the step's cells")
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
    folder = graph.notebook.path.resolve().parent
    for module in step.local_modules:  # their text is part of the step's cache key
        body.append(f"{INDENT}# imports the notebook's own {printable(module)}, sha256 "
                    f"{_module_digest(folder / module)}")
    json_params = [p for p in step.params if graph.parameters[p].type in JSON_KINDS]
    if json_params:
        body.append(f"{INDENT}# --- list/dict/None parameters arrive as JSON text ---")
        body += [f"{INDENT}{p} = {RUNTIME}.json_parameter({p!r}, {p})" for p in json_params]
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
            body.append(f"{INDENT}{var} = {RUNTIME}.load({input_arg(var)}, {var!r})"
                        f"  # from step {step.inputs[var]!r}")
        for func in sorted(step.shared_functions):
            body.append(f"{INDENT}{func} = {RUNTIME}.share_globals({func}, globals())"
                        "  # its `global` names are this step's")
        for func in sorted(step.rebinds):
            names = [n for n in step.rebinds[func] if n not in declared]
            if names:  # it reads (and changes) this step's variables, as in the notebook
                cells_arg = ", ".join(f"{n!r}: (lambda: {n}).__closure__[0]" for n in names)
                body.append(f"{INDENT}{func} = {RUNTIME}.rebind({func}, {{{cells_arg}}})"
                            "  # reads this step's variables")
    for cell in step.cells:
        body += [_marker(cell), *_cell_code(graph, cell)]
        here = [m for m in step.metrics if step.metric_after.get(m) == cell.index]
        if here:  # the notebook's metrics cell stands here, inside this step
            body.append(f"{INDENT}# --- metrics, as the notebook prints them here ---")
            body += [f"{INDENT}{RUNTIME}.log_metric({METRICS_ARG}, {m!r}, {m})" for m in here]
    at_end = [m for m in step.metrics if m not in step.metric_after]
    if step.outputs or at_end:
        body.append(f"{INDENT}# --- outputs for downstream steps ---")
    for var in sorted(step.outputs):
        cell, _line = step.outputs[var]
        cid = f", cell_id={cell.id!r}" if cell.id else ""
        kept = ", result=True" if var in step.results else ""  # displayed, read by no step
        body.append(f"{INDENT}{RUNTIME}.save({output_arg(var)}, {var!r}, {var}, "
                    f"cell={cell.index}{cid}{kept})")
    for metric in at_end:
        body.append(f"{INDENT}{RUNTIME}.log_metric({METRICS_ARG}, {metric!r}, {metric})")
    if serving:
        body.append(f"{INDENT}# --- predict() and the reference profile for the model release ---")
        body.append(f"{INDENT}{RUNTIME}.profile({PROFILE_ARG}, {SERVE_FUNCTION}, "
                    f"locals().get({REFERENCE!r}))")
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
        elif is_accelerator(key):
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
    doc = "\n".join([
        f"KFP v2 pipeline {name!r}, generated by nbship {__version__} from "
        f"{graph.notebook.name!r}.",
        "",
        "Do not edit: change the notebook and run `nbship compile` again.",
        f"Notebook sha256: {provenance.sha256}",
        f"Git commit: {provenance.commit or 'none'}{' (dirty)' if provenance.dirty else ''}",
        "",
    ])
    head = [
        _docstring(doc),
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
    serving = serve_step(graph)
    components = [*graph.steps, *([serving] if serving else [])]
    for step in components:
        parts.append("\n".join(step_source(graph, step)))
    params = [f"    {p.name}: {_annotation(p.type)} = {_default(p)}," for p in
              graph.parameters.values()]
    pipe = [f"@dsl.pipeline(name={name!r}, description=DESCRIPTION)", "def pipeline("]
    pipe += params
    pipe.append("):")
    # `_` + the step's function: step names and parameters never start with `_`
    task_var = {s.name: f"_{s.func}" for s in components}
    data_pairs = {(e.src, e.dst) for e in graph.edges if e.variables}
    for step in [*graph.topological(), *([serving] if serving else [])]:
        kwargs = [f"{p}={p}" for p in step.params]
        kwargs += [f"{input_arg(v)}={task_var[step.inputs[v]]}.outputs[{output_arg(v)!r}]"
                   for v in sorted(step.inputs)]
        pipe.append(f"    {task_var[step.name]} = {step.func}({', '.join(kwargs)})")
        for e in graph.edges:
            if e.dst == step.name and not e.variables and (e.src, e.dst) not in data_pairs:
                pipe.append(f"    {task_var[step.name]}.after({task_var[e.src]})")
        pipe += _task_settings(step, task_var[step.name])
    if not graph.steps:
        pipe.append("    pass")
    parts.append("\n".join(pipe))
    source = "\n\n\n".join(parts) + "\n"
    verify_shape(source, graph)
    return source


def printable(text: str) -> str:
    """``text`` with every control or line-break character escaped as Python would (for a
    comment line, or a YAML comment)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _module_digest(path: Path) -> str:
    """sha256 of a module file, or of a package's .py files (names and bytes)."""
    h = hashlib.sha256()
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for f in files:
        try:
            h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes())
        except OSError:
            h.update(b"unreadable\0")
    return h.hexdigest()


def _docstring(text: str) -> str:
    """A docstring literal for ``text``: triple-quoted when that is exactly ``text``."""
    if ('"""' not in text and "\\" not in text and not text.endswith('"')
            and all(ch == "\n" or ch.isprintable() for ch in text)):
        candidate = f'"""{text}"""'
        try:
            if ast.literal_eval(candidate) == text:
                return candidate
        except (SyntaxError, ValueError):
            pass
    return repr(text)


def verify_shape(source: str, graph: StepGraph) -> None:
    """Re-parse the generated module; raise CompileError unless it is exactly what we built.

    Importing the module (which KFP's compiler needs) must run nothing of the notebook:
    at the top level only the docstring, kfp imports, two constants, one decorated
    function per step and the pipeline function; each step function's arguments as
    generated and no defaults; its body a docstring, imports and one ``with`` block
    holding the cells. Notebook text that escaped its place fails this check.
    """
    def fail(why: str) -> CompileError:
        return CompileError(f"the generated pipeline module is not as built ({why}); "
                            "refusing to import it", where=graph.notebook.where(),
                            hint="this is a bug in nbship: please report it with the notebook")

    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise fail(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    body = list(tree.body)
    if not body or not (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                        and isinstance(body[0].value.value, str)):
        raise fail("no module docstring first")
    body.pop(0)
    while body and isinstance(body[0], ast.ImportFrom):
        if body[0].module not in ("kfp", "kfp.dsl"):
            raise fail(f"unexpected import at line {body[0].lineno}")
        body.pop(0)
    for const in ("BASE_IMAGE", "DESCRIPTION"):
        stmt = body.pop(0) if body else None
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == const
                and isinstance(stmt.value, ast.Constant)):
            raise fail(f"{const} is not a constant")
    serving = serve_step(graph)
    components = [*graph.steps, *([serving] if serving else [])]
    funcs = [s.func for s in components] + ["pipeline"]
    if len(body) != len(funcs) or not all(isinstance(n, ast.FunctionDef) for n in body):
        raise fail("top-level statements other than the step and pipeline functions")
    for node, step in zip(body, [*components, None]):
        assert isinstance(node, ast.FunctionDef)
        expected = step.func if step else "pipeline"
        if node.name != expected or len(node.decorator_list) != 1:
            raise fail(f"function {node.name!r} where {expected!r} was generated")
        args = node.args
        if args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
            raise fail(f"function {node.name!r} has unexpected arguments")
        for default in args.defaults:
            try:
                ast.literal_eval(default)
            except ValueError:
                raise fail(f"a default of {node.name!r} is not a literal") from None
        if step is None:
            continue
        if args.defaults:
            raise fail(f"step function {node.name!r} has defaults")
        stmts = list(node.body)
        if stmts and isinstance(stmts[0], ast.Expr) and isinstance(stmts[0].value, ast.Constant):
            stmts.pop(0)
        if stmts and isinstance(stmts[0], ast.Global):
            stmts.pop(0)
        while stmts and isinstance(stmts[0], ast.ImportFrom) and \
                (stmts[0].module or "").startswith("nbship.runtime."):
            stmts.pop(0)
        if len(stmts) != 1 or not isinstance(stmts[0], ast.With):
            raise fail(f"step function {node.name!r} has code outside its `with StepRun`")


SERVE_INDENT = " " * 4


def serve_source(graph: StepGraph) -> str:
    """The serve cells as a module: ``build(values...)`` runs them and returns ``predict``.

    Written beside pipeline.py by compile and kept with each run, so a model server
    runs exactly the code that run's notebook had. The same rules as step code: only
    the cells' bodies are code, inside ``build``; the shape is checked.
    """
    serve = graph.serve
    assert serve is not None
    args = [*sorted(serve.inputs), *serve.params]
    cells = ", ".join(str(c.index) for c in serve.cells)
    head = [
        _docstring(f"Serving code of {graph.notebook.name!r} (serve cells {cells}), generated "
                   f"by nbship {__version__}.\n\nDo not edit: change the notebook and compile "
                   "again.\n"),
        "",
        f"INPUTS = {dict(sorted(serve.inputs.items()))!r}  # value -> the step that produces it",
        f"PARAMETERS = {list(serve.params)!r}",
        f"CELLS = {[c.index for c in serve.cells]!r}",
        "",
        "",
        f"def build({', '.join(args)}):",
        "    " + _docstring("Run the serve cells with the pipeline values; return predict() "
                           "and the reference inputs for drift (None when the cell names none)."),
    ]
    declared = [n for n in global_names(graph, [*serve.functions_cells, *serve.cells])
                if n not in args]  # (an argument cannot be declared global)
    if declared:  # `global calls` in predict() names build()'s `calls`, as in the notebook
        head.append(f"    global {', '.join(declared)}")
    body: list[str] = []
    for cell in serve.imports_cells:
        body += [_marker(cell, "imports", SERVE_INDENT),
                 *_cell_code(graph, cell, serve.import_names, SERVE_INDENT)]
    body += [SERVE_INDENT + stmt for stmt in serve.carried_imports]
    for cell in serve.functions_cells:
        body += [_marker(cell, "functions", SERVE_INDENT),
                 *_cell_code(graph, cell, None, SERVE_INDENT)]
    for cell in serve.cells:
        body += [_marker(cell, "serve", SERVE_INDENT), *_cell_code(graph, cell, None, SERVE_INDENT)]
    body.append(f"{SERVE_INDENT}return {SERVE_FUNCTION}, locals().get({REFERENCE!r})")
    source = "\n".join(head + body) + "\n"
    _verify_serve_shape(source, graph)
    return source


def _verify_serve_shape(source: str, graph: StepGraph) -> None:
    def fail(why: str) -> CompileError:
        return CompileError(f"the generated serving module is not as built ({why})",
                            where=graph.notebook.where(),
                            hint="this is a bug in nbship: please report it with the notebook")

    try:
        body = ast.parse(source).body
    except SyntaxError as exc:
        raise fail(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    shapes = [type(n).__name__ for n in body]
    if shapes != ["Expr", "Assign", "Assign", "Assign", "FunctionDef"]:
        raise fail("top-level statements other than the constants and build()")
    build = body[-1]
    assert isinstance(build, ast.FunctionDef)
    if build.name != "build" or build.decorator_list or build.args.defaults or \
            build.args.kw_defaults or build.returns is not None:
        raise fail("build() is not as generated")
    last = build.body[-1]
    value = last.value if isinstance(last, ast.Return) else None
    if not (isinstance(value, ast.Tuple) and len(value.elts) == 2
            and isinstance(value.elts[0], ast.Name) and value.elts[0].id == SERVE_FUNCTION):
        raise fail(f"build() does not end returning {SERVE_FUNCTION}")
