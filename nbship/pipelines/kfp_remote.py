"""A release's pipeline on a Kubeflow Pipelines cluster, over ``kfp.Client`` (KFP's v2beta1 API).

* **upload**: the release's pipeline.yaml (pulled by digest, checked against the
  sha256 its release.json records) becomes a pipeline version named from the
  release: ``<name>-<commit[:8]>-<digest[:12]>``, under the pipeline ``<name>``.
  Uploading the same release again finds that version and creates nothing.
* **run**: a run of that version in an experiment (default: the pipeline's name),
  with parameters; waits, printing each state change.
* **schedule**: a recurring run (6-field cron, max concurrency, catch-up off unless
  asked) named ``<name>-schedule``; the release's previous enabled schedules are
  disabled first (re-enabled if the new one cannot be made), so two are never
  enabled at once.
* **status**, **disable**.

Every id a command creates is also printed as ``SPINNAKER_PROPERTY_<name>=<value>``,
which a Spinnaker Run Job stage passes on to later stages.

Auth as KFP users have it: none, a bearer token (``--token`` or
``KFP_TOKEN``), the in-cluster service-account token (``KF_PIPELINES_SA_TOKEN_PATH``,
``--sa-token``), a gateway's session cookie (``--cookies``, ``KFP_COOKIES``, or the
``client_authentication_cookie`` of kfp's ``~/.config/kfp/context.json``, as
``kfp.Client(cookies=)`` takes it), or a kubeconfig context (``--kube-context``, instead
of ``--host``: kfp.Client's own path, the context's API server and its service proxy).
Credentials go only to the origin (scheme, host, port) of the API: a redirect elsewhere is
followed without them.

Multi-user KFP (healthz ``multi_user``) keeps experiments, runs and recurring runs in a
profile's namespace and refuses an empty one (kubeflow/pipelines:
backend/src/apiserver/server/experiment_server.go ``canAccessExperiment``, run_server.go,
job_server.go ``createJob``/``canAccessJob``, resource/resource_manager.go
``GetValidExperimentNamespacePair``). The namespace is ``--namespace``, else
``[tool.nbship.kfp] namespace`` in ./pyproject.toml, else what kfp.Client itself finds (the
``namespace`` of its context file; in a pod of a multi-user cluster, the pod's own); with
none on a multi-user API, nbship stops before any call. Pipelines are uploaded into that
namespace (private to the profile, not shared), experiments are made and looked up there,
and recurring runs name it.
Every call has a connect and a read timeout (``--connect-timeout``, ``--read-timeout``;
10 s and 60 s): an API that does not answer is an error naming the host and the timeout.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbship.errors import NbshipError
from nbship.files import sha256_file
from nbship.jsonhttp import TimedOut, Timeouts, open_url

TOKEN_ENV = "KFP_TOKEN"
COOKIE_ENV = "KFP_COOKIES"
SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
# kfp.Client's Client._KUBE_PROXY_PATH, for the deployment's namespace "kubeflow"
KUBE_PROXY = "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/"
DEFAULT_TIMEOUTS = Timeouts()  # 10 s to connect, 60 s to answer
FINAL = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELING"})


class KfpError(NbshipError):
    """The KFP API refused a request or cannot be reached."""

    exit_code = 1


@dataclass(frozen=True)
class Auth:
    token: str | None = None
    sa_token: Path | None = None
    kube_context: str | None = None
    cookies: str | None = None  # "NAME=VALUE[; NAME=VALUE]", a gateway's session


def configured_namespace(pyproject: Path) -> str | None:
    """``namespace`` of the ``[tool.nbship.kfp]`` table of ``pyproject`` (None without)."""
    import tomllib

    from nbship.errors import UnusableInputError

    if not pyproject.is_file():
        return None
    try:
        doc = tomllib.loads(pyproject.read_text())
    except (OSError, ValueError) as exc:
        raise UnusableInputError(f"{pyproject}: {exc}") from None
    table = doc.get("tool", {}).get("nbship", {}).get("kfp")
    if table is None:
        return None
    unknown = sorted(set(table) - {"namespace"}) if isinstance(table, dict) else ["?"]
    if unknown:
        raise UnusableInputError(f"{pyproject}: [tool.nbship.kfp] has unknown keys "
                                 f"{', '.join(unknown)}", hint='namespace = "PROFILE"')
    value = table.get("namespace")
    if value is not None and (not isinstance(value, str) or not value):
        raise UnusableInputError(f"{pyproject}: [tool.nbship.kfp] namespace is a "
                                 "non-empty string")
    return value


def _kfp_context() -> dict[str, Any]:
    """kfp.Client's context file (``~/.config/kfp/context.json``), or {}."""
    path = Path(os.path.expanduser("~/.config/kfp/context.json"))
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _kube_server(context: str) -> str:
    """The API server of kubeconfig context ``context`` (KfpError if there is none)."""
    from kubernetes import config as kube_config

    try:  # kfp.Client tries the in-cluster configuration first and then takes no kubeconfig
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        pass
    else:
        raise KfpError(f"--kube-context {context}: in a pod, kfp.Client takes the in-cluster "
                       "service, not a kubeconfig", hint="--host with the API's address")
    try:
        contexts, _ = kube_config.list_kube_config_contexts()
        found = next((c for c in contexts if c.get("name") == context), None)
        if found is None:
            raise KfpError(f"--kube-context {context}: no such context in the kubeconfig "
                           f"({', '.join(c.get('name', '?') for c in contexts)})")
        from kubernetes import client as kube_client

        configuration = kube_client.Configuration()
        kube_config.load_kube_config(context=context, client_configuration=configuration,
                                     persist_config=False)
    except KfpError:
        raise
    except Exception as exc:  # noqa: BLE001 - ConfigException, a missing or bad file
        raise KfpError(f"--kube-context {context}: {exc}",
                       hint="$KUBECONFIG or ~/.kube/config") from None
    return str(configuration.host)


@dataclass(frozen=True)
class Release:
    name: str
    commit: str
    digest: str
    reference: str
    yaml: Path  # the pipeline, pulled and checked
    notebook: dict[str, str]  # path and sha256 of the notebook it was built from

    @property
    def version_name(self) -> str:
        return f"{self.name}-{self.commit[:8]}-{self.digest.removeprefix('sha256:')[:12]}"


def pull_release(reference: str, folder: Path) -> Release:
    """release.json and pipeline.yaml of a published release, the YAML's sha256 checked."""
    from nbship.errors import ReleaseError
    from nbship.release import oci
    from nbship.release.publish import show

    try:
        record, digest, layers = show(reference)
        ref = oci.Reference.parse(reference)
        layer = next((x for x in layers if x.get("annotations", {}).get(
            "org.opencontainers.image.title") == record["pipeline"]["file"]), None)
        if layer is None:
            raise KfpError(f"{reference} has no {record['pipeline']['file']}")
        path = folder / "pipeline.yaml"
        path.write_bytes(oci.get_blob(ref, layer["digest"]))
    except ReleaseError as exc:
        raise KfpError(exc.message, hint=exc.hint) from None
    if sha256_file(path) != record["pipeline"]["sha256"]:
        raise KfpError(f"{reference}: pipeline.yaml does not match the sha256 in release.json")
    return Release(str(record["name"]), str(record["commit"]), digest,
                   f"{ref.registry}/{ref.repository}@{digest}", path,
                   {"path": str(record["notebook"]["path"]),
                    "sha256": str(record["notebook"]["sha256"])})


@contextlib.contextmanager
def release(reference: str) -> Iterator[Release]:
    with tempfile.TemporaryDirectory(prefix="nbship-kfp-") as tmp:
        yield pull_release(reference, Path(tmp))


def _timed_out(exc: BaseException) -> str | None:
    """"connect" or "read" when ``exc`` (or what it wraps: urllib3's MaxRetryError keeps
    the timeout in ``reason``) is a timeout."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        if name == "ConnectTimeoutError" or isinstance(current, TimedOut) and \
                current.phase == "connect":
            return "connect"
        if name == "ReadTimeoutError" or isinstance(current, (TimedOut, TimeoutError)):
            return "read"
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else current.__context__
    return None


def _error(exc: Exception, host: str, timeouts: Timeouts = DEFAULT_TIMEOUTS,
           namespace: str = "") -> KfpError:
    phase = _timed_out(exc)
    if phase is not None:
        seconds = timeouts.connect if phase == "connect" else timeouts.read
        verb = "connect" if phase == "connect" else "answer"
        return KfpError(f"the KFP API at {host} did not {verb} within {seconds:g} s "
                        f"({phase} timeout)",
                        hint=f"is --host right and the API up? --{phase}-timeout SECONDS "
                        "waits longer")
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if status == 403 and namespace:  # multi-user: the SubjectAccessReview said no
        return KfpError(f"the KFP API at {host} refused access to namespace {namespace} "
                        "(HTTP 403)",
                        hint=f"is {namespace} a profile you are a contributor of? "
                        "--namespace (or [tool.nbship.kfp] namespace) names yours")
    if status in (401, 403):
        return KfpError(f"the KFP API at {host} refused the credentials (HTTP {status})",
                        hint=f"--token (or ${TOKEN_ENV}), --sa-token in a pod, or "
                        "--kube-context; check the token has not expired")
    if status is not None:
        body = getattr(exc, "body", "") or ""
        if not body and hasattr(exc, "read"):
            body = exc.read().decode(errors="replace")
        return KfpError(f"the KFP API at {host} answered HTTP {status}: "
                        f"{str(body).strip()[:300]}")
    return KfpError(f"the KFP API at {host} cannot be reached: {exc}",
                    hint="is --host right (http://HOST:PORT of ml-pipeline-ui or the API)?")


@dataclass
class Remote:
    """One KFP API endpoint and the calls nbship makes there."""

    host: str  # "" with auth.kube_context: the context's API server proxy
    auth: Auth = Auth()
    echo: Callable[[str], None] = print
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    namespace: str = ""  # asked for (--namespace, [tool.nbship.kfp]); then the one used
    multi_user: bool = False

    def __post_init__(self) -> None:
        import warnings

        from kfp import client as kfp_client

        timeouts = self.timeouts
        context = _kfp_context()
        wanted = self.namespace
        kube = self.auth.kube_context
        server = _kube_server(kube) if kube else ""
        # kfp.Client's address through the API server's service proxy (one slash before
        # "apis": kfp joins "proxy/" and "/apis/...")
        proxy = f"{server.rstrip('/')}{KUBE_PROXY}".rstrip("/") if kube else ""

        class Client(kfp_client.Client):  # type: ignore[misc]
            def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
                """Once, bounded (kfp's own tries five times, 5 s apart, unbounded): the
                probe before has seen the API answer."""
                _bound(self._healthz_api.api_client.rest_client, timeouts)
                if proxy:  # kfp.Client's own call in its constructor, too
                    _keep_host(self._existing_config, proxy)
                return self._healthz_api.healthz_service_get_healthz()

            def _load_context_setting_or_default(self) -> None:
                """kfp's context file, with the namespace asked for: kfp.Client takes its
                ``namespace`` argument only when it is not "kubeflow", and builds the kube
                proxy's path from the same argument."""
                super()._load_context_setting_or_default()
                if wanted:
                    self._context_setting["namespace"] = wanted

            def set_user_namespace(self, namespace: str) -> None:
                """In memory: kfp.Client would write the pod's namespace it found into
                ~/.config/kfp/context.json; nbship changes no file of the user's."""
                self._context_setting["namespace"] = namespace

        credentials = None
        sa = self.auth.sa_token or (Path(os.environ[SA_TOKEN_ENV])
                                    if os.environ.get(SA_TOKEN_ENV) else None)
        if sa is not None and not self.auth.token:
            credentials = kfp_client.ServiceAccountTokenVolumeCredentials(path=str(sa))
        token = self.auth.token or os.environ.get(TOKEN_ENV) or None
        cookies = self.auth.cookies or os.environ.get(COOKIE_ENV) or \
            context.get("client_authentication_cookie") or None
        if kube:
            self.host = proxy
        else:
            bearer = token or (sa.read_text().strip() if sa is not None and sa.is_file()
                               else None)
            extra = context.get("client_authentication_header_name")
            self.multi_user = bool(self._probe(bearer, cookies, (
                str(extra), str(context.get("client_authentication_header_value") or ""))
                if extra else None).get("multi_user"))
        saved = os.environ.pop(ENDPOINT_ENV, None) if kube else None
        try:
            with warnings.catch_warnings(), self._quiet():
                warnings.simplefilter("ignore")
                self.kfp = Client(host=None if kube else self.host, existing_token=token,
                                  credentials=credentials, kube_context=kube,
                                  cookies=cookies)
        except Exception as exc:  # kfp_server_api's ApiException, urllib3's errors
            raise _error(exc, self.host, self.timeouts) from None
        finally:
            if saved is not None:
                os.environ[ENDPOINT_ENV] = saved
        _bound(self.kfp._healthz_api.api_client.rest_client, self.timeouts)
        if kube:
            _keep_host(self.kfp._existing_config, proxy)
            self.multi_user = bool(self._call(self.kfp.get_kfp_healthz).multi_user)
        # what kfp.Client settled on: the one asked for, its context file's, or (multi-user,
        # in a pod) the pod's namespace
        self.namespace = str(self.kfp.get_user_namespace() or "")
        if self.multi_user and not self.namespace:
            raise KfpError(f"the KFP API at {self.host} is multi-user: experiments, runs and "
                           "recurring runs live in a profile's namespace, and none was named",
                           hint='--namespace PROFILE, or [tool.nbship.kfp] namespace = '
                           '"PROFILE" in pyproject.toml')

    def _probe(self, bearer: str | None, cookies: str | None = None,
               header: tuple[str, str] | None = None) -> dict[str, Any]:
        """One healthz call before kfp.Client's own, which retries five times, logs
        tracebacks and then reports a timeout, whatever the API answered. Its answer
        (``multi_user``)."""
        import urllib.error
        import urllib.request

        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        if cookies:
            headers["Cookie"] = cookies
        if header:
            headers[header[0]] = header[1]
        req = urllib.request.Request(f"{self.host.rstrip('/')}/apis/v2beta1/healthz",
                                     headers=headers)
        try:
            with open_url(req, self.timeouts) as reply:
                try:
                    doc = json.loads(reply.read(1 << 20) or b"{}")
                except ValueError:
                    doc = {}
                return doc if isinstance(doc, dict) else {}
        except urllib.error.HTTPError as exc:
            raise _error(exc, self.host, self.timeouts) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _error(exc, self.host, self.timeouts) from None

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """kfp.Client prints links to stdout and logs retries; nbship says what it did."""
        import logging

        logging.disable(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logging.disable(logging.NOTSET)

    def _call(self, what: Callable[[], Any]) -> Any:
        try:
            with self._quiet():
                return what()
        except KfpError:
            raise
        except Exception as exc:  # noqa: BLE001 - ApiException, urllib3 and ValueError
            if isinstance(exc, ValueError) and getattr(exc, "status", None) is None:
                raise KfpError(f"the KFP API at {self.host}: {exc}") from None
            raise _error(exc, self.host, self.timeouts, self.namespace) from None

    def _pipeline_id(self, name: str) -> str | None:
        """The pipeline ``name`` in the namespace (multi-user: private to the profile; in
        kfp.Client, ``get_pipeline_id`` looks only at shared pipelines)."""
        flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                          "stringValue": name}]})
        found = self._call(lambda: self.kfp.list_pipelines(
            filter=flt, page_size=10, namespace=self.namespace or None))
        named = [p for p in (found.pipelines or []) if p.display_name == name]
        if len(named) > 1:
            raise KfpError(f"the KFP API at {self.host} has {len(named)} pipelines named "
                           f"{name}")
        return str(named[0].pipeline_id) if named else None

    def upload(self, rel: Release) -> tuple[str, str, bool]:
        """(pipeline id, version id, created now) for the release's pipeline version."""
        pipeline_id = self._pipeline_id(rel.name)
        if pipeline_id is None:
            made = self._call(lambda: self.kfp.upload_pipeline(
                str(rel.yaml), pipeline_name=rel.name,
                description=f"nbship pipeline {rel.name} (notebook releases)",
                namespace=self.namespace or None))
            pipeline_id = made.pipeline_id
        version = self._version(pipeline_id, rel.version_name)
        if version is not None:
            return pipeline_id, version, False
        made = self._call(lambda: self.kfp.upload_pipeline_version(
            str(rel.yaml), pipeline_version_name=rel.version_name, pipeline_id=pipeline_id,
            description=f"release {rel.reference} (commit {rel.commit})"))
        return pipeline_id, made.pipeline_version_id, True

    def _version(self, pipeline_id: str, name: str) -> str | None:
        flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                          "stringValue": name}]})
        found = self._call(lambda: self.kfp.list_pipeline_versions(
            pipeline_id=pipeline_id, filter=flt, page_size=10))
        versions = [v for v in (found.pipeline_versions or []) if v.display_name == name]
        return versions[0].pipeline_version_id if versions else None

    def experiment(self, name: str) -> str:
        """The experiment ``name`` in the namespace, made if missing."""
        found = self.find_experiment(name)
        if found is not None:
            return found
        return str(self._call(lambda: self.kfp.create_experiment(
            name, namespace=self.namespace or None)).experiment_id)

    def find_experiment(self, name: str) -> str | None:
        """The experiment ``name`` in the namespace, or None: nothing is made."""
        flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                          "stringValue": name}]})
        found = self._call(lambda: self.kfp.list_experiments(
            filter=flt, page_size=10, namespace=self.namespace or None))
        named = [e for e in (found.experiments or []) if e.display_name == name]
        return str(named[0].experiment_id) if named else None

    def run(self, rel: Release, experiment: str, parameters: dict[str, Any], *,
            wait: bool = True, timeout: float = 3600) -> tuple[str, str]:
        """(run id, final or current state)."""
        pipeline_id, version_id, _ = self.upload(rel)
        experiment_id = self.experiment(experiment)
        made = self._call(lambda: self.kfp.run_pipeline(
            experiment_id=experiment_id, job_name=f"{rel.version_name}-{int(time.time())}",
            params=parameters, pipeline_id=pipeline_id, version_id=version_id))
        run_id = str(made.run_id)
        state = str(made.state or "PENDING")
        self.echo(f"run {run_id}: {state}")
        deadline = time.monotonic() + timeout
        while wait and state not in FINAL:
            if time.monotonic() > deadline:
                raise KfpError(f"run {run_id} is still {state} after {timeout:g} s",
                               hint="nbship kfp status shows it later")
            time.sleep(1.0)
            now = str(self._call(lambda: self.kfp.get_run(run_id)).state)
            if now != state:
                state = now
                self.echo(f"run {run_id}: {state}")
        return run_id, state

    def schedules(self, experiment_id: str, name: str) -> list[Any]:
        """The experiment's recurring runs named ``name``, every page of them (KFP answers
        at most 200 a page, list.go, and says where to go on in ``next_page_token``)."""
        found: list[Any] = []
        token = ""
        for _ in range(10_000):
            page = self._call(functools.partial(
                self.kfp.list_recurring_runs, experiment_id=experiment_id, page_size=100,
                page_token=token))
            found += [r for r in (page.recurring_runs or []) if r.display_name == name]
            token = page.next_page_token or ""
            if not token:
                return found
        raise KfpError(f"the KFP API at {self.host} did not stop paging recurring runs")

    def schedule(self, rel: Release, experiment: str, cron: str, parameters: dict[str, Any],
                 *, max_concurrency: int = 1, catchup: bool = False) -> tuple[str, list[str]]:
        """(new recurring run id, ids of the schedules it replaced). The pipeline's
        previous schedules (``<name>-schedule`` in the experiment, enabled or not) are
        disabled before the new one is made, re-enabled if that fails, and deleted once it
        is made: one schedule per pipeline."""
        import kfp_server_api as api

        pipeline_id, version_id, _ = self.upload(rel)
        experiment_id = self.experiment(experiment)
        name = f"{rel.name}-schedule"
        previous = self.schedules(experiment_id, name)
        enabled = [r.recurring_run_id for r in previous if r.status == "ENABLED"]
        for rid in enabled:  # never two enabled: the old ones stop first
            self._call(functools.partial(self.kfp.disable_recurring_run, rid))
        body = api.V2beta1RecurringRun(
            display_name=name, description=f"release {rel.reference}",
            experiment_id=experiment_id, namespace=self.namespace or None,
            pipeline_version_reference=api.V2beta1PipelineVersionReference(
                pipeline_id=pipeline_id, pipeline_version_id=version_id),
            runtime_config=api.V2beta1RuntimeConfig(parameters=parameters),
            trigger=api.V2beta1Trigger(cron_schedule=api.V2beta1CronSchedule(cron=cron)),
            max_concurrency=max_concurrency, no_catchup=not catchup,
            mode=api.RecurringRunMode.ENABLE)
        try:
            made = self._call(lambda: self.kfp._recurring_run_api.
                              recurring_run_service_create_recurring_run(recurring_run=body))
        except KfpError:
            for rid in enabled:  # put back what was running
                self._call(functools.partial(self.kfp.enable_recurring_run, rid))
            raise
        replaced = [str(r.recurring_run_id) for r in previous]
        for rid in replaced:
            try:
                self._call(functools.partial(self.kfp.delete_recurring_run, rid))
            except KfpError as exc:
                self.echo(f"the replaced recurring run {rid} stays, disabled: {exc.message}")
            else:
                self.echo(f"deleted the replaced recurring run {rid}")
        return str(made.recurring_run_id), replaced

    def disable(self, name: str, experiment: str) -> list[str]:
        experiment_id = self.find_experiment(experiment)
        if experiment_id is None:  # nothing to disable; nothing made
            return []
        enabled = [r.recurring_run_id for r in self.schedules(experiment_id, f"{name}-schedule")
                   if r.status == "ENABLED"]
        for rid in enabled:
            self._call(functools.partial(self.kfp.disable_recurring_run, rid))
        return enabled

    def status(self, name: str, experiment: str) -> dict[str, Any]:
        pipeline_id = self._pipeline_id(name)
        versions = []
        if pipeline_id:
            found = self._call(lambda: self.kfp.list_pipeline_versions(
                pipeline_id=pipeline_id, page_size=20, sort_by="created_at desc"))
            versions = [v.display_name for v in (found.pipeline_versions or [])]
        experiment_id = self.find_experiment(experiment)
        if experiment_id is None:  # no experiment: no schedules, no runs; nothing made
            return {"pipeline_id": pipeline_id, "versions": versions, "schedules": [],
                    "runs": [], "namespace": self.namespace}
        schedules = [{"id": r.recurring_run_id, "status": r.status,
                      "cron": r.trigger.cron_schedule.cron if r.trigger and
                      r.trigger.cron_schedule else None,
                      "version": r.pipeline_version_reference.pipeline_version_id
                      if r.pipeline_version_reference else None}
                     for r in self.schedules(experiment_id, f"{name}-schedule")]
        runs = self._call(lambda: self.kfp.list_runs(experiment_id=experiment_id,
                                                      page_size=10, sort_by="created_at desc"))
        return {"pipeline_id": pipeline_id, "versions": versions, "schedules": schedules,
                "namespace": self.namespace,
                "runs": [{"id": r.run_id, "name": r.display_name, "state": r.state}
                         for r in (runs.runs or [])]}


def _keep_host(config: Any, host: str) -> None:
    """Keep kfp.Client's kube proxy address: a kubeconfig user with a token leaves the
    kubernetes client's ``refresh_api_key_hook`` on the configuration, which kfp-server-api
    calls before every request and which sets ``host`` back to the bare API server
    (kubernetes/config/kube_config.py ``_set_config``), so every call after kfp.Client's
    construction would miss the service proxy's path (and puts itself back as the hook)."""
    config.host = host
    hook = getattr(config, "refresh_api_key_hook", None)
    if hook is None or getattr(hook, "_nbship_host", None) == host:
        return

    def refresh(configuration: Any) -> None:
        hook(configuration)
        configuration.host = host
        configuration.refresh_api_key_hook = refresh

    refresh._nbship_host = host  # type: ignore[attr-defined]
    config.refresh_api_key_hook = refresh


def _bound(rest_client: Any, timeouts: Timeouts) -> None:
    """Give every request of kfp-server-api's REST client ``timeouts`` (it passes
    ``timeout=None``, no timeout at all, unless a call names one) and retries that do not
    repeat a request the API did not answer; its urllib3 follows redirects and drops
    Authorization and Cookie on a redirect to another scheme, host or port."""
    import urllib3

    pool = rest_client.pool_manager
    if getattr(pool, "_nbship_bound", False):
        return
    request = pool.request
    retries = urllib3.Retry(total=8, connect=2, read=0, other=0, status=0, redirect=5,
                            remove_headers_on_redirect=["Authorization", "Cookie",
                                                        "Proxy-Authorization"])

    def bounded(method: str, url: str, *args: Any, **kw: Any) -> Any:
        if kw.get("timeout") is None:
            kw["timeout"] = urllib3.Timeout(connect=timeouts.connect, read=timeouts.read)
        kw.setdefault("retries", retries)
        return request(method, url, *args, **kw)

    pool.request = bounded
    pool._nbship_bound = True


def spinnaker(**properties: str) -> list[str]:
    """``SPINNAKER_PROPERTY_<name>=<value>`` lines (Spinnaker's Run Job output format)."""
    return [f"SPINNAKER_PROPERTY_{k}={v}" for k, v in properties.items()]
