"""Helper servers nbship starts detached (the registry, Prometheus, Alertmanager, the
scheduler), and stops.

A state file records each one's address, pid, command line and start time
(``/proc/PID/stat``), sealed with this machine's key (``nbship.signing``): all four can
be read from /proc for any process, so only a seal proves that nbship wrote them. A
state file is read only as a regular file (not through a symbolic link: a FIFO does
not hang the reader, ``/dev/zero`` does not fill its memory) of at most
``MAX_STATE_BYTES``; one that fails the type, size or seal check is an error naming
the file, and nothing is signalled. Stopping then signals only a process whose start
time and command line still match: a state file from a cloned folder, a reused pid or
a corrupt file never makes nbship signal anything (pids below 2 are refused outright).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nbship import signing
from nbship.errors import NbshipError
from nbship.files import write_atomic

STATE_FORMAT = "nbship-process-state/1"  # what a state file's "format" field says
MAX_STATE_BYTES = 64 * 1024  # a state file is a few hundred bytes; more is not nbship's


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
    write_state(state, record)
    return record


def _sealed_doc(state: Path, record: Started) -> dict[str, object]:
    """The state file's document without its seal: the record, the format and the file's
    name (so that one helper's state cannot stand in for another's)."""
    return {"format": STATE_FORMAT, "file": state.name, "address": record.address,
            "pid": record.pid, "argv": list(record.argv), "started": record.started}


def write_state(state: Path, record: Started) -> None:
    """Record ``record`` in ``state``, sealed with this machine's key."""
    doc = _sealed_doc(state, record)
    doc[signing.SIGNATURE] = signing.sign(doc)
    write_atomic(state, json.dumps(doc) + "\n")


class StateFileError(Exception):
    """A state file that is not a regular file of at most MAX_STATE_BYTES (why, in words)."""


def read_bounded(path: Path, limit: int = MAX_STATE_BYTES) -> bytes | None:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes; None
    when there is none. Never follows a symbolic link at ``path`` and never waits: a FIFO,
    a device or a socket is refused without reading from it (StateFileError); an
    unreadable file is the OSError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateFileError("a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO that cannot be opened
            raise StateFileError("not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a folder" if stat.S_ISDIR(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise StateFileError(kind)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the size stat() says may change while read: count the bytes
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise StateFileError(f"larger than {limit} bytes")
    return b"".join(chunks)


def read(state: Path, *, error: type[NbshipError], what: str) -> Started | None:
    """The state file, checked; ``error`` naming the file when it is not nbship's: not a
    regular file, too large, not JSON, or its seal does not hold (not written by nbship on
    this machine, or changed since)."""

    def bad(why: str) -> NbshipError:
        return error(f"{state} is not a {what} state nbship wrote ({why}); nothing was "
                     "signalled", hint=f"stop {what} by hand if one runs, then delete {state}")

    try:
        raw = read_bounded(state)
    except StateFileError as exc:
        raise bad(str(exc)) from None
    except OSError as exc:
        raise error(f"cannot read {state}: {exc.strerror}; nothing was signalled") from None
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8 is a ValueError too
        raise bad("not JSON") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format") != STATE_FORMAT or signing.SIGNATURE not in doc:
        raise bad("not sealed: written by something else, or by an older nbship")
    if not signing.signed(doc):
        raise bad("its seal does not hold: written or changed by something other than "
                  "nbship on this machine")
    if doc.get("file") != state.name:
        raise bad(f"it was written as {str(doc.get('file'))[:64]!r}, not as {state.name!r}")
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
    try:  # a handle on the process now: the checks below then prove it is the one signalled
        handle: int | None = os.pidfd_open(record.pid)
    except (AttributeError, OSError):  # gone already, or a kernel without pidfds
        handle = None
    try:
        if ours(record):
            was_running = True
            try:
                if handle is None:
                    os.kill(record.pid, signal.SIGTERM)
                else:
                    signal.pidfd_send_signal(handle, signal.SIGTERM)
            except ProcessLookupError:  # it ended meanwhile
                pass
    finally:
        if handle is not None:
            os.close(handle)
    if was_running:
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
