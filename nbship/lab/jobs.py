"""The nbship commands a Jupyter server runs for its users: ``nbship run``, ``nbship
test`` and ``nbship publish`` of one notebook, each a process of its own, its output
kept line by line.

What a job may run is a registry (:data:`KINDS`, kind -> the nbship arguments for one
notebook path), not text from a request: a request chooses a kind and names a notebook,
and nothing else reaches the command line. A notebook path that would read as an option
(``--junit=...``, pytest's ``@FILE``) never gets there (:func:`option_like`).

Bounds: one job per notebook at a time, at most :data:`MAX_RUNNING` on the server
(:class:`Refused` otherwise). Each job leads a process group of its own, so a job is
stopped (:meth:`Jobs.cancel`, :meth:`Jobs.stop_all` when the server stops) with
everything it started, and only while its leader has not been reaped: the group id is
still that process's, never a recycled one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS: dict[str, Callable[[str, str | None], list[str] | None]] = {
    "run": lambda notebook, registry: ["run", notebook],
    "test": lambda notebook, registry: ["test", notebook],
    # publishing needs a registry the project configured, never one a request names
    "publish": lambda notebook, registry: (["publish", notebook, "--registry", registry]
                                           if registry else None),
}

MAX_RUNNING = 4  # jobs running at once on one server
KEEP = 20  # finished jobs kept for their output
MAX_LINES = 100_000  # output lines kept per job (the first ones, and a note)
GRACE = 10.0  # seconds between SIGTERM and SIGKILL when a job is stopped


def option_like(notebook: str) -> bool:
    """Would this path read as an option rather than a path? ``nbship``'s argparse takes
    ``-x``/``--x`` as options (and its ``--`` passes what follows to pytest, so a path
    cannot go after one), and pytest reads ``@FILE`` as a file of arguments."""
    return notebook.startswith(("-", "@"))


class Refused(Exception):
    """A job that may not start now: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str, job: Job | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.job = status, message, job


def registry_of(root: Path) -> str | None:
    """Where Publish pushes: ``[tool.nbship] registry`` in the root's pyproject.toml, else
    the embedded registry when it runs there (``nbship registry up``); None: no Publish."""
    import tomllib

    try:
        doc = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        doc = {}
    tool = doc.get("tool")
    nbship = tool.get("nbship") if isinstance(tool, dict) else None
    named = nbship.get("registry") if isinstance(nbship, dict) else None
    if isinstance(named, str) and named.strip():
        return named.strip()
    from nbship.release import registry

    state = registry.status(root / ".nbship" / "registry")
    return state.address if state is not None and state.running else None


@dataclass
class Job:
    id: str
    kind: str
    notebook: str  # relative to the server's root
    command: list[str]  # the nbship arguments it runs
    process: subprocess.Popen[str]
    started: float = field(default_factory=time.time)
    lines: list[str] = field(default_factory=list)
    exit_code: int | None = None
    cancelled: bool = False
    reaped: bool = False  # the leader was waited for: its pid (the group id) may be reused
    changed: threading.Condition = field(default_factory=threading.Condition)
    # event loops following the job (server-sent events): woken on every change
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(
        default_factory=list)

    @property
    def status(self) -> str:
        if self.exit_code is None:
            return "running"
        if self.cancelled:
            return "cancelled"
        return "succeeded" if self.exit_code == 0 else "failed"

    def to_json(self, since: int = 0) -> dict[str, Any]:
        with self.changed:
            return {"id": self.id, "kind": self.kind, "path": self.notebook,
                    "command": ["nbship", *self.command],
                    "status": self.status, "exit_code": self.exit_code,
                    "started": self.started, "lines": self.lines[since:],
                    "next": len(self.lines)}

    async def changes(self, since: int, timeout: float) -> None:
        """Until there are lines past ``since`` or the job ended (or ``timeout``), on an
        event loop without holding a thread: the reader thread wakes it
        (``call_soon_threadsafe``), so any number of followers cost no thread each."""
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        with self.changed:
            if len(self.lines) > since or self.exit_code is not None:
                return
            self._waiters.append((loop, event))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self.changed:
                if (loop, event) in self._waiters:
                    self._waiters.remove((loop, event))

    def _notify(self) -> None:
        """Wake the followers (holding ``changed``)."""
        self.changed.notify_all()
        for loop, event in self._waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed: the server is stopping
                pass

    async def stop(self, grace: float = GRACE) -> bool:
        """Cancel the job: SIGTERM to its process group (nbship cleans up: its fork
        server, a running step), SIGKILL after ``grace`` seconds; returns once it ended
        (its reader then kills what the group still holds). False: it had already ended."""
        with self.changed:
            if self.exit_code is not None:
                return False
            self.cancelled = True
            self.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGKILL, None):
            deadline = loop.time() + grace
            while self.exit_code is None and loop.time() < deadline:
                await self.changes(len(self.lines), deadline - loop.time())
            if self.exit_code is not None or sig is None:
                break
            self.signal(sig)
        return True

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the job's process group, only while the leader is unreaped
        (alive or a zombie): then its pid, which is the group's id (``start_new_session``),
        is still this job's and no other process's. False when it was not sent."""
        with self.changed:
            if self.reaped:
                return False
            pid = self.process.pid
            try:
                if os.getpgid(pid) != pid:  # not the leader of its own group: not ours
                    return False
            except ProcessLookupError:  # a zombie has no group left to ask for
                pass
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:  # the group is empty (a zombie leader alone)
                return False
            except PermissionError:
                return False
            return True


@dataclass
class Jobs:
    root: Path
    limit: int = MAX_RUNNING
    jobs: dict[str, Job] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, kind: str, notebook: str) -> Job | None:
        """``nbship <kind> NOTEBOOK`` in the server's root (the notebook already checked
        to be an .ipynb file under it); None when the kind cannot run here (Publish
        without a registry); :class:`Refused` when that notebook has a job running
        (409) or the server runs :attr:`limit` jobs (429)."""
        if option_like(notebook):  # the handler refuses these first; never on a command line
            raise Refused(400, f"{notebook}: a path beginning '-' or '@' would read as an "
                          "option; rename the notebook")
        argv = KINDS[kind](notebook, registry_of(self.root) if kind == "publish" else None)
        if argv is None:
            return None
        with self._lock:  # the checks and the start together: no two starts race past them
            running = [j for j in self.jobs.values() if j.exit_code is None]
            busy = next((j for j in running if j.notebook == notebook), None)
            if busy is not None:
                raise Refused(409, f"{notebook} already has a job running ({busy.kind}, job "
                              f"{busy.id}): wait for it or cancel it", busy)
            if len(running) >= self.limit:
                raise Refused(429, f"the server already runs {len(running)} jobs (at most "
                              f"{self.limit} at once): wait for one to end or cancel one")
            process = subprocess.Popen(
                [sys.executable, "-m", "nbship", *argv], cwd=self.root, text=True,
                errors="replace", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            job = Job(secrets.token_hex(8), kind, notebook, argv, process)
            self.jobs[job.id] = job
            done = [j for j in self.jobs.values() if j.exit_code is not None]
            for old in sorted(done, key=lambda j: j.started)[:-KEEP]:
                del self.jobs[old.id]
        threading.Thread(target=self._follow, args=(job,), daemon=True,
                         name=f"nbship-lab-{job.id}").start()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return sorted(self.jobs.values(), key=lambda j: j.started)

    @staticmethod
    def _follow(job: Job) -> None:
        assert job.process.stdout is not None
        for line in job.process.stdout:
            with job.changed:
                if len(job.lines) < MAX_LINES:
                    job.lines.append(line.rstrip("\n"))
                elif len(job.lines) == MAX_LINES:
                    job.lines.append(f"nbship: more than {MAX_LINES} lines; the rest is "
                                     "not kept")
                job._notify()
        job.process.stdout.close()
        # the leader ended (or closed its output): wait for its exit without reaping it,
        # so that the group can still be signalled as ours
        try:
            os.waitid(os.P_PID, job.process.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        with job.changed:  # a reentrant lock: signal() takes it again
            if job.cancelled:  # what the cancelled job left behind in its group
                job.signal(signal.SIGKILL)
            code = job.process.wait()
            job.reaped = True
            job.exit_code = code
            job._notify()

    @staticmethod
    def _ended(job: Job, timeout: float) -> bool:
        with job.changed:
            return job.changed.wait_for(lambda: job.exit_code is not None, timeout)

    def stop_all(self, grace: float = GRACE) -> None:
        """Stop the jobs still running (the server is shutting down): SIGTERM to each
        job's process group (nbship cleans up: its fork server, a running step), SIGKILL
        to what is left after ``grace`` seconds; only our own groups (:meth:`Job.signal`)."""
        running = [j for j in self.all() if j.exit_code is None]
        for job in running:
            with job.changed:
                job.cancelled = True
                job.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for job in running:
            if not self._ended(job, max(0.0, deadline - time.monotonic())):
                job.signal(signal.SIGKILL)
                self._ended(job, 5.0)
