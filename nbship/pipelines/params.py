"""``-p name=value`` -> typed pipeline arguments, checked against the parameters cell.

Values are parsed as data (int(), float(), JSON), never evaluated as code, and
travel to the pipeline as KFP parameter values, never into generated source.
"""

from __future__ import annotations

import json
from typing import Any

from nbship.errors import ParameterError
from nbship.extract.graph import Parameter

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


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
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise fail("expected a bool (true/false)")
    if kind == "int":
        try:
            return int(text, 10)
        except ValueError:
            raise fail("expected an int") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise fail("expected a float") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise fail(f"expected a JSON {kind}") from None
    if type(value).__name__ != kind:
        raise fail(f"expected a JSON {kind}, got {type(value).__name__}")
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
