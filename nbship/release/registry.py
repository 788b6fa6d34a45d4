"""The embedded registry: the CNCF distribution registry (Debian's ``docker-registry``).

``nbship registry up`` starts it on 127.0.0.1 (port 5000 unless ``--port``),
storing under ``.nbship/registry/``; it keeps running, detached, until
``nbship registry down``. The same images and release artifacts go to any OCI
registry at scale (``--registry HOST[/PREFIX]``); only this one is started by nbship.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nbship.errors import ReleaseError
from nbship.files import write_atomic
from nbship.release.tools import require

DEFAULT_ROOT = Path(".nbship/registry")
DEFAULT_PORT = 5000

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class RegistryState:
    address: str  # host:port
    pid: int | None  # None unless the process is proven to be the registry nbship started
    root: Path
    running: bool


@dataclass(frozen=True)
class _Recorded:
    """What registry.json says: where it listens and which process nbship started."""

    address: str
    pid: int
    argv: list[str]  # the registry's command line, as started
    started: int  # the process's start time (clock ticks since boot, /proc/PID/stat)


def _state_file(root: Path) -> Path:
    return root / "registry.json"


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _read_state(root: Path) -> _Recorded | None:
    """registry.json, checked; a ReleaseError naming the file when it is not ours."""
    path = _state_file(root)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReleaseError(f"cannot read {path}: {exc.strerror}") from None

    def bad(why: str) -> ReleaseError:
        return ReleaseError(f"{path} is not a registry state nbship wrote ({why}); "
                            "nothing was signalled",
                            hint=f"stop the registry by hand if one runs, then delete {path}")

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
    return _Recorded(address, pid, argv, started)


def _ours(rec: _Recorded) -> bool:
    """True only when process ``rec.pid`` is the registry nbship started (same start, argv)."""
    return (len(rec.argv) == 3 and rec.argv[1] == "serve" and _start_time(rec.pid) == rec.started
            and _cmdline(rec.pid) == rec.argv)


def is_up(address: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def status(root: Path = DEFAULT_ROOT) -> RegistryState | None:
    rec = _read_state(root)
    if rec is None:
        return None
    ours = _ours(rec)
    return RegistryState(rec.address, rec.pid if ours else None, root,
                         ours and is_up(rec.address))


def up(root: Path = DEFAULT_ROOT, port: int = DEFAULT_PORT) -> RegistryState:
    """Start the registry (or find it running); return where it listens."""
    current = status(root)
    if current is not None and current.running:
        return current
    exe = require("docker-registry", "run the embedded OCI registry")
    address = f"127.0.0.1:{port}"
    if is_up(address):
        raise ReleaseError(f"something else already answers on {address}",
                           hint="nbship registry up --port N, or publish to it with "
                           f"--registry {address}")
    root = root.resolve()
    (root / "storage").mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    write_atomic(config, CONFIG.format(storage=root / "storage", port=port))
    argv = [exe, "serve", str(config)]
    log = open(root / "registry.log", "ab")  # noqa: SIM115 - handed to the detached process
    proc = subprocess.Popen(argv, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 15
    while not is_up(address, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (root / "registry.log").read_text(errors="replace")[-1500:]
            raise ReleaseError(f"the registry did not start on {address}:\n{tail}")
        time.sleep(0.05)
    started = _start_time(proc.pid)
    if started is None or _cmdline(proc.pid) != argv:
        proc.kill()
        raise ReleaseError("cannot record which process the registry is (this needs Linux's "
                           "/proc); it was stopped again",
                           hint="run a registry yourself and publish with --registry HOST:PORT")
    write_atomic(_state_file(root), json.dumps(
        {"address": address, "pid": proc.pid, "argv": argv, "started": started}) + "\n")
    return RegistryState(address, proc.pid, root, True)


def down(root: Path = DEFAULT_ROOT) -> bool:
    """Stop the registry nbship started; False if none was running. The storage stays.

    Only a process proven to be that registry (its pid, start time and command line
    as recorded when it started) is signalled; a state file naming anything else is
    removed without signalling anyone.
    """
    rec = _read_state(root)
    if rec is None:
        return False
    was_running = False
    if _ours(rec):
        was_running = is_up(rec.address)
        os.kill(rec.pid, signal.SIGTERM)
        for _ in range(200):
            try:  # reap it when this process started it (tests); else it is init's
                os.waitpid(rec.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if _start_time(rec.pid) != rec.started:
                break
            time.sleep(0.05)
    _state_file(root).unlink(missing_ok=True)
    return was_running
