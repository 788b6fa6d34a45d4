"""Which names a cell reads, defines and changes, taken from its AST.

IPython's own transformer first turns magics and ``!`` lines into Python (line
numbers are kept: one line magic becomes one line), then the cell is parsed
and walked in evaluation order. Nested functions and lambdas read their free
names when called, so those reads are *deferred*; comprehensions and class
bodies run at once, so theirs are immediate.
"""

from __future__ import annotations

import ast
import threading
import tokenize
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

# How deeply a cell's syntax tree may nest (``1 + 1 + ...`` with N terms nests N deep).
# Python itself stops near 3000 levels, fewer the deeper the call stack it compiles from
# (Jupyter's kernel, kfp's executor, nbship's checks): within this limit every stage that
# reads the code again (the generated module's parse, KFP's compile, the step's import,
# papermill's kernel) has room to spare, so what `check` accepts compiles and runs, and a
# cell beyond it is a problem at `check`, at the deepest line.
MAX_NESTING = 1000
# How deeply a cell's blocks may be indented: a step's code puts the cell two levels
# deeper (``def`` and ``with StepRun``), and Python's tokenizer stops at 100 levels.
MAX_INDENT = 90

# Cell magics whose body is Python that runs in the user namespace.
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun"})
# Line magics / shell lines that install packages: never run inside a step.
INSTALL_COMMANDS = ("pip", "conda", "mamba", "uv")


@dataclass(frozen=True)
class Event:
    kind: str  # read | def | del | mut | call | arg, arg.OBJ (passed to a call) | deferred
    name: str
    line: int


@dataclass
class Magic:
    line: int
    text: str
    install: bool  # a package install (pip/conda): dropped from steps


@dataclass
class CellCode:
    """The analysed code of one cell."""

    python: str  # the cell as plain Python (magics transformed)
    events: list[Event] = field(default_factory=list)
    imports: dict[str, str] = field(default_factory=dict)  # name -> import statement
    magics: list[Magic] = field(default_factory=list)
    star_imports: list[int] = field(default_factory=list)  # lines of `from x import *`
    future_imports: list[tuple[int, int]] = field(default_factory=list)  # (first, last) line
    syntax_error: tuple[int, str] | None = None
    tree: ast.Module | None = None  # None when the cell does not parse
    cell_magic: str | None = None  # e.g. "time" for a %%time cell (body starts on line 2)

    @property
    def trailing_name(self) -> str | None:
        """The variable a bare name on the cell's last statement displays (``df`` at the
        end of a cell), as Kale's ``get_trailing_variable`` finds it; None for anything
        else (a call, an attribute, an assignment, a syntax error, an empty cell) and for
        ``df;``, which Jupyter does not display."""
        if self.tree is None or not self.tree.body:
            return None
        last = self.tree.body[-1]
        if not isinstance(last, ast.Expr) or not isinstance(last.value, ast.Name):
            return None
        lines = self.python.splitlines()
        end = last.end_lineno or last.lineno
        rest = lines[end - 1][last.end_col_offset or 0:] if end <= len(lines) else ""
        return None if rest.lstrip().startswith(";") else last.value.id

    def names(self, kind: str) -> dict[str, int]:
        """First line of each name with an event of ``kind``."""
        out: dict[str, int] = {}
        for e in self.events:
            if e.kind == kind:
                out.setdefault(e.name, e.line)
        return out


def to_python(source: str) -> tuple[str, list[Magic], str | None]:
    """Turn IPython syntax into Python, keeping line numbers; return magics found."""
    if not _may_have_ipython_syntax(source):
        return source, [], None
    from IPython.core.inputtransformer2 import TransformerManager

    lines = source.splitlines()
    if lines and lines[0].startswith("%%"):
        name = lines[0][2:].split(maxsplit=1)[0] if lines[0][2:].strip() else ""
        if name in PYTHON_CELL_MAGICS:
            body, inner, _ = to_python("\n".join(lines[1:]))
            shifted = [Magic(m.line + 1, m.text, m.install) for m in inner]
            head = Magic(1, lines[0], False)
            return "pass  # " + lines[0] + "\n" + body, [head, *shifted], name
        # A non-Python cell magic (%%bash, %%writefile...): run through IPython, opaque to analysis.
        python = TransformerManager().transform_cell(source)
        return python, [Magic(1, lines[0], False)], name

    # `%time stmt` / `%timeit stmt` run stmt in the user namespace: keep stmt, drop the timing.
    timed = [_strip_timing(line) for line in lines]
    source = "\n".join(t[0] for t in timed) + ("\n" if source.endswith("\n") else "")
    transformed = TransformerManager().transform_cell(source)
    magics: list[Magic] = [Magic(n, t[1], False) for n, t in enumerate(timed, 1) if t[1]]
    out_lines = transformed.splitlines()
    for number, (before, after) in enumerate(zip(lines, out_lines), start=1):
        if before != after and "get_ipython()" in after:
            stripped = before.strip().lstrip("!%").strip()
            command = stripped.split(maxsplit=1)[0] if stripped else ""
            install = command in INSTALL_COMMANDS or command.endswith(("pip3", "pip"))
            magics.append(Magic(number, before.strip(), install))
    return transformed, magics, None


def _parse(source: str) -> ast.Module | SyntaxError:
    """The cell's AST, or the SyntaxError when it is not Python."""
    try:
        with warnings.catch_warnings():  # e.g. invalid escapes in the user's strings
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except SyntaxError as exc:
        return exc


def _may_have_ipython_syntax(source: str) -> bool:
    """False when the cell is plain Python, which IPython's transformer leaves unchanged.

    Every IPython-only construct (``%magic``, ``!cmd``, ``x = !cmd``, ``obj?``, pasted
    prompts) is a syntax error in Python, so a cell that parses needs no transformer;
    this spares the IPython import (a quarter second) on plain notebooks.
    """
    return isinstance(_parse(source), SyntaxError)


def _strip_timing(line: str) -> tuple[str, str]:
    """``%time x = f()`` -> (``x = f()``, the magic's text); other lines unchanged."""
    stripped = line.lstrip()
    for magic in ("%time ", "%timeit "):
        if stripped.startswith(magic):
            indent = line[: len(line) - len(stripped)]
            statement = stripped[len(magic):].strip()
            if statement.startswith("-"):  # %timeit -n 10 stmt: options first
                return line, ""
            return indent + statement, stripped
    return line, ""


def analyse(source: str, *, ipython: bool = True) -> CellCode:
    """Analyse one cell's source; ``ipython=False`` takes it as plain Python (no magics).

    Python runs deeply nested code (a thousand chained ``+``) that a recursive walk
    of its tree cannot follow with the default limit: the limit is raised while the
    cell is analysed. A cell nested deeper than MAX_NESTING is reported (as a syntax
    error: Python's own limit on nesting is one) at its deepest line, never a crash, and
    whatever the depth of the caller's stack. A cell long enough to nest that deep is
    analysed in a thread of its own with a stack sized for the raised limit: parsing
    recurses in C, and a caller's thread (a server's worker) may have a small stack.
    """
    if len(source) <= MAX_NESTING:  # each level of nesting takes a character at least
        return _analyse_bounded(source, ipython)
    done: list[CellCode | BaseException] = []

    def work() -> None:
        try:
            done.append(_analyse_bounded(source, ipython))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            done.append(exc)

    with _STACK_SIZE:
        previous = threading.stack_size(_ANALYSIS_STACK)
        try:
            worker = threading.Thread(target=work, name="nbship-analyse", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    if isinstance(done[0], BaseException):
        raise done[0]
    return done[0]


_ANALYSIS_STACK = 256 << 20  # address space, touched only as deep as the parse goes
_STACK_SIZE = threading.Lock()  # threading.stack_size is for the whole process


def _analyse_bounded(source: str, ipython: bool) -> CellCode:
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        return _analyse(source, ipython=ipython)
    except (RecursionError, MemoryError):
        return CellCode(python=source, syntax_error=(_longest_line(source),
                                                     _too_deep(None)))
    finally:
        sys.setrecursionlimit(limit)


def _too_deep(depth: int | None) -> str:
    how = f"nested {depth} levels deep" if depth is not None else "too deeply nested to parse"
    return (f"{how}; nbship compiles code nested at most {MAX_NESTING} levels (Python's "
            "own limit is near 3000 and lower inside Jupyter or a pipeline step): split "
            "the expression, e.g. sum(terms) for a long chain of +")


def nesting(tree: ast.AST) -> tuple[int, int]:
    """(how deeply ``tree``'s nodes nest, the line of the deepest), without recursion."""
    deepest, where = 0, 1
    stack: list[tuple[ast.AST, int, int]] = [(tree, 0, 1)]
    while stack:
        node, depth, line = stack.pop()
        line = getattr(node, "lineno", line)
        if depth > deepest:
            deepest, where = depth, line
        stack.extend((child, depth + 1, line) for child in ast.iter_child_nodes(node))
    return deepest, where


def indentation(source: str) -> tuple[int, int]:
    """(how many block levels deep ``source`` is indented, the first line that deep)."""
    widest = max((len(x) - len(x.lstrip(" \t\f")) for x in source.splitlines()), default=0)
    if widest <= MAX_INDENT:  # each level is at least one more character
        return 0, 1
    depth = deepest = 0
    where = 1
    try:
        for tok in tokenize.generate_tokens(iter(source.splitlines(keepends=True)).__next__):
            if tok.type == tokenize.INDENT:
                depth += 1
                if depth > deepest:
                    deepest, where = depth, tok.start[0]
            elif tok.type == tokenize.DEDENT:
                depth -= 1
    except (tokenize.TokenError, SyntaxError):
        pass
    return deepest, where


def _longest_line(source: str) -> int:
    """The first line of the logical line with the most tokens: where a tree too deep to
    build is (statements nest at most 100 deep; only a long expression nests further)."""
    best, first, count, start = -1, 1, 0, None
    try:
        for tok in tokenize.generate_tokens(iter(source.splitlines(keepends=True)).__next__):
            if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                if count > best and start is not None:
                    best, first = count, start
                count, start = 0, None
            elif tok.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT,
                                  tokenize.DEDENT):
                count += 1
                start = tok.start[0] if start is None else start
    except (tokenize.TokenError, SyntaxError):
        pass
    return first


def _analyse(source: str, *, ipython: bool) -> CellCode:
    parsed = _parse(source)  # plain Python, the common case, is parsed once
    if isinstance(parsed, SyntaxError) and ipython:  # IPython syntax, or a real error
        try:
            python, magics, cell_magic = to_python(source)
        except (SyntaxError, ValueError, IndexError, tokenize.TokenError):
            # IPython's transformer tokenizes first; a cell it cannot read is not IPython
            # syntax either, and its syntax error is reported from the plain parse below
            python, magics, cell_magic = source, [], None
        code = CellCode(python=python, magics=magics, cell_magic=cell_magic)
        parsed = _parse(python)
    else:
        code = CellCode(python=source)
    if isinstance(parsed, SyntaxError):
        code.syntax_error = (parsed.lineno or 1, parsed.msg)
        return code
    depth, line = nesting(parsed)
    if depth > MAX_NESTING:
        code.syntax_error = (line, _too_deep(depth))
        return code
    levels, line = indentation(code.python)
    if levels > MAX_INDENT:
        code.syntax_error = (line, f"indented {levels} levels; nbship compiles cells indented "
                             f"at most {MAX_INDENT} levels (a step puts the cell two levels "
                             "deeper, and Python stops at 100)")
        return code
    code.tree = parsed
    walker = _Walker(code)
    for stmt in parsed.body:
        walker.stmt(stmt)
    return code


def root_name(node: ast.AST) -> ast.Name | None:
    """The Name at the root of ``a.b[c].d`` (None for calls and other roots)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node if isinstance(node, ast.Name) else None


_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


class _Walker:
    """Walk module-level statements in evaluation order, recording events."""

    def __init__(self, code: CellCode) -> None:
        self.code = code

    def emit(self, kind: str, name: str, node: ast.AST) -> None:
        self.code.events.append(Event(kind, name, getattr(node, "lineno", 1)))

    # statements ---------------------------------------------------------
    def stmt(self, node: ast.stmt) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                self.expr(d)
            self._arg_defaults(node.args)
            self._definition(node, "deferred")  # the body runs when called
        elif isinstance(node, ast.ClassDef):
            for d in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
                self.expr(d)
            self._definition(node, "read")  # the body runs now
        elif isinstance(node, ast.Assign):
            self.expr(node.value)
            for t in node.targets:
                self.target(t)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.expr(node.value)
            self.expr(node.annotation)
            if node.value is not None or not isinstance(node.target, ast.Name):
                self.target(node.target)
        elif isinstance(node, ast.AugAssign):
            self.expr_load_of_target(node.target)
            self.expr(node.value)
            self.target(node.target)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter)
            self.target(node.target)
            for s in [*node.body, *node.orelse]:
                self.stmt(s)
        elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
            self.code.future_imports.append((node.lineno, node.end_lineno or node.lineno))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    self.code.star_imports.append(node.lineno)
                    continue
                bound = alias.asname or alias.name.split(".")[0]
                if isinstance(node, ast.Import):
                    stmt_src = ast.unparse(ast.Import(names=[alias]))
                else:
                    stmt_src = ast.unparse(
                        ast.ImportFrom(module=node.module, names=[alias], level=node.level)
                    )
                self.code.imports[bound] = stmt_src
                self.emit("def", bound, node)
        elif isinstance(node, ast.Delete):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    self.emit("read", t.id, t)
                    self.emit("del", t.id, t)
                else:
                    self.target(t)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            for s in node.body:  # type: ignore[attr-defined]
                self.stmt(s)
            for h in node.handlers:  # type: ignore[attr-defined]
                if h.type is not None:
                    self.expr(h.type)
                if h.name:
                    self.emit("def", h.name, h)
                for s in h.body:
                    self.stmt(s)
            for s in [*node.orelse, *node.finalbody]:  # type: ignore[attr-defined]
                self.stmt(s)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            return
        elif isinstance(node, ast.Match):
            self.expr(node.subject)
            for case in node.cases:
                for sub in ast.walk(case.pattern):
                    captured = getattr(sub, "name", None) or getattr(sub, "rest", None)
                    if isinstance(captured, str):
                        self.emit("def", captured, sub)
                    elif isinstance(sub, ast.expr):
                        self.expr(sub)
                if case.guard is not None:
                    self.expr(case.guard)
                for s in case.body:
                    self.stmt(s)
        else:
            # If, While, With, Expr, Return, Raise, Assert, ...: children in field order.
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self.stmt(child)
                elif isinstance(child, ast.withitem):
                    self.expr(child.context_expr)
                    if child.optional_vars is not None:
                        self.target(child.optional_vars)
                elif isinstance(child, ast.expr):
                    self.expr(child)

    def _definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef,
                    free_kind: str) -> None:
        """Events of a def/class statement: its free names, globals it assigns, its name."""
        free, global_defs = scope_free(node)
        for name, line in free.items():
            self.code.events.append(Event(free_kind, name, line))
        for name, line in global_defs.items():
            self.code.events.append(Event("def", name, line))
        self.emit("def", node.name, node)

    def _arg_defaults(self, args: ast.arguments) -> None:
        for d in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.expr(d)
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None and a.annotation is not None:
                self.expr(a.annotation)

    def expr_load_of_target(self, target: ast.expr) -> None:
        root = root_name(target)
        if root is not None:
            self.emit("read", root.id, root)
        if not isinstance(target, ast.Name):
            self._target_parts(target)

    def target(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            self.emit("def", node.id, node)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                self.target(elt)
        elif isinstance(node, ast.Starred):
            self.target(node.value)
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            root = root_name(node)
            self._target_parts(node)
            if root is not None:
                self.emit("read", root.id, root)
                self.emit("mut", root.id, root)

    def _target_parts(self, node: ast.expr) -> None:
        """Reads inside a store target: subscript indexes, call roots."""
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            if isinstance(node, ast.Subscript):
                self.expr(node.slice)
            node = node.value
        if not isinstance(node, ast.Name):
            self.expr(node)

    # expressions --------------------------------------------------------
    def expr(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.emit("read", node.id, node)
            elif isinstance(node.ctx, ast.Store):
                self.emit("def", node.id, node)
            return
        if isinstance(node, ast.NamedExpr):
            self.expr(node.value)
            self.emit("def", node.target.id, node.target)
            return
        if isinstance(node, ast.Lambda):
            self._arg_defaults(node.args)
            free, _ = scope_free(node)
            for name, line in free.items():
                self.code.events.append(Event("deferred", name, line))
            return
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            self.expr(node.generators[0].iter)
            free, _ = scope_free(node)
            for name, line in free.items():
                self.code.events.append(Event("read", name, line))
            for sub in ast.walk(node):  # the walrus binds in the enclosing scope
                if isinstance(sub, ast.NamedExpr):
                    self.emit("def", sub.target.id, sub.target)
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            root = root_name(node.func)
            if root is not None:
                self.emit("call", root.id, root)
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name)
                                               and node.func.id in PURE_BUILTINS):
            # a value passed to a call may come back changed (random.shuffle(deck)); to a
            # method of an object (model.fit(X, y)), kind "arg.OBJ": the graph takes it
            # when OBJ is a module (np.random.shuffle), or the method changes arguments
            kind = "arg"
            if isinstance(node.func, ast.Attribute) and not in_place_method(node.func):
                receiver = root_name(node.func.value)  # None: a call's result, M().fit(X)
                kind = f"arg.{receiver.id if receiver is not None else '()'}"
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                root = root_name(arg)
                if root is not None:
                    self.emit(kind, root.id, root)
        for child in ast.iter_child_nodes(node):
            self.expr(child)


def _bound_names(node: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound in the scope of ``node`` (not in nested scopes), and names declared global."""
    bound: set[str] = set()
    declared: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                bound.add(arg.arg)
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        for gen in node.generators:
            for sub in ast.walk(gen.target):
                if isinstance(sub, ast.Name):
                    bound.add(sub.id)
    for sub in _scope_nodes(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            bound.add(sub.id)
        elif (isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
              and sub is not node):
            bound.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            for alias in sub.names:
                bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            bound.add(sub.name)
        elif isinstance(sub, (ast.MatchAs, ast.MatchStar)) and sub.name:
            bound.add(sub.name)
        elif isinstance(sub, ast.MatchMapping) and sub.rest:
            bound.add(sub.rest)
        elif isinstance(sub, ast.Global):
            declared.update(sub.names)
        elif isinstance(sub, ast.Nonlocal):
            bound.update(sub.names)
    return bound - declared, declared


def _scope_body(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return list(node.body)
    if isinstance(node, ast.Lambda):
        return [node.body]
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
        parts: list[ast.AST] = [node.elt]
    elif isinstance(node, ast.DictComp):
        parts = [node.key, node.value]
    else:
        return []
    for i, gen in enumerate(node.generators):
        if i:
            parts.append(gen.iter)
        parts.extend(gen.ifs)
    return parts


def _scope_nodes(node: ast.AST):  # type: ignore[no-untyped-def]
    """Yield the nodes of ``node``'s own scope; nested scopes are yielded, not entered."""
    stack = list(reversed(_scope_body(node)))
    while stack:
        sub = stack.pop()
        yield sub
        if isinstance(sub, _SCOPES):
            # parts of a nested scope evaluated in this scope
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                defaults = [*sub.args.defaults, *(d for d in sub.args.kw_defaults if d)]
                stack.extend(reversed(defaults))
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                stack.extend(reversed(sub.decorator_list))
            if isinstance(sub, ast.ClassDef):
                stack.extend(reversed([*sub.bases, *(k.value for k in sub.keywords)]))
            if isinstance(sub, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                stack.append(sub.generators[0].iter)
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(sub))))


def scope_free(node: ast.AST) -> tuple[dict[str, int], dict[str, int]]:
    """Free names read inside the scope ``node`` opens (with first line), and globals it assigns."""
    bound, declared = _bound_names(node)
    free: dict[str, int] = {}
    global_defs: dict[str, int] = {}
    for sub in _scope_nodes(node):
        if isinstance(sub, ast.Name):
            if isinstance(sub.ctx, ast.Load) and sub.id not in bound:
                free.setdefault(sub.id, sub.lineno)
            elif sub.id in declared and isinstance(sub.ctx, ast.Store):
                global_defs.setdefault(sub.id, sub.lineno)
        elif isinstance(sub, _SCOPES):
            inner_free, inner_globals = scope_free(sub)
            for name, line in inner_free.items():
                if name not in bound:
                    free.setdefault(name, line)
            for name, line in inner_globals.items():
                global_defs.setdefault(name, line)
    return free, global_defs


def imported_modules(trees: Iterable[ast.AST | None]) -> list[str]:
    """The modules that ``import`` statements in ``trees`` name (absolute imports only)."""
    names: list[str] = []
    for tree in trees:
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
    return names


# Builtins that never change their arguments: passing a value to them is a read.
PURE_BUILTINS = frozenset(
    "print len str repr int float bool complex list tuple set frozenset dict sorted sum min "
    "max abs round isinstance issubclass type enumerate zip range any all hash id format "
    "hasattr getattr callable divmod pow chr ord bin hex oct ascii dir bytes bytearray "
    "reversed map filter iter".split()
)


# Methods that change their arguments in place (rng.shuffle(deck), torch's ``*_`` ops).
IN_PLACE_METHODS = frozenset({"shuffle", "copyto", "fill_diagonal", "put", "putmask", "place"})


def in_place_method(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and (
        func.attr in IN_PLACE_METHODS
        or (func.attr.endswith("_") and not func.attr.startswith("_")))


def changed_names(node: ast.AST, read_only: frozenset[str]) -> dict[str, int]:
    """Names that code under ``node`` may change in place (with first line): the roots of
    item/attribute stores and deletes, of method calls not in ``read_only``, and of the
    arguments of calls (other than to PURE_BUILTINS). Nested scopes are included (a
    nested function may run), so names they bind themselves may be listed: callers keep
    the ones that matter (a function's free names)."""
    found: dict[str, int] = {}

    def note(target: ast.AST) -> None:
        root = root_name(target)
        if root is not None:
            found.setdefault(root.id, getattr(root, "lineno", 1))

    for sub in ast.walk(node):
        if isinstance(sub, (ast.Attribute, ast.Subscript)) and isinstance(
                sub.ctx, (ast.Store, ast.Del)):
            note(sub)
        elif isinstance(sub, ast.Call):
            func = sub.func
            if isinstance(func, ast.Attribute) and func.attr not in read_only:
                note(func.value)
            if isinstance(func, ast.Name) and func.id in PURE_BUILTINS:
                continue
            for arg in [*sub.args, *(k.value for k in sub.keywords)]:
                if isinstance(arg, (ast.Name, ast.Attribute, ast.Subscript, ast.Starred)):
                    note(arg)
    return found
