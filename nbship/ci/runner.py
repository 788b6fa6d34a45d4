"""``nbship test``: the pytest plugin through a friendly command.

Runs ``python -m pytest --nbship PATHS`` in parallel (pytest-xdist, one worker per
notebook up to ``-n``; ``--dist loadfile`` keeps a notebook's items together, and
each worker's kernels bind ports jupyter_client picks at random, so workers do not
clash), writes JUnit XML, and keeps every executed notebook with an HTML render
next to it under the artifacts folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nbship.ci.plugin import ARTIFACTS_DEFAULT
from nbship.errors import UnusableInputError
from nbship.files import write_atomic


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


def render_html(notebooks_dir: Path) -> list[Path]:
    """An HTML page beside each executed notebook (nbconvert), for people to open."""
    if not notebooks_dir.is_dir():
        return []
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    written = []
    for nb in sorted(notebooks_dir.glob("*.ipynb")):
        body, _ = exporter.from_filename(str(nb))
        html = nb.with_suffix(".html")
        write_atomic(html, body)
        written.append(html)
    return written


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
    cmd = [sys.executable, "-m", "pytest", "--nbship", *map(str, notebooks),
           "--nbship-artifacts", str(artifacts), f"--junitxml={junit}",
           "-o", "junit_family=xunit2", "-p", "no:cacheprovider", "-q", "-rfEs"]
    if parameter_set:
        cmd += ["--nbship-set", parameter_set]
    if n > 1:
        cmd += ["-n", str(n), "--dist", "loadfile"]
    cmd += extra or []
    print(f"nbship test: {count} notebook(s), {n} worker(s): check, nbval, papermill, "
          "equivalence", flush=True)
    code = subprocess.call(cmd)
    pages = render_html(artifacts / "notebooks") if html else []
    print(f"JUnit XML:          {junit}")
    print(f"executed notebooks: {artifacts / 'notebooks'} ({len(pages)} with HTML)")
    return code
