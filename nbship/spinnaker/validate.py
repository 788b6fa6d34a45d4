"""Offline validation of Spinnaker pipeline JSON, as strictly as Spinnaker would check it.

No JSON schema for Spinnaker pipelines exists; the rules here come from the sources
that enforce them (see ../shared/corpus/spinnaker/INDEX.md for the files read):

* front50's save: ``name`` and ``application`` non-blank — required with ``--save``
  (what ``spin pipeline save`` posts); Deck's "Edit as JSON" bodies lack them, so
  without ``--save`` their absence is a warning;
* the graph (Deck's JSON editor and orca): every stage has a ``type``, a string
  ``refId`` unique in the pipeline, and ``requisiteStageRefIds`` naming existing
  refIds, without cycles;
* per stage type, what Deck's validators block and what orca throws on at run time
  (a registry: ``STAGES``); a type nbship has no rules for is a warning (orca resolves
  types from its builders, their aliases and plugins: no closed list knows them all),
  a near-miss of one it has rules for (``manualJudgement``) an error;
* triggers: the known types, cron as Quartz with seconds, the fields each needs,
  ``expectedArtifactIds`` resolving;
* ``expectedArtifacts``: unique ids, ``matchArtifact``; every artifact id a stage or
  trigger names resolves;
* ``${...}`` expressions: balanced, quotes respected (an error otherwise); starting
  from a root Spinnaker evaluates: ``trigger``, ``execution``, ``parameters``, a ``#``
  helper such as ``#stage(...)``/``#judgment(...)``, a variable an ``evaluateVariables``
  stage defines, a key of the stage's own context, a literal or ``new``/``T(...)`` (a
  warning otherwise: orca keeps the text of an expression it cannot evaluate);
* embedded Kubernetes manifests: core kinds with ``kubernetes-validate`` (strict),
  custom resources against their CRD's ``openAPIV3Schema`` when nbship has it
  (KServe's InferenceService). Manifests holding expressions are checked after the
  expressions are replaced by placeholders of the right JSON type where they stand
  alone, else skipped for the schema (the expression check still applies).

Every problem names the file, the JSON path and what was expected.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ERROR, WARNING = "error", "warning"

# Stage types Spinnaker (orca) has, beyond those with rules below: they pass unchecked.
OTHER_STAGE_TYPES = frozenset("""
acquireLock applySourceServerGroupCapacity awsLambdaDeploymentStage bake bakeManifest
checkPreconditions cloneServerGroup concourse createApplication createServerGroup
deleteApplication deleteLoadBalancer deleteSecurityGroup deleteSnapshot deploy
deployCloudFormation deployCloudrunManifest deployService destroyService
destroyServerGroup disableCluster disableServerGroup enableManifest enableServerGroup
evaluateVariables findArtifactsFromResource findImage findImageFromTags gcb gremlin
googleCloudBuild importDeploymentArtifacts jenkins createLoadBalancer modifyScalingProcess
preconfiguredJob resizeServerGroup rollbackCluster rollbackServerGroup
rollingRestartManifest savePipeline scaleDown scaleDownCluster script shareService
shrinkCluster startScript tagImage travis unshareService updateApplication
upsertImageTags upsertLoadBalancer upsertScalingPolicy upsertSecurityGroup wercker
disableManifest releaseLock createScalingPolicy cfCreateServiceKey cfDeleteServiceKey
""".split())

TRIGGER_TYPES = frozenset({"cron", "docker", "webhook", "pubsub", "pipeline", "jenkins",
                           "git", "artifactory", "nexus", "helm", "travis", "concourse",
                           "wercker", "plugin", "gcb", "cdevents", "manual"})
KNOWN_ROOTS = frozenset({"trigger", "execution", "parameters", "scmInfo",
                         "deployedServerGroups", "stageStatus", "true", "false", "null",
                         "new", "T"})


@dataclass(frozen=True)
class Problem:
    file: str
    path: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.severity}: {self.message}"


@dataclass
class Check:
    """One document's validation: where it is, and what was found."""

    file: str
    doc: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    artifact_ids: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, path, message))

    def warn(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, path, message, WARNING))

    def need(self, stage: dict[str, Any], path: str, *keys: str, why: str = "") -> None:
        for key in keys:
            if stage.get(key) in (None, "", [], {}):
                self.error(f"{path}.{key}", f"required{why}")


# ---------------------------------------------------------------- stage rules (a registry)

StageRule = Callable[[Check, dict[str, Any], str], None]
STAGES: dict[str, StageRule] = {}


def rule(*types: str) -> Callable[[StageRule], StageRule]:
    def add(fn: StageRule) -> StageRule:
        for name in types:
            STAGES[name] = fn
        return fn
    return add


def _account(check: Check, stage: dict[str, Any], path: str) -> None:
    if not (stage.get("account") or stage.get("credentials")
            or isinstance(stage.get("account"), dict)):
        check.error(f"{path}.account", "required: the Kubernetes account (Deck blocks saving "
                    "without it; orca reads account, then credentials)")
    if stage.get("cloudProvider") != "kubernetes":
        check.error(f"{path}.cloudProvider", "must be \"kubernetes\" (orca defaults a missing "
                    "cloudProvider to aws)")


def _manifest_source(check: Check, stage: dict[str, Any], path: str, text_key: str) -> None:
    source = stage.get("source", "text")
    if source not in ("text", "artifact"):
        check.error(f"{path}.source", f"must be text or artifact, not {source!r}")
    elif source == "text" and stage.get(text_key) in (None, [], {}):
        check.error(f"{path}.{text_key}", "required with source text")
    elif source == "artifact":
        ref = stage.get("manifestArtifactId")
        if not ref and not stage.get("manifestArtifact"):
            check.error(f"{path}.manifestArtifactId", "required with source artifact (or an "
                        "inline manifestArtifact)")
        elif ref and isinstance(ref, str) and "${" not in ref and ref not in check.artifact_ids:
            check.error(f"{path}.manifestArtifactId", f"{ref!r} names no expected artifact")


@rule("deployManifest")
def _deploy(check: Check, stage: dict[str, Any], path: str) -> None:
    _account(check, stage, path)
    if "source" not in stage:
        check.error(f"{path}.source", "required: text or artifact")
    _manifest_source(check, stage, path, "manifests")
    traffic = stage.get("trafficManagement") or {}
    if isinstance(traffic, dict) and traffic.get("enabled") and not (
            traffic.get("options") or {}).get("services"):
        check.error(f"{path}.trafficManagement.options.services",
                    "at least one service when traffic management is enabled")
    manifests = stage.get("manifests")
    if stage.get("source", "text") == "text" and manifests is not None:
        if not isinstance(manifests, list):
            check.error(f"{path}.manifests", "a list of manifests")
        else:
            for i, manifest in enumerate(manifests):
                kubernetes_manifest(check, manifest, f"{path}.manifests[{i}]", stage)


def _selector(check: Check, stage: dict[str, Any], path: str) -> None:
    _account(check, stage, path)
    # stages saved before `mode` existed select by their fields: kinds + label selectors,
    # or cluster + criteria
    implied = "label" if stage.get("kinds") and stage.get("labelSelectors") else \
        "dynamic" if stage.get("cluster") and stage.get("criteria") else "static"
    mode = stage.get("mode", implied)
    if mode == "static":
        name = stage.get("manifestName")
        if not isinstance(name, str) or (len(name.split()) != 2 and "${" not in name):
            check.error(f"{path}.manifestName", "required with mode static, as \"<kind> "
                        "<name>\" (e.g. \"deployment my-app\")")
    elif mode == "dynamic":
        check.need(stage, path, "cluster", "criteria", why=" with mode dynamic")
        if stage.get("criteria") not in (None, "newest", "second_newest", "oldest", "largest",
                                         "smallest"):
            check.error(f"{path}.criteria", "newest, second_newest, oldest, largest or "
                        "smallest")
    elif mode == "label":
        check.need(stage, path, "kinds", why=" with mode label")
    else:
        check.error(f"{path}.mode", f"static, dynamic or label, not {mode!r}")
    if not (stage.get("location") or stage.get("namespace")):
        check.warn(f"{path}.location", "no namespace: Deck asks for one")


@rule("deleteManifest", "disableManifest", "enableManifest", "rollingRestartManifest")
def _select_only(check: Check, stage: dict[str, Any], path: str) -> None:
    _selector(check, stage, path)


@rule("scaleManifest")
def _scale(check: Check, stage: dict[str, Any], path: str) -> None:
    _selector(check, stage, path)
    check.need(stage, path, "replicas")


@rule("undoRolloutManifest")
def _undo(check: Check, stage: dict[str, Any], path: str) -> None:
    _selector(check, stage, path)
    check.need(stage, path, "numRevisionsBack")


@rule("patchManifest")
def _patch(check: Check, stage: dict[str, Any], path: str) -> None:
    _selector(check, stage, path)
    _manifest_source(check, stage, path, "patchBody")
    strategy = (stage.get("options") or {}).get("mergeStrategy", "strategic")
    if strategy not in ("strategic", "json", "merge"):
        check.error(f"{path}.options.mergeStrategy", "strategic, json or merge")


@rule("runJobManifest", "runJob")
def _run_job(check: Check, stage: dict[str, Any], path: str) -> None:
    if stage.get("type") == "runJob" and stage.get("cloudProvider") != "kubernetes":
        return  # another provider's runJob: not checked here
    _account(check, stage, path)
    source = stage.get("source", "text")
    if source == "artifact":
        _manifest_source(check, stage, path, "manifest")
        return
    manifests = stage.get("manifests") if "manifest" not in stage else [stage.get("manifest")]
    if not isinstance(manifests, list) or len(manifests) != 1:
        check.error(f"{path}.manifest", "exactly one Job manifest (orca: \"Run Job only "
                    "supports manifests with a single Job.\")")
        return
    manifest = manifests[0]
    at = f"{path}.manifest" if "manifest" in stage else f"{path}.manifests[0]"
    if not isinstance(manifest, dict) or manifest.get("kind") != "Job":
        check.error(f"{at}.kind", "Job (Deck: \"Run Job (Manifest) only accepts manifest of "
                    "kind Job.\")")
        return
    kubernetes_manifest(check, manifest, at, stage)


@rule("bakeManifest")
def _bake_manifest(check: Check, stage: dict[str, Any], path: str) -> None:
    expected = stage.get("expectedArtifacts") or []
    if len(expected) != 1 or (expected[0].get("matchArtifact") or {}).get("type") != \
            "embedded/base64":
        check.error(f"{path}.expectedArtifacts", "exactly one expected artifact of type "
                    "embedded/base64")
    if stage.get("templateRenderer", "").upper() in ("HELM2", "HELM3", "HELMFILE"):
        check.need(stage, path, "outputName", why=" for a Helm renderer")
    if not (stage.get("inputArtifacts") or stage.get("inputArtifact")):
        check.error(f"{path}.inputArtifacts", "at least one input artifact to bake")


@rule("manualJudgment")
def _judgment(check: Check, stage: dict[str, Any], path: str) -> None:
    inputs = stage.get("judgmentInputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and "value" in i
                                               for i in inputs):
        check.error(f"{path}.judgmentInputs", "a list of {\"value\": ...}")


@rule("wait")
def _wait(check: Check, stage: dict[str, Any], path: str) -> None:
    value = stage.get("waitTime")
    if value is None:  # Deck asks for it; orca's WaitStageContext waits 0 s without it
        check.warn(f"{path}.waitTime", "no waitTime: Deck asks for one, orca waits 0 s "
                   "(orca-core/.../pipeline/WaitStage.java)")
    elif not (isinstance(value, int) and value >= 0 or isinstance(value, str)
              and (value.isdigit() or "${" in value)):
        check.error(f"{path}.waitTime", "a number of seconds, or an expression")


@rule("webhook")
def _webhook(check: Check, stage: dict[str, Any], path: str) -> None:
    check.need(stage, path, "url")
    if stage.get("method", "POST") not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                           "OPTIONS"):
        check.error(f"{path}.method", "an HTTP method")


@rule("kayentaCanary")
def _kayenta(check: Check, stage: dict[str, Any], path: str) -> None:
    config = stage.get("canaryConfig")
    if not isinstance(config, dict):
        check.error(f"{path}.canaryConfig", "required")
        return
    at = f"{path}.canaryConfig"
    check.need(config, at, "canaryConfigId")
    if not config.get("scopes"):
        check.error(f"{at}.scopes", "at least one scope (orca: \"Canary stage configuration "
                    "must contain at least one scope.\")")
    scopes = config.get("scopes") or []
    if not (config.get("lifetimeDuration") or config.get("lifetimeHours")
            or any(isinstance(s, dict) and s.get("endTimeIso") for s in scopes)):
        check.error(f"{at}.lifetimeDuration", "required (or lifetimeHours, or a scope's "
                    "endTimeIso)")
    elif not any(isinstance(s, dict) and s.get("endTimeIso") for s in scopes) and not any(
            "${" in str(config.get(k, "")) for k in (
                "lifetimeDuration", "lifetimeHours", "canaryAnalysisIntervalMins",
                "beginCanaryAnalysisAfterMins", "lookbackMins")):
        from nbship.spinnaker.kayenta import canary_intervals

        try:  # the intervals as Orca plans them (RunCanaryIntervalsStage)
            canary_intervals(config)
        except ValueError as exc:
            check.error(f"{at}.lifetimeDuration" if "lifetime" in str(exc) else at, str(exc))


@rule("findArtifactFromExecution")
def _find_artifact(check: Check, stage: dict[str, Any], path: str) -> None:
    check.need(stage, path, "pipeline", "application", "executionOptions")


@rule("pipeline")
def _pipeline_stage(check: Check, stage: dict[str, Any], path: str) -> None:
    check.need(stage, path, "pipeline")
    if not (stage.get("application") or stage.get("pipelineApplication")):
        check.error(f"{path}.application", "required: the application of the pipeline to run")


def _near(a: str, b: str) -> bool:
    """Whether ``a`` is ``b`` but for case, or one letter added, dropped or changed."""
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _unknown_type(check: Check, kind: str, path: str) -> None:
    """A stage type nbship has no rules for. Orca resolves stage types from its
    StageDefinitionBuilder beans, their aliases and plugins' stages (orca-core/.../
    StageResolver.java; e.g. ``Aws.LambdaDeploymentStage`` is an alias in
    orca-clouddriver/.../providers/aws/lambda/LambdaDeploymentStage.java,
    ``bakeCloudFoundryManifest`` orca-bakery/.../cf/BakeCloudFoundryManifestStage.java):
    no closed list can know them all, so an unknown type is a warning. A near-miss of a
    type nbship checks (``manualJudgement``) is an error: orca would fail the execution
    with "No StageDefinitionBuilder implementation for ..." and nothing names the fix."""
    meant = next((k for k in sorted(STAGES) if _near(kind, k)), None)
    if meant is not None:
        check.error(path, f"{kind!r} is not a stage type Spinnaker has: {meant!r} is meant")
    else:
        check.warn(path, f"{kind!r}: a stage type nbship has no rules for (a plugin's, "
                   "another provider's or a newer Spinnaker's): not checked; orca fails the "
                   "execution if no StageDefinitionBuilder or plugin has it")


# ---------------------------------------------------------------- triggers

QUARTZ_FIELD = re.compile(r"^[0-9A-Za-z*?/,#LW\-]+$")


def quartz_problem(expr: str) -> str | None:
    """Why ``expr`` is not a Quartz cron expression (seconds first), or None."""
    fields = expr.split()
    if len(fields) not in (6, 7):
        return f"{len(fields)} fields: Quartz takes 6 or 7 (seconds minutes hours " \
               "day-of-month month day-of-week [year])"
    if not all(QUARTZ_FIELD.match(f) for f in fields):
        return "a field holds characters Quartz does not take"
    limits = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (1, 7)]
    for f, (low, high) in zip(fields, limits):
        for number in re.findall(r"(?<![/#])\b\d+\b", f):
            if not low <= int(number) <= high:
                return f"{number} is out of range {low}-{high} in {f!r}"
    dom, dow = fields[3], fields[5]
    if (dom == "?") == (dow == "?"):
        return "exactly one of day-of-month and day-of-week must be '?' (Quartz)"
    return None


def _trigger(check: Check, trigger: Any, path: str) -> None:
    if not isinstance(trigger, dict):
        check.error(path, "a trigger object")
        return
    kind = trigger.get("type")
    if kind not in TRIGGER_TYPES:
        known = ", ".join(sorted(TRIGGER_TYPES))
        check.error(f"{path}.type", f"a trigger type Spinnaker has ({known}), not {kind!r}")
        return
    if "enabled" in trigger and not isinstance(trigger["enabled"], bool):
        check.error(f"{path}.enabled", "true or false")
    if kind == "cron":
        expr = trigger.get("cronExpression")
        why = quartz_problem(expr) if isinstance(expr, str) else "required"
        if why:
            check.error(f"{path}.cronExpression", why)
    elif kind == "docker":
        for key in ("account", "repository"):
            if not trigger.get(key):
                check.warn(f"{path}.{key}", "a docker trigger without it never fires (Deck "
                           "saves it; igor matches on account and repository)")
    elif kind == "pubsub":
        check.need(trigger, path, "pubsubSystem", "subscriptionName")
    elif kind == "pipeline":
        check.need(trigger, path, "application", "pipeline")
    elif kind == "jenkins":
        check.need(trigger, path, "master", "job")
    elif kind == "webhook":
        check.need(trigger, path, "source")
        constraints = trigger.get("payloadConstraints")
        if constraints is not None and not isinstance(constraints, dict):
            check.error(f"{path}.payloadConstraints", "an object: payload key -> regex")
        for key, regex in (constraints if isinstance(constraints, dict) else {}).items():
            try:
                re.compile(str(regex))
            except re.error as exc:  # Echo logs it; the trigger never fires
                check.error(f"{path}.payloadConstraints.{key}", f"not a regex ({exc}): "
                            "Echo's ArtifactMatcher never matches it")
    for i, ref in enumerate(trigger.get("expectedArtifactIds") or []):
        if ref not in check.artifact_ids:
            check.error(f"{path}.expectedArtifactIds[{i}]", f"{ref!r} names no expected "
                        "artifact of the pipeline")


# ---------------------------------------------------------------- expressions

def _expressions(text: str) -> Iterator[tuple[str | None, str]]:
    """(expression body, or None when unbalanced; what was scanned) for each ``${``."""
    i = 0
    while True:
        start = text.find("${", i)
        if start < 0:
            return
        depth, quote, j = 0, "", start + 1
        while j < len(text):
            ch = text[j]
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "'\"":
                quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if depth != 0 or j >= len(text):
            yield None, text[start:start + 60]
            return
        yield text[start + 2:j], text[start:j + 1]
        i = j + 1


ROOT = re.compile(r"\s*(#?[A-Za-z_][A-Za-z0-9_]*|[0-9'\"({\[!-])")


JUDGMENT_CALL = re.compile(r"""#judge?ment\(\s*(['"])(.*?)\1\s*\)""")


def _judgments(check: Check, stages: list[dict[str, Any]]) -> None:
    """``#judgment('NAME')`` is Orca's chosen ``judgmentInput`` of the manualJudgment stage
    NAME, and throws when it has none (StageExpressionFunctionProvider.java): a stage
    with no ``judgmentInputs`` never has one, so the expression always fails (and a
    ``stageEnabled`` that fails skips its stage: OptionalStageSupport.java)."""
    inputs = {str(s.get("name")): s.get("judgmentInputs") for s in stages
              if s.get("type") == "manualJudgment"}
    named = {str(s.get("name")) for s in stages}  # another type: its own error says so
    for i, stage in enumerate(stages):
        for where, text in _walk_strings(stage, f"$.stages[{i}]"):
            for m in JUDGMENT_CALL.finditer(text):
                name = m.group(2)
                if name not in named:
                    check.error(where, f"#judgment({name!r}) names no manualJudgment stage: "
                                "Orca's #judgment throws")
                elif name in inputs and not inputs[name]:
                    check.error(where, f"#judgment({name!r}) is the option chosen from that "
                                "stage's judgmentInputs, and it has none: Orca's #judgment "
                                "throws (judge on #stage(NAME)['status'] instead, or give "
                                "judgmentInputs)")


def _walk_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_strings(v, f"{path}[{i}]")


def _check_expressions(check: Check, value: Any, path: str, local: set[str]) -> None:
    for at, text in _walk_strings(value, path):
        if "${" not in text:
            continue
        for body, seen in _expressions(text):
            if body is None:
                check.error(at, f"unbalanced expression {seen!r}: every ${{ needs its }}")
                continue
            match = ROOT.match(body)
            if match is None:
                check.error(at, f"empty expression {seen!r}")
                continue
            root = match[1]
            if root.startswith("#") or root[0] in "0123456789'\"({[!-":
                continue
            if root not in KNOWN_ROOTS and root not in check.variables and root not in local:
                # orca logs a failed evaluation and keeps the text: a warning, as Spinnaker
                check.warn(at, f"expression {seen!r} starts from {root!r}, which Spinnaker "
                           "does not know (trigger, execution, parameters, #stage(...), "
                           "#judgment(...), a variable of an evaluateVariables stage): orca "
                           "will leave the text unevaluated")


# ---------------------------------------------------------------- manifests

def _placeholders(value: Any) -> Any:
    """A manifest with each whole-string expression replaced by a neutral value."""
    if isinstance(value, dict):
        return {k: _placeholders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v) for v in value]
    if isinstance(value, str) and "${" in value:
        return "x"
    return value


def _closed(schema: Any) -> Any:
    """A CRD schema where objects with ``properties`` admit no others (unless they preserve
    unknown fields), so that a misspelled field is found: the API server would prune it."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=16)
def _crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The CRD's schema, closed (see ``_closed``); made once per kind."""
    from nbship.spinnaker import crds

    schema = crds.schema(api_version, kind)
    return None if schema is None else dict(_closed(schema))


def kubernetes_manifest(check: Check, manifest: Any, path: str, stage: dict[str, Any]) -> None:
    if not isinstance(manifest, dict):
        check.error(path, "a Kubernetes manifest (an object)")
        return
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        check.error(path, "apiVersion and kind are required")
        return
    if not (manifest.get("metadata") or {}).get("name") and not \
            (manifest.get("metadata") or {}).get("generateName"):
        check.error(f"{path}.metadata.name", "required")
    doc = _placeholders(manifest)
    schema = _crd_schema(api_version, kind)
    if schema is not None:
        import jsonschema

        for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
            if error.validator == "additionalProperties":  # pruned by the API server
                check.warn(f"{path}{where}", f"{kind} ({api_version}): {error.message} "
                           "(Kubernetes prunes fields its schema does not have)")
            else:
                check.error(f"{path}{where}", f"{kind} ({api_version}): {error.message}")
        return
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        check.warn(path, f"{kind} ({api_version}) is not a core kind and nbship has no CRD "
                   "schema for it: not checked")
    except kubernetes_validate.ValidationError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        if exc.validator == "additionalProperties":  # the API server warns and drops it
            check.warn(f"{path}{where}", f"{kind} ({api_version}): {exc.message} (Kubernetes "
                       "drops unknown fields with a warning)")
        else:
            check.error(f"{path}{where}", f"{kind} ({api_version}): {exc.message}")


KUBERNETES_VERSION = "1.33"


# ---------------------------------------------------------------- the pipeline

def _graph(check: Check, stages: list[dict[str, Any]]) -> None:
    refs: dict[str, int] = {}
    for i, stage in enumerate(stages):
        ref = stage.get("refId")
        if not isinstance(ref, str) or not ref:
            check.error(f"$.stages[{i}].refId", "a non-empty string, unique in the pipeline")
        elif ref in refs:
            check.error(f"$.stages[{i}].refId", f"{ref!r} is also stage {refs[ref]}'s: "
                        "refIds are unique")
        else:
            refs[ref] = i
    edges: dict[str, list[str]] = {}
    for i, stage in enumerate(stages):
        needs = stage.get("requisiteStageRefIds")
        if needs is None:
            check.error(f"$.stages[{i}].requisiteStageRefIds", "required ([] for a first stage)")
            continue
        if not isinstance(needs, list):
            check.error(f"$.stages[{i}].requisiteStageRefIds", "a list of refIds")
            continue
        for j, need in enumerate(needs):
            if need not in refs:
                check.error(f"$.stages[{i}].requisiteStageRefIds[{j}]",
                            f"{need!r} is no stage's refId")
        if isinstance(stage.get("refId"), str):
            edges[stage["refId"]] = [n for n in needs if n in refs]
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for up in edges.get(node, []):
            if state.get(up) == 1:
                cycle = trail[trail.index(up):] + [up] if up in trail else [node, up]
                check.error(f"$.stages[{refs[node]}].requisiteStageRefIds",
                            f"a cycle: {' -> '.join(cycle)}")
            elif state.get(up) is None:
                visit(up, trail + [up])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])


def validate_pipeline(doc: Any, file: str, *, save: bool = False) -> list[Problem]:
    """Problems of one pipeline document (empty: it holds)."""
    if not isinstance(doc, dict):
        return [Problem(file, "$", "a pipeline is a JSON object")]
    check = Check(file, doc)
    for key in ("name", "application"):
        if not isinstance(doc.get(key), str) or not doc.get(key, "").strip():
            (check.error if save else check.warn)(
                f"$.{key}", "required to save (front50: \"A pipeline requires name and "
                "application fields\"); Deck's Edit-as-JSON bodies leave it out")
    stages = doc.get("stages", [])
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        check.error("$.stages", "a list of stage objects")
        stages = []
    for key in ("limitConcurrent", "keepWaitingPipelines", "disabled"):
        if key in doc and not isinstance(doc[key], bool):
            check.error(f"$.{key}", "true or false")
    # artifact ids: the pipeline's and the stages' own
    for where, owner in [("$", doc)] + [(f"$.stages[{i}]", s) for i, s in enumerate(stages)]:
        arts = list(owner.get("expectedArtifacts") or [])
        if isinstance(owner.get("expectedArtifact"), dict):  # the legacy single form
            arts.append(owner["expectedArtifact"])
        for i, art in enumerate(arts):
            if not isinstance(art, dict) or not isinstance(art.get("id"), str):
                check.error(f"{where}.expectedArtifacts[{i}].id", "required (a string)")
                continue
            if art["id"] in check.artifact_ids:
                check.error(f"{where}.expectedArtifacts[{i}].id", f"{art['id']!r} twice")
            check.artifact_ids.add(art["id"])
            if not isinstance(art.get("matchArtifact"), dict):
                check.error(f"{where}.expectedArtifacts[{i}].matchArtifact", "required")
    for stage in stages:
        if stage.get("type") == "evaluateVariables":
            for var in stage.get("variables") or []:
                if isinstance(var, dict) and isinstance(var.get("key"), str):
                    check.variables.add(var["key"])
    params = doc.get("parameterConfig") or []
    for i, param in enumerate(params if isinstance(params, list) else []):
        if not isinstance(param, dict) or not param.get("name"):
            check.error(f"$.parameterConfig[{i}].name", "required")
    _graph(check, stages)
    for i, trigger in enumerate(doc.get("triggers") or []):
        _trigger(check, trigger, f"$.triggers[{i}]")
    for i, stage in enumerate(stages):
        path = f"$.stages[{i}]"
        kind = stage.get("type")
        if not isinstance(kind, str) or not kind:
            check.error(f"{path}.type", "required")
        elif kind in STAGES:
            STAGES[kind](check, stage, path)
        elif kind not in OTHER_STAGE_TYPES:
            _unknown_type(check, kind, f"{path}.type")
        for key in ("requiredArtifactIds", "expectedArtifactIds"):
            for j, ref in enumerate(stage.get(key) or []):
                if isinstance(ref, str) and "${" not in ref and ref not in check.artifact_ids:
                    check.error(f"{path}.{key}[{j}]", f"{ref!r} names no expected artifact")
        _check_expressions(check, stage, path, set(stage))
    _check_expressions(check, doc.get("triggers") or [], "$.triggers", set())
    _check_expressions(check, doc.get("parameterConfig") or [], "$.parameterConfig", set())
    _judgments(check, stages)
    return check.problems


def validate_file(path: Path, *, save: bool = False) -> list[Problem]:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        return [Problem(str(path), "$", f"cannot be read: {exc.strerror}")]
    except ValueError as exc:
        return [Problem(str(path), "$", f"not JSON: {exc}")]
    return validate_pipeline(doc, str(path), save=save)


def trigger_id_problems(docs: list[tuple[str, Any]]) -> list[Problem]:
    """Cron trigger ids two different pipelines share, across the files given together.
    Echo's scheduler keeps one enabled cron trigger per id for all pipelines of all
    applications (echo-scheduler/.../actions/pipeline/TriggerRepository.groovy: a map by
    id, "Duplicate trigger ids found"; PipelineConfigsPollingJob: the Quartz trigger key
    is the id), so one of the two schedules silently never fires."""
    seen: dict[str, tuple[str, str, Any]] = {}  # id -> (file, path, pipeline)
    problems: list[Problem] = []
    for file, doc in docs:
        if not isinstance(doc, dict):
            continue
        owner = (doc.get("application"), doc.get("name"))
        for i, trigger in enumerate(doc.get("triggers") or []):
            if not (isinstance(trigger, dict) and trigger.get("type") == "cron"
                    and trigger.get("enabled", True) is not False
                    and isinstance(trigger.get("id"), str)):
                continue
            path = f"$.triggers[{i}].id"
            first = seen.setdefault(trigger["id"], (file, path, owner))
            if first[:2] != (file, path) and (first[2] != owner or first[0] == file):
                problems.append(Problem(file, path, (
                    f"cron trigger id {trigger['id']!r} is also {first[0]}: {first[1]} "
                    f"(pipeline {first[2][1]!r}): Echo keeps one cron trigger per id "
                    "(TriggerRepository), so one of them never fires; ids must be unique "
                    "per application, environment and pipeline")))
    return problems


def validate_files(paths: list[Path], *, save: bool = False) -> list[Problem]:
    """Each file validated, then what only the files together show (cron trigger ids)."""
    problems: list[Problem] = []
    docs: list[tuple[str, Any]] = []
    for path in paths:
        problems += validate_file(path, save=save)
        try:
            docs.append((str(path), json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return problems + trigger_id_problems(docs)
