"""The embedded registry: the CNCF distribution registry (Debian's ``docker-registry``).

``nbship registry up`` starts it on 127.0.0.1 (port 5000 unless ``--port``),
storing under ``.nbship/registry/``; it keeps running, detached, until
``nbship registry down``. The same images and release artifacts go to any OCI
registry at scale (``--registry HOST[/PREFIX]``); only this one is started by nbship.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nbship import processes
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


def _state_file(root: Path) -> Path:
    return root / "registry.json"


def _read_state(root: Path) -> processes.Started | None:
    return processes.read(_state_file(root), error=ReleaseError, what="registry")


def is_up(address: str, timeout: float = 1.0) -> bool:
    return processes.answers(f"http://{address}/v2/", timeout)


def status(root: Path = DEFAULT_ROOT) -> RegistryState | None:
    rec = _read_state(root)
    if rec is None:
        return None
    ours = processes.ours(rec)
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
    record = processes.start([exe, "serve", str(config)], log=root / "registry.log",
                             address=address, ready=lambda: is_up(address, timeout=0.5),
                             state=_state_file(root), error=ReleaseError, what="the registry",
                             timeout=15)
    return RegistryState(address, record.pid, root, True)


def down(root: Path = DEFAULT_ROOT) -> bool:
    """Stop the registry nbship started; False if none was running. The storage stays.

    Only a process proven to be that registry (its pid, start time and command line
    as recorded when it started) is signalled; a state file naming anything else is
    removed without signalling anyone.
    """
    rec = _read_state(root)
    if rec is None:
        return False
    return processes.stop(rec, _state_file(root))
