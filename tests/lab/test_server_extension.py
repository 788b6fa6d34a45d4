"""nbship's Jupyter Server extension, in a real `jupyter server` on 127.0.0.1: the
analysis of saved and unsaved notebooks, runs and tests with their output as
server-sent events, Jupyter's own authentication, and nothing outside the notebook a
request names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import ROOT, SHOWCASE, wait_for
from tests.release.conftest import free_port

TOKEN = "lab-test-token"
NB = "notebooks/marker_classifier.ipynb"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Jupyter server with the extension enabled, rooted at a copy of the showcase."""
    root = tmp_path_factory.mktemp("lab")
    (root / "outside.ipynb").write_bytes(SHOWCASE.read_bytes())  # beside the served folder
    home = tmp_path_factory.mktemp("jupyter")
    (home / "config").mkdir()
    (home / "config" / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"nbship.lab": True}}}))
    served = root / "served"
    (served / "notebooks").mkdir(parents=True)
    shutil.copy(SHOWCASE, served / NB)
    shutil.copy(ROOT / "pyproject.toml", served)  # a checkout: the notebook's test settings
    (served / "escape.ipynb").symlink_to(root / "outside.ipynb")  # a link out of the root
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={served}", "--ServerApp.open_browser=False",
         "--ServerApp.port_retries=0", "--ServerApp.allow_root=True"],
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
             "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "rt")},
        stdout=subprocess.DEVNULL, stderr=open(home / "server.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the Jupyter server", lambda: status(f"{url}/api/status") == 200, 120)
        yield url, served
    finally:
        proc.terminate()
        proc.wait(30)


def status(url: str, token: str | None = TOKEN) -> int:
    try:
        return call("GET", url, token=token)[0]
    except OSError:
        return 0


def call(method: str, url: str, body: Any = None, token: str | None = TOKEN
         ) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as reply:
            text = reply.read().decode()
            return reply.status, json.loads(text) if text.startswith(("{", "[")) else text
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        return err.code, json.loads(text) if text.startswith("{") else text


def events(url: str) -> list[tuple[str, Any]]:
    """The server-sent events of a job, to its end."""
    req = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    out: list[tuple[str, Any]] = []
    with urllib.request.urlopen(req, timeout=600) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        kind = ""
        for raw in reply:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[len("data: "):])))
    return out


def test_without_the_token_nothing_answers_and_nothing_runs(server: tuple[str, Path]) -> None:
    url, root = server
    assert call("GET", f"{url}/nbship/analysis?path={NB}", token=None)[0] == 403
    assert call("GET", f"{url}/nbship/analysis?path={NB}", token="wrong")[0] == 403
    code, _ = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": NB}, token=None)
    assert code == 403
    assert not (root / ".nbship").exists()  # no run started


def test_the_analysis_of_the_saved_notebook(server: tuple[str, Path]) -> None:
    url, _ = server
    code, doc = call("GET", f"{url}/nbship/analysis?path={NB}")
    assert code == 200, doc
    assert [s["name"] for s in doc["steps"]] == ["load", "preprocess", "train", "evaluate",
                                                 "validate"]
    assert doc["path"] == NB and doc["problems"] == []
    assert doc["mermaid"].startswith("flowchart") or "graph" in doc["mermaid"]
    assert set(doc["parameters"]) == {"epochs", "lr", "seed", "threshold", "data_dir"}
    assert doc["metrics"] == {"accuracy": "evaluate", "loss": "evaluate"}  # and their step


def test_an_unsaved_mistake_is_named_on_its_cell_and_line_as_the_cli_names_it(
        server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    nb = nbformat.read(root / NB, 4)
    train = next(i for i, c in enumerate(nb.cells) if "step:train" in c.metadata.get("tags", []))
    nb.cells[train].source += "\nprint(learning_rate)"
    code, doc = call("POST", f"{url}/nbship/analysis", {"path": NB, "content": nb})
    assert code == 200, doc
    problem = next(p for p in doc["problems"] if "learning_rate" in p["message"])
    assert problem["cell"] == train
    assert problem["line"] == nb.cells[train].source.count("\n") + 1
    # the CLI's words for the same notebook
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / NB)
    cli = subprocess.run([sys.executable, "-m", "nbship", "check", NB, "--format", "json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert json.loads(cli.stdout)["problems"] == doc["problems"]
    assert not (root / NB).read_text().count("learning_rate")  # nothing was saved


@pytest.mark.parametrize("path", ["../outside.ipynb", "/etc/passwd.ipynb", "escape.ipynb",
                                  "notebooks/missing.ipynb", "notebooks/x.py", ""])
def test_nothing_outside_the_root_or_not_a_notebook(server: tuple[str, Path],
                                                    path: str) -> None:
    url, root = server
    code, _ = call("GET", f"{url}/nbship/analysis?path={urllib.request.quote(path)}")
    assert code == 404
    code, _ = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": path})
    assert code == 404
    code, _ = call("POST", f"{url}/nbship/jobs", {"kind": "sh -c id", "path": NB})
    assert code == 400


def test_a_bad_notebook_is_a_message_not_a_traceback(server: tuple[str, Path]) -> None:
    url, _ = server
    code, doc = call("POST", f"{url}/nbship/analysis",
                     {"path": NB, "content": {"cells": [], "nbformat": 3}})
    assert code == 400 and doc["message"].startswith(f"{NB}: nbformat 3 is not supported")


@pytest.mark.slow
def test_run_then_test_from_the_server_with_their_output_as_events(
        server: tuple[str, Path]) -> None:
    url, root = server
    code, job = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": NB})
    assert code == 201 and job["status"] == "running"
    got = events(f"{url}/nbship/jobs/{job['id']}/events")
    lines = [data for kind, data in got if kind == "line"]
    end = [data for kind, data in got if kind == "end"][0]
    assert end["status"] == "succeeded", "\n".join(lines)
    assert any(line.startswith("SUCCESS in") for line in lines)
    assert any("metrics: accuracy=" in line for line in lines)
    assert (root / ".nbship" / "runs" / "marker-classifier").is_dir()  # in the root
    code, again = call("GET", f"{url}/nbship/jobs/{job['id']}?since=2")
    assert code == 200 and again["lines"] == lines[2:]
    assert call("GET", f"{url}/nbship/jobs/{job['id']}?since=two")[0] == 400
    code, test = call("POST", f"{url}/nbship/jobs", {"kind": "test", "path": NB})
    got = events(f"{url}/nbship/jobs/{test['id']}/events")
    end = [data for kind, data in got if kind == "end"][0]
    assert end["status"] == "succeeded", "\n".join(d for k, d in got if k == "line")
    assert any("passed" in d for k, d in got if k == "line")


def test_publish_only_to_the_registry_the_project_configured(server: tuple[str, Path]) -> None:
    url, root = server
    code, config = call("GET", f"{url}/nbship/config")
    assert code == 200 and config["registry"] is None
    code, doc = call("POST", f"{url}/nbship/jobs", {"kind": "publish", "path": NB,
                                                    "registry": "evil.example.com"})
    assert code == 409 and "no registry to publish to" in doc["message"]
    pyproject = root / "pyproject.toml"
    before = pyproject.read_text()
    try:
        pyproject.write_text('[tool.nbship]\nregistry = "127.0.0.1:1"\n' + before)
        assert call("GET", f"{url}/nbship/config")[1]["registry"] == "127.0.0.1:1"
        code, job = call("POST", f"{url}/nbship/jobs", {"kind": "publish", "path": NB,
                                                        "registry": "evil.example.com"})
        assert code == 201
        assert job["command"] == ["nbship", "publish", NB, "--registry", "127.0.0.1:1"]
        got = events(f"{url}/nbship/jobs/{job['id']}/events")
        end = [data for kind, data in got if kind == "end"][0]
        assert end["status"] == "failed"  # the served folder is no git repository
        assert any("is not in a git repository" in d for k, d in got if k == "line")
    finally:
        pyproject.write_text(before)
