"""InferenceServices on 127.0.0.1, with KServe's canary semantics: what a rehearsal's
``deployManifest`` and ``patchManifest`` stages act on.

Each InferenceService is a :class:`~nbship.serving.router.Router` (its predictor's
address) in front of at most two revisions, each a real model server (``nbship serve
MODEL_REF``, KServe's ModelServer) started by this process:

* the first deploy of a name: one revision; it takes all traffic once it is ready;
* a deploy with ``canaryTrafficPercent: P`` over a ready revision: the new one is the
  *canary* (KServe's ``latest``) and gets P % once ready; the old one (``prev``) keeps
  the rest;
* a deploy without it: the new revision takes all traffic once ready, and the old one is
  drained and stopped (KServe's rollout);
* a patch of ``canaryTrafficPercent`` moves the split at once; 100 promotes the canary
  (the old revision is drained and stopped), 0 sends everything back to the stable one
  (the canary is drained and stopped: on a cluster its revision stays, scaled to zero).

Traffic only ever goes to a revision that answers ready (as Knative routes only to ready
revisions), and a revision is stopped only after its last request answered: moving
traffic fails no request. Every process is ours (a Popen we hold) and is stopped by
:meth:`Cluster.close`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.errors import NbshipError
from nbship.serving.router import Router


class ClusterError(NbshipError):
    """A manifest or a patch the local cluster cannot apply."""

    exit_code = 1


def free_port() -> int:
    from nbship.serving.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


@dataclass
class Revision:
    model: str  # the model release it serves (by digest)
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    ready: bool = False
    stopped: bool = False
    container: contextlib.ExitStack | None = None  # its image's container, removed after

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Service:
    """One InferenceService: its router and revisions."""

    name: str
    namespace: str
    router: Router
    stable: Revision | None = None
    canary: Revision | None = None
    percent: int | None = None  # canaryTrafficPercent; None: no canary split

    def summary(self) -> dict[str, Any]:
        return {"stable": self.stable.model if self.stable else None,
                "canary": self.canary.model if self.canary else None,
                "canary_percent": self.percent if self.canary else None}


@dataclass
class Cluster:
    root: Path  # server logs and the monitor folder go here
    echo: Callable[[str], None] = print
    ready_timeout: float = 300
    services: dict[str, Service] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # the traffic's story
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _started: float = field(default_factory=time.monotonic)
    _pending: list[threading.Thread] = field(default_factory=list)
    # the predictor container -> the command prefix that runs in its image (a message
    # when it cannot): model servers run from the InferenceService's image, as KServe
    # runs them; None: from this venv (--servers venv)
    runner: Callable[[dict[str, Any]], AbstractContextManager[list[str] | str]] | None = None

    # --- what the stages do ------------------------------------------------------------

    def serve(self, name: str, model: str, namespace: str = "default",
              container: dict[str, Any] | None = None) -> Service:
        """What is in production before the rehearsal starts: ``model`` serving ``name``
        (waits until it is ready), in ``container``'s image when given."""
        self.apply_isvc({"metadata": {"name": name, "namespace": namespace},
                         "spec": {"predictor": {"containers": [
                             {**(container or {}), "args": [model]}]}}})
        self.settle()
        service = self.services[name]
        if service.stable is None or not service.stable.ready:
            raise ClusterError(f"the stable server of {name} ({model}) did not get ready",
                               hint=f"see {self.root}")
        return service

    def apply_isvc(self, doc: dict[str, Any]) -> None:
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        name = str(meta.get("name") or "")
        predictor = spec.get("predictor") or {}
        containers = predictor.get("containers") or []
        args = containers[0].get("args") if containers and isinstance(containers[0], dict) \
            else None
        if not name or not args:
            raise ClusterError("an InferenceService without metadata.name or a predictor "
                               "container whose args[0] names the model release",
                               hint="render it with nbship deploy render")
        model, percent = str(args[0]), predictor.get("canaryTrafficPercent")
        with self._lock:
            service = self.services.get(name)
            if service is None:
                router = Router()
                router.start()
                service = Service(name, str(meta.get("namespace") or "default"), router)
                self.services[name] = service
            if service.stable is not None and service.stable.model == model \
                    and service.canary is None:
                self._event(name, f"{name}: unchanged ({short(model)})")
                return
            revision = self._start(name, model, containers[0])
            if service.stable is None:
                service.stable, service.percent = revision, None
                self._event(name, f"{name}: first revision {short(model)}")
            elif percent is not None:
                if service.canary is not None:
                    self._retire(service, service.canary)
                service.canary, service.percent = revision, int(percent)
                self._event(name, f"{name}: canary {short(model)} at {percent} % once ready")
            else:
                if service.canary is not None:
                    self._retire(service, service.canary)
                service.canary, service.percent = revision, 100
                self._event(name, f"{name}: rollout of {short(model)}")
        self._watch(service, revision)

    def patch_canary(self, name: str, percent: int) -> None:
        with self._lock:
            service = self.services.get(name)
            if service is None:
                raise ClusterError(f"no InferenceService {name} to patch",
                                   hint="a deployManifest stage deploys it first")
            if service.canary is None:
                if percent not in (0, 100):
                    raise ClusterError(f"{name} has no canary to send {percent} % to")
                self._event(name, f"{name}: canaryTrafficPercent {percent}, no canary: "
                            "nothing moves")
                return
            if percent > 0 and not service.canary.ready:
                raise ClusterError(f"the canary of {name} is not ready: it cannot take "
                                   f"{percent} %", hint="wait for readiness first")
            service.percent = percent
            self._route(service)
            self._event(name, f"{name}: canary {short(service.canary.model)} at {percent} %")
            if percent == 100:
                self._promote(service)
            elif percent == 0:
                self._retire(service, service.canary)

    def settle(self, timeout: float | None = None) -> None:
        """Wait for the revisions still starting (readiness, rollouts)."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        for thread in list(self._pending):
            thread.join(max(0.0, deadline - time.monotonic()))

    def urls(self) -> dict[str, str]:
        """In-cluster addresses (KServe's, serverless with tag routing) -> local ones.
        ``prev-`` only while a canary splits traffic with a revision rolled out before:
        KServe tags the ``prev`` route only then (kserve's pkg/controller/v1beta1/
        inferenceservice/reconcilers/knative/ksvc_reconciler.go), so before the first
        revision was rolled out, the address does not exist."""
        out: dict[str, str] = {}
        with self._lock:
            for s in self.services.values():
                host = f"{s.name}-predictor.{s.namespace}.svc.cluster.local"
                stable = s.stable.url if s.stable else s.router.url
                canary = s.canary.url if s.canary else stable
                out[f"http://{host}"] = s.router.url
                if s.canary is not None and s.stable is not None:
                    out[f"http://prev-{host}"] = stable
                out[f"http://latest-{host}"] = canary
        return out

    def missing(self, url: str) -> str:
        """Why an in-cluster address has no local counterpart."""
        with self._lock:
            for s in self.services.values():
                if url.startswith(f"http://prev-{s.name}-predictor."):
                    return (f"{s.name} has no previous revision, so KServe routes no prev- "
                            "tag (a first delivery has no stable server to judge a canary "
                            "against: render's model-first-delivery pipeline serves it)")
        return "no InferenceService of this rehearsal answers there"

    def entrances(self) -> list[tuple[str, str]]:
        """(name, router URL) of every InferenceService that has served: where its clients
        send requests. A first revision that is not ready yet has no clients (on a cluster
        Knative's activator would hold their requests until it is)."""
        with self._lock:
            return [(s.name, s.router.url) for s in self.services.values()
                    if any(r is not None and r.ready for r in (s.stable, s.canary))]

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {name: s.summary() for name, s in self.services.items()}

    def close(self) -> None:
        with self._lock:
            services = list(self.services.values())
        for service in services:
            for revision in (service.canary, service.stable):
                if revision is not None:
                    _stop(revision)
            service.router.stop()

    # --- inside ------------------------------------------------------------------------

    def _event(self, name: str, text: str) -> None:
        self.events.append({"at": round(time.monotonic() - self._started, 3),
                            "service": name, "what": text,
                            "weights": self.services[name].router.weights()
                            if name in self.services else {}})
        self.echo(f"  [cluster] {text}")

    def _start(self, name: str, model: str, container: dict[str, Any]) -> Revision:
        port = free_port()
        log = self.root / f"{name}-{port}.log"
        self.root.mkdir(parents=True, exist_ok=True)
        argv = ["-m", "nbship", "serve", model, "--port", str(port),
                "--monitor", str((self.root / "monitor").resolve())]
        if self.runner is None:  # --servers venv
            cmd, env = [sys.executable, *argv], {**os.environ, "PYTHONUNBUFFERED": "1",
                                                 "OMP_NUM_THREADS": "1"}
            stack = None
        else:  # the InferenceService's image, as KServe runs its predictor
            stack = contextlib.ExitStack()
            prefix = stack.enter_context(self.runner(container))
            if isinstance(prefix, str):
                stack.close()
                raise ClusterError(f"{name}: the model server cannot start: {prefix}")
            cmd, env = [*prefix, "python", *argv], None
            self.echo(f"  [cluster] {name}: nbship serve {short(model)} in "
                      f"{container.get('image')}")
        try:
            with open(log, "wb") as out:
                process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=env)
        except BaseException:
            if stack is not None:
                stack.close()
            raise
        return Revision(model, port, process, log, container=stack)

    def _watch(self, service: Service, revision: Revision) -> None:
        def wait() -> None:
            from nbship.serving.canary import wait_ready

            ready = False
            deadline = time.monotonic() + self.ready_timeout
            while time.monotonic() < deadline and revision.process.poll() is None:
                if wait_ready(revision.url, service.name, timeout=1):
                    ready = True
                    break
            with self._lock:
                revision.ready = ready
                if not ready:
                    self._event(service.name, f"{service.name}: {short(revision.model)} did "
                                f"not get ready (log {revision.log})")
                    return
                self._route(service)
                self._event(service.name, f"{service.name}: {short(revision.model)} ready")
                if revision is service.canary and service.percent == 100:
                    self._promote(service)  # a rollout: the new revision replaces the old

        thread = threading.Thread(target=wait, name=f"ready-{revision.port}", daemon=True)
        self._pending.append(thread)
        thread.start()

    def _route(self, service: Service) -> None:
        weights: dict[str, int] = {}
        stable, canary = service.stable, service.canary
        share = service.percent if canary is not None and canary.ready else 0
        if stable is not None and stable.ready and (share or 0) < 100:
            weights[stable.url] = 100 - (share or 0)
        if canary is not None and canary.ready and share:
            weights[canary.url] = share
        service.router.route(weights)

    def _promote(self, service: Service) -> None:
        old, service.stable = service.stable, service.canary
        service.canary, service.percent = None, None
        self._route(service)
        if old is not None:
            self._retire(service, old)
        model = service.stable.model if service.stable else ""
        self._event(service.name, f"{service.name}: {short(model)} serves all traffic")

    def _retire(self, service: Service, revision: Revision) -> None:
        """No more traffic to ``revision``; stopped once its last request answered."""
        if service.canary is revision:
            service.canary, service.percent = None, None
        if service.stable is revision:
            service.stable = None
        self._route(service)
        if not service.router.drain(revision.url, timeout=60):
            self._event(service.name, f"{service.name}: requests still in flight to "
                        f"{short(revision.model)} after 60 s; stopping it anyway")
        _stop(revision)
        self._event(service.name, f"{service.name}: stopped {short(revision.model)}")


def short(model: str) -> str:
    return re.sub(r"@sha256:([0-9a-f]{12})[0-9a-f]*", r"@\1", model.rsplit("/", 1)[-1])


def _stop(revision: Revision) -> None:
    if revision.stopped:
        return
    revision.stopped = True
    if revision.process.poll() is None:
        revision.process.send_signal(signal.SIGTERM)
        try:
            revision.process.wait(30)
        except subprocess.TimeoutExpired:
            revision.process.kill()
            revision.process.wait(10)
    if revision.container is not None:  # the image's container, removed
        revision.container.close()
