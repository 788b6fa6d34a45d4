"""The part of Spinnaker's pipeline expressions (SpEL) a rehearsal evaluates.

Spinnaker evaluates ``${...}`` in a stage's context when the stage starts. A rehearsal
evaluates the forms nbship renders and people commonly write, and nothing else: the
text is parsed by a small grammar, never handed to an evaluator, so a pipeline file
cannot run code here.

* ``${parameters.NAME}`` / ``${parameters['NAME']}`` / ``${trigger.parameters.NAME}``
* ``${#stage('NAME')['status']}`` (``.toString()`` allowed), ``['context']['KEY']``,
  ``['outputs']['KEY']``, ``.hasSucceeded``/``.hasFailed``; ``${#stageExists('NAME')}``;
  ``${#judgment('NAME')}`` (alias ``#judgement``); ``${#toJson(VALUE)}``;
  ``${execution.status}``; ``${#triggerResolvedArtifact('NAME')['reference']}`` and
  ``${trigger.payload...}`` (the execution's trigger, as :mod:`nbship.spinnaker.rehearse`
  builds it from ``--trigger-payload``)
* string literals, ``true``/``false``, and one ``==``/``!=`` comparison, negation
  ``!``, ``&&``/``||`` (``and``/``or``) between them.

The helpers are Orca's own definitions
(orca-core/src/main/java/com/netflix/spinnaker/orca/pipeline/expressions/functions/
StageExpressionFunctionProvider.java): ``#stage`` finds the execution's first stage of
that name, whether it has run or not (a stage not started yet has status NOT_STARTED),
and throws when there is none; ``hasSucceeded`` is status SUCCEEDED and ``hasFailed``
status TERMINAL (StageExecutionImpl); ``#judgment`` is the ``judgmentInput`` of the
manualJudgment stage of that name -- the option a person chose from its
``judgmentInputs``, never its continue/stop status -- and throws when no such stage
has one (a stage with no ``judgmentInputs``, or not judged yet); ``#toJson`` writes
its value as Jackson does, without spaces. ``#triggerResolvedArtifact(name)`` is the
first of the trigger's resolved expected artifacts whose *bound* artifact has that
``name``, and throws when none has (orca-core/.../pipeline/expressions/functions/
ArtifactExpressionFunctionProvider.java).

Anything else is an :class:`ExpressionError` naming the expression and the forms above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nbship.errors import NbshipError


class ExpressionError(NbshipError):
    """An expression the rehearsal cannot evaluate (Spinnaker's full SpEL is not here)."""

    exit_code = 2


FORMS = ("parameters.NAME, trigger.parameters.NAME, #stage('NAME')['status'|'context'|"
         "'outputs'][...], #stage('NAME').hasSucceeded|hasFailed, #stageExists('NAME'), "
         "#judgment('NAME'), #toJson(VALUE), #triggerResolvedArtifact('NAME'), "
         "trigger.payload|artifacts|type..., execution.status, 'literals', true/false, "
         "==, !=, !, &&, ||")


@dataclass(frozen=True)
class Scope:
    """What an expression can see: the parameters, and the execution's stages."""

    parameters: Mapping[str, Any]
    # stage name -> {status, context, outputs[, type]}: every stage of the execution, as
    # in Orca (those not started yet with status NOT_STARTED)
    stages: Mapping[str, Mapping[str, Any]]
    execution_status: str = "RUNNING"
    # the execution's trigger (type, payload, artifacts, resolvedExpectedArtifacts, ...)
    trigger: Mapping[str, Any] | None = None


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
            if fn == "toJson":  # Jackson's writeValueAsString: no spaces, keys in order
                value = self.either()
                self.take(")")
                return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            arg = self.take()
            if arg[0] not in "'\"":
                raise self.fail(f"#{fn}() takes a quoted stage name")
            self.take(")")
            name = self.literal(arg)
            if fn == "triggerResolvedArtifact":
                bound = [e.get("boundArtifact") for e in
                         (self.scope.trigger or {}).get("resolvedExpectedArtifacts") or []]
                found = next((b for b in bound if isinstance(b, Mapping)
                              and b.get("name") == name), None)
                if found is None:
                    raise self.fail(f"Unable to locate resolved artifact {name} in trigger "
                                    "execution")
                return dict(found)
            stage = self.scope.stages.get(name)
            if fn == "stage":
                if stage is None:
                    raise self.fail(f"Unable to locate [{name}] using #stage({name})")
                status = str(stage.get("status", "NOT_STARTED"))
                return {**stage, "status": status, "hasSucceeded": status == "SUCCEEDED",
                        "hasFailed": status == "TERMINAL"}
            if fn == "stageExists":
                return stage is not None
            if fn in ("judgment", "judgement"):
                chosen = (stage or {}).get("context", {}).get("judgmentInput")
                if stage is None or stage.get("type") != "manualJudgment" \
                        or chosen is None:
                    raise self.fail(
                        f"Unable to locate manual Judgment stage [{name}] using #{fn}({name}): "
                        "Stage doesn't exist or doesn't contain judgmentInput in its context "
                        "(the option chosen from its judgmentInputs; Orca skips a stage whose "
                        "stageEnabled cannot be evaluated)")
                return chosen
            raise self.fail(f"#{fn}() is not a helper a rehearsal knows")
        if tok == "parameters":
            return dict(self.scope.parameters)
        if tok == "trigger":  # Orca's parameters are the trigger's
            return {**(self.scope.trigger or {}), "parameters": dict(self.scope.parameters)}
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
    return EMBEDDED.sub(lambda m: _text(_Parser(m.group(1), scope).parse()), text)


def _text(value: Any) -> str:
    """A value put into a string as Java's toString does (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolve(value: Any, scope: Scope) -> Any:
    """Every string in a JSON value evaluated (keys stay as they are)."""
    if isinstance(value, str):
        return evaluate(value, scope) if "${" in value else value
    if isinstance(value, list):
        return [resolve(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, scope) for k, v in value.items()}
    return value
