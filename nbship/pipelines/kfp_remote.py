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
``--sa-token``), or a kubeconfig context (``--kube-context``). Credentials go only to the
origin (scheme, host, port) of ``--host``: a redirect elsewhere is followed without them.
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
SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
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


def _error(exc: Exception, host: str, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> KfpError:
    phase = _timed_out(exc)
    if phase is not None:
        seconds = timeouts.connect if phase == "connect" else timeouts.read
        verb = "connect" if phase == "connect" else "answer"
        return KfpError(f"the KFP API at {host} did not {verb} within {seconds:g} s "
                        f"({phase} timeout)",
                        hint=f"is --host right and the API up? --{phase}-timeout SECONDS "
                        "waits longer")
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
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

    host: str
    auth: Auth = Auth()
    echo: Callable[[str], None] = print
    timeouts: Timeouts = DEFAULT_TIMEOUTS

    def __post_init__(self) -> None:
        import warnings

        from kfp import client as kfp_client

        timeouts = self.timeouts

        class Client(kfp_client.Client):  # type: ignore[misc]
            def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
                """Once, bounded (kfp's own tries five times, 5 s apart, unbounded): the
                probe before has seen the API answer."""
                _bound(self._healthz_api.api_client.rest_client, timeouts)
                return self._healthz_api.healthz_service_get_healthz()

        credentials = None
        sa = self.auth.sa_token or (Path(os.environ[SA_TOKEN_ENV])
                                    if os.environ.get(SA_TOKEN_ENV) else None)
        if sa is not None and not self.auth.token:
            credentials = kfp_client.ServiceAccountTokenVolumeCredentials(path=str(sa))
        token = self.auth.token or os.environ.get(TOKEN_ENV) or None
        if self.auth.kube_context is None:
            bearer = token or (sa.read_text().strip() if sa is not None and sa.is_file()
                               else None)
            self._probe(bearer)
        try:
            with warnings.catch_warnings(), self._quiet():
                warnings.simplefilter("ignore")
                self.kfp = Client(host=self.host, existing_token=token,
                                  credentials=credentials, kube_context=self.auth.kube_context)
        except Exception as exc:  # kfp_server_api's ApiException, urllib3's errors
            raise _error(exc, self.host, self.timeouts) from None
        _bound(self.kfp._healthz_api.api_client.rest_client, self.timeouts)

    def _probe(self, bearer: str | None) -> None:
        """One healthz call before kfp.Client's own, which retries five times, logs
        tracebacks and then reports a timeout, whatever the API answered."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"{self.host.rstrip('/')}/apis/v2beta1/healthz",
                                     headers={"Authorization": f"Bearer {bearer}"}
                                     if bearer else {})
        try:
            with open_url(req, self.timeouts):
                return
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
            raise _error(exc, self.host, self.timeouts) from None

    def upload(self, rel: Release) -> tuple[str, str, bool]:
        """(pipeline id, version id, created now) for the release's pipeline version."""
        pipeline_id = self._call(lambda: self.kfp.get_pipeline_id(rel.name))
        if pipeline_id is None:
            made = self._call(lambda: self.kfp.upload_pipeline(
                str(rel.yaml), pipeline_name=rel.name,
                description=f"nbship pipeline {rel.name} (notebook releases)"))
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
        return str(self._call(lambda: self.kfp.create_experiment(name)).experiment_id)

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
        found = self._call(lambda: self.kfp.list_recurring_runs(
            experiment_id=experiment_id, page_size=100))
        return [r for r in (found.recurring_runs or []) if r.display_name == name]

    def schedule(self, rel: Release, experiment: str, cron: str, parameters: dict[str, Any],
                 *, max_concurrency: int = 1, catchup: bool = False) -> tuple[str, list[str]]:
        """(new recurring run id, ids of the schedules it replaced)."""
        pipeline_id, version_id, _ = self.upload(rel)
        experiment_id = self.experiment(experiment)
        name = f"{rel.name}-schedule"
        previous = [r.recurring_run_id for r in self.schedules(experiment_id, name)
                    if r.status == "ENABLED"]
        for rid in previous:  # never two enabled: the old ones stop first
            self._call(functools.partial(self.kfp.disable_recurring_run, rid))
        try:
            made = self._call(lambda: self.kfp.create_recurring_run(
                experiment_id=experiment_id, job_name=name, cron_expression=cron,
                max_concurrency=max_concurrency, no_catchup=not catchup, params=parameters,
                pipeline_id=pipeline_id, version_id=version_id, enabled=True,
                description=f"release {rel.reference}"))
        except KfpError:
            for rid in previous:  # put back what was running
                self._call(functools.partial(self.kfp.enable_recurring_run, rid))
            raise
        return str(made.recurring_run_id), previous

    def disable(self, name: str, experiment: str) -> list[str]:
        experiment_id = self.experiment(experiment)
        enabled = [r.recurring_run_id for r in self.schedules(experiment_id, f"{name}-schedule")
                   if r.status == "ENABLED"]
        for rid in enabled:
            self._call(functools.partial(self.kfp.disable_recurring_run, rid))
        return enabled

    def status(self, name: str, experiment: str) -> dict[str, Any]:
        pipeline_id = self._call(lambda: self.kfp.get_pipeline_id(name))
        versions = []
        if pipeline_id:
            found = self._call(lambda: self.kfp.list_pipeline_versions(
                pipeline_id=pipeline_id, page_size=20, sort_by="created_at desc"))
            versions = [v.display_name for v in (found.pipeline_versions or [])]
        experiment_id = self.experiment(experiment)
        schedules = [{"id": r.recurring_run_id, "status": r.status,
                      "cron": r.trigger.cron_schedule.cron if r.trigger and
                      r.trigger.cron_schedule else None,
                      "version": r.pipeline_version_reference.pipeline_version_id
                      if r.pipeline_version_reference else None}
                     for r in self.schedules(experiment_id, f"{name}-schedule")]
        runs = self._call(lambda: self.kfp.list_runs(experiment_id=experiment_id,
                                                      page_size=10, sort_by="created_at desc"))
        return {"pipeline_id": pipeline_id, "versions": versions, "schedules": schedules,
                "runs": [{"id": r.run_id, "name": r.display_name, "state": r.state}
                         for r in (runs.runs or [])]}


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
