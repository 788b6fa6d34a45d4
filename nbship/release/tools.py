"""The external programs a release needs, and running them with errors that say what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nbship.errors import ReleaseError, ToolMissingError

INSTALL_HINT = ("on Debian/Ubuntu: apt-get install buildah skopeo docker-registry debootstrap "
                "(`make tools` does it)")


def which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / tool).exists()), None)


def require(tool: str, why: str) -> str:
    path = which(tool)
    if path is None:
        raise ToolMissingError(f"{tool} is not installed; it is needed to {why}",
                               hint=INSTALL_HINT)
    return path


def run(cmd: Sequence[str], what: str, *, env: dict[str, str] | None = None,
        cwd: Path | None = None, quiet: bool = True) -> str:
    """Run ``cmd``; its stdout, or ReleaseError naming ``what`` with the end of its output."""
    done = subprocess.run(list(cmd), stdout=subprocess.PIPE if quiet else None,
                          stderr=subprocess.STDOUT if quiet else None, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})} if env else None)
    if done.returncode != 0:
        tail = "\n".join((done.stdout or "").strip().splitlines()[-15:])
        raise ReleaseError(f"{what} failed (exit {done.returncode}): {' '.join(cmd[:3])} ...\n"
                           f"{tail}")
    return done.stdout or ""
