"""``-p name=value`` -> typed pipeline arguments, checked against the parameters cell.

Values are parsed as data (int(), float(), JSON), never evaluated as code, and
travel to the pipeline as KFP parameter values, never into generated source.
"""

from __future__ import annotations

import json
from typing import Any

from nbship.errors import ParameterError
from nbship.extract.graph import Parameter, value_problem

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def resolve_like_papermill(text: str) -> Any:
    """``-p name value`` as papermill's CLI reads it (papermill/cli.py ``_resolve_type``):
    True, False and None by name, then an int, then a float, else the text itself.

    nbship applies it to parameters declared ``None`` only; the others take their type
    from the parameters cell (``-p n=1.5`` for ``n = 3`` is refused, not turned into a
    float).
    """
    if text == "True":
        return True
    if text == "False":
        return False
    if text == "None":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_value(param: Parameter, text: str) -> Any:
    where = param.cell
    kind = param.type

    def fail(why: str) -> ParameterError:
        return ParameterError(
            f"-p {param.name}={text}: {why}",
            hint=f"the parameters cell (cell {where.index}, line {param.line}) declares "
            f"{param.name} = {param.value!r} ({kind})",
        )

    if kind == "str":
        return text
    if kind == "none":  # declared None: no type to go by, so papermill's CLI rule
        resolved = resolve_like_papermill(text)
        problem = value_problem(resolved)
        if problem:
            raise fail(problem)
        return resolved
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise fail("expected a bool (true/false)")
    value: Any
    if kind == "int":
        try:
            value = int(text, 10)
        except ValueError:
            raise fail("expected an int") from None
    elif kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise fail("expected a float") from None
    else:
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise fail(f"expected a JSON {kind}") from None
        if type(value).__name__ != kind:
            raise fail(f"expected a JSON {kind}, got {type(value).__name__}")
    problem = value_problem(value)
    if problem:
        raise fail(problem)
    return value


def parse_assignments(assignments: list[str], params: dict[str, Parameter]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(f"-p {item!r}: write -p name=value")
        if name not in params:
            known = ", ".join(sorted(params)) or "none (the notebook has no parameters cell)"
            raise ParameterError(f"-p {name}: the notebook has no parameter {name!r}",
                                 hint=f"parameters: {known}")
        values[name] = parse_value(params[name], text)
    return values


def to_kfp(params: dict[str, Parameter], values: dict[str, Any]) -> dict[str, Any]:
    """Arguments as the compiled pipeline takes them: list/dict/None parameters as JSON."""
    from nbship.extract.codegen import JSON_KINDS

    return {name: json.dumps(value) if name in params and params[name].type in JSON_KINDS
            else value for name, value in values.items()}
