"""The expressions a rehearsal evaluates: the forms render writes, parsed, never run."""

from __future__ import annotations

import pytest

from nbship.spinnaker.expressions import ExpressionError, Scope, evaluate, resolve

SCOPE = Scope({"model": "127.0.0.1:5000/models/m@sha256:" + "a" * 64, "n": "3"},
              {"Judge the canary": {"status": "FAILED_CONTINUE", "context": {"x": "1"},
                                    "outputs": {"canary_verdict": "fail"}},
               "Promote?": {"status": "SUCCEEDED", "context": {"judgmentStatus": "continue"},
                            "outputs": {}}})


@pytest.mark.parametrize(("text", "value"), [
    ("${parameters.model}", SCOPE.parameters["model"]),
    ("${parameters['n']}", "3"),
    ("${trigger.parameters.n}", "3"),
    ("--seconds ${parameters.n}s", "--seconds 3s"),
    ("${ #stage('Judge the canary')['status'].toString() == 'SUCCEEDED' }", False),
    ("${ #stage('Judge the canary')['status'].toString() != 'SUCCEEDED' }", True),
    ("${#stage('Judge the canary')['outputs']['canary_verdict']}", "fail"),
    ("${#judgment('Promote?') == 'continue' && parameters.n == '3'}", True),
    ("${#judgment('Never ran') == 'continue' || false}", False),
    ("${!(execution.status == 'RUNNING')}", False),
    ("no expression here", "no expression here"),
])
def test_the_forms_a_rehearsal_evaluates(text: str, value: object) -> None:
    assert evaluate(text, SCOPE) == value


@pytest.mark.parametrize("text", [
    "${T(java.lang.Runtime).getRuntime().exec('touch /tmp/owned')}",
    "${__import__('os').system('true')}",
    "${parameters.missing}",
    "${#stage('No such stage')['status']}",
    "${#fromUrl('http://example.com')}",
    "${parameters.model.split('@')}",
    "${'unbalanced}",
    "${parameters.n == }",
])
def test_anything_else_is_a_message_not_a_computation(text: str) -> None:
    with pytest.raises(ExpressionError) as err:
        evaluate(text, SCOPE)
    assert "a rehearsal evaluates" in str(err.value)


def test_resolve_walks_a_stage_and_keeps_its_keys() -> None:
    stage = {"name": "x", "args": ["--reference", "${parameters.model}"],
             "${keys stay}": {"n": "${parameters.n}"}, "count": 2}
    assert resolve(stage, SCOPE) == {"name": "x", "args": ["--reference",
                                                            SCOPE.parameters["model"]],
                                     "${keys stay}": {"n": "3"}, "count": 2}
