"""``nbship deploy render``: the Spinnaker pipelines a team needs, as code, from a release.

So far the ML pipeline's delivery (stage 4 of the path) and continuous training (5):

* ``<name>-ml-pipeline-cd.json`` — triggered by a new steps image (docker trigger) or
  by CI's publish job (webhook ``nbship-publish-<name>``); Run Job stages running
  ``nbship kfp`` in the steps' image *by digest*: upload the pipeline version, an
  integration run with the ``ci`` parameters (the Job fails when the run does),
  a manual judgment, then the schedule (replacing the previous one);
* ``<name>-ml-pipeline-rollback.json`` — re-points the schedule to a previous release;
* ``<name>-continuous-training.json`` — ``[tool.nbship.training]``'s triggers as
  Spinnaker's: the cron (KFP's 6 fields as Quartz), webhooks for new data
  (``nbship-new-data-<name>``) and for the drift alert (``nbship-drift-<name>``), each
  starting a run of the release (the Job fails when the notebook's gate does).

Everything comes from the release (release.json: name, commit, images and digests)
and ``[tool.nbship.deploy]`` (application, account, namespace, the KFP API, the Jobs'
service account; ``[tool.nbship.deploy.<env>]`` overrides per ``--env``) and
``[tool.nbship.training]`` (the schedule's cron and parameters). The JSON is
deterministic (sorted keys, no times) and is validated before it is written.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.errors import UnusableInputError

KFP_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # KFP's projected SA token
KEY_SECRET = "nbship-key"  # the Kubernetes secret holding the artifact key (docs/spinnaker.md)


@dataclass(frozen=True)
class JobCommand:
    """One command a rendered Job runs: ``python -m nbship VERB...`` and its arguments.

    The functions below write every Job's command through :meth:`argv`, and ``nbship
    deploy rehearse`` runs only what matches one of :data:`JOB_COMMANDS` (value kinds in
    :data:`VALUE_KINDS`): one table for both, so the rehearsal runs what render writes
    and nothing else."""

    verb: tuple[str, ...]
    positional: tuple[str, ...] = ()  # the kinds of the positional arguments, in order
    options: tuple[tuple[str, str, bool], ...] = ()  # (option, kind, may repeat), in order
    optional: frozenset[str] = frozenset()  # options render may leave out (once at most)

    def argv(self, positional: list[str], options: dict[str, Any]) -> list[str]:
        """The arguments after ``python -m nbship``: the verb, the positional arguments,
        then the options in this command's order (a repeated one takes a list)."""
        every = {o for o, _, _ in self.options}
        if len(positional) != len(self.positional) or not set(options) <= every \
                or not every - self.optional <= set(options):
            raise AssertionError(f"{' '.join(self.verb)}: not this command's arguments")
        out = [*self.verb, *positional]
        for option, _, repeated in self.options:
            if option not in options:
                continue
            for value in (options[option] if repeated else [options[option]]):
                out += [option, str(value)]
        return out


JOB_COMMANDS: dict[tuple[str, ...], JobCommand] = {c.verb: c for c in (
    JobCommand(("kfp", "upload"), ("reference",), (("--host", "url", False),)),
    JobCommand(("kfp", "run"), ("reference",), (("--experiment", "name", False),
                                                ("-p", "parameter", True),
                                                ("--host", "url", False))),
    JobCommand(("kfp", "schedule"), ("reference",), (("--cron", "cron", False),
                                                     ("-p", "parameter", True),
                                                     ("--host", "url", False))),
    JobCommand(("canary", "ready"), ("url",), (("--stable", "url", False),
                                               ("--model", "name", False),
                                               ("--timeout", "seconds", False)),
               optional=frozenset({"--stable"})),  # the first delivery has no stable
    JobCommand(("canary", "judge"), (), (("--stable", "url", False), ("--canary", "url", False),
                                         ("--model", "name", False),
                                         ("--reference", "reference", False),
                                         ("--seconds", "seconds", False))),
)}
_NAME = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
VALUE_KINDS: dict[str, re.Pattern[str]] = {
    # registry/repository[:tag][@digest], as render writes releases and models (by digest)
    "reference": re.compile(rf"[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]{{1,5}})?(?:/{_NAME})+"
                            r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"),
    "url": re.compile(r"https?://[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~-]*)*"),
    "name": re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}"),
    "seconds": re.compile(r"[0-9]{1,7}"),
    "cron": re.compile(r"[0-9A-Za-z*?/,#-]+(?: [0-9A-Za-z*?/,#-]+){5}"),
    "parameter": re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL),  # the value: JSON
}


@dataclass(frozen=True)
class DeployConfig:
    application: str
    account: str = "default"
    namespace: str = "default"
    kfp_host: str = "http://ml-pipeline-ui.kubeflow.svc.cluster.local"
    service_account: str = "nbship"
    docker_account: str = "docker-registry"
    judgment: bool = True
    canary_percent: int = 10
    canary_seconds: int = 600
    canary_config: str | None = None  # a Kayenta canary config id: judge with kayentaCanary
    metrics_account: str = "prometheus"  # Kayenta's accounts, for kayentaCanary
    storage_account: str = "kayenta-storage"
    ci_parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None  # KFP's 6 fields
    parameters: dict[str, Any] = field(default_factory=dict)


KEYS = {"application", "account", "namespace", "kfp_host", "service_account",
        "docker_account", "judgment", "canary_percent", "canary_seconds", "canary_config",
        "metrics_account", "storage_account"}
TYPES: dict[str, type] = {"judgment": bool, "canary_percent": int, "canary_seconds": int}


def read_config(pyproject: Path, name: str, env: str | None,
                notebook: str | None = None) -> DeployConfig:
    """``[tool.nbship.deploy]`` (+ ``.<env>``), the notebook's ``ci`` parameter set and its
    training schedule."""
    doc: dict[str, Any] = {}
    if pyproject.exists():
        try:
            doc = tomllib.loads(pyproject.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UnusableInputError(f"{pyproject}: {exc}") from None
    nbship = doc.get("tool", {}).get("nbship", {})
    table = dict(nbship.get("deploy", {}))
    envs = {k: v for k, v in table.items() if isinstance(v, dict)}
    values = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if env is not None:
        values.update(envs.get(env, {}))
    unknown = set(values) - KEYS
    if unknown:
        raise UnusableInputError(f"{pyproject} [tool.nbship.deploy]: unknown key(s) "
                                 f"{', '.join(sorted(unknown))}", hint=", ".join(sorted(KEYS)))
    for key, value in values.items():
        kind = TYPES.get(key, str)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) \
                or value == "":
            raise UnusableInputError(f"{pyproject} [tool.nbship.deploy]: {key} must be "
                                     f"{'true or false' if kind is bool else 'a ' + kind.__name__}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", str(values.get("canary_config",
                                                                          "x"))):
        raise UnusableInputError(f"{pyproject} [tool.nbship.deploy]: canary_config is a "
                                 "Kayenta config id: letters, digits, '.', '_', '-'")
    if not 1 <= int(values.get("canary_percent", 10)) <= 99:
        raise UnusableInputError(f"{pyproject} [tool.nbship.deploy]: canary_percent is 1-99")
    if values.get("canary_config") and int(values.get("canary_seconds", 600)) < 60:
        # orca-kayenta's RunCanaryIntervalsStage counts intervals in whole minutes
        # (lifetime.toMinutes() / interval.toMinutes()): under a minute is 0/0, and fails
        raise UnusableInputError(
            f"{pyproject} [tool.nbship.deploy]: canary_seconds = "
            f"{values.get('canary_seconds')} with canary_config: Kayenta's lifetime is at "
            "least a minute (Orca plans its intervals in whole minutes and fails under one)",
            hint="canary_seconds = 60 or more, or no canary_config (the judge Job)")
    from nbship.pipelines.training import read_config as training

    sets = nbship.get("parameter_sets", {}) or {}
    ci = dict(sets.get("ci", {})) if isinstance(sets, dict) else {}
    table = (nbship.get("notebooks") or {}).get(notebook or "", {})
    if isinstance(table, dict):
        ci.update((table.get("parameter_sets") or {}).get("ci", {}))
    schedule = next((t for t in training(pyproject) if t.name == name), None)
    return DeployConfig(application=str(values.pop("application", name)),
                        ci_parameters=ci, cron=schedule.cron if schedule else None,
                        parameters=dict(schedule.parameters) if schedule else {},
                        **values)


KFP_TOKEN_ENV = {"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": KFP_TOKEN_PATH}
KEY_ENV = {"name": "NBSHIP_ARTIFACT_KEY", "valueFrom": {"secretKeyRef": {"name": KEY_SECRET,
                                                                        "key": "key"}}}
JOB_ENV = (KFP_TOKEN_ENV, KEY_ENV)  # every env entry a rendered Job may have


def _command(verb: str, positional: list[str], options: dict[str, Any]) -> list[str]:
    return JOB_COMMANDS[tuple(verb.split())].argv(positional, options)


# A Job's resources: requests so the scheduler places it, a memory limit so a runaway one
# is killed rather than its node's neighbours; no CPU limit (throttling slows the judge's
# latency figures). Finished Jobs go after a day (orca reads their logs when they finish).
JOB_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
JOB_TTL_SECONDS = 86400


def _job(name: str, image: str, args: list[str], cfg: DeployConfig) -> dict[str, Any]:
    """A batch/v1 Job running nbship in the steps' image, with KFP's SA token mounted.

    No ``app.kubernetes.io/managed-by`` label: clouddriver's KubernetesManifestLabeler
    (clouddriver-kubernetes/.../description/manifest/KubernetesManifestLabeler.java,
    ``storeLabelAndOverwrite``) writes ``spinnaker`` (``spinnaker-<suffix>``) there on every
    manifest it deploys, and keeps an ``app.kubernetes.io/name`` already set."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": f"{name}-", "namespace": cfg.namespace,
                     "labels": {"app.kubernetes.io/name": cfg.application}},
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
                 "template": {"spec": {
            "restartPolicy": "Never", "serviceAccountName": cfg.service_account,
            "containers": [{"name": "nbship", "image": image,
                            "command": ["python", "-m", "nbship", *args],
                            "resources": json.loads(json.dumps(JOB_RESOURCES)),
                            "env": [dict(KFP_TOKEN_ENV)],
                            "volumeMounts": [{"name": "kfp-token", "readOnly": True,
                                              "mountPath": str(Path(KFP_TOKEN_PATH).parent)}]}],
            "volumes": [{"name": "kfp-token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "audience": "pipelines.kubeflow.org",
                                         "expirationSeconds": 7200}}]}}],
        }}},
    }


def _run_job(ref: str, requisites: list[str], title: str, job: dict[str, Any],
             cfg: DeployConfig) -> dict[str, Any]:
    return {"refId": ref, "requisiteStageRefIds": requisites, "type": "runJobManifest",
            "alias": "runJob", "name": title, "account": cfg.account, "credentials": cfg.account,
            "cloudProvider": "kubernetes", "source": "text", "manifest": job,
            "propertyFile": "nbship", "consumeArtifactSource": "propertyFile"}


def _named(name: str) -> dict[str, str]:
    """A webhook trigger's payloadConstraints: the body names this notebook. Echo matches
    each constraint as a Java regex *found* in the payload's value (echo-pipelinetriggers/
    .../artifacts/ArtifactMatcher.java, ``isJsonPathConstraintInPayload``: ``Pattern.
    asPredicate``), so it is anchored."""
    return {"name": f"^{re.escape(name)}$"}


def _params(values: dict[str, Any]) -> list[str]:
    """``-p``'s values: NAME=JSON."""
    return [f"{k}={json.dumps(v)}" for k, v in sorted(values.items())]


def _pipeline(cfg: DeployConfig, name: str, description: str, parameter: str,
              about: str, default: str | None, triggers: list[dict[str, Any]],
              stages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A pipeline as nbship renders them: one at a time, no queue, one required parameter."""
    param: dict[str, Any] = {"name": parameter, "required": True, "description": about}
    if default is not None:
        param["default"] = default
    return {"application": cfg.application, "name": name, "description": description,
            "keepWaitingPipelines": False, "limitConcurrent": True,
            "parameterConfig": [param], "triggers": triggers, "stages": stages, **extra}


def release_expression(release_ref: str) -> str:
    """The release a CD execution delivers: the trigger's artifact bound to the release's
    expected artifact (Orca's ``#triggerResolvedArtifact(name)``: the bound artifact with
    that name, orca-core/.../pipeline/expressions/functions/
    ArtifactExpressionFunctionProvider.java), the render-time release when nothing bound
    one (a manual run: its default artifact)."""
    return f"${{#triggerResolvedArtifact('{release_ref.split('@')[0]}')['reference']}}"


def ml_pipeline_cd(record: dict[str, Any], release_ref: str, cfg: DeployConfig
                   ) -> dict[str, Any]:
    """Upload, integration run, approval, schedule of the release the trigger names.

    The release is an expected artifact (docker/image, the release repository): a new
    ``commit-<sha>`` tag there (the docker trigger: Echo's DockerEventHandler makes the
    artifact ``registry/repository:tag``; publish pushes that tag once the release is
    complete, and never moves it) or CI's webhook posting the release by digest in its
    ``artifacts`` bind it (Echo's WebhooksController: the body's ``artifacts``); a manual
    run binds the default, the release rendered from. The Jobs run in the render-time
    steps image: ``nbship kfp`` there reads the pipeline of the release they are given."""
    name = str(record["name"])
    steps = str(record["images"]["nbship-steps"]["reference"])
    releases = release_ref.split("@")[0]
    host, _, repo_path = releases.partition("/")
    release = release_expression(release_ref)
    upload = _job(f"{name}-upload", steps, _command("kfp upload", [release],
                                                     {"--host": cfg.kfp_host}), cfg)
    run = _job(f"{name}-ci-run", steps, _command(
        "kfp run", [release], {"--experiment": f"{name}-ci",
                                               "-p": _params(cfg.ci_parameters),
                                               "--host": cfg.kfp_host}), cfg)
    if cfg.cron is None:
        raise UnusableInputError(f"no schedule for {name}: the ML pipeline's delivery "
                                 "schedules it", hint='[tool.nbship.training."NOTEBOOK"] '
                                 'cron = "0 0 3 * * *"')
    schedule = _job(f"{name}-schedule", steps, _command(
        "kfp schedule", [release], {"--cron": cfg.cron,
                                                    "-p": _params(cfg.parameters),
                                                    "--host": cfg.kfp_host}), cfg)
    stages = [_run_job("1", [], "Upload the pipeline version", upload, cfg),
              _run_job("2", ["1"], "Integration run (ci parameters)", run, cfg)]
    last = "2"
    if cfg.judgment:
        stages.append({"refId": "3", "requisiteStageRefIds": ["2"], "type": "manualJudgment",
                       "name": "Schedule in production?", "judgmentInputs": [],
                       "instructions": f"The integration run of {name} passed. Schedule the "
                       f"release (cron {cfg.cron}) in production?", "failPipeline": True})
        last = "3"
    stages.append(_run_job("4", [last], "Schedule (replaces the previous schedule)",
                           schedule, cfg))
    doc = _pipeline(
        cfg, f"{name}-ml-pipeline-cd",
        f"Delivers the KFP pipeline of {record['notebook']['path']}: the release a new "
        f"commit- tag or CI's webhook names (by hand: {release_ref}, commit "
        f"{record['commit']}; rendered by nbship).",
        "release", "", None,
        [{"type": "docker", "enabled": True, "account": cfg.docker_account,
          "registry": host, "repository": repo_path, "tag": "^commit-[0-9a-f]{40}$",
          "expectedArtifactIds": [f"{name}-release"]},
         {"type": "webhook", "enabled": True, "source": f"nbship-publish-{name}",
          "payloadConstraints": _named(name), "expectedArtifactIds": [f"{name}-release"]}],
        stages,
        expectedArtifacts=[{"id": f"{name}-release", "displayName": "release",
                            "useDefaultArtifact": True, "usePriorArtifact": False,
                            "defaultArtifact": {"type": "docker/image", "name": releases,
                                                "reference": release_ref},
                            "matchArtifact": {"type": "docker/image",
                                              "name": re.escape(releases)}}])
    doc["parameterConfig"] = []  # the release comes from the trigger, not a parameter
    return doc


def ml_pipeline_rollback(record: dict[str, Any], cfg: DeployConfig) -> dict[str, Any]:
    name = str(record["name"])
    steps = str(record["images"]["nbship-steps"]["reference"])
    job = _job(f"{name}-rollback", steps, _command(
        "kfp schedule", ["${parameters.previous_release}"], {"--cron": str(cfg.cron),
                                                             "-p": _params(cfg.parameters),
                                                             "--host": cfg.kfp_host}), cfg)
    return _pipeline(
        cfg, f"{name}-ml-pipeline-rollback",
        f"Re-points the schedule of {name} to a previous release (rendered by nbship).",
        "previous_release", "the release (by digest) to go back to", None, [],
        [_run_job("1", [], "Schedule the previous release", job, cfg)])


def quartz_from_kfp(expr: str) -> str:
    """KFP's 6-field cron (robfig: day-of-week 0-6 from Sunday) as Spinnaker's Quartz cron
    (day-of-week 1-7 from Sunday, and '?' in day-of-month or day-of-week)."""
    second, minute, hour, dom, month, dow = expr.split()

    def shift(field: str) -> str:  # 0-6 -> 1-7, in lists, ranges and steps' starts
        return re.sub(r"(?<![/#\w])(\d)(?!\w)", lambda m: str(int(m[1]) % 7 + 1), field)

    if dow == "*":
        dow = "?"
    elif dom == "*":
        dom, dow = "?", shift(dow)
    else:
        raise UnusableInputError(f"cron {expr!r} sets both day-of-month and day-of-week, "
                                 "which Quartz (Spinnaker's cron) cannot say")
    return " ".join([second, minute, hour, dom, month, dow])


def continuous_training(record: dict[str, Any], release_ref: str, cfg: DeployConfig
                        ) -> dict[str, Any]:
    """The training triggers as Spinnaker triggers, each starting a run of the release."""
    name = str(record["name"])
    steps = str(record["images"]["nbship-steps"]["reference"])
    triggers: list[dict[str, Any]] = [
        {"type": "webhook", "enabled": True, "source": f"nbship-new-data-{name}",
         "payloadConstraints": _named(name)},
        # Alertmanager's webhook body: notifications of resolved alerts start no run
        {"type": "webhook", "enabled": True, "source": f"nbship-drift-{name}",
         "payloadConstraints": {"status": "^firing$"}},
    ]
    if cfg.cron:
        triggers.insert(0, {"type": "cron", "enabled": True, "id": "",  # render() names it
                            "cronExpression": quartz_from_kfp(cfg.cron)})
    run = _job(f"{name}-training", steps, _command(
        "kfp run", ["${parameters.release}"], {"--experiment": name,
                                               "-p": _params(cfg.parameters),
                                               "--host": cfg.kfp_host}), cfg)
    return _pipeline(
        cfg, f"{name}-continuous-training",
        f"Trains {name} on a schedule, on new data and on drift alerts (rendered by nbship "
        f"from release {release_ref}).",
        "release", "the nbship release (by digest) to train", release_ref, triggers,
        [_run_job("1", [], "Training run (fails when the notebook's gate does)", run, cfg)])


def _service_url(tag: str, name: str, cfg: DeployConfig) -> str:
    """KServe's tag routing (serverless): ``latest-`` the canary, ``prev-`` the stable;
    no tag: the predictor's own address. KServe tags a ``prev`` route only when
    canaryTrafficPercent is set *and* a revision was rolled out before (kserve's
    pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go: the
    split to ``LatestRolledoutRevision`` tagged ``prev``; otherwise 100 % to the latest
    revision), so the first delivery waits on the predictor's own address
    (:func:`model_first_delivery`)."""
    return f"http://{tag + '-' if tag else ''}{name}-predictor.{cfg.namespace}" \
        ".svc.cluster.local"


def _isvc(record: dict[str, Any], model_ref: str, server: str, model: str,
          cfg: DeployConfig, canary: int | None) -> dict[str, Any]:
    import yaml

    from nbship.release.publish import inference_service

    doc = yaml.safe_load(inference_service(str(record["name"]), server,
                                           {**record, "run": {}}, model=model_ref))
    doc["metadata"]["namespace"] = cfg.namespace
    doc["metadata"]["labels"].pop("app.kubernetes.io/managed-by", None)  # Spinnaker's (_job)
    doc["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] = "true"
    doc["metadata"]["annotations"].pop("nbship.dev/run", None)
    doc["metadata"]["annotations"]["nbship.dev/model"] = model
    container = doc["spec"]["predictor"]["containers"][0]
    container["args"][0] = model
    if canary is not None:
        doc["spec"]["predictor"]["canaryTrafficPercent"] = canary
    return dict(doc)


def model_delivery(record: dict[str, Any], model_ref: str, cfg: DeployConfig
                   ) -> dict[str, Any]:
    """Canary, readiness, judgment against the stable server, approval, promotion; on a
    failed judgment, or a "stop" at the approval, the canary gets 0 % and the pipeline
    fails."""
    name = str(record["name"])
    server = str(record["images"]["nbship-server"]["reference"])
    canary, stable = _service_url("latest", name, cfg), _service_url("prev", name, cfg)
    def server_job(job: str, args: list[str]) -> dict[str, Any]:
        doc = _job(f"{name}-{job}", server, args, cfg)
        container = doc["spec"]["template"]["spec"]["containers"][0]
        container["env"] = [json.loads(json.dumps(KEY_ENV))]
        del container["volumeMounts"]
        del doc["spec"]["template"]["spec"]["volumes"]
        return doc

    approval = "Promote the canary?"
    passed = "#stage('Judge the canary')['status'].toString() == 'SUCCEEDED'"
    if cfg.judgment:  # promoted: the judge passed and a person said continue
        # Orca's #judgment(NAME) is the option chosen from judgmentInputs (and throws
        # without one), not continue/stop: "continue" is the approval's status SUCCEEDED,
        # "stop" its TERMINAL, FAILED_CONTINUE here (StageExpressionFunctionProvider.java,
        # ManualJudgmentStage.groovy); as Kayenta's own sample pipelines test it
        approved = f"#stage('{approval}')['status'].toString() == 'SUCCEEDED'"
        promoted = f"${{ {passed} and {approved} }}"
        not_promoted = (f"${{ {passed.replace('==', '!=')} or "
                        f"{approved.replace('==', '!=')} }}")
    else:
        promoted, not_promoted = f"${{ {passed} }}", f"${{ {passed.replace('==', '!=')} }}"
    manifest_name = f"inferenceservice {name}"
    selector = {"account": cfg.account, "cloudProvider": "kubernetes", "mode": "static",
                "location": cfg.namespace, "manifestName": manifest_name, "source": "text",
                "options": {"mergeStrategy": "merge", "record": True}}
    stages: list[dict[str, Any]] = [
        {"refId": "1", "requisiteStageRefIds": [], "type": "deployManifest",
         "name": f"Deploy the canary ({cfg.canary_percent} %)", "account": cfg.account,
         "cloudProvider": "kubernetes", "source": "text", "moniker": {"app": cfg.application},
         "manifests": [_isvc(record, model_ref, server, "${parameters.model}", cfg,
                             cfg.canary_percent)]},
        _run_job("2", ["1"], "Wait until the canary is ready",
                 server_job("ready", _command("canary ready", [canary], {
                     "--stable": stable, "--model": name, "--timeout": "600"})), cfg),
        _kayenta(cfg) if cfg.canary_config else
        {**_run_job("3", ["2"], "Judge the canary", server_job("judge", _command(
            "canary judge", [], {"--stable": stable, "--canary": canary, "--model": name,
                                 "--reference": "${parameters.model}",
                                 "--seconds": str(cfg.canary_seconds)})), cfg),
         "failPipeline": False, "continuePipeline": True},
    ]
    decided = "3"
    if cfg.judgment:  # "stop" goes on to the rollback (FAILED_CONTINUE), not to a halt
        stages.append({"refId": "4", "requisiteStageRefIds": ["3"], "type": "manualJudgment",
                       "name": approval, "judgmentInputs": [],
                       "instructions": f"The canary of {name} passed its judgment against "
                       "the stable server. Send it all traffic? (stop rolls it back)",
                       "failPipeline": False, "continuePipeline": True,
                       "stageEnabled": {"type": "expression",
                                        "expression": f"${{ {passed} }}"}})
        decided = "4"
    why = "the canary failed its judgment" + (" or was stopped at the approval"
                                              if cfg.judgment else "")
    stages += [
        {**selector, "refId": "5", "requisiteStageRefIds": [decided],
         "type": "patchManifest", "name": "Promote (100 %)",
         "patchBody": [{"spec": {"predictor": {"canaryTrafficPercent": 100}}}],
         "stageEnabled": {"type": "expression", "expression": promoted}},
        {**selector, "refId": "6", "requisiteStageRefIds": [decided], "type": "patchManifest",
         "name": "Roll back the canary (0 %)",
         "patchBody": [{"spec": {"predictor": {"canaryTrafficPercent": 0}}}],
         "stageEnabled": {"type": "expression", "expression": not_promoted}},
        {"refId": "7", "requisiteStageRefIds": ["6"], "type": "checkPreconditions",
         "name": "Fail after a rollback", "stageEnabled": {"type": "expression",
                                                             "expression": not_promoted},
         "preconditions": [{"type": "expression", "failPipeline": True,
                            "context": {"expression": promoted,
                                        "failureMessage": f"{why} and was rolled back"}}]},
    ]
    return _pipeline(
        cfg, f"{name}-model-delivery",
        f"Delivers a model release of {name} with a canary (rendered by nbship; server image "
        f"from commit {record['commit']}).",
        "model", "the model release (by digest) to deliver", model_ref,
        [{"type": "webhook", "enabled": True, "source": f"nbship-model-{name}",
          "payloadConstraints": _named(name)}], stages)


def _kayenta(cfg: DeployConfig) -> dict[str, Any]:
    """Kayenta judges the canary (stable and canary scoped by the runs they serve, which
    the readiness job reports) when a canary config is set."""
    ready = "#stage('Wait until the canary is ready')['context']['propertyFileContents']"
    return {"refId": "3", "requisiteStageRefIds": ["2"], "type": "kayentaCanary",
            "name": "Judge the canary", "analysisType": "realTime",
            "failPipeline": False, "continuePipeline": True,
            "canaryConfig": {
                "canaryConfigId": cfg.canary_config,
                "metricsAccountName": cfg.metrics_account,
                "storageAccountName": cfg.storage_account,
                "lifetimeDuration": f"PT{cfg.canary_seconds}S",
                "beginCanaryAnalysisAfterMins": "0",
                "scopes": [{"scopeName": "default", "extendedScopeParams": {},
                            "controlScope": f"${{{ready}['stable_run']}}",
                            "experimentScope": f"${{{ready}['canary_run']}}",
                            "controlLocation": cfg.namespace,
                            "experimentLocation": cfg.namespace}],
                "scoreThresholds": {"pass": 75, "marginal": 50}}}


def model_first_delivery(record: dict[str, Any], model_ref: str, cfg: DeployConfig
                         ) -> dict[str, Any]:
    """The first model of an InferenceService: no stable server to judge a canary against
    (KServe has no ``prev-`` route yet), so no canary: the model takes all traffic once it
    is ready, and the readiness Job waits on the predictor's own address."""
    name = str(record["name"])
    server = str(record["images"]["nbship-server"]["reference"])
    ready = _job(f"{name}-ready", server, _command("canary ready", [
        _service_url("", name, cfg)], {"--model": name, "--timeout": "600"}), cfg)
    container = ready["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [json.loads(json.dumps(KEY_ENV))]
    del container["volumeMounts"]
    del ready["spec"]["template"]["spec"]["volumes"]
    return _pipeline(
        cfg, f"{name}-model-first-delivery",
        f"Serves the first model release of {name} (no previous one: no canary; rendered "
        "by nbship). Later models go through the model delivery's canary.",
        "model", "the model release (by digest) to serve first", model_ref, [],
        [{"refId": "1", "requisiteStageRefIds": [], "type": "deployManifest",
          "name": "Serve the first model", "account": cfg.account,
          "cloudProvider": "kubernetes", "source": "text", "moniker": {"app": cfg.application},
          "manifests": [_isvc(record, model_ref, server, "${parameters.model}", cfg, None)]},
         _run_job("2", ["1"], "Wait until the model is ready", ready, cfg)])


def model_rollback(record: dict[str, Any], model_ref: str, cfg: DeployConfig
                   ) -> dict[str, Any]:
    name = str(record["name"])
    server = str(record["images"]["nbship-server"]["reference"])
    return _pipeline(
        cfg, f"{name}-model-rollback",
        f"Serves a previous model release of {name} again (rendered by nbship).",
        "previous_model", "the model release (by digest) to go back to", None, [],
        [{"refId": "1", "requisiteStageRefIds": [], "type": "deployManifest",
          "name": "Serve the previous model", "account": cfg.account,
          "cloudProvider": "kubernetes", "source": "text", "moniker": {"app": cfg.application},
          "manifests": [_isvc(record, model_ref, server, "${parameters.previous_model}",
                              cfg, None)]}])


def render(reference: str, out: Path, *, pyproject: Path = Path("pyproject.toml"),
           env: str | None = None, model: str | None = None) -> list[Path]:
    """Write the pipelines into ``out`` (validated first); the files written."""
    from nbship.files import write_atomic
    from nbship.release import oci
    from nbship.release.publish import show
    from nbship.spinnaker.validate import ERROR, validate_pipeline

    record, digest, _ = show(reference)
    ref = oci.Reference.parse(reference)
    release_ref = f"{ref.registry}/{ref.repository}@{digest}"
    if "nbship-steps" not in record.get("images", {}):
        raise UnusableInputError(f"{reference} has no steps image to run nbship kfp in")
    cfg = read_config(pyproject, str(record["name"]), env, str(record["notebook"]["path"]))
    suffix = f"-{env}" if env else ""
    docs = {f"{record['name']}-ml-pipeline-cd{suffix}.json": ml_pipeline_cd(record, release_ref,
                                                                            cfg),
            f"{record['name']}-ml-pipeline-rollback{suffix}.json":
                ml_pipeline_rollback(record, cfg),
            f"{record['name']}-continuous-training{suffix}.json":
                continuous_training(record, release_ref, cfg)}
    if model is not None:
        if "nbship-server" not in record.get("images", {}):
            raise UnusableInputError(f"{reference} has no model server image: model delivery "
                                     "needs one", hint="nbship publish without --only steps")
        from nbship.release.model import show as show_model

        _, model_digest, _ = show_model(model)
        mref = oci.Reference.parse(model)
        model_ref = f"{mref.registry}/{mref.repository}@{model_digest}"
        docs[f"{record['name']}-model-first-delivery{suffix}.json"] = \
            model_first_delivery(record, model_ref, cfg)
        docs[f"{record['name']}-model-delivery{suffix}.json"] = model_delivery(record,
                                                                               model_ref, cfg)
        docs[f"{record['name']}-model-rollback{suffix}.json"] = model_rollback(record,
                                                                               model_ref, cfg)
    for file, doc in docs.items():
        if env:
            doc["name"] = f"{doc['name']}-{env}"
        for trigger in doc["triggers"]:  # Echo keeps one cron trigger per id, whatever
            if trigger["type"] == "cron":  # its pipeline: unique per app, env, pipeline
                trigger["id"] = f"{cfg.application}-{doc['name']}-cron"
        problems = [p for p in validate_pipeline(doc, file, save=True) if p.severity == ERROR]
        if problems:
            raise UnusableInputError("the rendered pipeline does not validate:\n  "
                                     + "\n  ".join(str(p) for p in problems),
                                     hint="this is a bug in nbship: please report it")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file, doc in docs.items():
        write_atomic(out / file, json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.append(out / file)
    if model is not None and cfg.canary_config:
        from nbship.spinnaker.kayenta import canary_config

        (out / "kayenta").mkdir(exist_ok=True)
        target = out / "kayenta" / f"{cfg.canary_config}.json"
        write_atomic(target, json.dumps(canary_config(cfg.canary_config, cfg.application),
                                        indent=2, sort_keys=True) + "\n")
        written.append(target)
    return written
