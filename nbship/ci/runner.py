"""``nbship test``: the pytest plugin through a friendly command.

Runs ``python -m pytest --nbship PATHS`` in parallel (pytest-xdist, one worker per
notebook up to ``-n``; ``--dist loadfile`` keeps a notebook's items together, and
each worker's kernels bind ports jupyter_client picks at random, so workers do not
clash), writes JUnit XML, and keeps every executed notebook with an HTML render
next to it under the artifacts folder (the plugin renders each page while the
notebook's pipeline runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nbship.ci.plugin import ARTIFACTS_DEFAULT
from nbship.errors import UnusableInputError


def find_notebooks(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UnusableInputError("no such file or folder", hint=f"nbship test {path}")
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*.ipynb"))
                         if ".ipynb_checkpoints" not in p.parts and ".nbship" not in p.parts)
        else:
            found.append(path)
    return found


def run_tests(paths: list[Path], *, workers: str = "auto", parameter_set: str | None = None,
              artifacts: Path = Path(ARTIFACTS_DEFAULT), junit: Path | None = None,
              html: bool = True, extra: list[str] | None = None) -> int:
    notebooks = find_notebooks(paths)
    if not notebooks:
        raise UnusableInputError("no notebooks (.ipynb) found under " +
                                 ", ".join(str(p) for p in paths))
    junit = junit or artifacts / "junit.xml"
    count = len(notebooks)
    n = (os.cpu_count() or 1) if workers == "auto" else int(workers)
    n = max(1, min(n, count))
    cmd = [sys.executable, "-m", "pytest", "-p", "nbship.ci.fast_imports",
           "--nbship", *map(str, notebooks),
           "--nbship-artifacts", str(artifacts), f"--junitxml={junit}",
           "-o", "junit_family=xunit2", "-p", "no:cacheprovider", "-q", "-rfEs"]
    if not html:
        cmd += ["--nbship-no-html"]
    if parameter_set:
        cmd += ["--nbship-set", parameter_set]
    if n > 1:
        cmd += ["-n", str(n), "--dist", "loadfile"]
    cmd += extra or []
    print(f"nbship test: {count} notebook(s), {n} worker(s): check, nbval, papermill, "
          "equivalence", flush=True)
    code = subprocess.call(cmd)
    pages = sorted((artifacts / "notebooks").glob("*.html"))
    print(f"JUnit XML:          {junit}")
    print(f"executed notebooks: {artifacts / 'notebooks'} ({len(pages)} with HTML)")
    return code
