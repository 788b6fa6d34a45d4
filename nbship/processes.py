"""Helper servers nbship starts detached (the registry, Prometheus, Alertmanager), and stops.

A state file records each one's address, pid, command line and start time
(``/proc/PID/stat``). Stopping signals only a process whose start time and command
line still match: a state file from a cloned folder, a reused pid or a corrupt file
never makes nbship signal anything (pids below 2 are refused outright).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nbship.errors import NbshipError
from nbship.files import write_atomic


@dataclass(frozen=True)
class Started:
    """What a state file says: where it listens and which process nbship started."""

    address: str
    pid: int
    argv: list[str]
    started: int  # the process's start time (clock ticks since boot, /proc/PID/stat)


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200: the readiness probe of a helper server."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat); None if unknown or
    if it is a zombie (it has exited; only its parent has not collected it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces
    try:
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def start(argv: list[str], *, log: Path, address: str, ready: Callable[[], bool],
          state: Path, error: type[NbshipError], what: str, timeout: float = 20) -> Started:
    """Start ``argv`` detached, wait until ``ready()``, record it in ``state``."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the detached process
    proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    out.close()
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tail = log.read_text(errors="replace")[-1500:]
            raise error(f"{what} did not start on {address}:\n{tail}")
        time.sleep(0.05)
    started = start_time(proc.pid)
    if started is None or cmdline(proc.pid) != argv:
        proc.kill()
        proc.wait()
        raise error(f"cannot record which process {what} is (this needs Linux's /proc); it "
                    "was stopped again")
    record = Started(address, proc.pid, argv, started)
    write_atomic(state, json.dumps(record.__dict__) + "\n")
    return record


def read(state: Path, *, error: type[NbshipError], what: str) -> Started | None:
    """The state file, checked; ``error`` naming the file when it is not nbship's."""
    try:
        text = state.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"cannot read {state}: {exc.strerror}") from None

    def bad(why: str) -> NbshipError:
        return error(f"{state} is not a {what} state nbship wrote ({why}); nothing was "
                     "signalled", hint=f"stop {what} by hand if one runs, then delete {state}")

    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    address, pid, argv, started = (doc.get(k) for k in ("address", "pid", "argv", "started"))
    if not isinstance(address, str) or not address.startswith("127.0.0.1:"):
        raise bad("no 127.0.0.1 address")
    if type(pid) is not int or pid <= 1:
        raise bad(f"pid {pid!r} is not a process nbship could have started")
    if (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
            or type(started) is not int):
        raise bad("no record of the process that was started")
    return Started(address, pid, argv, started)


def ours(record: Started) -> bool:
    """True only when ``record.pid`` is the process nbship started (same start, argv)."""
    return start_time(record.pid) == record.started and cmdline(record.pid) == record.argv


def stop(record: Started, state: Path) -> bool:
    """SIGTERM the recorded process if it is still ours; remove the state. True if it ran."""
    was_running = False
    if ours(record):
        was_running = True
        os.kill(record.pid, signal.SIGTERM)
        for _ in range(200):
            try:  # reap it when this process started it (tests); else it is init's
                os.waitpid(record.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if start_time(record.pid) != record.started:
                break
            time.sleep(0.05)
    state.unlink(missing_ok=True)
    return was_running
