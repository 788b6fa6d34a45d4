"""The base image: a configurable reference, or one nbship makes without pulling anything.

On a normal CI the base is a reference such as ``python:3.11-slim`` (``--base``).
Where no image can be pulled, nbship makes its own: ``debootstrap --variant=minbase``
of Debian bookworm with python3, python3-venv, python3-pip and ca-certificates,
the apt caches removed, packed as a reproducible tar (sorted, fixed times and
owners) and turned into an image by ``FROM scratch`` + ``ADD rootfs.tar /``. Both
the tar and the image are made once per recipe (the tag is the recipe's hash).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from nbship.files import write_atomic
from nbship.release.backends import Backend
from nbship.release.tools import require, run

SUITE = "bookworm"  # Python 3.11, as the wheels resolved on the build host
PACKAGES = ["python3", "python3-venv", "python3-pip", "ca-certificates"]
MIRROR = os.environ.get("NBSHIP_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def recipe() -> str:
    return f"debootstrap --variant=minbase --include={','.join(PACKAGES)} {SUITE} {MIRROR}"


def embedded_reference() -> str:
    return f"localhost/nbship-base:{SUITE}-{hashlib.sha256(recipe().encode()).hexdigest()[:12]}"


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _rootfs_tar(cache: Path, echo: Callable[[str], None]) -> Path:
    # NBSHIP_BASE_CACHE: one folder for the root file system tar shared by many outputs
    folder = Path(os.environ.get("NBSHIP_BASE_CACHE") or cache / "base")
    tar_path = folder / f"{embedded_reference().split(':')[1]}.tar"
    if tar_path.exists():
        return tar_path
    debootstrap = require("debootstrap", "make the base image without pulling one")
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    rootfs = tar_path.parent / f".rootfs-{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    echo(f"  making the base root file system ({recipe()}; about a minute, once)")
    try:
        run([debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(rootfs), MIRROR], "debootstrap of the base image")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tmp = tar_path.with_suffix(f".{os.getpid()}.tmp")
        with tarfile.open(tmp, "w") as tar:
            for path in sorted(rootfs.rglob("*")):
                tar.add(path, arcname=path.relative_to(rootfs).as_posix(), recursive=False,
                        filter=_reproducible)
        os.replace(tmp, tar_path)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tar_path


def ensure_base(reference: str | None, builder: Backend, cache: Path,
                echo: Callable[[str], None]) -> str:
    """The base image reference to build on (made here when none is given)."""
    if reference:
        return reference
    ref = embedded_reference()
    if builder.has_image(ref):
        return ref
    tar_path = _rootfs_tar(cache, echo)
    context = cache / "base" / "context"
    context.mkdir(parents=True, exist_ok=True)
    target = context / "rootfs.tar"
    target.unlink(missing_ok=True)
    os.link(tar_path, target)
    write_atomic(context / "Dockerfile", "FROM scratch\nADD rootfs.tar /\n"
                 'CMD ["python3"]\n')
    echo(f"  importing the base image {ref}")
    builder.build(context, ref, labels={"org.opencontainers.image.description":
                                        f"nbship's embedded base: {recipe()}"},
                  build_args={})
    return ref
