"""The nbship commands a Jupyter server runs for its users: ``nbship run``, ``nbship
test`` and ``nbship publish`` of one notebook, each a process of its own, its output
kept line by line.

What a job may run is a registry (:data:`KINDS`, kind -> the nbship arguments for one
notebook path), not text from a request: a request chooses a kind and names a notebook,
and nothing else reaches the command line.
"""

from __future__ import annotations

import os
import secrets
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


def registry_of(root: Path) -> str | None:
    """Where Publish pushes: ``[tool.nbship] registry`` in the root's pyproject.toml, else
    the embedded registry when it runs there (``nbship registry up``); None: no Publish."""
    import tomllib

    try:
        doc = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        doc = {}
    named = doc.get("tool", {}).get("nbship", {}).get("registry")
    if isinstance(named, str) and named.strip():
        return named.strip()
    from nbship.release import registry

    state = registry.status(root / ".nbship" / "registry")
    return state.address if state is not None and state.running else None
KEEP = 20  # finished jobs kept for their output


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
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def status(self) -> str:
        if self.exit_code is None:
            return "running"
        return "succeeded" if self.exit_code == 0 else "failed"

    def to_json(self, since: int = 0) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "path": self.notebook,
                "command": ["nbship", *self.command],
                "status": self.status, "exit_code": self.exit_code,
                "started": self.started, "lines": self.lines[since:],
                "next": len(self.lines)}

    def wait_for(self, since: int, timeout: float) -> None:
        """Until there are lines past ``since`` or the job ended (or ``timeout``)."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.lines) > since
                                  or self.exit_code is not None, timeout)


@dataclass
class Jobs:
    root: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, kind: str, notebook: str) -> Job | None:
        """``nbship <kind> NOTEBOOK`` in the server's root (the notebook already checked
        to be an .ipynb file under it); None when the kind cannot run here (Publish
        without a registry)."""
        argv = KINDS[kind](notebook, registry_of(self.root) if kind == "publish" else None)
        if argv is None:
            return None
        process = subprocess.Popen(
            [sys.executable, "-m", "nbship", *argv], cwd=self.root, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        job = Job(secrets.token_hex(8), kind, notebook, argv, process)
        threading.Thread(target=self._follow, args=(job,), daemon=True,
                         name=f"nbship-lab-{job.id}").start()
        with self._lock:
            self.jobs[job.id] = job
            done = [j for j in self.jobs.values() if j.exit_code is not None]
            for old in sorted(done, key=lambda j: j.started)[:-KEEP]:
                del self.jobs[old.id]
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    @staticmethod
    def _follow(job: Job) -> None:
        assert job.process.stdout is not None
        for line in job.process.stdout:
            with job.changed:
                job.lines.append(line.rstrip("\n"))
                job.changed.notify_all()
        code = job.process.wait()
        with job.changed:
            job.exit_code = code
            job.changed.notify_all()

    def stop_all(self) -> None:
        """Stop the jobs still running (the server is shutting down): only our own
        processes, which this object started and holds."""
        with self._lock:
            running = [j for j in self.jobs.values() if j.exit_code is None]
        for job in running:
            if job.process.poll() is None:
                job.process.terminate()
