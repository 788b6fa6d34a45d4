"""The part of Spinnaker's pipeline expressions (SpEL) a rehearsal evaluates.

Spinnaker evaluates ``${...}`` in a stage's context when the stage starts. A rehearsal
evaluates the forms nbship renders and people commonly write, and nothing else: the
text is parsed by a small grammar, never handed to an evaluator, so a pipeline file
cannot run code here.

* ``${parameters.NAME}`` / ``${parameters['NAME']}`` / ``${trigger.parameters.NAME}``
* ``${#stage('NAME')['status']}`` (``.toString()`` allowed), ``['context']['KEY']``,
  ``['outputs']['KEY']``; ``${#judgment('NAME')}``; ``${execution.status}``
* string literals, ``true``/``false``, and one ``==``/``!=`` comparison, negation
  ``!``, ``&&``/``||`` (``and``/``or``) between them.

Anything else is an :class:`ExpressionError` naming the expression and the forms above.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nbship.errors import NbshipError


class ExpressionError(NbshipError):
    """An expression the rehearsal cannot evaluate (Spinnaker's full SpEL is not here)."""

    exit_code = 2


FORMS = ("parameters.NAME, trigger.parameters.NAME, #stage('NAME')['status'|'context'|"
         "'outputs'][...], #judgment('NAME'), execution.status, 'literals', true/false, "
         "==, !=, !, &&, ||")


@dataclass(frozen=True)
class Scope:
    """What an expression can see: the parameters, and the stages that ran so far."""

    parameters: Mapping[str, Any]
    stages: Mapping[str, Mapping[str, Any]]  # stage name -> {status, context, outputs}
    execution_status: str = "RUNNING"


TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|&&|\|\||!|\(|\)|\[|\]|\.|\#)
  | (?P<word>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<num>\d+)
)""", re.VERBOSE)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"cannot read ${{{text}}} at {text[pos:pos + 12]!r}",
                                  hint=f"a rehearsal evaluates {FORMS}")
        out.append(m.group().strip())
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, scope: Scope) -> None:
        self.text, self.scope = text, scope
        self.toks = _tokens(text)
        self.i = 0

    def fail(self, why: str) -> ExpressionError:
        return ExpressionError(f"${{{self.text}}}: {why}", hint=f"a rehearsal evaluates {FORMS}")

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise self.fail(f"expected {want or 'more'} at the end" if tok is None
                            else f"expected {want!r}, found {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.either()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()!r}")
        return value

    def either(self) -> Any:
        value = self.both()
        while self.peek() in ("||", "or"):
            self.take()
            right = self.both()
            value = bool(value) or bool(right)
        return value

    def both(self) -> Any:
        value = self.compare()
        while self.peek() in ("&&", "and"):
            self.take()
            right = self.compare()
            value = bool(value) and bool(right)
        return value

    def compare(self) -> Any:
        left = self.unary()
        if self.peek() in ("==", "!="):
            op = self.take()
            right = self.unary()
            return (left == right) if op == "==" else (left != right)
        return left

    def unary(self) -> Any:
        if self.peek() in ("!", "not"):
            self.take()
            return not bool(self.unary())
        if self.peek() == "(":
            self.take()
            value = self.either()
            self.take(")")
            return value
        return self.postfix(self.atom())

    @staticmethod
    def literal(tok: str) -> str:
        return re.sub(r"\\(.)", r"\1", tok[1:-1])

    def atom(self) -> Any:
        tok = self.take()
        if tok[0] in "'\"":
            return self.literal(tok)
        if tok in ("true", "false"):
            return tok == "true"
        if tok == "#":
            fn = self.take()
            self.take("(")
            arg = self.take()
            if arg[0] not in "'\"":
                raise self.fail(f"#{fn}() takes a quoted stage name")
            self.take(")")
            name = self.literal(arg)
            stage = self.scope.stages.get(name)
            if fn == "stage":
                if stage is None:
                    raise self.fail(f"no stage named {name!r} has run")
                return dict(stage)
            if fn == "judgment":
                return (stage or {}).get("context", {}).get("judgmentStatus")
            raise self.fail(f"#{fn}() is not a helper a rehearsal knows")
        if tok == "parameters":
            return dict(self.scope.parameters)
        if tok == "trigger":
            return {"parameters": dict(self.scope.parameters)}
        if tok == "execution":
            return {"status": self.scope.execution_status}
        raise self.fail(f"{tok!r} is not a root a rehearsal knows")

    def postfix(self, value: Any) -> Any:
        while self.peek() in (".", "["):
            if self.take() == ".":
                key = self.take()
                if self.peek() == "(":  # toString() and friends: the value as it is
                    self.take("(")
                    self.take(")")
                    if key != "toString":
                        raise self.fail(f".{key}() is not a method a rehearsal knows")
                    value = "" if value is None else str(value)
                    continue
            else:
                tok = self.take()
                key = self.literal(tok) if tok[0] in "'\"" else tok
                self.take("]")
            if not isinstance(value, Mapping) or key not in value:
                raise self.fail(f"{key!r} is not there")
            value = value[key]
        return value


EMBEDDED = re.compile(r"\$\{(.*?)\}(?!\})", re.DOTALL)


def evaluate(text: str, scope: Scope) -> Any:
    """A string with ``${...}`` in it, evaluated: the value itself when the string is
    one expression, else the string with each expression's value put in."""
    whole = re.fullmatch(r"\s*\$\{(.*)\}\s*", text, re.DOTALL)
    if whole and "${" not in whole.group(1):
        return _Parser(whole.group(1), scope).parse()
    return EMBEDDED.sub(lambda m: str(_Parser(m.group(1), scope).parse()), text)


def resolve(value: Any, scope: Scope) -> Any:
    """Every string in a JSON value evaluated (keys stay as they are)."""
    if isinstance(value, str):
        return evaluate(value, scope) if "${" in value else value
    if isinstance(value, list):
        return [resolve(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, scope) for k, v in value.items()}
    return value
