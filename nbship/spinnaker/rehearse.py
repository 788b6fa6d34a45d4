"""``nbship deploy rehearse``: run a Spinnaker pipeline's JSON on this machine.

The very file ``spin pipeline save`` takes is validated (as ``nbship deploy validate``
does), then run stage by stage in ``refId``/``requisiteStageRefIds`` order with
Spinnaker's semantics for the stage types nbship renders. Each stage type has one
handler in :data:`HANDLERS` (a registry, as papermill's engines): a handler first says
whether it can rehearse a stage (:meth:`Handler.check`, all stages are checked before
anything starts), then runs it.

* ``runJobManifest``: the Job's ``python -m nbship ...`` command in its image (buildah,
  a pid namespace of its own) or in this venv, its in-cluster addresses mapped to the
  local ones; ``SPINNAKER_PROPERTY_k=v`` lines become the stage's outputs; a non-zero exit
  fails the stage. Only the commands and environment ``nbship deploy render`` writes are
  run (:data:`nbship.spinnaker.render.JOB_COMMANDS`), in an environment nbship builds,
  and this machine's key goes only to the images of the release being rehearsed.
* ``deployManifest`` / ``patchManifest``: InferenceServices on the local cluster
  (:mod:`nbship.spinnaker.local_cluster`: real model servers behind a real traffic split).
* ``manualJudgment``: ``--judge continue|stop``, or asked on the terminal.
* ``wait``: waits ``waitTime`` times ``--time-scale``.
* ``checkPreconditions``: expression preconditions.

A stage whose ``stageEnabled`` expression is false is SKIPPED and counts as done (as in
Spinnaker); a failing stage with ``failPipeline: false`` is FAILED_CONTINUE and the
pipeline goes on; any other failure ends the execution TERMINAL. While it runs, a load
generator sends requests to every InferenceService (``--traffic`` per second) and counts
what failed. The execution record (stages, timings, outputs, decisions, the traffic, the
cluster's events, the models' and releases' provenance) is written atomically under
``.nbship/deploy/executions/PIPELINE/`` and listed by ``nbship deploy history``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from nbship.errors import NbshipError, ReleaseError, UnusableInputError
from nbship.spinnaker.expressions import ExpressionError, Scope, evaluate, resolve
from nbship.spinnaker.local_cluster import Cluster, ClusterError

SCHEMA = "nbship.rehearsal/v1"
PROPERTY = re.compile(r"^SPINNAKER_PROPERTY_([A-Za-z0-9_.-]+)=(.*)$")


class RehearsalError(NbshipError):
    """A pipeline the rehearsal cannot run, or a stage that cannot be rehearsed."""

    exit_code = 2


@dataclass(frozen=True)
class Options:
    parameters: Mapping[str, str] = field(default_factory=dict)
    judge: str | None = None  # continue | stop for every manual judgment; None: ask
    time_scale: float = 1.0
    stable: str | None = None  # the model release in production before the rehearsal
    traffic: float = 20.0  # requests a second to each InferenceService; 0: none
    kfp_host: str | None = None  # None: nbship kfp's local pipeline host
    jobs: str = "image"  # Run Jobs in their released image (buildah) or in this venv
    # model servers in the InferenceService's image (buildah), as KServe runs them, or in
    # this venv; None: as the Jobs
    servers: str | None = None
    release: str | None = None  # the release whose images may have this machine's key
    root: Path = Path(".nbship/deploy")
    # a webhook body, as posted to Gate's /webhooks/webhook/SOURCE (None: a manual run)
    trigger_payload: Mapping[str, Any] | None = None
    trigger_source: str | None = None  # which webhook trigger (default: any that fires)
    ask: Callable[[str], str] | None = None  # the terminal's input(), when there is one


@dataclass
class Outcome:
    status: str  # SUCCEEDED | TERMINAL | FAILED_CONTINUE
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    decision: str | None = None


class Handler(Protocol):
    def check(self, stage: dict[str, Any], folder: Path, where: str) -> str | None: ...

    def run(self, stage: dict[str, Any], rehearsal: Rehearsal) -> Outcome: ...


# --- the stage handlers ------------------------------------------------------------------


def _is_isvc(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == "InferenceService" \
        and str(doc.get("apiVersion", "")).startswith("serving.kserve.io/")


class DeployManifest:
    def check(self, stage: dict[str, Any], folder: Path, where: str) -> str | None:
        if stage.get("source", "text") != "text":
            return "a rehearsal deploys manifests given as text (source: text)"
        bad = [str(m.get("kind")) if isinstance(m, dict) else "?"
               for m in stage.get("manifests") or [] if not _is_isvc(m)]
        return (f"a rehearsal deploys InferenceServices only, not {', '.join(bad)}"
                if bad else None)

    def run(self, stage: dict[str, Any], rehearsal: Rehearsal) -> Outcome:
        names = []
        for doc in stage["manifests"]:
            rehearsal.cluster.apply_isvc(doc)
            names.append(f"inferenceservice {doc['metadata']['name']}")
        return Outcome("SUCCEEDED", {"manifestNamesByNamespace": {
            str(stage["manifests"][0]["metadata"].get("namespace", "default")): names}})


CANARY_PATCH = re.compile(r"^inferenceservice (\S+)$")


class PatchManifest:
    def check(self, stage: dict[str, Any], folder: Path, where: str) -> str | None:
        if not CANARY_PATCH.match(str(stage.get("manifestName", ""))):
            return "a rehearsal patches InferenceServices (manifestName: inferenceservice NAME)"
        body = stage.get("patchBody")
        bodies = body if isinstance(body, list) else [body]
        for b in bodies:
            predictor = (b or {}).get("spec", {}).get("predictor", {}) if isinstance(b, dict) \
                else {}
            if not isinstance(b, dict) or set(b) != {"spec"} or set(b["spec"]) != {"predictor"} \
                    or set(predictor) != {"canaryTrafficPercent"}:
                return "a rehearsal patches spec.predictor.canaryTrafficPercent only"
        return None

    def run(self, stage: dict[str, Any], rehearsal: Rehearsal) -> Outcome:
        m = CANARY_PATCH.match(stage["manifestName"])
        assert m
        body = stage["patchBody"]
        for b in body if isinstance(body, list) else [body]:
            percent = b["spec"]["predictor"]["canaryTrafficPercent"]
            if not isinstance(percent, int) or not 0 <= percent <= 100:
                raise RehearsalError(f"canaryTrafficPercent {percent!r} is not 0-100")
            rehearsal.cluster.patch_canary(m[1], percent)
        return Outcome("SUCCEEDED")


class ManualJudgment:
    def check(self, stage: dict[str, Any], folder: Path, where: str) -> str | None:
        return None

    def run(self, stage: dict[str, Any], rehearsal: Rehearsal) -> Outcome:
        opts = rehearsal.options
        if opts.judge is not None:
            answer, how = opts.judge, "--judge"
        else:
            assert opts.ask is not None  # checked before the rehearsal starts
            answer, how = "", "the terminal"
            while answer not in ("continue", "stop"):
                answer = opts.ask(f"  {stage.get('instructions') or stage.get('name')}\n"
                                  "  continue or stop? ").strip().lower()
        ok = answer == "continue"
        return Outcome("SUCCEEDED" if ok else "TERMINAL", {"judgmentStatus": answer},
                       f"judged {answer} ({how})", decision=answer)


class Wait:
    def check(self, stage: dict[str, Any], folder: Path, where: str) -> str | None:
        return None

    def run(self, stage: dict[str, Any], rehearsal: Rehearsal) -> Outcome:
        try:
            seconds = float(stage.get("waitTime", 0))
        except (TypeError, ValueError):
            raise RehearsalError(f"waitTime {stage.get('waitTime')!r} is not seconds") from None
        scaled = seconds * rehearsal.options.time_scale
        time.sleep(scaled)
        return Outcome("SUCCEEDED", message=f"waited {scaled:g} s ({seconds:g} s x "
                       f"{rehearsal.options.time_scale:g})")


class CheckPreconditions:
    def check(self, stage: dict[str, Any], folder: Path, where: str) -> str | None:
        kinds = {str(p.get("type")) for p in stage.get("preconditions") or []
                 if isinstance(p, dict)} - {"expression"}
        return f"a rehearsal checks expression preconditions only, not {sorted(kinds)}" \
            if kinds else None

    def run(self, stage: dict[str, Any], rehearsal: Rehearsal) -> Outcome:
        for p in stage.get("preconditions") or []:
            context = p.get("context") or {}
            value = context.get("expression")
            if isinstance(value, str):
                value = value.strip().lower() == "true"
            if not value and p.get("failPipeline", True):
                return Outcome("TERMINAL", message=str(context.get("failureMessage")
                                                       or "a precondition is false"))
        return Outcome("SUCCEEDED")


JOB = "manifest.spec.template.spec.containers[0]"  # the Job's container, in a stage
IN_CLUSTER = re.compile(r"^https?://[^/]*\.svc\.cluster\.local(?::\d+)?(?:/|$)")
REHEARSAL_ENV = "NBSHIP_REHEARSAL"  # in every Job's environment: no rehearsal inside one
# what a Job's environment takes from this one (the rest, PYTHONPATH, PYTHON*, LD_* among
# it, is left out); the key only as the nbship-key secret, and only to the release's images
HOST_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "VIRTUAL_ENV",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF", "REGISTRY_AUTH_FILE"})
HOST_ENV_PREFIXES = ("LC_", "NBSHIP_", "XDG_", "OMP_", "MKL_", "OPENBLAS_")
HOST_ENV_NEVER = frozenset({"NBSHIP_ARTIFACT_KEY", "NBSHIP_TRIGGER_SECRET", REHEARSAL_ENV})


def host_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a Job run in this venv takes from ``environ``: the allow-listed names only."""
    return {k: v for k, v in environ.items() if k not in HOST_ENV_NEVER
            and (k in HOST_ENV or k.startswith(HOST_ENV_PREFIXES))}


def _argv(container: dict[str, Any], where: str) -> list[tuple[str, Any]] | str:
    """(JSON path, word) of the container's command then args; a problem instead."""
    out: list[tuple[str, Any]] = []
    for key in ("command", "args"):
        words = container.get(key) or []
        if not isinstance(words, list):
            return f"{where}.{key}: a list of strings"
        out += [(f"{where}.{key}[{i}]", w) for i, w in enumerate(words)]
    for path, word in out:
        if not isinstance(word, str):
            return f"{path}: {word!r} is not a string"
    return out


def _value(path: str, word: str, kind: str, resolved: bool) -> list[str]:
    from nbship.spinnaker.render import VALUE_KINDS

    if "${" in word and not resolved:
        return []  # an expression: checked again once it is resolved, before the Job runs
    ok = VALUE_KINDS[kind].fullmatch(word) is not None
    if ok and kind == "parameter":
        try:
            json.loads(word.partition("=")[2])
        except ValueError:
            ok = False
    return [] if ok else [f"{path}: {word[:200]!r} is not a {kind} as render writes it"]


def job_problems(container: Any, where: str, resolved: bool) -> list[str]:
    """What in a Job's container is not a command (or environment) that ``nbship deploy
    render`` writes (:data:`nbship.spinnaker.render.JOB_COMMANDS`, ``JOB_ENV``), each with
    its JSON path. ``resolved``: the ``${...}`` expressions were evaluated (the stage is
    about to run); before, an expression stands for any value."""
    from nbship.spinnaker.render import JOB_COMMANDS, JOB_ENV

    if not isinstance(container, dict):
        return [f"{where}: a container"]
    argv = _argv(container, where)
    if isinstance(argv, str):
        return [argv]
    words = [str(w) for _, w in argv]
    if words[:3] != ["python", "-m", "nbship"]:
        return [f"{where}.command: a rehearsal runs nbship's own Jobs (python -m nbship ...), "
                f"not {' '.join(words[:3])!r}"]
    rest = argv[3:]
    known = ", ".join(" ".join(v) for v in JOB_COMMANDS)
    command = next((c for verb, c in JOB_COMMANDS.items()
                    if tuple(words[3:3 + len(verb)]) == verb), None)
    if command is None:
        return [f"{rest[0][0] if rest else where + '.command'}: nbship "
                f"{' '.join(words[3:5])!r} is not a Job that nbship deploy render writes "
                f"(it writes: {known})"]
    verb = " ".join(command.verb)
    options = {o: kind for o, kind, _ in command.options}
    problems: list[str] = []
    seen: dict[str, int] = {}
    positional, i = 0, len(command.verb)
    while i < len(rest):
        path, word = rest[i]
        if word in options:
            seen[word] = seen.get(word, 0) + 1
            if i + 1 == len(rest):
                problems.append(f"{path}: {word} without its value")
                break
            problems += _value(rest[i + 1][0], rest[i + 1][1], options[word], resolved)
            i += 2
            continue
        if word.startswith("-"):
            problems.append(f"{path}: {word[:100]!r} is not an option render writes for "
                            f"nbship {verb} (it writes {', '.join(options) or 'none'})")
        elif positional == len(command.positional):
            problems.append(f"{path}: {word[:100]!r}: render writes nbship {verb} with "
                            f"{len(command.positional)} argument(s)")
        else:
            problems += _value(path, word, command.positional[positional], resolved)
            positional += 1
        i += 1
    for option, _, repeated in command.options:
        if not repeated and seen.get(option, 0) != 1 and not (
                option in command.optional and seen.get(option, 0) == 0):
            problems.append(f"{where}.command: nbship {verb} has {option} "
                            f"{seen.get(option, 0)} time(s); render writes it once")
    if positional < len(command.positional):
        problems.append(f"{where}.command: nbship {verb} without its "
                        f"{command.positional[positional]}")
    env = container.get("env") or []
    for j, var in enumerate(env if isinstance(env, list) else [env]):
        if var not in JOB_ENV:
            name = var.get("name") if isinstance(var, dict) else var
            problems.append(f"{where}.env[{j}]: {str(name)[:100]!r}: a rehearsal gives a Job "
                            "only the environment render writes ("
                            + ", ".join(str(e["name"]) for e in JOB_ENV) + ")")
    if container.get("envFrom"):
        problems.append(f"{where}.envFrom: a rehearsal gives a Job only the environment "
                        "render writes")
    return problems


def asks_for_key(container: dict[str, Any]) -> int | None:
    """The index of the env entry taking the ``nbship-key`` secret, if one does."""
    from nbship.spinnaker.render import KEY_SECRET

    for j, var in enumerate(container.get("env") or []):
        ref = ((var.get("valueFrom") or {}).get("secretKeyRef") or {}) \
            if isinstance(var, dict) else {}
        if ref.get("name") == KEY_SECRET:
            return j
    return None


@dataclass(frozen=True)
class KeyTrust:
    """The images that may have this machine's key (the ``nbship-key`` secret): those of
    the release being rehearsed, by digest as its release.json records them."""

    release: str | None
    digests: frozenset[str]
    source: str  # where the release came from, or why there is none

    def problem(self, container: dict[str, Any], where: str, resolved: bool) -> str | None:
        j = asks_for_key(container)
        image = str(container.get("image", ""))
        if j is None or ("${" in image and not resolved):
            return None
        digest = image.rpartition("@")[2]
        if self.release is not None and digest in self.digests:
            return None
        whose = (f"the release being rehearsed, {self.release} ({self.source}: "
                 f"{', '.join(sorted(d[:19] for d in self.digests)) or 'no images'})"
                 if self.release else f"the release being rehearsed ({self.source})")
        return (f"{where}.env[{j}]: the nbship-key secret (this machine's signing key) goes "
                f"only to images of {whose}; {where}.image {image[:200]!r} is not one of "
                "them: the Job is refused")


def key_trust(options: Options, parameters: Mapping[str, str]) -> KeyTrust:
    """Whose images get the key: ``--release``, else the release a model release (signed
    by this machine) records it was built from. A pipeline file's own word is not enough."""
    from nbship.release.publish import show
    from nbship.signing import signed

    ref, source = options.release, "--release"
    if ref is None:
        from nbship.release.model import show as show_model

        for name, value in sorted(parameters.items()):
            if "/models/" not in value:
                continue
            try:
                rec, _, _ = show_model(value)
            except (NbshipError, OSError, ValueError):
                continue
            named = ((rec.get("pipeline") or {}).get("release") or {}).get("reference") \
                if signed(rec) else None
            if isinstance(named, str):
                ref, source = named, f"recorded by the model release of parameter {name}"
                break
    if ref is None:
        return KeyTrust(None, frozenset(), "none named: --release REF names it")
    try:
        record, _, _ = show(ref)
    except (NbshipError, OSError, ValueError) as exc:
        raise RehearsalError(f"cannot read the release whose images may have this machine's "
                             f"key, {ref} ({source}): {exc}") from None
    images = record.get("images")
    images = images if isinstance(images, dict) else {}
    digests = frozenset(str(i["digest"]) for i in images.values()
                        if isinstance(i, dict) and re.fullmatch(r"sha256:[0-9a-f]{64}",
                                                                 str(i.get("digest", ""))))
    return KeyTrust(ref, digests, source)


class RunJob:
    def check(self, stage: dict[str, Any], folder: Path, where: str) -> str | None:
        job = stage.get("manifest")
        if not isinstance(job, dict) or job.get("kind") != "Job":
            return "a rehearsal runs a batch/v1 Job given as text (manifest)"
        containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
        if not isinstance(containers, list) or len(containers) != 1:
            return "a rehearsal runs Jobs of one container"
        problems = job_problems(containers[0], f"{where}.{JOB}", resolved=False)
        return "\n    ".join(problems) if problems else None

    @staticmethod
    def job_env(container: dict[str, Any], verb: str, rehearsal: Rehearsal) -> dict[str, str]:
        """The environment nbship gives a Job (beyond this venv's allow-listed one): the
        ``nbship-key`` secret as this machine's key (checked: only to whom it may go), a
        KFP token from this environment to ``nbship kfp``, and the rehearsal's mark. The
        KFP token path render writes points into a volume a cluster mounts: not here."""
        from nbship.signing import KEY_ENV, key_hex

        env = {"PYTHONUNBUFFERED": "1", REHEARSAL_ENV: rehearsal.run_id}
        if asks_for_key(container) is not None:
            env[KEY_ENV] = key_hex()
        if verb == "kfp" and os.environ.get("KFP_TOKEN"):
            env["KFP_TOKEN"] = os.environ["KFP_TOKEN"]
        return env

    def run(self, stage: dict[str, Any], rehearsal: Rehearsal) -> Outcome:
        where = f"{rehearsal.where(stage)}.{JOB}"
        container = stage["manifest"]["spec"]["template"]["spec"]["containers"][0]
        problems = job_problems(container, where, resolved=True)
        if rehearsal.options.jobs == "image":
            problems += [p for p in [rehearsal.key.problem(container, where, True)] if p]
        if problems:
            raise RehearsalError(f"{rehearsal.path}: refused, not run:\n    "
                                 + "\n    ".join(problems))
        argv = [str(a) for a in [*container.get("command", []), *container.get("args", [])]]
        env = self.job_env(container, argv[3], rehearsal)
        argv = rehearsal.local_argv(argv[3:])
        unknown = [a for a in argv if IN_CLUSTER.match(a)]
        if unknown:  # a pod would not resolve it either: the stage fails, nothing runs
            return Outcome("TERMINAL", message=f"{unknown[0]} does not exist here: "
                           + rehearsal.cluster.missing(unknown[0]))
        rehearsal.echo(f"    $ nbship {' '.join(argv)}"
                       + (f"   (in {container.get('image')})"
                          if rehearsal.options.jobs == "image" else ""))
        if rehearsal.options.jobs == "image":
            image = str(container.get("image", ""))
            with in_image(image, env, rehearsal.project) as prefix:
                if isinstance(prefix, str):
                    return Outcome("TERMINAL", message=prefix)
                return self._run([*prefix, "python", "-m", "nbship", *argv], None, stage,
                                 rehearsal)
        return self._run([sys.executable, "-m", "nbship", *argv],
                         {**host_env(os.environ), **env}, stage, rehearsal)

    @staticmethod
    def _run(cmd: list[str], env: dict[str, str] | None, stage: dict[str, Any],
             rehearsal: Rehearsal) -> Outcome:
        outputs: dict[str, Any] = {}
        proc = subprocess.Popen(cmd, env=env, cwd=rehearsal.project,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip("\n")
            m = PROPERTY.match(line)
            if m:
                outputs[m[1]] = m[2]
            tail = (tail + [line])[-5:]
            rehearsal.echo(f"    | {line}")
        code = proc.wait()
        if code == 0 and stage.get("propertyFile") and not outputs:  # as orca says it
            return Outcome("TERMINAL", message=f"Expected properties file "
                           f"{stage['propertyFile']} but it was either missing, empty or "
                           "contained invalid syntax (no SPINNAKER_PROPERTY_ lines)")
        if code == 0:
            return Outcome("SUCCEEDED", outputs, "the job succeeded")
        return Outcome("TERMINAL", outputs, f"the job exited {code}: "
                       + (tail[-1] if tail else "no output"))


def canary_configs(folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Kayenta canary configs beside a pipeline (``kayenta/*.json``), by id and by name."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted((folder / "kayenta").glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            for key in ("id", "name"):
                if isinstance(doc.get(key), str):
                    found.setdefault(doc[key], (path, doc))
    return found


class KayentaCanary:
    """Judged from the rehearsal's Prometheus (:mod:`nbship.spinnaker.kayenta`)."""

    def check(self, stage: dict[str, Any], folder: Path, where: str) -> str | None:
        from nbship.release.tools import which
        from nbship.spinnaker.kayenta import config_problems

        config = stage.get("canaryConfig") or {}
        wanted = str(config.get("canaryConfigId", ""))
        found = canary_configs(folder).get(wanted)
        if found is None:
            return (f"no canary config {wanted!r} in {folder / 'kayenta'} (a rehearsal reads "
                    "the config Kayenta would: nbship deploy render writes it there)")
        problems = config_problems(found[1])
        if problems:
            return f"{found[0]}: " + "; ".join(problems)
        scopes = config.get("scopes") or []
        if len(scopes) != 1:
            return "a rehearsal judges one scope (controlScope and experimentScope)"
        if any(isinstance(sc, dict) and sc.get("endTimeIso") for sc in scopes):
            return "a rehearsal judges a canary as it runs (lifetimeDuration), not an " \
                "endTimeIso in the past"
        from nbship.spinnaker.kayenta import canary_intervals

        try:  # what Orca cannot plan fails here before anything starts
            canary_intervals(config)
        except ValueError as exc:
            return f"canaryConfig: {exc}"
        if which("prometheus") is None:
            return "judging a canary here needs Prometheus (make tools; apt-get install " \
                "prometheus)"
        return None

    def run(self, stage: dict[str, Any], rehearsal: Rehearsal) -> Outcome:
        from nbship.spinnaker.kayenta import canary_intervals

        config = stage["canaryConfig"]
        _, doc = canary_configs(rehearsal.path.parent)[str(config["canaryConfigId"])]
        scope = config["scopes"][0]
        control, experiment = str(scope["controlScope"]), str(scope["experimentScope"])
        if not control or not experiment:
            raise RehearsalError(f"the canary's scopes are empty (control {control!r}, "
                                 f"experiment {experiment!r})")
        try:  # Orca's plan: a warmup wait, then per interval a wait and an analysis
            plan = canary_intervals(config)
        except ValueError as exc:
            raise RehearsalError(f"canaryConfig: {exc}") from None
        prometheus = rehearsal.prometheus
        assert prometheus is not None  # started before the stages when one is kayentaCanary
        rehearsal.echo(f"    observing control {control} and experiment {experiment}: "
                       f"{len(plan.windows)} interval(s) of {plan.interval:g} s after "
                       f"{plan.warmup:g} s (Prometheus {prometheus})")
        began = time.time()
        thresholds = {k: v for k, v in (config.get("scoreThresholds") or {}).items()
                      if v is not None}
        scores: list[float] = []
        verdict = None
        time.sleep(plan.warmup)
        for i, (first, last) in enumerate(plan.windows, 1):
            time.sleep(max(0.0, began + last - time.time()))  # Interval Wait #i
            verdict = self.analyse(doc, scope, control, experiment, prometheus,
                                   began + first, began + last, thresholds)
            scores.append(verdict.score)
            rehearsal.echo(f"    interval {i}: canary score {verdict.score:g}")
            marginal = float(thresholds.get("marginal", 50))
            if verdict.score <= marginal and i < len(plan.windows):
                break  # MonitorKayentaCanaryTask: at or under marginal ends the canary
        assert verdict is not None  # at least one window: canary_intervals says so
        return self.outcome(verdict, scores, thresholds, rehearsal)

    @staticmethod
    def analyse(doc: dict[str, Any], scope: dict[str, Any], control: str, experiment: str,
                prometheus: str, start: float, end: float, thresholds: dict[str, Any]
                ) -> Any:
        """One RunCanaryPipelineStage: both scopes' series over [start, end], judged."""
        from nbship.monitoring.stack import api
        from nbship.spinnaker.kayenta import judge

        def series(template: str) -> tuple[list[float], list[float]]:
            out = []
            for value in (control, experiment):
                promql = template.replace("${scope}", value).replace(
                    "${location}", str(scope.get("controlLocation", "")))
                found = api(prometheus, "query_range", {"query": promql, "start": start,
                                                        "end": end, "step": 1}).get("result")
                out.append([float(v) for _, v in found[0]["values"]] if found else [])
            return out[0], out[1]

        return judge(doc, series, thresholds)

    @staticmethod
    def outcome(verdict: Any, scores: list[float], thresholds: dict[str, Any],
                rehearsal: Rehearsal) -> Outcome:
        """The stage's result from the last interval's score, as AggregateCanaryResults
        decides it (at or under marginal, or under pass: TERMINAL)."""
        for m in verdict.metrics:
            rehearsal.echo(f"    {'pass' if m['passed'] else 'FAIL'}  {m['name']:<20} "
                           f"{m['classification']:<7} {m['why']}")
        outputs = {"overallScore": verdict.score, "overallResult": verdict.result,
                   "canaryScores": scores,
                   "metrics": {m["name"]: m["classification"] for m in verdict.metrics},
                   "analysis": [{k: m[k] for k in ("name", "classification", "why", "points")}
                                for m in verdict.metrics]}
        ok = verdict.result == "pass"
        return Outcome("SUCCEEDED" if ok else "TERMINAL", outputs,
                       f"canary score {verdict.score:g} ({verdict.result})")


def _predictor(stages: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The predictor container the pipeline deploys ``name`` with (its image, its env):
    what the stable server before the rehearsal runs in as well."""
    for s in stages:
        for doc in s.get("manifests") or [] if s.get("type") == "deployManifest" else []:
            if _is_isvc(doc) and doc["metadata"].get("name") == name:
                return dict(doc["spec"]["predictor"]["containers"][0])
    return None


ServerRunner = Callable[[dict[str, Any]], contextlib.AbstractContextManager[list[str] | str]]


def server_runner(rehearsal: Rehearsal, workdir: Path) -> ServerRunner:
    """How the local cluster runs a model server in its InferenceService's image: a
    buildah container as a Job's (the host's network, a pid namespace of its own, the
    project and the rehearsal's folder mounted), given the ``nbship-key`` secret only
    when the image is the rehearsed release's (checked again here, resolved)."""
    from nbship.signing import KEY_ENV, key_hex

    @contextlib.contextmanager
    def run(container: dict[str, Any]) -> Iterator[list[str] | str]:
        image = str(container.get("image") or "")
        if not image:
            yield "the predictor container names no image"
            return
        why = rehearsal.key.problem(container, "the predictor container", True)
        if why:
            yield why
            return
        env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               REHEARSAL_ENV: rehearsal.run_id}
        if asks_for_key(container) is not None:
            env[KEY_ENV] = key_hex()
        workdir.mkdir(parents=True, exist_ok=True)
        mounts = () if workdir.resolve().is_relative_to(rehearsal.project) \
            else (workdir.resolve(),)
        with in_image(image, env, rehearsal.project, mounts) as prefix:
            yield prefix

    return run


@contextlib.contextmanager
def in_image(image: str, env: dict[str, str], project: Path,
             mounts: tuple[Path, ...] = ()) -> Iterator[list[str] | str]:
    """A working container of ``image`` (pulled by buildah): the command prefix that runs
    in it (chroot isolation: the host's network, where the local servers and registry
    are; a pid namespace of its own, with its own /proc: it sees and signals only its own
    processes) with the project folder mounted where it is here; a message instead when
    the image cannot be had. The container is removed afterwards."""
    from nbship.release.tools import which

    buildah, unshare = which("buildah"), which("unshare")
    if buildah is None:
        yield "buildah is not installed: it runs a Job in its image (make tools), or " \
            "rehearse with --jobs venv"
        return
    if unshare is None:
        yield "unshare (util-linux) is not installed: it gives a Job its own pid namespace"
        return
    made = subprocess.run([buildah, "from", "--quiet", "--tls-verify=false",
                           f"docker://{image}"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if made.returncode != 0:
        why = (made.stderr.strip().splitlines() or ["no output"])[-1]
        yield f"cannot pull {image}: {why} (--jobs venv runs the same nbship from this venv)"
        return
    name = made.stdout.strip().splitlines()[-1]
    cwd = str(project)
    try:
        # chroot isolation (as nbship build's smoke runs): the host's network (the local
        # servers and registry) and no cgroup setup to fail; it ignores --pid, so buildah
        # runs as pid 1 of a new pid namespace (its /proc mounted anew; killed with us)
        yield [unshare, "--pid", "--fork", "--mount-proc", "--kill-child",
               buildah, "run", "--isolation", "chroot", "-v", f"{cwd}:{cwd}",
               *[f"-v={m}:{m}" for m in mounts], "--workingdir", cwd,
               *[f"--env={k}={v}" for k, v in sorted(env.items())], name, "--"]
    finally:
        subprocess.run([buildah, "rm", name], capture_output=True, stdin=subprocess.DEVNULL)


HANDLERS: dict[str, Handler] = {
    "kayentaCanary": KayentaCanary(),
    "deployManifest": DeployManifest(), "patchManifest": PatchManifest(),
    "manualJudgment": ManualJudgment(), "wait": Wait(),
    "checkPreconditions": CheckPreconditions(), "runJobManifest": RunJob(),
}
WAITING_JOBS = (["canary", "ready"], ["canary", "judge"])  # observation, not work


# --- the load during the rehearsal -------------------------------------------------------


@dataclass
class Load:
    """Requests sent to the InferenceServices' routers during the whole rehearsal."""

    cluster: Cluster
    inputs: Any
    rate: float
    sent: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, workers: int = 2) -> None:
        for n in range(workers):
            t = threading.Thread(target=self._work, args=(n, workers), daemon=True,
                                 name=f"nbship-load-{n}")
            t.start()
            self._threads.append(t)

    def _work(self, n: int, workers: int) -> None:
        import numpy as np

        from nbship.serving.canary import infer

        rows = np.asarray(self.inputs)
        rng = np.random.default_rng(n)  # rows in random order: a data set's own order (the
        period = workers / self.rate  # digits cycle 0-9) would meet the split's period
        started = time.monotonic()
        while not self._stop.is_set():
            row = rows[rng.integers(len(rows))]
            for name, url in self.cluster.entrances():
                value, _ = infer(url, name, row, timeout=30)
                with self._lock:
                    self.sent += 1
                    if value is None:
                        self.failed += 1
                        if len(self.failures) < 20:
                            self.failures.append({"at": round(time.monotonic() - started, 3),
                                                  "service": name})
            self._stop.wait(period)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return {"rate_per_second": self.rate, "sent": self.sent, "failed": self.failed,
                "failures": self.failures}


# --- the execution -----------------------------------------------------------------------


def order(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stages in an order that respects requisiteStageRefIds (validated acyclic), ties by
    their place in the file."""
    done: set[str] = set()
    out: list[dict[str, Any]] = []
    left = list(stages)
    while left:
        ready = [s for s in left
                 if all(str(r) in done for r in s.get("requisiteStageRefIds") or [])]
        if not ready:
            raise RehearsalError("the stages' requisiteStageRefIds form a cycle")
        stage = ready[0]
        out.append(stage)
        done.add(str(stage["refId"]))
        left.remove(stage)
    return out


ARTIFACT_FIELDS = ("type", "name", "version", "location", "reference")


def artifact_matches(match: Mapping[str, Any], artifact: Any) -> bool:
    """kork's ExpectedArtifact.matches: each field the matchArtifact sets is a regex the
    artifact's field must match whole (kork-artifacts/.../model/ExpectedArtifact.java,
    ``Pattern.matcher(...).matches()``; uuid, provenance and account are not compared)."""
    if not isinstance(artifact, Mapping):
        return False
    for key in ARTIFACT_FIELDS:
        want = match.get(key)
        if want in (None, ""):
            continue
        have = artifact.get(key)
        try:
            if have is None or re.fullmatch(str(want), str(have)) is None:
                return False
        except re.error:
            return False
    return True


def constraint_problem(constraints: Any, payload: Mapping[str, Any]) -> str | None:
    """Why Echo would not fire a webhook trigger with these payloadConstraints on this
    payload: each key must be in the payload, non-null, its value holding a match of the
    regex (echo-pipelinetriggers/.../artifacts/ArtifactMatcher.java,
    isJsonPathConstraintInPayload: ``Pattern.asPredicate``, a find, not a whole match)."""
    for key, regex in (constraints or {}).items():
        if str(key).startswith("$"):
            return f"payloadConstraints key {key!r}: a rehearsal matches top-level keys only"
        if payload.get(key) is None:
            return f"the payload has no {key!r} (payloadConstraints)"
        value = payload[key]
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        try:
            if regex is not None and re.search(str(regex), text) is None:
                return f"payload {key!r} = {text[:100]!r} does not match {regex!r}"
        except re.error:  # Echo logs it: the constraint never matches
            return f"payloadConstraints {key!r}: {regex!r} is not a regex"
    return None


def execution_trigger(doc: dict[str, Any], options: Options, file: str) -> dict[str, Any]:
    """The execution's trigger, as Echo starts it and Orca resolves its artifacts.

    Without ``options.trigger_payload``: a manual run. With it: the body posted to a webhook
    trigger of the pipeline, which fires as Echo's WebhookEventHandler decides (the source,
    the payloadConstraints; with expectedArtifactIds, one of the body's ``artifacts`` must
    match one of them: ArtifactMatcher.anyArtifactsMatchExpected); the trigger then carries
    the body as ``payload``, its ``parameters`` and ``artifacts`` (echo-webhooks/.../
    WebhooksController.groovy). Then Orca binds the expected artifacts the trigger names,
    or that use a default (orca-core/.../pipeline/util/ArtifactUtils.java resolveArtifacts,
    ArtifactResolver.java): a received artifact that matches (more than one is an error),
    else the default; a prior execution's artifact is not looked for (a rehearsal has no
    execution history of Spinnaker's)."""
    expected = [e for e in doc.get("expectedArtifacts") or [] if isinstance(e, dict)]
    if options.trigger_payload is None:
        if options.trigger_source is not None:
            raise RehearsalError("--trigger-source needs --trigger-payload")
        trigger: dict[str, Any] = {"type": "manual", "user": "rehearsal", "payload": {},
                                   "parameters": {}, "artifacts": [],
                                   "expectedArtifactIds": []}
    else:
        payload = dict(options.trigger_payload)
        hooks = [t for t in doc.get("triggers") or [] if isinstance(t, dict)
                 and t.get("type") == "webhook" and t.get("enabled", True) is not False
                 and options.trigger_source in (None, t.get("source"))]
        if not hooks:
            raise RehearsalError(f"{file} has no enabled webhook trigger" + (
                f" with source {options.trigger_source!r}" if options.trigger_source else "")
                + " to post the payload to")
        artifacts = payload.get("artifacts") or []
        if not isinstance(artifacts, list):
            raise RehearsalError("the payload's artifacts: a list of artifacts")
        why: list[str] = []
        fired = None
        for hook in hooks:
            problem = constraint_problem(hook.get("payloadConstraints"), payload)
            ids = hook.get("expectedArtifactIds") or []
            if problem is None and ids and not any(
                    artifact_matches(e.get("matchArtifact") or {}, a)
                    for e in expected if e.get("id") in ids for a in artifacts):
                problem = ("none of the payload's artifacts matches the trigger's expected "
                           f"artifacts {', '.join(map(str, ids))}")
            if problem is None:
                fired = hook
                break
            why.append(f"webhook {hook.get('source')!r}: {problem}")
        if fired is None:
            raise RehearsalError(f"{file}: Echo would start no execution for this payload:\n  "
                                 + "\n  ".join(why))
        parameters = payload.get("parameters") or {}
        trigger = {**fired, "payload": payload, "artifacts": list(artifacts),
                   "parameters": dict(parameters) if isinstance(parameters, dict) else {}}
    ids = trigger.get("expectedArtifactIds") or []
    resolved = []
    for e in expected:
        if not (e.get("id") in ids or e.get("useDefaultArtifact") or e.get("usePriorArtifact")):
            continue
        matches = [a for a in trigger["artifacts"]
                   if artifact_matches(e.get("matchArtifact") or {}, a)]
        if len(matches) > 1:
            raise RehearsalError(f"{file}: expected artifact {e.get('id')} matches multiple "
                                 "artifacts of the trigger (Orca refuses the execution)")
        bound = matches[0] if matches else (e.get("defaultArtifact")
                                            if e.get("useDefaultArtifact") else None)
        if not isinstance(bound, dict):
            raise RehearsalError(f"{file}: unmatched expected artifact {e.get('id')} could "
                                 "not be resolved (Orca refuses the execution)")
        resolved.append({**e, "boundArtifact": dict(bound)})
    trigger["resolvedExpectedArtifacts"] = resolved
    return trigger


def _parameters(doc: dict[str, Any], given: Mapping[str, str], file: str) -> dict[str, str]:
    config = [p for p in doc.get("parameterConfig") or [] if isinstance(p, dict)]
    known = {str(p["name"]) for p in config}
    unknown = set(given) - known
    if unknown:
        raise RehearsalError(f"{file}: no parameter {', '.join(sorted(unknown))}",
                             hint="its parameters: " + (", ".join(sorted(known)) or "none"))
    values: dict[str, str] = {}
    for p in config:
        name = str(p["name"])
        if name in given:
            values[name] = given[name]
        elif p.get("default") not in (None, ""):
            values[name] = str(p["default"])
        elif p.get("required"):
            raise RehearsalError(f"{file}: parameter {name} is required and has no default",
                                 hint=f"-p {name}=VALUE ({p.get('description', '')})")
        else:
            values[name] = ""
    return values


def provenance(reference: str) -> dict[str, Any] | None:
    """What a model release or a pipeline release says of where it came from."""
    from nbship.release import oci

    try:
        ref = oci.Reference.parse(reference)
    except (ValueError, NbshipError):
        return None
    try:
        if "/models/" in f"/{ref.repository}":
            from nbship.release.model import show as show_model

            rec, digest, _ = show_model(reference)
            return {"kind": "model", "reference": reference, "digest": digest,
                    "name": rec.get("name"), "run": rec.get("run", {}).get("id"),
                    "trigger": rec.get("run", {}).get("trigger"), "commit": rec.get("commit"),
                    "notebook": rec.get("notebook"), "metrics": rec.get("metrics"),
                    "data": rec.get("data"), "release": rec.get("pipeline", {}).get("release")}
        from nbship.release.publish import show

        rec, digest, _ = show(reference)
        return {"kind": "release", "reference": reference, "digest": digest,
                "name": rec.get("name"), "commit": rec.get("commit"),
                "notebook": rec.get("notebook"),
                "images": {k: v.get("reference") for k, v in rec.get("images", {}).items()}}
    except (ReleaseError, OSError, ValueError):
        return None


@dataclass
class Rehearsal:
    path: Path
    doc: dict[str, Any]
    options: Options
    echo: Callable[[str], None]
    cluster: Cluster
    parameters: dict[str, str]
    run_id: str = ""
    project: Path = field(default_factory=Path.cwd)  # Jobs run here (the project folder)
    key: KeyTrust = KeyTrust(None, frozenset(), "--jobs venv")
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name, for #stage
    prometheus: str | None = None  # the rehearsal's own, when a stage judges from it
    trigger: dict[str, Any] = field(default_factory=dict)  # as Orca's execution has it

    def scope(self) -> Scope:
        """Every stage of the execution, as Orca's ``#stage`` sees them: those that ran,
        and the others NOT_STARTED (the first of a name, as Orca's findFirst)."""
        stages: dict[str, dict[str, Any]] = {}
        for s in self.doc["stages"]:
            name = str(s.get("name") or s["type"])
            stages.setdefault(name, self.stages.get(name) or {
                "status": "NOT_STARTED", "type": s["type"], "context": {}, "outputs": {}})
        return Scope(self.parameters, stages, trigger=self.trigger)

    def where(self, stage: dict[str, Any]) -> str:
        """The stage's JSON path in the file (``$.stages[i]``)."""
        refs = [str(s.get("refId")) for s in self.doc["stages"]]
        return f"$.stages[{refs.index(str(stage['refId']))}]"

    def local_argv(self, argv: list[str]) -> list[str]:
        """In-cluster addresses -> this machine's; ``--host`` of ``nbship kfp`` -> the
        local pipeline host (or ``--kfp-host``)."""
        urls = self.cluster.urls()
        out: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if argv[:1] == ["kfp"] and arg == "--host" and i + 1 < len(argv):
                if self.options.kfp_host:
                    out += ["--host", self.options.kfp_host]
                i += 2
                continue
            for cluster_url, local in sorted(urls.items(), key=lambda kv: -len(kv[0])):
                if arg == cluster_url or arg.startswith(cluster_url + "/"):
                    arg = local + arg[len(cluster_url):]
                    break
            out.append(arg)
            i += 1
        return out

    def enabled(self, stage: dict[str, Any]) -> bool:
        cond = stage.get("stageEnabled")
        if not isinstance(cond, dict) or cond.get("type") != "expression":
            return True
        expr = str(cond.get("expression", "true"))
        if not expr.strip():  # orca: no expression, the stage is not optional
            return True
        try:
            value = evaluate(expr if "${" in expr else "${" + expr + "}", self.scope())
        except ExpressionError as exc:
            # orca's OptionalStageSupport: a condition that does not evaluate to true or
            # false is an InvalidExpression, and the stage is SKIPPED (not failed)
            self.echo(f"  stageEnabled of {stage.get('name')!r} cannot be evaluated, so "
                      f"Orca skips the stage: {exc}")
            return False
        if str(value).strip().lower() not in ("true", "false"):
            self.echo(f"  stageEnabled of {stage.get('name')!r} is {value!r}, not true or "
                      "false, so Orca skips the stage")
            return False
        return str(value).strip().lower() == "true"

    def run(self) -> dict[str, Any]:
        started_at = datetime.now(UTC)
        t0 = time.monotonic()
        records: list[dict[str, Any]] = []
        status, message = "SUCCEEDED", ""
        failed: set[str] = set()
        for stage in order(list(self.doc["stages"])):
            ref, name = str(stage["refId"]), str(stage.get("name") or stage["type"])
            row: dict[str, Any] = {"refId": ref, "name": name, "type": stage["type"]}
            records.append(row)
            if status == "TERMINAL" or any(str(r) in failed for r in
                                           stage.get("requisiteStageRefIds") or []):
                row["status"] = "NOT_STARTED"
                continue
            begun = time.monotonic()
            row["started"] = round(begun - t0, 3)
            try:
                if not self.enabled(stage):
                    outcome = Outcome("SKIPPED", message="stageEnabled is false")
                else:
                    self.echo(f"stage {ref} {name} ({stage['type']})")
                    resolved = resolve({k: v for k, v in stage.items()
                                        if k != "stageEnabled"}, self.scope())
                    outcome = HANDLERS[stage["type"]].run(resolved, self)
            except (ExpressionError, ClusterError, RehearsalError) as exc:
                outcome = Outcome("TERMINAL", message=str(exc))
            if outcome.status == "TERMINAL" and stage.get("failPipeline") is False:
                outcome.status = "FAILED_CONTINUE"
            row.update(status=outcome.status, seconds=round(time.monotonic() - begun, 3),
                       outputs=outcome.outputs, message=outcome.message,
                       waiting=_waiting(stage, outcome))
            if outcome.decision:
                row["decision"] = outcome.decision
            context = {**outcome.outputs}  # Run Job properties: both ways orca keeps them
            if stage["type"] == "runJobManifest":
                context["propertyFileContents"] = dict(outcome.outputs)
            self.stages[name] = {"status": outcome.status, "outputs": outcome.outputs,
                                 "context": context, "type": stage["type"]}
            if outcome.status != "SKIPPED":
                self.echo(f"  -> {outcome.status}" + (f": {outcome.message}"
                                                      if outcome.message else ""))
            if outcome.status == "TERMINAL":
                failed.add(ref)
                status, message = "TERMINAL", f"stage {ref} {name}: {outcome.message}"
        return {"started_at": started_at.isoformat(timespec="microseconds"),
                "seconds": round(time.monotonic() - t0, 3), "status": status,
                "message": message, "stages": records}


def _waiting(stage: dict[str, Any], outcome: Outcome) -> bool:
    """Whether the stage's time is waiting (for time, a person, readiness, observation)."""
    if outcome.status == "SKIPPED":
        return False
    if stage["type"] in ("wait", "manualJudgment", "kayentaCanary"):
        return True
    if stage["type"] == "runJobManifest":
        container = stage["manifest"]["spec"]["template"]["spec"]["containers"][0]
        return list(container.get("command", [])[3:5]) in WAITING_JOBS
    return False


def _services(stages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(name, namespace) of the InferenceServices the pipeline deploys or patches."""
    out: list[tuple[str, str]] = []
    for s in stages:
        for doc in s.get("manifests") or [] if s.get("type") == "deployManifest" else []:
            if _is_isvc(doc):
                meta = doc.get("metadata") or {}
                pair = (str(meta.get("name")), str(meta.get("namespace") or "default"))
                if pair not in out:
                    out.append(pair)
    return out


def rehearse(path: Path, options: Options, echo: Callable[[str], None] = print
             ) -> tuple[dict[str, Any], Path]:
    """Run the pipeline in ``path``; (the execution record, where it was written)."""
    from nbship.files import sha256_file, write_atomic
    from nbship.spinnaker.validate import ERROR, validate_file

    if os.environ.get(REHEARSAL_ENV):
        raise RehearsalError(f"nbship deploy rehearse inside a Job of rehearsal "
                             f"{os.environ[REHEARSAL_ENV][:40]}: a rehearsal starts no other")
    problems = [p for p in validate_file(path) if p.severity == ERROR]
    if problems:
        raise UnusableInputError(f"{path} does not validate:\n  "
                                 + "\n  ".join(str(p) for p in problems),
                                 hint=f"nbship deploy validate {path}")
    doc = json.loads(path.read_text())
    stages = list(doc.get("stages") or [])
    cannot = []
    for i, stage in enumerate(stages):
        handler = HANDLERS.get(stage["type"])
        why = f"Spinnaker-only (a rehearsal runs {', '.join(sorted(HANDLERS))})" \
            if handler is None else handler.check(stage, path.parent, f"$.stages[{i}]")
        if why:
            cannot.append(f"{path}: $.stages[{i}] ({stage['type']} {stage.get('name', '')!r}): "
                          f"{why}")
    if cannot:
        raise RehearsalError("cannot rehearse:\n  " + "\n  ".join(cannot))
    if options.judge not in (None, "continue", "stop"):
        raise RehearsalError(f"--judge {options.judge}: continue or stop")
    if options.judge is None and options.ask is None and \
            any(s["type"] == "manualJudgment" for s in stages):
        raise RehearsalError(f"{path} has manual judgments and there is no terminal to ask on",
                             hint="--judge continue (or stop)")
    if options.jobs not in ("image", "venv"):
        raise RehearsalError(f"--jobs {options.jobs}: image or venv")
    servers = options.servers or options.jobs
    if servers not in ("image", "venv"):
        raise RehearsalError(f"--servers {options.servers}: image or venv")
    if options.time_scale < 0 or options.traffic < 0:
        raise RehearsalError("--time-scale and --traffic are not negative")
    trigger = execution_trigger(doc, options, str(path))
    given = {k: str(v) for k, v in (trigger.get("parameters") or {}).items()
             if k in {str(p.get("name")) for p in doc.get("parameterConfig") or []
                      if isinstance(p, dict)}}  # Orca: the trigger's, then the defaults
    parameters = _parameters(doc, {**given, **options.parameters}, str(path))
    trust = KeyTrust(None, frozenset(), "no Job asks for it" if options.jobs == "image"
                     else "--jobs venv: Jobs run this venv's nbship")
    keyed = [(i, s["manifest"]["spec"]["template"]["spec"]["containers"][0])
             for i, s in enumerate(stages) if s["type"] == "runJobManifest"]
    keyed = [(i, c) for i, c in keyed if asks_for_key(c) is not None]
    if options.jobs != "image":
        keyed = []
    if servers == "image":  # the predictors' containers ask for the key as well
        keyed += [(i, doc["spec"]["predictor"]["containers"][0])
                  for i, s in enumerate(stages) if s["type"] == "deployManifest"
                  for doc in s.get("manifests") or [] if _is_isvc(doc)
                  if asks_for_key(doc["spec"]["predictor"]["containers"][0]) is not None]
    if keyed:
        trust = key_trust(options, parameters)
        refused = [(i, trust.problem(c, f"$.stages[{i}]." + (
            JOB if stages[i]["type"] == "runJobManifest"
            else "manifests[0].spec.predictor.containers[0]"), False)) for i, c in keyed]
        if any(why for _, why in refused):
            raise RehearsalError("cannot rehearse:\n  " + "\n  ".join(
                f"{path}: $.stages[{i}] ({stages[i]['type']} {stages[i].get('name', '')!r}): "
                f"{why}" for i, why in refused if why), hint="--release REF: the release "
                "whose images may have this machine's key (or --jobs venv)")
        echo(f"  the nbship-key secret goes to the images of {trust.release} ({trust.source})")
    name = str(doc.get("name") or path.stem)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    workdir = options.root / "rehearsals" / run_id
    cluster = Cluster(workdir, echo=echo)
    rehearsal = Rehearsal(path, doc, options, echo, cluster, parameters, run_id=run_id,
                          project=Path.cwd().resolve(), key=trust, trigger=trigger)
    if trigger["type"] != "manual":
        echo(f"  triggered by the webhook {trigger.get('source')!r}: " + ", ".join(
            f"{e['id']} = {e['boundArtifact'].get('reference')}"
            for e in trigger["resolvedExpectedArtifacts"]))
    if servers == "image":
        cluster.runner = server_runner(rehearsal, workdir)
    services = _services(stages)
    load: Load | None = None
    echo(f"rehearsing {name} ({path}), execution {run_id}")
    monitor = None
    try:
        if any(s["type"] == "kayentaCanary" for s in stages):
            from nbship.monitoring import stack
            from nbship.spinnaker.local_cluster import free_port

            monitor = stack.up(workdir / "monitor", prometheus_port=free_port(),
                               alertmanager_port=free_port(), scrape_interval="1s")
            rehearsal.prometheus = monitor.prometheus
            echo(f"  Prometheus {monitor.prometheus} scrapes the servers (canary analysis)")
        if options.stable:
            if not services:
                raise RehearsalError(f"--stable: {path} deploys no InferenceService")
            echo(f"  production before the rehearsal: {options.stable}")
            for svc, namespace in services:
                cluster.serve(svc, options.stable, namespace, _predictor(stages, svc))
        if services and options.traffic > 0:
            from nbship.release.model import load_model

            inputs_from = options.stable or next(
                (v for v in parameters.values() if "/models/" in v), None)
            inputs = load_model(inputs_from).reference_inputs if inputs_from else None
            if inputs is not None:
                load = Load(cluster, inputs, options.traffic)
                load.start()
                echo(f"  sending {options.traffic:g} requests/s to "
                     f"{', '.join(s for s, _ in services)} throughout")
        begun = time.monotonic()
        execution = rehearsal.run()
        cluster.settle()  # deploys return at once (as for custom resources); rollouts end
        execution["seconds"] = round(time.monotonic() - begun, 3)
    finally:
        traffic = load.stop() if load else None
        final = cluster.state()
        cluster.close()
        if monitor is not None:
            from nbship.monitoring import stack

            stack.down(workdir / "monitor")
    refs = {k: v for k, v in parameters.items() if "/" in v and ("@" in v or ":" in v)}
    for e in trigger["resolvedExpectedArtifacts"]:  # what the trigger's artifacts bound
        bound = str(e["boundArtifact"].get("reference") or "")
        if e["boundArtifact"].get("type") == "docker/image" and "/" in bound:
            refs.setdefault(str(e.get("displayName") or e["id"]), bound)
    if options.stable:
        refs["stable"] = options.stable
    record: dict[str, Any] = {
        "schema": SCHEMA, "id": run_id,
        "pipeline": {"name": name, "application": doc.get("application"),
                     "file": str(path), "sha256": sha256_file(path)},
        "parameters": parameters,
        "trigger": {k: trigger.get(k) for k in ("type", "source", "payload",
                                                "resolvedExpectedArtifacts")},
        "options": {"judge": options.judge, "time_scale": options.time_scale,
                    "jobs": options.jobs, "servers": servers, "key_release": trust.release,
                    "stable": options.stable, "traffic": options.traffic,
                    "kfp_host": options.kfp_host},
        **execution,
        "traffic": traffic, "cluster": {"events": cluster.events, "final": final},
        "provenance": {k: provenance(v) for k, v in sorted(refs.items())},
    }
    out = options.root / "executions" / _safe(name) / f"{run_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record, out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] or "pipeline"


def history(root: Path = Path(".nbship/deploy"), pipeline: str | None = None
            ) -> list[dict[str, Any]]:
    """The execution records, oldest first (unreadable ones are left out)."""
    folder = root / "executions"
    files = sorted((folder / _safe(pipeline)).glob("*.json") if pipeline
                   else folder.glob("*/*.json"))
    out = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
            out.append({**doc, "_file": str(f)})
    return sorted(out, key=lambda d: (str(d.get("started_at")), str(d.get("id"))))


def summary(record: dict[str, Any]) -> list[str]:
    """An execution record, as a person reads it."""
    lines = [f"execution {record['id']}: {record['pipeline']['name']} {record['status']} in "
             f"{record['seconds']:.1f} s" + (f" ({record['message']})" if record.get("message")
                                             else "")]
    waited = sum(s.get("seconds", 0) for s in record["stages"] if s.get("waiting"))
    lines.append(f"  {'stage':<44} {'status':<16} {'seconds':>8}")
    for s in record["stages"]:
        title = f"{s['refId']} {s['name']}"[:44]
        lines.append(f"  {title:<44} {s['status']:<16} {s.get('seconds', 0):>8.2f}"
                     + ("  (waiting)" if s.get("waiting") else "")
                     + (f"  judged {s['decision']}" if s.get("decision") else ""))
    lines.append(f"  waiting: {waited:.1f} s of {record['seconds']:.1f} s")
    traffic = record.get("traffic")
    if traffic:
        lines.append(f"  traffic: {traffic['sent']} requests sent during the rehearsal, "
                     f"{traffic['failed']} failed")
    for service, state in (record.get("cluster", {}).get("final") or {}).items():
        lines.append(f"  {service} serves {state['stable']}"
                     + (f" (canary {state['canary']} at {state['canary_percent']} %)"
                        if state.get("canary") else ""))
    return lines
