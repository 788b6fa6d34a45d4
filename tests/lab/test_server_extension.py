"""nbship's Jupyter Server extension, in a real `jupyter server` on 127.0.0.1: the
analysis of saved and unsaved notebooks, runs and tests with their output as
server-sent events, Jupyter's own authentication, and nothing outside the notebook a
request names."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import ROOT, SHOWCASE, wait_for, write_notebook
from tests.release.conftest import free_port

TOKEN = "lab-test-token"
NB = "notebooks/marker_classifier.ipynb"


@contextlib.contextmanager
def jupyter(served: Path, home: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Jupyter server with the extension enabled, rooted at ``served``; its URL."""
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"nbship.lab": True}}}))
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
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Jupyter server with the extension enabled, rooted at a copy of the showcase."""
    root = tmp_path_factory.mktemp("lab")
    (root / "outside.ipynb").write_bytes(SHOWCASE.read_bytes())  # beside the served folder
    home = tmp_path_factory.mktemp("jupyter")
    served = root / "served"
    (served / "notebooks").mkdir(parents=True)
    shutil.copy(SHOWCASE, served / NB)
    shutil.copy(ROOT / "pyproject.toml", served)  # a checkout: the notebook's test settings
    (served / "escape.ipynb").symlink_to(root / "outside.ipynb")  # a link out of the root
    with jupyter(served, home) as (url, _):
        yield url, served


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


# --- jobs: what a request may make the server run, and for how long ----------------------

def raw(method: str, url: str, body: bytes | None = None, token: str | None = TOKEN
        ) -> tuple[int, Any]:
    """A request with these exact bytes as its body (urllib as a client, JSON or text back)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as reply:
            text = reply.read().decode(errors="replace")
            return reply.status, json.loads(text) if text.startswith("{") else text
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        return err.code, json.loads(text) if text.startswith("{") else text


def sleeper(folder: Path, name: str, seconds: int = 300) -> str:
    """A two-step notebook whose first step sleeps: a job that stays running, cheaply (a
    token in its code: never from the cache)."""
    write_notebook(folder / f"{name}.ipynb", [
        (["step:wait"], f"import time\ntime.sleep({seconds})  # {secrets.token_hex(4)}\nx = 1"),
        (["step:after"], "print(x)")])
    return f"{name}.ipynb"


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of this machine's live processes."""
    found: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":  # zombies have ended
            found[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return found


def leader(notebook: str) -> int | None:
    """The pid of the `nbship run NOTEBOOK` a job started."""
    return next((pid for pid, (_, _, cmd) in processes().items()
                 if f"-m nbship run {notebook}" in cmd), None)


def tree(pid: int) -> set[int]:
    """``pid`` and its descendants, alive."""
    procs = processes()
    found, more = set(), {pid} & set(procs)
    while more:
        found |= more
        more = {p for p, (ppid, _, _) in procs.items() if ppid in more} - found
    return found


def group(pgid: int) -> set[int]:
    return {pid for pid, (_, g, _) in processes().items() if g == pgid}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Jupyter server with the extension, rooted at a folder of small notebooks."""
    served = tmp_path_factory.mktemp("small")
    write_notebook(served / "quick.ipynb", [(["step:one"], "x = 1"),
                                            (["step:two"], "print(x)")])
    with jupyter(served, tmp_path_factory.mktemp("jupyter")) as (url, _):
        yield url, served


def test_a_path_like_an_option_never_becomes_one(tmp_path: Path) -> None:
    """`--junit=OUT/x.ipynb` made `nbship test` write its JUnit XML outside the root; an
    `@FILE` path made pytest read its options from FILE. Such paths are refused."""
    served, out = tmp_path / "served", tmp_path / "outside"
    served.mkdir()
    cases = [("test", f"--junit={out}/x.ipynb"), ("run", f"--output={out}/y.ipynb"),
             ("test", "@args.ipynb"), ("test", "-n1.ipynb")]
    for _, path in cases:
        (served / path).parent.mkdir(parents=True, exist_ok=True)
        write_notebook(served / path, [(["step:one"], "x = 1")])
    (served / "args.ipynb").write_text(f"--junitxml={out}/args.xml\n")  # pytest's @FILE
    (served / "notebooks").mkdir()  # what `nbship test` tests without a path
    write_notebook(served / "notebooks" / "one.ipynb", [(["step:one"], "x = 1")])
    with jupyter(served, tmp_path / "home") as (url, _):
        for kind, path in cases:
            code, doc = call("POST", f"{url}/nbship/jobs", {"kind": kind, "path": path})
            if code == 201:  # what it did
                events(f"{url}/nbship/jobs/{doc['id']}/events")
            assert not out.exists(), f"{kind} {path!r} wrote {sorted(out.rglob('*'))}"
            assert code == 400 and "option" in doc["message"], (kind, path, doc)
    assert not out.exists()


@pytest.mark.parametrize("method,at,body", [
    ("GET", "jobs/JOB?since=%C2%B2", None),  # ²: str.isdigit() says yes
    ("GET", "jobs/JOB?since=%D9%A1", None),  # Arabic-Indic 1
    ("GET", "jobs/JOB?since=" + "9" * 5000, None),
    ("POST", "jobs", b'{"kind": ["run"], "path": "quick.ipynb"}'),
    ("POST", "jobs", b'{"kind": {"run": 1}, "path": "quick.ipynb"}'),
    ("POST", "jobs", b'{"kind": "run", "path": ["quick.ipynb"]}'),
    ("POST", "jobs", b'{"kind": "run", "path": 7}'),
    ("POST", "jobs", b'{"kind": "run"}'),
    ("POST", "jobs", b'{"path": "quick.ipynb"}'),
    ("POST", "jobs", b'{"kind": "run", "path": "\\ud800.ipynb"}'),
    ("POST", "jobs", b'{"kind": "run", "path": "' + b"a" * 5000 + b'.ipynb"}'),
    ("POST", "jobs", b'{"kind": "run", "path": "' + b"a/" * 3000 + b'a.ipynb"}'),
    ("POST", "jobs", b'["run", "quick.ipynb"]'),
    ("POST", "jobs", b'"run"'),
    ("POST", "jobs", b"null"),
    ("POST", "jobs", b"\xff\xfe\x00{"),
    ("POST", "jobs", b"{\"kind\": \"run\", \"path\": \"quick\xff.ipynb\"}"),
    ("POST", "jobs", b"[" * 100_000),
    ("POST", "analysis", b'{"path": "quick.ipynb", "content": {"cells": "x", "nbformat": 4}}'),
    ("POST", "analysis", b'{"path": "quick.ipynb", "content": ' + b"[" * 100_000 + b"}"),
    ("POST", "analysis", b'{"path": "quick.ipynb", "content": {"cells": [], "nbformat": 4, '
                         b'"nbformat_minor": 5, "metadata": {}}}'),  # its last cell deleted
    ("POST", "analysis", b'{"path": "quick.ipynb"}'),
    ("POST", "analysis", b'{"path": {}, "content": {}}'),
    ("POST", "analysis", b"[]"),
    ("GET", "analysis?path=%ff.ipynb", None),
    ("GET", "analysis?path=%ed%a0%80.ipynb", None),
    ("GET", "analysis?path=" + "a" * 5000 + ".ipynb", None),
    ("GET", "analysis", None),
    ("DELETE", "jobs/0123456789abcdef", None),
])
def test_every_bad_input_is_a_4xx_with_a_message(small: tuple[str, Path], method: str,
                                                 at: str, body: bytes | None) -> None:
    url, _ = small
    if "JOB" in at:
        code, job = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": "quick.ipynb"})
        if code == 409:  # one still running from a case before
            job = job["job"]
        at = at.replace("JOB", job["id"])
    code, doc = raw(method, f"{url}/nbship/{at}", body)
    assert 400 <= code < 500, (code, doc)
    assert isinstance(doc, dict) and doc.get("message"), doc


def test_one_job_per_notebook_and_a_cap_on_the_server(small: tuple[str, Path]) -> None:
    url, root = small
    names = [sleeper(root, f"busy-{n}", 120) for n in range(5)]
    started: list[str] = []
    wait_for("the jobs of the tests before to end", lambda: not any(
        j["status"] == "running" for j in call("GET", f"{url}/nbship/jobs")[1]["jobs"]), 120)
    try:
        code, first = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": names[0]})
        assert code == 201
        started.append(first["id"])
        for kind in ("run", "test"):  # whatever the kind: that notebook is busy
            code, doc = call("POST", f"{url}/nbship/jobs", {"kind": kind, "path": names[0]})
            assert code == 409 and first["id"] in doc["message"], doc
        for name in names[1:4]:
            code, job = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": name})
            assert code == 201, job
            started.append(job["id"])
        code, doc = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": names[4]})
        assert code == 429 and "4 jobs" in doc["message"], doc
        code, listing = call("GET", f"{url}/nbship/jobs")
        assert code == 200 and {j["id"] for j in listing["jobs"]
                                if j["status"] == "running"} == set(started)
        assert call("DELETE", f"{url}/nbship/jobs/{started.pop(0)}")[0] == 200
        code, job = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": names[4]})
        assert code == 201, job  # a place was free again
        started.append(job["id"])
    finally:
        for job_id in started:
            call("DELETE", f"{url}/nbship/jobs/{job_id}")


def test_a_job_is_cancelled_with_its_whole_process_group(small: tuple[str, Path]) -> None:
    url, root = small
    name = sleeper(root, "cancel-me")
    code, job = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": name})
    assert code == 201
    pid = wait_for("the job's process", lambda: leader(name), 60)
    assert os.getpgid(pid) == pid  # a process group of its own, not the server's
    wait_for("its step", lambda: len(group(pid)) >= 3, 120)  # the fork server and its step
    code, doc = call("DELETE", f"{url}/nbship/jobs/{job['id']}")
    assert code == 200 and doc["status"] == "cancelled" and doc["exit_code"] is not None
    wait_for("the job's processes to end", lambda: not group(pid), 30)
    code, doc = call("DELETE", f"{url}/nbship/jobs/{job['id']}")
    assert code == 409 and "already ended" in doc["message"]
    assert call("GET", f"{url}/nbship/jobs/{job['id']}")[1]["status"] == "cancelled"
    code, again = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": name})
    assert code == 201  # the notebook is free again
    assert call("DELETE", f"{url}/nbship/jobs/{again['id']}")[0] == 200


def test_the_jobs_stop_when_the_server_stops(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    name = sleeper(served, "outlive")
    with jupyter(served, tmp_path / "home") as (url, proc):
        code, job = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": name})
        assert code == 201
        pid = wait_for("the job's process", lambda: leader(name), 60)
        procs = wait_for("its step", lambda: (lambda t: t if len(t) >= 3 else None)(
            tree(pid)), 120)
        proc.terminate()
        proc.wait(60)
    wait_for("the job's processes to end", lambda: not (tree(pid) & procs), 10)


def test_open_event_streams_do_not_starve_other_requests(small: tuple[str, Path]) -> None:
    """40 clients following a quiet job: the analysis still answers at once."""
    url, root = small
    name = sleeper(root, "streamed")
    code, job = call("POST", f"{url}/nbship/jobs", {"kind": "run", "path": name})
    assert code == 201
    host, port = url.removeprefix("http://").split(":")
    streams = []
    try:
        for _ in range(40):
            s = socket.create_connection((host, int(port)), timeout=60)
            s.sendall(f"GET /nbship/jobs/{job['id']}/events HTTP/1.1\r\nHost: {host}\r\n"
                      f"Authorization: token {TOKEN}\r\n\r\n".encode())
            streams.append(s)
        time.sleep(3)  # every stream open and waiting
        took = []
        for _ in range(3):
            started = time.monotonic()
            code, doc = call("GET", f"{url}/nbship/analysis?path=quick.ipynb")
            took.append(time.monotonic() - started)
            assert code == 200, doc
        assert max(took) < 1.0, took
    finally:
        call("DELETE", f"{url}/nbship/jobs/{job['id']}")
    for s in streams:  # and each stream saw the job end
        got = b""
        while b"event: end" not in got:
            chunk = s.recv(65536)
            assert chunk, got[-500:]
            got += chunk
        assert b'"status": "cancelled"' in got.split(b"event: end", 1)[1]
        s.close()
