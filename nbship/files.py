"""Writing files so that nothing is ever half-written; naming a file by its content; the
one pattern a name must match before it becomes part of a path."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from nbship.errors import NbshipError, UnusableInputError

# A name that becomes part of a path (a pipeline's or a model's name, a run id): what
# ``nbship`` itself makes (KFP's spelling of a notebook's name, a run's time stamp), and
# nothing else: lowercase letters, digits and '-', neither first nor last, at most 240
# characters (room for "-PORT.json" in a file name). Never '.', '/', '\\', '..' or empty.
PATH_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,238}[a-z0-9])?")


def path_name(value: object, what: str, *, error: type[NbshipError] = UnusableInputError,
              where: str | None = None) -> str:
    """``value`` when it is a name that may become part of a path (``PATH_NAME``); else
    ``error`` naming ``what`` it is and ``where`` it was read."""
    if isinstance(value, str) and PATH_NAME.fullmatch(value):
        return value
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise error(f"{what} {shown}" + (f" in {where}" if where else "") + " is not a name "
                "nbship makes: names that become paths are lowercase letters, digits and "
                "'-' (at most 240), nothing else",
                hint="nbship writes these names itself; a file that holds another was not "
                "written by nbship (or was changed since)")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never a part; a failure leaves no
    temporary file behind. Concurrent writers each use their own temporary file.
    """
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (wheels run to hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
