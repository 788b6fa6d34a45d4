"""Read an .ipynb with nbformat into Notebook/Cell objects and parse the tag vocabulary.

The vocabulary (DESIGN.md section 3) is Kale's tags, papermill's ``parameters`` and
``injected-parameters``, and nbval/nbmake tags passed through. Unknown tags are a
warning, never a failure, except near-misses of nbship's own tags (``Skip``,
``pipeline-metric``, ``step-train``): an error that names the tag meant.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.errors import Location, UnusableInputError

# Notebooks with large outputs run to tens of MB; beyond this it is not a notebook to read.
MAX_NOTEBOOK_BYTES = 256 * 2**20

# Cell roles. A cell has exactly one role; ``step`` cells carry a step name
# (``None``: the cell joins the step above it).
IMPORTS = "imports"
FUNCTIONS = "functions"
PARAMETERS = "parameters"
METRICS = "metrics"
SKIP = "skip"
SERVE = "serve"
STEP = "step"

_ROLE_TAGS = {
    "imports": IMPORTS,
    "functions": FUNCTIONS,
    "pipeline-parameters": PARAMETERS,
    "parameters": PARAMETERS,
    "injected-parameters": PARAMETERS,
    "pipeline-metrics": METRICS,
    "skip": SKIP,
    "serve": SERVE,
}

# Kale's block tags: untagged cells after one of them extend that block, as in Kale.
# papermill's `parameters` names one cell only (papermill's rule).
KALE_BLOCK_TAGS = frozenset({"imports", "functions", "pipeline-parameters",
                             "block:imports", "block:functions", "step:imports",
                             "step:functions"})

# Tags of other tools that coexist with ours: passed through, never an error.
PASSTHROUGH_TAGS = frozenset(
    {
        "nbval-ignore-output",
        "nbval-skip",
        "nbval-check-output",
        "nbval-raise",
        "raises-exception",
        "skip-execution",
        "hide-input",
        "hide-output",
        "hide-cell",
        "remove-input",
        "remove-output",
        "remove-cell",
    }
)


@dataclass(frozen=True)
class TagNote:
    """A remark about a cell's tags (unknown tag, conflicting roles...).

    ``error``: the tag would fail the run on Kubernetes; ``nbship check`` refuses it.
    """

    cell: int
    message: str
    error: bool = False


@dataclass
class Cell:
    """One code cell, with its parsed tags."""

    index: int
    id: str | None
    source: str
    tags: list[str]
    execution_count: int | None
    role: str = STEP
    step: str | None = None  # for role == STEP: the step this cell opens, if any
    prev: list[str] = field(default_factory=list)
    limits: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    cache: bool | None = None
    report: bool | None = None  # report:enabled / report:disabled (Kale's HTML report)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secrets: list[tuple[str, str, str]] = field(default_factory=list)  # (name, key, env)
    injected: bool = False  # papermill's injected-parameters cell

    @property
    def untagged(self) -> bool:
        """No tag of nbship's vocabulary (other tools' tags, such as nbval's, do not count)."""
        return all(t.strip() in PASSTHROUGH_TAGS or t.strip().startswith("nbval-")
                   for t in self.tags)

    @property
    def opens_kale_block(self) -> bool:
        return any(t.strip() in KALE_BLOCK_TAGS for t in self.tags)


@dataclass
class Notebook:
    """A notebook as nbship sees it: its code cells, tags and identity."""

    path: Path
    sha256: str
    cells: list[Cell]
    notes: list[TagNote]
    kernel_language: str

    @property
    def name(self) -> str:
        return self.path.name

    def where(self, cell: Cell | None = None, line: int | None = None) -> Location:
        if cell is None:
            return Location(str(self.path))
        return Location(str(self.path), cell.index, cell.id, line)


def import_nbformat() -> Any:
    """Import nbformat without the 0.9 s that jsonschema spends on an unused format checker.

    When rfc3987-syntax is installed (jupyter-events pulls it in), jsonschema builds
    its IRI grammar at import. Notebook schemas use no IRI format, so in nbship's own
    process the checker is left out; elsewhere nothing changes.
    """
    import sys

    if "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]
        try:
            import nbformat
        finally:
            del sys.modules["rfc3987_syntax"]
        return nbformat
    import nbformat

    return nbformat


def read_notebook(path: str | Path, *, require_code: bool = True) -> Notebook:
    """Read and validate ``path``; raise UnusableInputError (exit 2) if nbship cannot use it.

    ``require_code=False`` accepts a notebook without code (a test runner still runs it).
    """
    p = Path(path)
    return parse_notebook(_read_bounded(p, Location(str(p))), p, require_code=require_code)


def parse_notebook(raw: bytes, p: Path, *, require_code: bool = True) -> Notebook:
    """A notebook's bytes, validated as :func:`read_notebook` does, named ``p`` in every
    message: what an editor holds before it is saved (the JupyterLab extension)."""
    nbformat = import_nbformat()

    where = Location(str(p))
    if len(raw) > MAX_NOTEBOOK_BYTES:
        raise UnusableInputError(f"larger than {MAX_NOTEBOOK_BYTES} bytes", where=where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnusableInputError(
            f"not a notebook: not UTF-8 text (byte {exc.start})", where=where
        ) from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise UnusableInputError("not a notebook: JSON nested too deeply to read",
                                 where=where) from None
    except json.JSONDecodeError as exc:
        raise UnusableInputError(
            f"not a notebook: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            where=Location(str(p), line=exc.lineno),
            hint="fix the JSON by hand or restore it from git; merge conflicts often leave this",
        ) from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise UnusableInputError(
            "not a notebook: JSON without 'cells'",
            where=where,
            hint="nbship reads Jupyter notebooks (.ipynb, nbformat 4)",
        )
    major = data.get("nbformat")
    if major != 4:
        raise UnusableInputError(
            f"nbformat {major} is not supported; nbship reads nbformat 4",
            where=where,
            hint="upgrade it: jupyter nbconvert --to notebook --nbformat 4 --inplace " + str(p),
        )
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise UnusableInputError(
            f"not a valid nbformat 4 notebook: {exc.message}", where=where
        ) from None
    except RecursionError:
        raise UnusableInputError("not a notebook: nested too deeply to read",
                                 where=where) from None
    except Exception as exc:  # nbformat's reader raises several types
        raise UnusableInputError(f"not a readable notebook: {exc}", where=where) from None

    language = str(
        nb.metadata.get("kernelspec", {}).get("language")
        or nb.metadata.get("language_info", {}).get("name")
        or "python"
    )
    cells: list[Cell] = []
    notes: list[TagNote] = []
    for index, raw_cell in enumerate(nb.cells):
        if raw_cell.cell_type != "code":
            continue
        tags = [str(t) for t in raw_cell.get("metadata", {}).get("tags", [])]
        cell = Cell(
            index=index,
            id=raw_cell.get("id"),
            source=raw_cell.source,
            tags=tags,
            execution_count=raw_cell.get("execution_count"),
        )
        notes.extend(parse_tags(cell))
        cells.append(cell)
    if language.lower() != "python":
        raise UnusableInputError(
            f"the kernel language is {language!r}; nbship turns Python notebooks into pipelines",
            where=where,
        )
    if require_code and not any(c.source.strip() for c in cells):
        raise UnusableInputError(
            "the notebook has no code to run (no non-empty code cells)", where=where
        )
    return Notebook(
        path=p,
        sha256=hashlib.sha256(raw).hexdigest(),
        cells=cells,
        notes=notes,
        kernel_language=language,
    )


# KIND:KEY:VALUE, split at the first colon after the key as Kale does (values hold colons:
# URLs, timestamps).
def _read_bounded(p: Path, where: Location) -> bytes:
    """The file's bytes: a regular file of at most MAX_NOTEBOOK_BYTES, else a clear error.

    A FIFO would block forever and /dev/zero never ends: only regular files are read,
    and never more than the limit.
    """
    import os
    import stat

    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UnusableInputError("no such file", where=where) from None
    except IsADirectoryError:
        raise UnusableInputError("is a directory, not a notebook", where=where) from None
    except OSError as exc:
        raise UnusableInputError(f"cannot open: {exc.strerror}", where=where) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise UnusableInputError("is a directory, not a notebook", where=where)
        raise UnusableInputError("not a regular file (a device, FIFO or socket)",
                                 where=where, hint="nbship reads .ipynb files")
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_NOTEBOOK_BYTES + 1)
    if len(raw) > MAX_NOTEBOOK_BYTES:
        raise UnusableInputError(
            f"larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB: too large for a notebook nbship "
            "reads", where=where, hint="clear the outputs (jupyter nbconvert --clear-output)")
    return raw


_KV = re.compile(r"^(?P<kind>limit|annotation|label):(?P<key>[^:]+):(?P<value>.*)$", re.S)
# What Kubernetes accepts (apimachinery's validation): a secret's name is a DNS-1123
# subdomain, a secret key [-._a-zA-Z0-9]+, an environment variable a C identifier.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The limits KFP can set on a task, with the value syntax its PipelineTask checks.
_CPU = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEMORY = re.compile(r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_COUNT = re.compile(r"^[0-9]+$")


def parse_tags(cell: Cell) -> list[TagNote]:
    """Fill ``cell``'s role and settings from its tags; return notes about odd tags."""
    notes: list[TagNote] = []
    roles: list[str] = []
    for tag in cell.tags:
        tag = tag.strip()
        if tag in _ROLE_TAGS:
            roles.append(_ROLE_TAGS[tag])
            cell.injected = cell.injected or tag == "injected-parameters"
        elif tag.startswith(("step:", "block:")):
            name = tag.split(":", 1)[1].strip()
            if name in _ROLE_TAGS:  # Kale 0.x wrote block:imports, block:functions
                roles.append(_ROLE_TAGS[name])
            elif name:
                roles.append(STEP)
                if cell.step and cell.step != name:
                    notes.append(
                        TagNote(cell.index,
                                f"two step names ({cell.step}, {name}); using {cell.step}")
                    )
                else:
                    cell.step = name
            else:
                notes.append(
                    TagNote(cell.index, f"tag {tag!r} names no step; the cell joins the step above")
                )
        elif tag.startswith("prev:"):
            cell.prev.extend(p for p in tag.split(":")[1:] if p)
        elif tag.startswith("image:"):
            cell.image = tag.split(":", 1)[1]
        elif tag.startswith(("cache:", "report:")):
            switch, value = tag.split(":", 1)
            if value in ("enabled", "disabled"):
                setattr(cell, switch, value == "enabled")  # cell.cache, cell.report
            else:
                notes.append(TagNote(
                    cell.index, f"tag {tag!r}: use {switch}:enabled or {switch}:disabled"))
        elif tag.startswith("secret:"):
            parts = tag.split(":")
            if len(parts) == 4 and all(parts[1:]):
                problem = _secret_problem(*parts[1:])
                if problem:
                    notes.append(TagNote(cell.index, f"tag {tag!r}: {problem}", error=True))
                else:
                    cell.secrets.append((parts[1], parts[2], parts[3]))
            else:
                notes.append(TagNote(cell.index, f"tag {tag!r}: use secret:NAME:KEY:ENV",
                                     error=True))
        elif _KV.match(tag):
            m = _KV.match(tag)
            assert m is not None
            kind, key, value = m["kind"], m["key"], m["value"]
            problem = _limit_problem(key, value) if kind == "limit" else None
            if problem:
                notes.append(TagNote(cell.index, f"tag {tag!r}: {problem}", error=True))
                continue
            {"limit": cell.limits, "label": cell.labels, "annotation": cell.annotations}[kind][
                key
            ] = value
        elif tag in PASSTHROUGH_TAGS or tag.startswith("nbval-"):
            continue
        else:
            meant = near_miss(tag)
            if meant is not None:
                notes.append(TagNote(cell.index, f"tag {tag!r} is not an nbship tag (ignored); "
                                     f"did you mean {meant!r}?", error=True))
            else:
                notes.append(TagNote(cell.index, f"unknown tag {tag!r} (ignored)"))
    distinct = list(dict.fromkeys(roles))
    if len(distinct) > 1:
        notes.append(
            TagNote(
                cell.index,
                f"tags give the cell several roles ({', '.join(distinct)}); using {distinct[0]}",
            )
        )
    cell.role = distinct[0] if distinct else STEP
    return notes


# nbship's own words: a tag close to one of them is a typo, which would silently drop the
# cell's role or setting (`Skip` runs the cell, `pipeline-metric` logs nothing).
OWN_TAGS = tuple(_ROLE_TAGS)
OWN_PREFIXES = ("step", "block", "prev", "image", "cache", "secret", "limit", "annotation",
                "label", "report")
# Kale's structure words, also misspelt with another separator (`step-train`)
_STEP_PREFIXES = ("step", "block", "prev")
_HEAD = re.compile(r"^(?P<head>[A-Za-z]+)\s*(?P<sep>[:=_\- ])\s*(?P<rest>\S.*)$", re.S)


def _distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein distance (adjacent transpositions count one), capped at limit+1."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            row.append(cost)
        prev2, prev = prev, row
    return min(prev[-1], limit + 1)


def _close(word: str, known: str, *, edits: bool) -> bool:
    """``word`` is ``known`` but for case, separators, a plural 's' or (``edits``) a typo."""
    w = re.sub(r"[_ ]", "-", word.lower())
    if w == known or w + "s" == known or w == known + "s":
        return True
    if not edits or len(known) < 6:  # short words: `ship` is not a typo of `skip`
        return False
    return _distance(w, known, 2 if len(known) >= 10 else 1) <= (2 if len(known) >= 10 else 1)


def near_miss(tag: str) -> str | None:
    """The nbship tag that ``tag`` (not one of the vocabulary) looks like a typo of, or None.

    Case (`Skip`, `Step:train`), separators (`pipeline_metrics`, `step-train`), singular or
    plural (`pipeline-metric`, `limits:memory:4Gi`) and small edits (`pipline-metrics`,
    `stpe:train`). Other tools' tags, far from every nbship word, stay unknown.
    """
    for known in OWN_TAGS:
        if _close(tag, known, edits=":" not in tag):
            return known
    m = _HEAD.match(tag)
    if m is None:
        return None
    head, sep, rest = m["head"], m["sep"], m["rest"]
    for known in OWN_PREFIXES:
        if sep == ":" and (_close(head, known, edits=False)
                           or len(head) >= 4 and _distance(head.lower(), known, 1) <= 1):
            return f"{known}:{rest}"
        if sep != ":" and known in _STEP_PREFIXES and _close(head, known, edits=False):
            return f"{known}:{rest}"
    return None


def _secret_problem(name: str, key: str, env: str) -> str | None:
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return (f"{name!r} is not a Kubernetes secret name (lowercase letters, digits, '-' "
                "and '.', starting and ending with a letter or digit)")
    if not _SECRET_KEY.match(key):
        return f"{key!r} is not a secret key (letters, digits, '-', '_' and '.')"
    if not _ENV_NAME.match(env):
        return (f"{env!r} is not an environment variable name (letters, digits and '_', "
                "not starting with a digit)")
    return None


def is_accelerator(resource: str) -> bool:
    return "gpu" in resource or "/" in resource


def _limit_problem(resource: str, value: str) -> str | None:
    """Why KFP would refuse ``limit:resource:value``, or None."""
    if resource == "cpu":
        return None if _CPU.match(value) else (
            f"{value!r} is not a CPU quantity (e.g. 2, 0.5 or 500m)")
    if resource == "memory":
        return None if _MEMORY.match(value) else (
            f"{value!r} is not a memory quantity (e.g. 4Gi, 512Mi or 1G)")
    if is_accelerator(resource):
        return None if _COUNT.match(value) else (
            f"{value!r} is not a count of accelerators (a whole number)")
    return (f"KFP sets no {resource!r} limit on a task; the limits are cpu, memory and "
            "accelerators such as nvidia.com/gpu")
