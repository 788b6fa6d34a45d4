"""Build contexts: a folder per image (Dockerfile, lock, wheels) whose content hash is its tag.

The steps' image (``nbship-steps``) is what the compiled pipeline's ``base_image``
points to: a Python venv at /opt/nbship/venv with exactly the locked wheels,
installed with ``--no-index`` from a bind mount (no network inside ``RUN``, and no
wheel files left in a layer). The model server's image (``nbship-server``) is the
same environment plus kserve, for the serving issues that follow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nbship.files import write_atomic
from nbship.release.wheels import Wheelhouse

DOCKERFILE = """\
# Written by nbship {version}; the tag of the image is the content hash of this folder.
ARG BASE={base}
FROM ${{BASE}}
# The wheels are bind-mounted, not copied: they never become a layer of the image.
# pip runs the base's own Python; the venv itself gets no pip (python3 -m venv --without-pip).
RUN --mount=type=bind,source=wheels,target=/tmp/nbship-wheels \\
    --mount=type=bind,source=requirements.lock,target=/tmp/nbship-requirements.lock \\
    python3 -m venv --without-pip /opt/nbship/venv && \\
    python3 -m pip --python /opt/nbship/venv/bin/python install \\
      --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \\
      --require-hashes --find-links /tmp/nbship-wheels -r /tmp/nbship-requirements.lock
ENV PATH=/opt/nbship/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    VIRTUAL_ENV=/opt/nbship/venv PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
{extra}"""


@dataclass
class BuildContext:
    name: str  # image name, e.g. nbship-steps
    directory: Path
    digest: str  # sha256 of the context's files (names and bytes)
    wheels: int
    wheel_bytes: int

    @property
    def tag(self) -> str:
        return f"ctx-{self.digest[:16]}"

    @property
    def reference(self) -> str:
        return f"localhost/{self.name}:{self.tag}"


def _lock_text(houses: list[Wheelhouse]) -> str:
    lines = {f"{w.name}=={w.version} --hash=sha256:{w.sha256}"
             for house in houses for w in house.wheels}
    header = "# nbship: every wheel of the image, exactly (pip install --require-hashes)"
    return "\n".join([header, *sorted(lines, key=str.lower)]) + "\n"


def digest_of(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel.startswith("wheels/"):  # wheels are named by their hash in the lock
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def write_context(name: str, root: Path, houses: list[Wheelhouse], *, base: str,
                  version: str, extra: str = "") -> BuildContext:
    """Write (or refresh) ``root/name``: Dockerfile, requirements.lock, wheels/ (hard links)."""
    directory = root / name
    wheels_dir = directory / "wheels"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    wanted = {w.file: house.directory / w.file for house in houses for w in house.wheels}
    for stale in wheels_dir.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    for file, source in wanted.items():
        target = wheels_dir / file
        if target.exists() and os.path.samefile(source, target):
            continue
        target.unlink(missing_ok=True)  # e.g. nbship's own wheel: same name, new code
        try:
            os.link(source, target)
        except OSError:  # another file system: copy
            shutil.copy2(source, target)
    write_atomic(directory / "requirements.lock", _lock_text(houses))
    write_atomic(directory / "Dockerfile", DOCKERFILE.format(version=version, base=base,
                                                             extra=extra))
    size = sum(p.stat().st_size for p in wheels_dir.iterdir())
    return BuildContext(name, directory, digest_of(directory), len(wanted), size)
