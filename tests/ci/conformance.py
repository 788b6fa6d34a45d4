"""The corpus's papermill and nbval notebooks under the tools themselves and under nbship.

    .venv/bin/python -m tests.ci.conformance      # prints the table

nbval: `pytest --nbval --nbval-current-env --nbval-sanitize-with sanitize_defaults.cfg`
against `pytest --nbship` with `nbval = "strict"` and the same sanitizer; the nbval
items must agree cell by cell. papermill: `papermill.execute_notebook` against the
`papermill[ci]` item: both pass or both fail with the same exception name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("NBSHIP_CORPUS", ROOT.parent / "shared" / "corpus"))


# papermill's own test suite interrupts this one; run plainly it sleeps 60 s (twice under
# nbship: the notebook and the pipeline), so it is left out here.
LEFT_OUT = {"keyboard_interrupt.ipynb"}


def junit_outcomes(path: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """notebook stem -> item name -> (outcome, first line of the message)."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for case in ET.parse(path).iter("testcase"):
        # classname is "<folder>.<file name>", e.g. "papermill.nb_version_4.4.ipynb"
        stem = case.get("classname", "").split(".", 1)[-1].removesuffix(".ipynb")
        child = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(
            child.tag if child is not None else "", "passed")
        message = (child.get("message", "") if child is not None else "").splitlines()
        out.setdefault(stem, {})[case.get("name", "")] = (outcome, message[0] if message
                                                          else "")
    return out


def pytest_junit(work: Path, args: list[str]) -> dict[str, dict[str, tuple[str, str]]]:
    junit = work / f"junit-{len(list(work.glob('junit-*')))}.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                    f"--junitxml={junit}", *args], cwd=work, capture_output=True, text=True,
                   timeout=1200)
    return junit_outcomes(junit)


def nbval_table(work: Path) -> list[dict[str, str]]:
    src = CORPUS / "nbval"
    nbs = work / "nbval"
    nbs.mkdir()
    for nb in sorted(src.glob("*.ipynb")):
        shutil.copy(nb, nbs / nb.name)
    shutil.copy(src / "sanitize_defaults.cfg", work / "sanitize.cfg")
    (work / "pyproject.toml").write_text('[tool.nbship]\nnbval = "strict"\n')
    sanitize = ["--nbval-sanitize-with", "sanitize.cfg"]
    plain = pytest_junit(work, ["--nbval", "--nbval-current-env", *sanitize, "nbval"])
    ours = pytest_junit(work, ["--nbship", *sanitize, "-n", "2", "--dist", "loadfile",
                               "--nbship-artifacts", "out-nbval", "nbval"])
    rows = []
    for nb in sorted(nbs.glob("*.ipynb")):
        a = {k: v[0] for k, v in plain.get(nb.stem, {}).items()}
        b = {k: v[0] for k, v in ours.get(nb.stem, {}).items() if k.startswith("Cell ")}
        extra = {k: v for k, v in ours.get(nb.stem, {}).items() if not k.startswith("Cell ")}
        failed = [k for k, v in a.items() if v != "passed"]
        rows.append({
            "notebook": nb.name,
            "nbval": "pass" if not failed else "fail: " + ", ".join(failed),
            "nbship nbval items": "same" if a == b else f"DIFFERENT: {b}",
            "check": _brief(extra.get("check")),
            "papermill": _brief(next((v for k, v in extra.items()
                                      if k.startswith("papermill")), None)),
            "equivalence": _brief(next((v for k, v in extra.items()
                                        if k.startswith("equivalence")), None)),
        })
    return rows


def _brief(result: tuple[str, str] | None) -> str:
    if result is None:
        return "-"
    outcome, message = result
    if outcome == "passed":
        return "pass"
    return f"{outcome}: {message[:200]}"


def papermill_table(work: Path) -> list[dict[str, str]]:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src = CORPUS / "papermill"
    nbs = work / "papermill"
    nbs.mkdir()
    for nb in sorted(src.glob("*.ipynb")):
        if nb.name not in LEFT_OUT:
            shutil.copy(nb, nbs / nb.name)
    ours = pytest_junit(work, ["--nbship", "-n", "2", "--dist", "loadfile",
                               "--nbship-artifacts", "out-papermill", "papermill"])
    rows = []
    for nb in sorted(nbs.glob("*.ipynb")):
        try:
            papermill.execute_notebook(str(nb), str(work / f"pm-{nb.name}"), kernel_name="python3",
                                       progress_bar=False, cwd=str(nbs))
            theirs = "pass"
        except PapermillExecutionError as exc:
            theirs = f"fail: {exc.ename}"
        except Exception as exc:  # papermill refuses some inputs before running
            theirs = f"fail: {type(exc).__name__}"
        items = ours.get(nb.stem, {})
        pm = next((v for k, v in items.items() if k.startswith("papermill")), None)
        if pm is None:
            mine = _brief(items.get("check")) if items else "not collected"
        elif pm[0] == "passed":
            mine = "pass"
        else:
            mine = "fail: " + pm[1].split(": ")[1].split(":")[0] if ": " in pm[1] else pm[1]
        rows.append({
            "notebook": nb.name,
            "papermill": theirs,
            "nbship papermill item": mine,
            "check": _brief(items.get("check")),
            "equivalence": _brief(next((v for k, v in items.items()
                                        if k.startswith("equivalence")), None)),
        })
    return rows


def print_table(rows: list[dict[str, str]]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(row[k].replace("|", "/") for k in keys) + " |")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print_table(nbval_table(work))
        print()
        print_table(papermill_table(work))


if __name__ == "__main__":
    main()
