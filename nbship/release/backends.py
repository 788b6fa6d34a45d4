"""Image builders: buildah (no daemon; the default where installed) and docker (an engine).

Other builders (kaniko, podman, a remote service) plug in through the
``nbship.builders`` entry point group, each naming a callable that returns a
:class:`Backend` (usually the class itself)::

    [project.entry-points."nbship.builders"]
    kaniko = "my_package.kaniko:Kaniko"

and are chosen with ``--backend NAME``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from nbship.errors import NbshipError, ReleaseError, ToolMissingError
from nbship.release.oci import check_token_realm, credentials
from nbship.release.tools import INSTALL_HINT, require, run, which


class Backend(Protocol):
    name: str

    def has_image(self, ref: str) -> bool: ...

    def build(self, context: Path, ref: str, *, labels: dict[str, str],
              build_args: dict[str, str],
              echo: Callable[[str], None] | None = None) -> None: ...

    def push(self, ref: str, destination: str, *, insecure: bool,
             compression: str = "zstd") -> str: ...

    def run(self, ref: str, argv: list[str], *, mounts: dict[Path, str]) -> str: ...


def _steps(echo: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Progress for a long build: the builder's STEP lines, shortened."""
    if echo is None:
        return None
    say = echo

    def show(line: str) -> None:
        if ": LABEL " in line:  # buildah lists each --label as a step
            return
        if line.startswith("STEP ") or line.startswith("#") and " [" in line[:12]:
            say("    " + (line if len(line) <= 96 else line[:93] + "..."))

    return show


def _timestamp() -> str:
    # reproducible builds: every file in the layers and the image's creation time get it
    return os.environ.get("SOURCE_DATE_EPOCH", "0")


class Buildah:
    name = "buildah"

    def __init__(self) -> None:
        self.exe = require("buildah", "build images without a daemon")

    def has_image(self, ref: str) -> bool:
        return subprocess.run([self.exe, "inspect", "--type", "image", ref],
                              capture_output=True).returncode == 0

    def build(self, context: Path, ref: str, *, labels: dict[str, str],
              build_args: dict[str, str],
              echo: Callable[[str], None] | None = None) -> None:
        cmd = [self.exe, "bud", "--isolation", "chroot", "--timestamp", _timestamp(),
               "-f", str(context / "Dockerfile"), "-t", ref]
        for key, value in sorted(labels.items()):
            cmd += ["--label", f"{key}={value}"]
        for key, value in sorted(build_args.items()):
            cmd += ["--build-arg", f"{key}={value}"]
        run([*cmd, str(context)], f"building {ref} (buildah bud)", progress=_steps(echo))

    def push(self, ref: str, destination: str, *, insecure: bool,
             compression: str = "zstd") -> str:
        with tempfile.TemporaryDirectory() as tmp:
            digest_file = Path(tmp) / "digest"
            creds = credentials()
            auth: list[str] = []
            if creds:  # buildah sends them to any token realm: nbship checks it first
                host = destination.partition("/")[0]
                check_token_realm(host)
                # in a file only this user reads, not on the command line (ps shows that)
                authfile = Path(tmp) / "auth.json"
                authfile.touch(mode=0o600)
                token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
                authfile.write_text(json.dumps({"auths": {host: {"auth": token}}}))
                auth = ["--authfile", str(authfile)]
            run([self.exe, "push", f"--tls-verify={'false' if insecure else 'true'}", *auth,
                 "--compression-format", compression,
                 "--digestfile", str(digest_file), ref, f"docker://{destination}"],
                f"pushing {ref} to {destination}")
            return digest_file.read_text().strip()

    def run(self, ref: str, argv: list[str], *, mounts: dict[Path, str]) -> str:
        made = subprocess.run([self.exe, "from", "--quiet", ref], capture_output=True,
                              text=True)
        if made.returncode != 0:
            raise ReleaseError(f"starting {ref} failed: {made.stderr.strip()[-1500:]}")
        container = made.stdout.strip().splitlines()[-1]  # stderr may carry warnings
        try:
            cmd = [self.exe, "run", "--isolation", "chroot"]
            for host, inside in mounts.items():
                cmd += ["--volume", f"{host}:{inside}:ro"]
            return run([*cmd, container, "--", *argv], f"running {argv[0]} in {ref}")
        finally:
            subprocess.run([self.exe, "rm", container], capture_output=True)


class Docker:
    name = "docker"

    def __init__(self) -> None:
        self.exe = require("docker", "build images with a Docker engine")
        if subprocess.run([self.exe, "info"], capture_output=True).returncode != 0:
            raise ToolMissingError("docker is installed but no engine answers",
                                   hint="start the engine, or use --backend buildah")

    def has_image(self, ref: str) -> bool:
        return subprocess.run([self.exe, "image", "inspect", ref],
                              capture_output=True).returncode == 0

    def build(self, context: Path, ref: str, *, labels: dict[str, str],
              build_args: dict[str, str],
              echo: Callable[[str], None] | None = None) -> None:
        cmd = [self.exe, "build", "-f", str(context / "Dockerfile"), "-t", ref]
        for key, value in sorted(labels.items()):
            cmd += ["--label", f"{key}={value}"]
        for key, value in sorted(build_args.items()):
            cmd += ["--build-arg", f"{key}={value}"]
        run([*cmd, str(context)], f"building {ref} (docker build)",
            env={"DOCKER_BUILDKIT": "1", "SOURCE_DATE_EPOCH": _timestamp()},
            progress=_steps(echo))

    def push(self, ref: str, destination: str, *, insecure: bool,
             compression: str = "gzip") -> str:
        # docker push compresses with gzip whatever is asked
        run([self.exe, "tag", ref, destination], f"tagging {ref}")
        out = run([self.exe, "push", destination], f"pushing {ref} to {destination}")
        digest = next((w for line in out.splitlines() for w in line.split()
                       if w.startswith("sha256:")), "")
        return digest

    def run(self, ref: str, argv: list[str], *, mounts: dict[Path, str]) -> str:
        cmd = [self.exe, "run", "--rm"]
        for host, inside in mounts.items():
            cmd += ["-v", f"{host}:{inside}:ro"]
        return run([*cmd, ref, *argv], f"running {argv[0]} in {ref}")


BUILTIN: dict[str, Callable[[], Backend]] = {"buildah": Buildah, "docker": Docker}
ENTRY_POINT_GROUP = "nbship.builders"


def builders() -> dict[str, Callable[[], Backend]]:
    """The built-in builders and those installed packages register (``nbship.builders``)."""
    from importlib.metadata import entry_points

    found: dict[str, Callable[[], Backend]] = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in BUILTIN:  # a plug-in does not replace a built-in under its name
            found[ep.name] = _plugin(ep)
    return found


def _plugin(ep: Any) -> Callable[[], Backend]:
    def make() -> Backend:
        try:
            made: Backend = ep.load()()
        except NbshipError:
            raise
        except Exception as exc:
            raise ToolMissingError(f"the image builder plug-in {ep.name!r} ({ep.value}) does "
                                   f"not load: {exc}") from None
        return made

    return make


def backend(name: str | None) -> Backend:
    """The builder ``name``; by default ``buildah`` where installed, else ``docker``."""
    known = builders()
    if name is not None:
        if name not in known:
            raise ToolMissingError(f"no image builder {name!r}",
                                   hint="builders here: " + ", ".join(sorted(known)))
        return known[name]()
    if which("buildah"):
        return Buildah()
    if which("docker"):
        return Docker()
    raise ToolMissingError("no image builder found (buildah or docker)", hint=INSTALL_HINT)
