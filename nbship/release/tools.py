"""The external programs a release needs, and running them with errors that say what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
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
        cwd: Path | None = None, progress: Callable[[str], None] | None = None) -> str:
    """Run ``cmd``; its output, or ReleaseError naming ``what`` with the end of its output.

    ``progress`` sees each line of output as it comes (for long builds).
    """
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=cwd, errors="replace",
                            env={**os.environ, **(env or {})} if env else None)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if progress is not None:
            progress(line.rstrip("\n"))
    code = proc.wait()
    if code != 0:
        tail = "\n".join("".join(lines).strip().splitlines()[-15:])
        raise ReleaseError(f"{what} failed (exit {code}): {' '.join(cmd[:3])} ...\n{tail}")
    return "".join(lines)
