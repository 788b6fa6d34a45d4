"""The expressions a rehearsal evaluates: the forms render writes, parsed, never run."""

from __future__ import annotations

import pytest

from nbship.spinnaker.expressions import ExpressionError, Scope, evaluate, resolve

SCOPE = Scope({"model": "127.0.0.1:5000/models/m@sha256:" + "a" * 64, "n": "3"},
              {"Judge the canary": {"status": "FAILED_CONTINUE", "context": {"x": "1"},
                                    "outputs": {"canary_verdict": "fail"}},
               "Promote?": {"status": "SUCCEEDED", "type": "manualJudgment",
                            "context": {"judgmentStatus": "continue",
                                        "judgmentInput": "promote"}, "outputs": {}},
               "Go on?": {"status": "SUCCEEDED", "type": "manualJudgment",
                          "context": {"judgmentStatus": "continue"}, "outputs": {}}})


@pytest.mark.parametrize(("text", "value"), [
    ("${parameters.model}", SCOPE.parameters["model"]),
    ("${parameters['n']}", "3"),
    ("${trigger.parameters.n}", "3"),
    ("--seconds ${parameters.n}s", "--seconds 3s"),
    ("${ #stage('Judge the canary')['status'].toString() == 'SUCCEEDED' }", False),
    ("${ #stage('Judge the canary')['status'].toString() != 'SUCCEEDED' }", True),
    ("${#stage('Judge the canary')['outputs']['canary_verdict']}", "fail"),
    ("${#judgment('Promote?') == 'promote' && parameters.n == '3'}", True),
    ("${#judgement('Promote?')}", "promote"),
    ("${#stage('Promote?').hasSucceeded && !#stage('Judge the canary').hasFailed}", True),
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
    # Orca's #judgment is the chosen judgmentInput and throws without one: a stage
    # judged "continue" with no judgmentInputs, one that never ran, one not a judgment
    "${#judgment('Go on?') == 'continue'}",
    "${#judgment('Never ran') == 'continue' || false}",
    "${#judgment('Judge the canary')}",
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


# Orca's own expression tests, as data (the Spock tables and pipelines of
# orca-core/src/test/groovy/com/netflix/spinnaker/orca/pipeline/util/
# ContextParameterProcessorSpec.groovy, .../pipeline/expressions/functions/
# StageExpressionFunctionProviderSpec.groovy and .../pipeline/model/
# OptionalStageSupportSpec.groovy, spinnaker/orca 2fdb327a), each with the value Orca's
# test expects.
ORCA = [
    # "can find a judgment result from execution": a bake stage of the same name holds a
    # judgmentInput too; #judgment reads the manualJudgment stage's
    ({"my stage": {"type": "manualJudgment", "status": "SUCCEEDED",
                   "context": {"judgmentInput": "Real Judgment input"}}},
     '${#judgment("my stage")}', "Real Judgment input"),
    # "should get stage status as String"
    ({"manualJudgment stage": {"type": "manualJudgment", "status": "SUCCEEDED",
                               "context": {"judgmentInput": "Real Judgment input"}}},
     '${#stage("manualJudgment stage")["status"]}', "SUCCEEDED"),
    # "can find a stage in an execution and get its status", Wait1 SUCCEEDED then TERMINAL
    ({"Wait1": {"type": "wait", "status": "SUCCEEDED", "context": {}}},
     'succeeded: ${#stage("Wait1")["status"] == "SUCCEEDED"}', "succeeded: true"),
    ({"Wait1": {"type": "wait", "status": "SUCCEEDED", "context": {}}},
     '${#stage("Wait1").hasSucceeded}', True),
    ({"Wait1": {"type": "wait", "status": "SUCCEEDED", "context": {}}},
     '${#stage("Wait1").hasFailed}', False),
    ({"Wait1": {"type": "wait", "status": "TERMINAL", "context": {}}},
     'succeeded: ${#stage("Wait1")["status"] == "SUCCEEDED"}', "succeeded: false"),
    ({"Wait1": {"type": "wait", "status": "TERMINAL", "context": {}}},
     '${#stage("Wait1").hasSucceeded}', False),
    ({"Wait1": {"type": "wait", "status": "TERMINAL", "context": {}}},
     '${#stage("Wait1").hasFailed}', True),
    # StageExpressionFunctionProviderSpec: stage() by name, stageExists()
    ({"My Second Stage": {"type": "wait", "status": "NOT_STARTED",
                          "context": {"region": "us-west-1"}}},
     "${#stage('My Second Stage')['context']['region']}", "us-west-1"),
    ({"My First Stage": {"type": "wait", "status": "NOT_STARTED", "context": {}}},
     "${#stageExists('My First Stage')}", True),
    ({"My First Stage": {"type": "wait", "status": "NOT_STARTED", "context": {}}},
     "${#stageExists('Non-existent Stage')}", False),
    # OptionalStageSupportSpec: Test1 FAILED_CONTINUE, Test2 SUCCEEDED (by name)
    ({"Test1": {"type": "wait", "status": "FAILED_CONTINUE", "context": {}}},
     "${#stage('Test1')['status'].toString() == 'FAILED_CONTINUE'}", True),
]


@pytest.mark.parametrize(("stages", "text", "value"), ORCA)
def test_orca_s_own_expression_tests(stages: dict[str, dict[str, object]], text: str,
                                      value: object) -> None:
    assert evaluate(text, Scope({}, stages)) == value


def test_orca_s_to_json_and_its_missing_stages() -> None:
    # ContextParameterProcessorSpec "helper method to convert objects into json"
    scope = Scope({"map": [{"v1": "k1"}, {"v2": "k2"}]}, {})
    assert evaluate("${#toJson( parameters.map )}", scope) == '[{"v1":"k1"},{"v2":"k2"}]'
    # "stage() should raise exception if stage not found"
    with pytest.raises(ExpressionError, match="Unable to locate"):
        evaluate("${#stage('does_not_exist')}", scope)
