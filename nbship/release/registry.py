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
    pid: int | None
    root: Path
    running: bool


def _state_file(root: Path) -> Path:
    return root / "registry.json"


def is_up(address: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def status(root: Path = DEFAULT_ROOT) -> RegistryState | None:
    path = _state_file(root)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    pid = doc.get("pid")
    running = bool(pid and _pid_alive(pid) and is_up(doc["address"]))
    return RegistryState(doc["address"], pid, root, running)


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
    log = open(root / "registry.log", "ab")  # noqa: SIM115 - handed to the detached process
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 15
    while not is_up(address, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (root / "registry.log").read_text(errors="replace")[-1500:]
            raise ReleaseError(f"the registry did not start on {address}:\n{tail}")
        time.sleep(0.05)
    write_atomic(_state_file(root), json.dumps({"address": address, "pid": proc.pid}) + "\n")
    return RegistryState(address, proc.pid, root, True)


def down(root: Path = DEFAULT_ROOT) -> bool:
    """Stop the registry nbship started; False if none was running. The storage stays."""
    current = status(root)
    if current is None:
        return False
    was_running = current.running
    if current.pid and _pid_alive(current.pid):
        os.kill(current.pid, signal.SIGTERM)
        for _ in range(200):
            try:  # reap it when this process started it (tests); else it is init's
                os.waitpid(current.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _pid_alive(current.pid):
                break
            time.sleep(0.05)
    _state_file(root).unlink(missing_ok=True)
    return was_running
