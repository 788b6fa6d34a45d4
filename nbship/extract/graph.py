"""Notebook -> StepGraph: steps, data edges with the variables they carry, problems.

Rules (docs/design.md, "The step graph"):

* cells group into steps by their tags; an untagged cell joins the step above
  it (leading untagged cells join the first step; no step tags at all -> one step);
* a step reads a name from upstream when it uses it before binding it;
* the producer of a name is the nearest step *before* the reader, in notebook
  order, that binds it or changes it in place by item or attribute assignment
  (so the pipeline sees that change, as the notebook did);
* imports, ``functions`` cells, parameters and builtins are not data: import
  statements and functions cells are copied into the steps that need them;
* ``prev:`` adds ordering edges that carry no data.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.errors import Location
from nbship.extract.names import (
    CellCode,
    analyse,
    changed_names,
    imported_modules,
    scope_free,
)
from nbship.notebook import (
    FUNCTIONS,
    IMPORTS,
    METRICS,
    PARAMETERS,
    SERVE,
    SKIP,
    STEP,
    Cell,
    Notebook,
)

ERROR = "error"
WARNING = "warning"

# Names a notebook can use without defining them.
_NOTEBOOK_BUILTINS = frozenset(dir(builtins)) | {
    "get_ipython",
    "display",
    "In",
    "Out",
    "exit",
    "quit",
    "_",
    "__",
    "___",
    "_ih",
    "_oh",
    "__name__",
    "__doc__",
}

# Method calls that do not change their object: not flagged as possible mutations.
READ_ONLY_METHODS = frozenset(
    "head tail describe info copy predict predict_proba predict_log_proba decision_function "
    "score mean sum std var min max argmax argmin median count index get items keys values "
    "format startswith endswith astype to_numpy numpy detach cpu tolist item reshape view "
    "parameters named_parameters state_dict transform isnull isna notnull any all unique "
    "nunique value_counts groupby query sort_values join split strip lower upper replace "
    "round size dim flatten clone to_dict to_list to_json to_csv plot hist show summary "
    "get_params cumsum prod dot nonzero __len__ __getitem__ sample".split()
)

_STEP_NAME = re.compile(r"^[a-z]([a-z0-9_-]{0,61}[a-z0-9])?$")
# Names the generated module binds at its top level (besides the step functions).
RESERVED_STEP_NAMES = frozenset({"dsl", "kubernetes", "pipeline"})
# Every name generated code binds inside a step starts with one of these; user code may
# not use them, so the two can never collide.
RESERVED_PREFIXES = ("nbship_", "_nbship")
_PARAMETER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# KFP carries numbers as JSON doubles: integers beyond this are not exact.
MAX_EXACT_INT = 2 ** 53


@dataclass(frozen=True)
class Problem:
    severity: str  # error | warning
    kind: str
    message: str
    where: Location
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.severity}: {self.where}: {self.message}"
        return text + (f"\n    hint: {self.hint}" if self.hint else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "message": self.message,
            "notebook": self.where.notebook,
            "cell": self.where.cell,
            "cell_id": self.where.cell_id,
            "line": self.where.line,
            "hint": self.hint,
        }


@dataclass
class Parameter:
    name: str
    value: Any
    type: str  # int | float | str | bool | list | dict | none (an optional str)
    cell: Cell
    line: int


@dataclass
class Step:
    name: str
    cells: list[Cell]
    code: list[CellCode] = field(default_factory=list)
    prev: list[str] = field(default_factory=list)
    image: str | None = None
    cache: bool | None = None
    limits: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secrets: list[tuple[str, str, str]] = field(default_factory=list)
    report: bool | None = None  # report:enabled/disabled; None: the default, a report
    # filled by the analysis
    reads: dict[str, tuple[Cell, int]] = field(default_factory=dict)  # upstream reads
    produces: dict[str, tuple[Cell, int]] = field(default_factory=dict)  # last binding/mutation
    possible_mutations: dict[str, tuple[Cell, int]] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # variable -> producer step
    outputs: dict[str, tuple[Cell, int]] = field(default_factory=dict)
    # the bare name ending the step's last cell, which Jupyter displays: an output even
    # though no later step reads it (Kale's trailing variable); saving it may fail
    results: dict[str, tuple[Cell, int]] = field(default_factory=dict)
    params: list[str] = field(default_factory=list)
    imports_cells: list[Cell] = field(default_factory=list)
    import_names: set[str] = field(default_factory=set)  # names taken from imports cells
    carried_imports: list[str] = field(default_factory=list)
    functions_cells: list[Cell] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    # metric -> the cell after which it is logged (the metrics cell stands inside the step);
    # others are logged at the end of the step
    metric_after: dict[str, int] = field(default_factory=dict)
    # functions taken from upstream steps whose bodies declare `global` names -> the names
    # (the step rebinds them to its own namespace: codegen, StepRun.share_globals)
    shared_functions: dict[str, list[str]] = field(default_factory=dict)
    local_modules: list[str] = field(default_factory=list)  # files beside the notebook
    # names read from upstream that the step passes to a call (random.shuffle(deck)),
    # before binding them: it passes them on (issue 18, shape 3)
    passed: dict[str, tuple[Cell, int]] = field(default_factory=dict)
    # those of them passed only to methods of objects (model.fit(X, y)) -> the objects: passed
    # on only when one is a module (np.random.shuffle(x)); the object is what changes
    passed_via: dict[str, set[str]] = field(default_factory=dict)
    # functions/classes taken from upstream steps -> the names they read that the step has:
    # codegen points them at the step's variables, as the notebook's one namespace does
    rebinds: dict[str, list[str]] = field(default_factory=dict)

    @property
    def func(self) -> str:
        """The Python identifier of the step's component function."""
        return re.sub(r"\W", "_", self.name)

    @property
    def task(self) -> str:
        """The KFP task name of the step (as KFP's compiler derives it from ``func``)."""
        return re.sub(r"[^a-z0-9-]", "-", self.func.lower())


SERVE_FUNCTION = "predict"


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    variables: tuple[str, ...]  # empty for an ordering (prev:) edge

    @property
    def kind(self) -> str:
        return "data" if self.variables else "order"


@dataclass
class StepGraph:
    notebook: Notebook
    steps: list[Step]
    edges: list[Edge]
    parameters: dict[str, Parameter]
    metrics: dict[str, str]  # metric -> step that logs it
    imports_cells: list[Cell]
    functions_cells: list[Cell]
    codes: dict[int, CellCode]  # cell index -> analysed code
    problems: list[Problem]
    parameters_cells: list[Cell] = field(default_factory=list)
    # the `serve` cells, analysed like a step that runs after the pipeline (not one of
    # its steps): what it reads from which step, the imports/functions it needs
    serve: Step | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def topological(self) -> list[Step]:
        """Steps in an order where every edge points forward (notebook order when possible)."""
        order = {s.name: i for i, s in enumerate(self.steps)}
        preds: dict[str, set[str]] = {s.name: set() for s in self.steps}
        for e in self.edges:
            preds[e.dst].add(e.src)
        done: list[Step] = []
        left = list(self.steps)
        while left:
            ready = [s for s in left if preds[s.name] <= {d.name for d in done}]
            if not ready:  # a cycle: reported as a problem; keep notebook order
                return done + sorted(left, key=lambda s: order[s.name])
            nxt = min(ready, key=lambda s: order[s.name])
            done.append(nxt)
            left.remove(nxt)
        return done


class _Analysis:
    def __init__(self, nb: Notebook) -> None:
        self.nb = nb
        self.problems: list[Problem] = []
        self.codes: dict[int, CellCode] = {}

    def problem(self, severity: str, kind: str, message: str, cell: Cell | None = None,
                line: int | None = None, hint: str | None = None) -> None:
        self.problems.append(Problem(severity, kind, message, self.nb.where(cell, line), hint))


def build_graph(nb: Notebook) -> StepGraph:
    """Analyse ``nb`` into a StepGraph. Never raises for problems in the notebook's code."""
    a = _Analysis(nb)
    for note in nb.notes:
        cell = next(c for c in nb.cells if c.index == note.cell)
        a.problem(ERROR if note.error else WARNING, "tag", note.message, cell)
    for cell in nb.cells:
        if cell.role == SKIP:
            # never runs in the pipeline: read only for the names it defines, and without
            # IPython's transformer (whose import alone costs a quarter second)
            a.codes[cell.index] = analyse(cell.source, ipython=False)
            continue
        code = analyse(cell.source)
        a.codes[cell.index] = code
        if code.syntax_error:
            line, msg = code.syntax_error
            a.problem(ERROR, "syntax", f"syntax error: {msg}", cell, line)
        for first, _last in code.future_imports:
            a.problem(WARNING, "future-import",
                      "`from __future__ import ...` applies to a whole module; inside a step "
                      "function it is left out", cell, first)
        for line in code.star_imports:
            a.problem(ERROR, "star-import", "`import *` cannot run inside a step function",
                      cell, line, "import the names you use")

    steps, special = _group(a, nb)
    for step in steps:
        for cell, code in zip(step.cells, step.code):
            for m in code.magics:
                if m.install:
                    a.problem(WARNING, "install",
                              f"`{m.text}` is not run in the pipeline: the step image carries "
                              "the dependencies", cell, m.line,
                              hint="add the package to the project's requirements")
    params = _parameters(a, special[PARAMETERS])
    metric_names = _metric_names(a, special[METRICS])
    graph = StepGraph(
        notebook=nb,
        steps=steps,
        edges=[],
        parameters=params,
        metrics={},
        imports_cells=special[IMPORTS],
        functions_cells=special[FUNCTIONS],
        codes=a.codes,
        problems=a.problems,
        parameters_cells=special[PARAMETERS],
    )
    _check_names(a, steps, params)
    _check_reserved(a, nb, special[SKIP])
    if not any(c.source.strip() for s in steps for c in s.cells):
        where = special[PARAMETERS] or special[IMPORTS] or special[FUNCTIONS] or nb.cells
        a.problem(ERROR, "no-steps", "the notebook has no step code to run (only "
                  "parameters, imports, functions, metrics or skip cells)", where[0],
                  hint="tag the cells that do the work with step:NAME, or remove the tags")
    if special[SERVE]:
        graph.serve = Step(name="serve", cells=special[SERVE],
                           code=[a.codes[c.index] for c in special[SERVE]])
    _dataflow(a, graph, special[SKIP])
    _trailing_results(graph)
    _check_serve(a, graph)
    _kale_serving(a, graph, special[SKIP])
    _metrics(a, graph, metric_names, special[METRICS])
    _order_edges(a, graph)
    _mutation_warnings(a, graph)
    _closure_warnings(a, graph)
    _held_code_warnings(a, graph)
    _global_checks(a, graph)
    _file_handoffs(a, graph)
    _execution_order(a, nb)
    _missing_modules(a, nb, special[SKIP])
    _local_modules(a, graph)
    a.problems.sort(key=lambda p: (p.where.cell if p.where.cell is not None else -1,
                                   p.where.line or 0, p.severity != ERROR))
    return graph


# grouping ------------------------------------------------------------------
def _group(a: _Analysis, nb: Notebook) -> tuple[list[Step], dict[str, list[Cell]]]:
    special: dict[str, list[Cell]] = {IMPORTS: [], FUNCTIONS: [], PARAMETERS: [], METRICS: [],
                                      SKIP: [], SERVE: []}
    has_step_tags = any(c.step for c in nb.cells)
    steps: list[Step] = []
    leading: list[Cell] = []
    first_cell: dict[str, Cell] = {}
    last_role: str | None = None
    kale_block: str | None = None  # the Kale block (imports, functions, parameters) open
    for cell in nb.cells:
        if kale_block and cell.role == STEP and cell.untagged:
            special[kale_block].append(cell)  # Kale: untagged cells extend the block above
            continue
        kale_block = cell.role if cell.role in special and cell.opens_kale_block else None
        if cell.role in special:
            special[cell.role].append(cell)
            last_role = cell.role
            continue
        if not has_step_tags:
            if not steps:
                steps.append(Step(name=_implicit_name(nb), cells=[]))
            steps[0].cells.append(cell)
        elif cell.step:
            if steps and steps[-1].name == cell.step and last_role is None:
                steps[-1].cells.append(cell)
            else:
                if cell.step in first_cell:
                    a.problem(ERROR, "duplicate-step",
                              f"step {cell.step!r} is declared again (first at cell "
                              f"{first_cell[cell.step].index}); a step is one run of "
                              "adjacent cells", cell,
                              hint="rename one of them, or move the cells together")
                else:
                    first_cell[cell.step] = cell
                steps.append(Step(name=cell.step, cells=[cell]))
        elif steps:
            steps[-1].cells.append(cell)
        else:
            leading.append(cell)
        last_role = None
        if steps and cell in steps[-1].cells:
            _apply_settings(steps[-1], cell)
    if leading:
        if steps:
            # they join the first step: so do their settings (secret:, limit:, prev:, ...),
            # in cell order, so the step's own cells still have the last word
            first = steps[0]
            first.cells[:0] = leading
            first.prev, first.image, first.cache = [], None, None
            first.limits, first.labels, first.annotations, first.secrets = {}, {}, {}, []
            first.report = None
            for cell in first.cells:
                _apply_settings(first, cell)
        elif any(c.source.strip() for c in leading):
            steps.append(Step(name=_implicit_name(nb), cells=leading))
            for cell in leading:
                _apply_settings(steps[-1], cell)
    for step in steps:
        step.code = [a.codes[c.index] for c in step.cells]
    return steps, special


def notebook_slug(nb: Notebook) -> str:
    """The notebook's file name in KFP's spelling (lowercase, digits, '-').

    Names with characters beyond ASCII letters, digits, '-', '_', '.' and spaces get a
    short hash of the full name, so ``日本.ipynb`` and ``中文.ipynb`` stay distinct
    (their builds and runs live under this name).
    """
    import hashlib

    stem = nb.path.stem
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    if not slug or re.search(r"[^A-Za-z0-9_. -]", stem):
        digest = hashlib.sha256(stem.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        slug = f"{slug[:40]}-{digest}".strip("-") if slug else f"notebook-{digest}"
    return slug


def _implicit_name(nb: Notebook) -> str:
    stem = notebook_slug(nb)
    if not stem[0].isalpha():
        stem = "nb-" + stem
    return stem[:63].rstrip("-_")


def _apply_settings(step: Step, cell: Cell) -> None:
    step.prev.extend(p for p in cell.prev if p not in step.prev)
    step.image = cell.image or step.image
    step.cache = cell.cache if cell.cache is not None else step.cache
    step.limits.update(cell.limits)
    step.labels.update(cell.labels)
    step.annotations.update(cell.annotations)
    step.secrets.extend(s for s in cell.secrets if s not in step.secrets)
    step.report = cell.report if cell.report is not None else step.report


def _check_names(a: _Analysis, steps: list[Step], params: dict[str, Parameter]) -> None:
    seen: dict[str, str] = {}
    for step in steps:
        first = step.cells[0]
        if not _STEP_NAME.match(step.name) or keyword.iskeyword(step.func):
            a.problem(ERROR, "step-name",
                      f"step name {step.name!r} would be refused by KFP/Kubernetes", first,
                      hint="use lowercase letters, digits, '-' or '_', starting with a letter, "
                      "at most 63 characters, not a Python keyword")
        elif step.func in RESERVED_STEP_NAMES or step.func.startswith(RESERVED_PREFIXES):
            a.problem(ERROR, "step-name",
                      f"step name {step.name!r} is taken by the generated pipeline module", first,
                      hint=f"rename the step (reserved: {', '.join(sorted(RESERVED_STEP_NAMES))}"
                      f", and names starting {' or '.join(RESERVED_PREFIXES)})")
        elif step.func in params:
            p = params[step.func]
            a.problem(ERROR, "step-name",
                      f"step {step.name!r} has the name of the parameter {step.func!r} (cell "
                      f"{p.cell.index}, line {p.line}): the pipeline could not call the step",
                      first, hint="rename the step or the parameter")
        elif step.func in seen and seen[step.func] != step.name:
            a.problem(ERROR, "step-name",
                      f"step names {seen[step.func]!r} and {step.name!r} become the same "
                      f"component {step.func!r}", first, hint="rename one of them")
        seen.setdefault(step.func, step.name)


def _check_reserved(a: _Analysis, nb: Notebook, skip_cells: list[Cell]) -> None:
    """Refuse user names that the generated step code uses for itself."""
    skipped = {c.index for c in skip_cells}
    for cell in nb.cells:
        if cell.index in skipped:
            continue
        seen: set[str] = set()
        for e in a.codes[cell.index].events:
            if e.name.startswith(RESERVED_PREFIXES) and e.name not in seen:
                seen.add(e.name)
                a.problem(ERROR, "reserved-name",
                          f"{e.name!r}: names starting with {' or '.join(RESERVED_PREFIXES)} are "
                          "nbship's own inside a step", cell, e.line, hint="rename it")


# parameters and metrics ------------------------------------------------------
_TYPES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict",
          type(None): "none"}


def value_problem(value: Any, *, top: bool = True) -> str | None:
    """Why ``value`` cannot travel exactly as a KFP parameter (JSON), or None."""
    import math

    if value is None or isinstance(value, (bool, str)):
        return None
    if type(value) is int:
        return None if abs(value) <= MAX_EXACT_INT else (
            f"the integer {value} is beyond 2**53, which KFP's JSON numbers do not keep exactly")
    if type(value) is float:
        return None if math.isfinite(value) else (
            f"{value!r} is not a number JSON (and so KFP) can carry")
    if type(value) is list:
        return next((p for p in (value_problem(v, top=False) for v in value) if p), None)
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                return f"the key {k!r} is not a string (JSON objects have string keys)"
            problem = value_problem(v, top=False)
            if problem:
                return problem
        return None
    return f"{type(value).__name__} values do not come back from JSON as they were"


def _each_statement(a: _Analysis, cells: list[Cell], kind: str, what: str, hint: str,
                    handle: Callable[[Cell, ast.stmt], bool]) -> None:
    """Call ``handle`` on each statement of ``cells``; warn once per cell about the ones
    it does not take (``handle`` returned False)."""
    for cell in cells:
        tree = a.codes[cell.index].tree
        if tree is None:
            continue
        ignored = [stmt.lineno for stmt in tree.body if not handle(cell, stmt)]
        if ignored:
            a.problem(WARNING, kind, f"{len(ignored)} statement(s) in the {what} (lines "
                      f"{_spans(ignored)})", cell, ignored[0], hint=hint)


def _expression(node: ast.expr) -> str:
    """``node`` as code for a message (ast.unparse recurses: a deep one is described)."""
    try:
        return f"`{ast.unparse(node)}`"
    except RecursionError:
        return "a deeply nested expression"


def _parameters(a: _Analysis, cells: list[Cell]) -> dict[str, Parameter]:
    params: dict[str, Parameter] = {}

    def take(cell: Cell, stmt: ast.stmt) -> bool:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        if not isinstance(target, ast.Name) or value is None:
            return False
        try:
            literal = ast.literal_eval(value)
        except (ValueError, TypeError):
            a.problem(ERROR, "parameter",
                      f"parameter {target.id!r} must be a literal value, not "
                      f"{_expression(value)}", cell, stmt.lineno,
                      hint="compute it in a step from a literal parameter")
            return True
        except (SyntaxError, RecursionError, MemoryError):
            a.problem(ERROR, "parameter", f"parameter {target.id!r}: the value is too deeply "
                      "nested to read", cell, stmt.lineno)
            return True
        kind_name = _TYPES.get(type(literal))
        name = target.id
        if kind_name is None:
            a.problem(ERROR, "parameter",
                      f"parameter {name!r} = {_short(literal)}: KFP parameters are int, "
                      "float, str, bool, list, dict or None", cell, stmt.lineno)
            return True
        if not _PARAMETER_NAME.match(name) or name.startswith(RESERVED_PREFIXES):
            a.problem(ERROR, "parameter",
                      f"parameter name {name!r}: KFP parameter names are ASCII letters, digits "
                      "and '_', starting with a letter", cell, stmt.lineno,
                      hint="rename it (names starting with nbship_ are nbship's own)")
            return True
        problem = value_problem(literal)
        if problem:
            a.problem(ERROR, "parameter", f"parameter {name!r}: {problem}", cell, stmt.lineno,
                      hint="compute it in a step from a parameter KFP can carry")
            return True
        params[name] = Parameter(name, literal, kind_name, cell, stmt.lineno)
        return True

    _each_statement(a, cells, "parameter", "parameters cell are not parameters and do not run "
                    "in the pipeline", "parameters are `name = literal` lines", take)
    return params


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _spans(lines: list[int]) -> str:
    out: list[str] = []
    start = prev = lines[0]
    for n in [*lines[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)


def _metric_names(a: _Analysis, cells: list[Cell]) -> dict[str, tuple[Cell, int]]:
    names: dict[str, tuple[Cell, int]] = {}

    def take(cell: Cell, stmt: ast.stmt) -> bool:
        expr = stmt.value if isinstance(stmt, ast.Expr) else None
        if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)
                and expr.func.id == "print" and len(expr.args) == 1 and not expr.keywords):
            expr = expr.args[0]
        if isinstance(expr, ast.Name):
            names.setdefault(expr.id, (cell, stmt.lineno))
            return True
        return _unloggable_print(a, cell, stmt)

    _each_statement(a, cells, "metrics", "metrics cell are not `print(name)` or `name` lines "
                    "and are ignored", "list each metric as print(name)", take)
    return names


def _unloggable_print(a: _Analysis, cell: Cell, stmt: ast.stmt) -> bool:
    """A metrics line that prints a computed value (`print(round(acc, 2))`, `print("acc",
    acc)`): the notebook shows a number nbship cannot log under a name. An error naming the
    line and the variables it reads; True when it was one. Printed text (string literals
    and f-strings only) stays a warning, as other statements do."""
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if call is not None and _displayed_value(a, cell, stmt, call):
        values: list[ast.expr] = [call]  # the cell's last line, which Jupyter displays
    elif not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
              and call.func.id == "print"):
        return False
    else:
        values = [arg for arg in call.args
                  if not isinstance(arg, ast.JoinedStr)
                  and not (isinstance(arg, ast.Constant) and isinstance(arg.value, str))]
    if not values:
        return False
    read = sorted({n.id for arg in values for n in ast.walk(arg)
                   if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)})
    try:
        text = ast.unparse(call)
    except RecursionError:
        text = "print(...)"
    text = text if len(text) <= 60 else text[:57] + "..."
    plain = [v.id for v in values if isinstance(v, ast.Name)]
    hint = (f"print one metric per line: {'; '.join(f'print({n})' for n in plain)}"
            if len(plain) == len(values) else
            "compute the value in a step (`acc_pct = round(acc * 100, 1)`) and print that "
            "name here; a metric is logged under its variable's name")
    reads = f" (it reads {', '.join(map(repr, read))})" if read else ""
    a.problem(ERROR, "metrics", f"`{text}` in the metrics cell prints a value nbship cannot log "
              f"as a metric{reads}: metrics are `print(name)` lines", cell, stmt.lineno, hint)
    return True


# builtins whose value a metrics cell's last line would display: `round(acc, 2)`
_VALUE_CALLS = frozenset({"round", "float", "int", "abs", "min", "max", "sum", "len"})


def _displayed_value(a: _Analysis, cell: Cell, stmt: ast.stmt, expr: ast.expr) -> bool:
    """``stmt`` ends the metrics cell and Jupyter displays its computed value (`acc * 100`,
    `round(acc, 2)`, `scores['f1']`): a number shown but not a name to log. Method calls
    and other functions (`plt.show()`, `display(df)`) are not taken for values."""
    tree = a.codes[cell.index].tree
    if tree is None or not tree.body or stmt is not tree.body[-1]:
        return False
    if isinstance(expr, (ast.Name, ast.JoinedStr, ast.Constant, ast.Lambda)):
        return False
    if isinstance(expr, ast.Call):
        return isinstance(expr.func, ast.Name) and expr.func.id in _VALUE_CALLS
    return any(isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) for n in ast.walk(expr))


# data flow ----------------------------------------------------------------------
def _scan_step(step: Step) -> None:
    bound: set[str] = set()
    deferred: dict[str, tuple[Cell, int]] = {}
    for cell, code in zip(step.cells, step.code):
        for e in code.events:
            if e.kind == "read" and e.name not in bound:
                step.reads.setdefault(e.name, (cell, e.line))
            elif e.kind == "def":
                bound.add(e.name)
                if e.name not in code.imports:
                    step.produces[e.name] = (cell, e.line)
            elif e.kind == "del":
                bound.discard(e.name)
                step.produces.pop(e.name, None)
            elif e.kind == "mut":
                step.produces[e.name] = (cell, e.line)
            elif e.kind == "call" and e.name not in bound:
                step.possible_mutations.setdefault(e.name, (cell, e.line))
            elif e.kind.startswith("arg") and e.name not in bound:
                if e.name not in step.passed:
                    step.passed[e.name] = (cell, e.line)
                    step.passed_via[e.name] = set()
                if e.kind == "arg":
                    step.passed_via.pop(e.name, None)
                elif e.name in step.passed_via:
                    step.passed_via[e.name].add(e.kind[len("arg."):])
            elif e.kind == "deferred":
                deferred.setdefault(e.name, (cell, e.line))
    for name, where in deferred.items():
        if name not in bound:
            step.reads.setdefault(name, where)


def _dataflow(a: _Analysis, graph: StepGraph, skip_cells: list[Cell]) -> None:
    steps = graph.steps
    for step in steps:
        _scan_step(step)

    import_cell_of: dict[str, Cell] = {}  # every name an imports cell binds
    for cell in graph.imports_cells:
        for e in a.codes[cell.index].events:
            if e.kind == "def":
                import_cell_of.setdefault(e.name, cell)
    carried: dict[str, str] = {}  # import statements made in step cells
    for step in steps:
        for code in step.code:
            for name, stmt in code.imports.items():
                carried.setdefault(name, stmt)

    functions_defs: dict[str, Cell] = {}
    functions_reads: dict[int, dict[str, int]] = {}
    for cell in graph.functions_cells:
        code = a.codes[cell.index]
        bound: set[str] = set()
        reads: dict[str, int] = {}
        for e in code.events:
            if e.kind in ("read", "deferred", "call", "mut") and e.name not in bound:
                reads.setdefault(e.name, e.line)
            elif e.kind == "def":
                bound.add(e.name)
                if e.name not in code.imports:
                    functions_defs[e.name] = cell
        # names that functions defined in this cell bind at call time are fine too
        functions_reads[cell.index] = {n: ln for n, ln in reads.items() if n not in bound}
        for name, stmt in code.imports.items():
            carried.setdefault(name, stmt)

    functions_globals = _function_globals(graph.functions_cells, a.codes)
    step_globals = {s.name: _function_globals(s.cells, a.codes, functions_globals)
                    for s in steps}

    def uses_globals(step: Step, upstream: list[Step], declared: dict[str, bool],
                     cell: Cell, line: int, pending: list[tuple[str, tuple[Cell, int]]]) -> None:
        """``step`` calls a function that declares ``global`` names: as in the notebook, it
        reads their current value (from upstream, unless the step binds them) and the
        step passes on what the function made of them."""
        if step is graph.serve:
            return
        for name, stores in declared.items():
            binds = any(e.kind == "def" and e.name == name for code in step.code
                        for e in code.events)
            known = name in graph.parameters or any(name in s.produces for s in upstream)
            if known and not binds and name not in step.inputs:
                pending.append((name, (cell, line)))
            if known or binds or stores:
                step.produces.setdefault(name, (cell, line))

    skip_defs: dict[str, Cell] = {}
    for cell in skip_cells:
        for e in a.codes[cell.index].events:
            if e.kind == "def":
                skip_defs.setdefault(e.name, cell)

    # functions a step defines travel to the steps that use them, where they read and
    # change that step's variables (issue 18, shapes 1-3: follow_calls)
    step_defs = {s.name: defined_callables(s.code) for s in steps}
    functions_changes: dict[int, dict[str, int]] = {
        c.index: {n: ln for node in defined_callables([a.codes[c.index]]).values()
                  for n, ln in callable_reads(node)[1].items()}
        for c in graph.functions_cells}

    edges: dict[tuple[str, str], list[str]] = {}
    serving = [graph.serve] if graph.serve is not None else []
    if graph.serve is not None:
        _scan_step(graph.serve)
    for i, step in enumerate([*steps, *serving]):
        # the serve cells run after the pipeline, with what the steps above them produced
        upstream = steps[:i] if step is not graph.serve else [
            s for s in steps if s.cells[0].index < step.cells[0].index]
        pending = list(step.reads.items())
        follow = step is not graph.serve
        soft: set[str] = set()  # names a function from upstream reads: loaded if upstream
        changes: dict[str, tuple[Cell, int]] = {}  # names the step's calls may change
        for node in step_defs.get(step.name, {}).values() if follow else ():
            for n in callable_reads(node)[1]:
                changes.setdefault(n, step.reads.get(n, (step.cells[0], 1)))
        while pending:
            name, (cell, line) = pending.pop(0)
            producer = next((s for s in reversed(upstream) if name in s.produces), None)
            if name in soft and producer is None and name not in functions_defs:
                soft.discard(name)
                continue  # the function keeps the value it brought
            if producer is not None:
                if name not in step.inputs:
                    step.inputs[name] = producer.name
                    producer.outputs[name] = producer.produces[name]
                    if step is not graph.serve:
                        edges.setdefault((producer.name, step.name), []).append(name)
                    # the step that defined it (the producer may pass it on unchanged)
                    definer = next((s for s in reversed(upstream)
                                    if name in step_defs[s.name]), None) if follow else None
                    if definer is not None:
                        free, changed = callable_reads(step_defs[definer.name][name])
                        step.rebinds[name] = sorted(free)
                        before = _bound_before_use(step, name)
                        for n in free:
                            if n not in before and n not in step.reads and n not in soft \
                                    and n not in step.inputs:
                                soft.add(n)
                                pending.append((n, (cell, line)))
                        for n in changed:
                            changes.setdefault(n, (cell, line))
                    declared = step_globals[producer.name].get(name)
                    if declared and step is not graph.serve:
                        step.shared_functions[name] = sorted(declared)
                        uses_globals(step, upstream, declared, cell, line, pending)
            elif name in graph.parameters:
                if name not in step.params:
                    step.params.append(name)
            elif name in import_cell_of:
                step.import_names.add(name)
                if import_cell_of[name] not in step.imports_cells:
                    step.imports_cells.append(import_cell_of[name])
            elif name in functions_defs:
                fcell = functions_defs[name]
                for n in functions_changes[fcell.index] if follow else ():
                    changes.setdefault(n, (cell, line))
                if fcell not in step.functions_cells:
                    step.functions_cells.append(fcell)
                    pending.extend((n, (fcell, ln)) for n, ln in
                                   functions_reads[fcell.index].items())
                if name in functions_globals:
                    uses_globals(step, upstream, functions_globals[name], cell, line, pending)
            elif name in carried:
                if carried[name] not in step.carried_imports:
                    step.carried_imports.append(carried[name])
            elif name in _NOTEBOOK_BUILTINS:
                continue
            elif name in skip_defs:
                a.problem(ERROR, "skip-only",
                          f"{name!r} is defined only in a skip cell (cell "
                          f"{skip_defs[name].index}), which the pipeline does not run",
                          cell, line, hint="remove the skip tag, or define it in a step")
            else:
                later = next((s for s in steps[i:] if name in s.produces and s is not step), None)
                if later is not None:
                    a.problem(ERROR, "undefined-name",
                              f"{name!r} is read here but only defined later, in step "
                              f"{later.name!r}", cell, line,
                              hint="move the definition above, into an earlier step")
                else:
                    a.problem(ERROR, "undefined-name",
                              f"{name!r} is read here but defined nowhere upstream (not an "
                              "import, builtin or parameter)", cell, line,
                              hint="define it in an earlier step, or add it to the "
                              "parameters cell")
        if follow:
            _follow_calls(step, changes, functions_defs, {*import_cell_of, *carried})
        step.imports_cells.sort(key=lambda c: c.index)
        step.functions_cells.sort(key=lambda c: c.index)
    order = {s.name: i for i, s in enumerate(steps)}
    graph.edges = [Edge(src, dst, tuple(sorted(vs)))
                   for (src, dst), vs in sorted(edges.items(),
                                                key=lambda kv: (order[kv[0][1]], order[kv[0][0]]))]


def _trailing_results(graph: StepGraph) -> None:
    """A step whose last statement is a bare name the step binds (``model`` at the end of
    its last cell: what Jupyter displays as the cell's result) passes that value on as an
    output even when no later step reads it, as Kale 2.3 does (kubeflow/kale#783)."""
    for step in graph.steps:
        code = next((c for c in reversed(step.code)  # the last cell with statements
                     if (c.tree.body if c.tree is not None else c.python.strip())), None)
        name = code.trailing_name if code is not None else None
        if name and name in step.produces and name not in step.outputs \
                and name not in graph.parameters:
            step.results[name] = step.outputs[name] = step.produces[name]


def report_cells(step: Step) -> list[Cell]:
    """The cells whose outputs make the step's HTML report (Kale's per-step report): the
    step's own cells in notebook order, none when a ``report:disabled`` tag turns it off."""
    return [] if step.report is False else list(step.cells)


def _follow_calls(step: Step, changes: dict[str, tuple[Cell, int]],
                  functions_defs: dict[str, Cell], modules: set[str]) -> None:
    """What a step's calls may change in place, it passes on (Kale forwards what a step
    reads): a value read from upstream that the step passes to a call (``random.shuffle(
    deck)``) or that a function it uses changes (``seen.append(v)`` in ``record``). And the
    functions it takes from upstream steps read the step's own variables (``rebinds``):
    those it loads, binds before it first uses the function, or has as parameters or from
    functions cells. A value passed only to methods of objects that are not modules
    (``model.fit(X, y)``) is not passed on: the object is what such a method changes
    (check warns about that), and steps that train on the same data stay parallel; except
    for methods that change their arguments (``rng.shuffle(deck)``, ``*_``)."""
    passed = {n: w for n, w in step.passed.items()
              if n not in step.passed_via or step.passed_via[n] & modules}
    for name, where in [*changes.items(), *passed.items()]:
        if name in step.inputs:
            step.produces.setdefault(name, where)
    copied = {n for n, c in functions_defs.items() if c in step.functions_cells}
    for func, names in list(step.rebinds.items()):
        before = _bound_before_use(step, func)
        step.rebinds[func] = [n for n in names if n in step.inputs or n in step.params
                              or n in before or n in copied]


def _check_serve(a: _Analysis, graph: StepGraph) -> None:
    """The serve cells must define predict(), and only once."""
    serve = graph.serve
    if serve is None:
        return
    defined = [(cell, node.lineno) for cell, code in zip(serve.cells, serve.code)
               for node in (code.tree.body if code.tree else [])
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
               and node.name == SERVE_FUNCTION]
    if not defined and not any(code.syntax_error for code in serve.code):
        a.problem(ERROR, "serve", f"the serve cell defines no `{SERVE_FUNCTION}` function",
                  serve.cells[0], hint=f"def {SERVE_FUNCTION}(inputs): return the model's "
                  "predictions for a batch (a numpy array in, an array or list out)")
    for cell, line in defined[1:]:
        a.problem(WARNING, "serve", f"`{SERVE_FUNCTION}` is defined again; the server uses "
                  "the last definition", cell, line)


def _kale_serving(a: _Analysis, graph: StepGraph, skip_cells: list[Cell]) -> None:
    """Kale serves with `serve(model)` from kale.common.serveutils: say what nbship does."""
    if graph.serve is not None:
        return
    for cell in skip_cells:
        tree = a.codes[cell.index].tree
        if tree is None or "serveutils" not in cell.source:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "serve" and node.args
                    and isinstance(node.args[0], ast.Name)):
                model = node.args[0].id
                a.problem(WARNING, "kale-serve",
                          f"Kale's serve({model}) is not how nbship serves: this notebook has "
                          "no model server until a cell is tagged `serve`", cell, node.lineno,
                          hint=f"add a cell tagged serve: `def {SERVE_FUNCTION}(inputs): "
                          f"return {model}.predict(inputs)`; then nbship serve RUN_DIR")
                return


def _metrics(a: _Analysis, graph: StepGraph, names: dict[str, tuple[Cell, int]],
             cells: list[Cell]) -> None:
    for name, (cell, line) in names.items():
        # the value the notebook prints: bound by the nearest step above the metrics cell,
        # in a cell above it (a step's untagged cells may continue below the metrics cell)
        above = [s for s in graph.steps if s.cells[0].index < cell.index]
        producer = next((s for s in reversed(above)
                         if name in s.produces and _bound_before(s, name, cell.index)), None)
        if producer is None and name in graph.parameters and above:
            producer = above[-1]
            if name not in producer.params:
                producer.params.append(name)
        if producer is None:
            later = next((s for s in graph.steps if _bound_after(s, name, cell.index)), None)
            why = (f"it is computed only below the metrics cell, in step {later.name!r}"
                   if later else "no step computes it")
            a.problem(ERROR, "metrics", f"metric {name!r}: {why}", cell, line,
                      hint="move the metrics cell below the step that computes it")
            continue
        if producer.cells[-1].index > cell.index:
            # the step goes on below the metrics cell: log the value where it is printed
            producer.metric_after[name] = max(c.index for c in producer.cells
                                              if c.index < cell.index)
        rebinders = [s.name for s in graph.steps
                     if s is not producer and _bound_after(s, name, cell.index)]
        if rebinders:
            a.problem(WARNING, "metrics",
                      f"metric {name!r} is the value step {producer.name!r} computed, as the "
                      f"notebook prints it here; step(s) {', '.join(map(repr, rebinders))} "
                      "below change it afterwards", cell, line,
                      hint="put the metrics cell at the end, after the final value")
        producer.metrics.append(name)
        graph.metrics[name] = producer.name


def _bindings(step: Step, name: str) -> list[tuple[int, str]]:
    """(cell index, def|mut|del) of each event of ``step`` that binds or changes ``name``."""
    return [(c.index, e.kind) for c, code in zip(step.cells, step.code) for e in code.events
            if e.name == name and e.kind in ("def", "mut", "del")]


def _bound_before(step: Step, name: str, index: int) -> bool:
    """``step`` has bound ``name`` (and not deleted it) in its cells above cell ``index``."""
    kinds = [kind for at, kind in _bindings(step, name) if at < index]
    if not kinds:  # changed by a call (a function's `global`): where produces says
        return name in step.produces and step.produces[name][0].index < index
    return kinds[-1] != "del"


def _bound_after(step: Step, name: str, index: int) -> bool:
    return any(at > index and kind != "del" for at, kind in _bindings(step, name)) or (
        name in step.produces and step.produces[name][0].index > index)


def _order_edges(a: _Analysis, graph: StepGraph) -> None:
    names = {s.name for s in graph.steps}
    data_pairs = {(e.src, e.dst) for e in graph.edges}
    for step in graph.steps:
        for prev in step.prev:
            if prev not in names:
                a.problem(ERROR, "unknown-prev", f"prev:{prev} names no step", step.cells[0],
                          hint=f"steps are: {', '.join(sorted(names))}")
            elif prev == step.name:
                a.problem(ERROR, "prev-cycle", f"step {step.name!r} lists itself in prev:",
                          step.cells[0])
            elif (prev, step.name) not in data_pairs:
                graph.edges.append(Edge(prev, step.name, ()))
    cycle = _find_cycle(graph)
    if cycle:
        first = graph.step(cycle[0]).cells[0]
        a.problem(ERROR, "prev-cycle", "the steps form a cycle: " + " -> ".join(cycle),
                  first, hint="a prev: tag points at a step that itself depends on this one")


def _find_cycle(graph: StepGraph) -> list[str] | None:
    succ: dict[str, list[str]] = {s.name: [] for s in graph.steps}
    for e in graph.edges:
        if e.src != e.dst:
            succ[e.src].append(e.dst)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in succ[n]:
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for s in graph.steps:
        if s.name not in state:
            found = visit(s.name)
            if found:
                return found
    return None


def _mutation_warnings(a: _Analysis, graph: StepGraph) -> None:
    steps = graph.steps
    for i, step in enumerate(steps):
        for name, (cell, line) in step.possible_mutations.items():
            src = step.inputs.get(name)
            if src is None or name in step.produces:
                continue
            method = _method_at(a.codes[cell.index], name, line)
            if method in READ_ONLY_METHODS:
                continue
            later = [s.name for s in steps[i + 1:] if s.inputs.get(name) == src]
            if later:
                a.problem(WARNING, "mutation",
                          f"`{name}.{method}(...)` may change {name!r} in place; the notebook's "
                          f"later cells see that change, but the pipeline passes {name!r} to "
                          f"{', '.join(repr(s) for s in later)} as step {src!r} produced it",
                          cell, line,
                          hint=f"assign the result (`{name} = ...`) so this step passes it on")


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda


def defined_callables(cells: list[CellCode]) -> dict[str, Definition]:
    """Functions, classes and lambdas (``f = lambda: ...``) that ``cells`` bind in their
    own namespace, also inside ``if``/``try``/``with``/``for`` blocks -> the last one."""
    found: dict[str, Definition] = {}

    def visit(nodes: list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[node.name] = node
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = node.value
            elif isinstance(node, (ast.stmt, ast.ExceptHandler, ast.match_case)):
                visit([c for c in ast.iter_child_nodes(node)
                       if isinstance(c, (ast.stmt, ast.ExceptHandler, ast.match_case))])

    for code in cells:
        visit(list(code.tree.body) if code.tree else [])
    return found


def callable_reads(node: Definition) -> tuple[dict[str, int], dict[str, int]]:
    """The names a function (class, lambda) reads from the namespace it was defined in,
    and those of them it may change in place (``seen.append(v)``, ``d[k] = v``,
    ``random.shuffle(deck)``), each with its first line."""
    free, _globals = scope_free(node)
    free = {n: ln for n, ln in free.items() if n not in _NOTEBOOK_BUILTINS}
    changed = {n: ln for n, ln in changed_names(node, READ_ONLY_METHODS).items() if n in free}
    return free, changed


def _bound_before_use(step: Step, name: str) -> set[str]:
    """The names ``step`` binds before it first refers to ``name``."""
    bound: set[str] = set()
    for code in step.code:
        for e in code.events:
            if e.name == name and e.kind in ("read", "call", "arg", "deferred"):
                return bound
            if e.kind == "def":
                bound.add(e.name)
            elif e.kind == "del":
                bound.discard(e.name)
    return bound


def _functions_free_names(step: Step) -> dict[str, set[str]]:
    """Functions a step defines at the top of its cells -> the free names their bodies read."""
    found: dict[str, set[str]] = {}
    for code in step.code:
        for node in code.tree.body if code.tree else ():
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                end = node.end_lineno or node.lineno
                found[node.name] = {e.name for e in code.events if e.kind == "deferred"
                                    and node.lineno <= e.line <= end}
    return found


def _closure_warnings(a: _Analysis, graph: StepGraph) -> None:
    """A function from an earlier step sees that step's values, not the caller's rebinding.

    In the notebook a function reads the globals of the moment it is called; in the
    pipeline it travels with the values its own step had. Said where the caller rebinds.
    """
    free = {s.name: _functions_free_names(s) for s in graph.steps}
    for step in graph.steps:
        for func, src in step.inputs.items():
            names = free[src].get(func)
            if not names:
                continue
            # (the function reads the step's own variables where codegen can point it at them)
            for var in sorted(names & set(step.produces) - set(step.rebinds.get(func, ()))):
                cell, line = _first_binding(step, var)
                a.problem(WARNING, "closure",
                          f"{func}() comes from step {src!r} and reads {var!r}; this step "
                          f"changes {var!r}, which {func}() sees in the notebook but not in the "
                          f"pipeline (there it keeps the value it had in step {src!r})",
                          cell, line, hint=f"pass {var} to {func}() as an argument")


def _holder(step: Step, var: str, defs: dict[str, Definition]) -> str | None:
    """The function or class of ``defs`` that the value ``step`` assigns to ``var`` is made
    from (``book = Book()``, ``counter = make_counter()``, ``handlers = [record]``)."""
    for code in step.code:
        for node in ast.walk(code.tree) if code.tree else ():
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and any(
                    isinstance(t, ast.Name) and t.id == var for target in (
                        node.targets if isinstance(node, ast.Assign) else [node.target])
                    for t in ast.walk(target)):
                called = {id(c.func) for c in ast.walk(node.value) if isinstance(c, ast.Call)}
                for n in ast.walk(node.value):
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and \
                            n.id in defs and (id(n) not in called or _makes_code(defs[n.id])):
                        return n.id  # the code itself, an instance, or a factory's closure
    return None


def _makes_code(node: Definition) -> bool:
    """Calling it returns code: a class (its instances), or a function that returns a
    function or lambda it defines (a factory of closures)."""
    if isinstance(node, ast.ClassDef):
        return True
    if isinstance(node, ast.Lambda):
        return isinstance(node.body, ast.Lambda)
    inner = {sub.name for sub in ast.walk(node) if sub is not node
             and isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return any(isinstance(sub, ast.Return) and sub.value is not None and (
        isinstance(sub.value, ast.Lambda)
        or (isinstance(sub.value, ast.Name) and sub.value.id in inner))
        for sub in ast.walk(node))


def _held_code_warnings(a: _Analysis, graph: StepGraph) -> None:
    """A value that holds code defined in the notebook (an instance of its class, a closure
    that a factory returned, a list of its functions) reads, in the pipeline, the copies of
    the variables that its defining step had: codegen can point a function or class a step
    takes at the step's variables, not the code inside such a value. Named (a warning, at
    the step's first use of the value) where that may differ from the notebook: the code
    changes one of those variables, or a step after it binds or changes one."""
    steps = graph.steps
    functions = defined_callables([graph.codes[c.index] for c in graph.functions_cells])
    defined = [(s, {**functions, **defined_callables(s.code)}) for s in steps]
    data = {n for s in steps for n in s.produces}
    for i, step in enumerate(steps):
        for var in sorted(step.inputs):
            if any(var in d for s, d in defined[:i]):
                continue  # a function or class itself: codegen rebinds it
            found = next(((j, code) for j in range(i - 1, -1, -1)
                          if (code := _holder(steps[j], var, defined[j][1])) is not None),
                         None)
            if found is None:
                continue
            j, code = found
            free, changed = callable_reads(defined[j][1][code])
            reads = sorted(set(free) & data)
            touched = sorted({n for n in reads if n in changed or any(
                n in s.produces for s in steps[j + 1:i + 1])})
            if not touched:
                continue
            cell, line = step.reads.get(var, (step.cells[0], 1))
            names = ", ".join(repr(n) for n in touched)
            a.problem(WARNING, "closure",
                      f"{var!r} holds {code} from step {steps[j].name!r}, which reads {names}: "
                      f"in the notebook it sees the current {names}; in the pipeline it keeps "
                      f"step {steps[j].name!r}'s copy, and what it changes there does not reach "
                      f"step {step.name!r}'s variables", cell, line,
                      hint=f"pass {touched[0]} to {code} as an argument, or use {code} itself "
                      "in this step (a function or class a step takes reads its variables)")


def _global_statements(cells: list[Cell], codes: dict[int, CellCode]
                       ) -> list[tuple[Cell, int, str, str | None]]:
    """(cell, line, name, top-level def/class it is in or None) of each `global` name."""
    found: list[tuple[Cell, int, str, str | None]] = []
    for cell in cells:
        tree = codes[cell.index].tree
        for top in tree.body if tree else ():
            owner = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.ClassDef)) else None
            for node in ast.walk(top):
                if isinstance(node, ast.Global):
                    found += [(cell, node.lineno, n, owner) for n in node.names]
    return found


def _function_globals(cells: list[Cell], codes: dict[int, CellCode],
                      known: dict[str, dict[str, bool]] | None = None,
                      ) -> dict[str, dict[str, bool]]:
    """Functions defined at the top of ``cells`` whose bodies declare ``global`` names, or
    call such a function (of ``cells``, or of ``known``: the functions cells), through any
    number of calls -> each name and whether the function (or a callee) assigns it."""
    found: dict[str, dict[str, bool]] = dict(known or {})
    calls: dict[str, set[str]] = {}
    for cell in cells:
        tree = codes[cell.index].tree
        for top in tree.body if tree else ():
            if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            nodes = list(ast.walk(top))
            declared = {n for node in nodes if isinstance(node, ast.Global) for n in node.names}
            found[top.name] = {n: any(isinstance(node, ast.Name) and node.id == n
                                      and isinstance(node.ctx, ast.Store)
                                      for node in nodes) for n in sorted(declared)}
            calls[top.name] = {node.id for node in nodes
                               if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    changed = True
    while changed:  # through calls: bar() calls foo(), which declares `global x`
        changed = False
        for func, callees in calls.items():
            for callee in callees & found.keys():
                for name, stores in found[callee].items():
                    if found[func].get(name, False) < stores or name not in found[func]:
                        found[func][name] = stores or found[func].get(name, False)
                        changed = True
    return {f: g for f, g in found.items() if g and (f in calls or known is None)}


def _global_checks(a: _Analysis, graph: StepGraph) -> None:
    """`global` inside a step's functions works (codegen declares the names global for the
    whole step; a function from an upstream step is rebound to the step's namespace)
    except where it cannot: on a parameter of the step (a function argument cannot be
    global), and in a method of a class that travels to a later step (there it changes a
    copy of its own globals, not the step's variable)."""
    steps = graph.steps
    for step in steps:
        shared = [(step.cells[0], 1, name, None) for names in step.shared_functions.values()
                  for name in names]
        for cell, line, name, _owner in [*_global_statements(
                [*step.functions_cells, *step.cells], a.codes), *shared]:
            if name in step.params:
                a.problem(ERROR, "global",
                          f"`global {name}`: {name!r} is a pipeline parameter of step "
                          f"{step.name!r}, an argument of its function, which cannot be "
                          "declared global", cell, line,
                          hint=f"return the new value instead (`{name} = f({name})`), or give "
                          "the global another name")
    defining = {s.name: {owner: (cell, line, name) for cell, line, name, owner in
                         _global_statements(s.cells, a.codes)
                         if owner and owner not in step_functions(s)}
                for s in steps}
    for step in steps:
        for func, src in sorted(step.inputs.items()):
            if func not in defining.get(src, {}):
                continue
            _cell, _line, name = defining[src][func]
            cell, line = step.reads.get(func, (step.cells[0], 1))
            a.problem(ERROR, "global",
                      f"class {func} comes from step {src!r} and a method declares `global "
                      f"{name}`; used in this step it would change its own copy of {name!r}, "
                      f"not this step's (the notebook has one {name!r})", cell, line,
                      hint=f"define {func} in a cell tagged `functions` (copied into each "
                      "step that uses it), or in this step")


def step_functions(step: Step) -> set[str]:
    """Names of the functions defined at the top of ``step``'s cells."""
    return {top.name for code in step.code for top in (code.tree.body if code.tree else ())
            if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _first_binding(step: Step, var: str) -> tuple[Cell, int]:
    for cell, code in zip(step.cells, step.code):
        for e in code.events:
            if e.kind == "def" and e.name == var:
                return cell, e.line
    return step.produces[var]


_WRITE_CALLS = ("save", "dump", "write", "to_", "savefig", "mkdir", "makedirs", "copy", "move")


def _path_literals(code: CellCode) -> list[tuple[str, bool, int]]:
    """String literals passed to calls that look like paths: (path, written, line)."""
    found: list[tuple[str, bool, int]] = []
    for node in ast.walk(code.tree) if code.tree else ():
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else \
            node.func.id if isinstance(node.func, ast.Name) else ""
        strings = [arg.value for arg in [*node.args, *(k.value for k in node.keywords)]
                   if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
        paths = [s for s in strings if _looks_like_path(s)]
        if not paths:
            continue
        if name == "open":
            mode = next((s for s in strings[1:2]), None) or next(
                (k.value.value for k in node.keywords if k.arg == "mode"
                 and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)), "r")
            written = any(ch in mode for ch in "wax")
        else:
            written = name.startswith(_WRITE_CALLS) or name.lower().startswith(_WRITE_CALLS)
        found += [(p, written, node.lineno) for p in paths[:1]]
    return found


def _looks_like_path(text: str) -> bool:
    return (0 < len(text) < 256 and "\n" not in text and "://" not in text
            and ("/" in text or re.search(r"\.[A-Za-z0-9]{1,8}$", text) is not None)
            and " " not in text.strip())


def _file_handoffs(a: _Analysis, graph: StepGraph) -> None:
    """Warn where a step reads a file that an earlier step writes: pods share no disk."""
    written: dict[str, str] = {}  # path -> the step that writes it
    for step in graph.steps:
        for cell, code in zip(step.cells, step.code):
            for path, is_write, line in _path_literals(code):
                norm = path.rstrip("/")
                writer = next((s for p, s in written.items() if s != step.name and (
                    norm == p or norm.startswith(p + "/") or p.startswith(norm + "/"))), None)
                if writer and not is_write:
                    a.problem(WARNING, "file-handoff",
                              f"{path!r} is written by step {writer!r}: on kfp.local steps "
                              "share this disk, on a cluster each step runs in its own pod "
                              "and the file is not there", cell, line,
                              hint="hand the value over as a variable (it becomes an "
                              "artifact), or use shared storage (a bucket or a volume)")
                if is_write:
                    written.setdefault(norm, step.name)


def _method_at(code: CellCode, name: str, line: int) -> str:
    for node in ast.walk(code.tree) if code.tree else ():
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and getattr(node, "lineno", None) == line):
            root = node.func.value
            while isinstance(root, (ast.Attribute, ast.Subscript)):
                root = root.value
            if isinstance(root, ast.Name) and root.id == name:
                return node.func.attr
    return "?"


def _missing_modules(a: _Analysis, nb: Notebook, skip_cells: list[Cell]) -> None:
    """Warn about imports of modules this environment (the steps' environment) lacks."""
    import importlib.util

    skipped = {c.index for c in skip_cells}
    seen: set[str] = set()
    for cell in nb.cells:
        if cell.index in skipped:
            continue
        tree = a.codes[cell.index].tree
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in seen:
                    continue
                seen.add(top)
                if local_module(nb, top) is not None:
                    continue  # beside the notebook: part of each step's code (codegen)
                try:
                    found = importlib.util.find_spec(top) is not None
                except (ImportError, ValueError):
                    found = False
                if not found:
                    a.problem(WARNING, "missing-module",
                              f"module {top!r} is not installed here: the step that imports "
                              "it will fail in this environment", cell, node.lineno,
                              hint="add it to the project's requirements (the steps' image is "
                              "built from them)")


def local_module(nb: Notebook, top: str) -> Path | None:
    """The file or package ``top`` names beside the notebook, where the steps import it from."""
    folder = nb.path.resolve().parent
    for candidate in (folder / f"{top}.py", folder / top / "__init__.py"):
        if candidate.is_file():
            return candidate if candidate.name != "__init__.py" else candidate.parent
    return None


def _local_modules(a: _Analysis, graph: StepGraph) -> None:
    """Which of the notebook's own modules each step imports (its cache key covers them)."""
    nb = graph.notebook
    folder = nb.path.resolve().parent
    for step in graph.steps:
        trees: list[ast.AST | None] = [a.codes[c.index].tree for c in
                                       [*step.imports_cells, *step.functions_cells, *step.cells]]
        for stmt in step.carried_imports:
            try:
                trees.append(ast.parse(stmt))
            except SyntaxError:
                continue
        found = {local_module(nb, m.split(".")[0]) for m in imported_modules(trees)}
        step.local_modules = sorted(str(p.relative_to(folder)) for p in found if p is not None)


def _execution_order(a: _Analysis, nb: Notebook) -> None:
    last: tuple[int, Cell] | None = None
    for cell in nb.cells:
        if cell.execution_count is None:
            continue
        if last is not None and cell.execution_count <= last[0]:
            a.problem(WARNING, "execution-order",
                      f"saved execution count [{cell.execution_count}] comes after "
                      f"[{last[0]}] (cell {last[1].index}): the notebook was not run top to "
                      "bottom, so its saved outputs may not be what a fresh run gives", cell,
                      hint="Kernel > Restart and run all, then save")
            return
        last = (cell.execution_count, cell)
