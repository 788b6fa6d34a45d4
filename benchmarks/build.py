"""Build-and-publish of the showcase, cold and warm, and the images' sizes; prints a table.

    .venv/bin/python benchmarks/build.py

Cold: a container store of its own (no image built before), a new output folder
(wheels resolved again, from pip's cache), a new registry on 127.0.0.1. The
embedded base's root file system tar is reused from NBSHIP_BASE_CACHE when there
(debootstrap adds about a minute otherwise; the table says which). Warm: the
same publish again, nothing changed. Both images (steps and model server).
Targets (issue 4): warm publish under 5 s; the steps' image no larger than its
wheels plus the base. Sizes are the registry's (compressed layers).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nbship.release import oci, registry  # noqa: E402

NB = "notebooks/marker_classifier.ipynb"
MiB = 2**20


def nbship(cwd: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nbship", *args], cwd=cwd,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"nbship {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout


def layer_sizes(reference: str) -> list[int]:
    body, _, _ = oci.get_manifest(oci.Reference.parse(reference))
    return [layer["size"] for layer in json.loads(body)["layers"]]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nbship-bench-build-"))
    project = work / "project"
    (project / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / NB, project / NB)
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "bench"]):
        subprocess.run(["git", "-c", "user.email=b@example.com", "-c", "user.name=b", *args],
                       cwd=project, check=True)
    store = work / "containers"
    store.mkdir()
    (store / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\n'
                                        f'graphroot = "{store}/graph"\nrunroot = "{store}/run"\n')
    os.environ["CONTAINERS_STORAGE_CONF"] = str(store / "storage.conf")
    base_cache = Path(os.environ.setdefault(
        "NBSHIP_BASE_CACHE", str(Path(tempfile.gettempdir()) / "nbship-base-cache")))
    rootfs_cached = any(base_cache.glob("*.tar"))
    state = registry.up(work / "registry", free_port())
    try:
        out = work / "images"
        args = ["publish", NB, "--registry", state.address, "-o", str(out)]
        cold, cold_out = nbship(project, *args)
        warm, warm_out = nbship(project, *args)
        assert "(unchanged)" in warm_out, warm_out
        record = json.loads(subprocess.run(
            [sys.executable, "-m", "nbship", "release", "show", "--json",
             f"{state.address}/releases/marker-classifier"], cwd=project, capture_output=True,
            text=True, check=True).stdout)
        print(f"build and publish of {NB} (steps + server images), 2 cores; seconds")
        print(f"{'run':<34} {'seconds':>9}  target")
        print("-" * 60)
        note = "base rootfs from cache" if rootfs_cached else "debootstrap included"
        print(f"{'cold (' + note + ')':<34} {cold:9.1f}")
        print(f"{'warm (nothing changed)':<34} {warm:9.2f}  < 5 s "
              + ("met" if warm < 5 else "NOT met"))
        print()
        print(f"{'image':<14} {'base MiB':>9} {'own layer MiB':>14} {'wheels MiB':>11}  target")
        print("-" * 72)
        for name, image in sorted(record["images"].items()):
            sizes = layer_sizes(image["reference"])
            base, own = sizes[0], sum(sizes[1:])
            wheels = sum(p.stat().st_size for p in (out / name / "wheels").iterdir())
            verdict = ("<= wheels + base " + ("met" if base + own <= base + wheels
                                              else "NOT met")) if name == "nbship-steps" else ""
            print(f"{name:<14} {base / MiB:9.1f} {own / MiB:14.1f} {wheels / MiB:11.1f}  "
                  f"{verdict}")
    finally:
        registry.down(work / "registry")
        subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def free_port() -> int:
    """A free port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
