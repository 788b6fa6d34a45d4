"""The nbship commands a Jupyter server runs for its users: ``nbship run`` and ``nbship
test`` of one notebook, each a process of its own, its output kept line by line.

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

KINDS: dict[str, Callable[[str], list[str]]] = {
    "run": lambda notebook: ["run", notebook],
    "test": lambda notebook: ["test", notebook],
}
KEEP = 20  # finished jobs kept for their output


@dataclass
class Job:
    id: str
    kind: str
    notebook: str  # relative to the server's root
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

    def start(self, kind: str, notebook: str) -> Job:
        """``nbship <kind> NOTEBOOK`` in the server's root (the notebook already checked
        to be an .ipynb file under it)."""
        argv = KINDS[kind](notebook)
        process = subprocess.Popen(
            [sys.executable, "-m", "nbship", *argv], cwd=self.root, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        job = Job(secrets.token_hex(8), kind, notebook, process)
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
