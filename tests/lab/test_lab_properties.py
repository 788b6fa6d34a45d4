"""The lab extension's endpoints against generated requests (hypothesis), in a real
`jupyter server`: whatever the body (any bytes, any JSON, objects with any kind, path
and content), the query string (any bytes) or the job id, the answer is never a 5xx,
and a 4xx says why in JSON (``{"message": ...}``).

The budget is bounded (NBSHIP_HYPOTHESIS_EXAMPLES, default 40, times the factor per
property below); derandomized unless NBSHIP_HYPOTHESIS_RANDOM is set.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_for, write_notebook
from tests.lab.test_server_extension import TOKEN, call, jupyter

EXAMPLES = int(os.environ.get("NBSHIP_HYPOTHESIS_EXAMPLES", "40"))
SETTINGS = dict(deadline=None, database=None,
                derandomize="NBSHIP_HYPOTHESIS_RANDOM" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow])

# the notebooks of the served folder; jobs only ever start on broken.ipynb, which ends at
# once (`nbship run` and `nbship test` refuse it): the property costs no pipeline run
NOTEBOOKS = ["quick.ipynb", "sub/quick.ipynb", "broken.ipynb"]
PATHS = NOTEBOOKS + ["../outside.ipynb", "/etc/passwd", "sub", "quick.py", "", "/",
                     "sub/../quick.ipynb", "--junit=/tmp/x.ipynb", "@quick.ipynb",
                     "-x.ipynb", "link.ipynb", "loop.ipynb", "%s%n.ipynb", "a\0.ipynb",
                     "\ud800.ipynb", "a" * 300 + ".ipynb", "sub/" * 2000 + "q.ipynb"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
TAGS = st.sampled_from(["step:train", "step:Bad Name", "imports", "functions",
                        "parameters", "pipeline-metrics", "skip", "serve", "prev:train",
                        "prev:nowhere", "limit:memory:1Gi", "image:x", "weird", "step:"])
SOURCES = (st.text(max_size=60) | st.sampled_from([
    "x = 1", "import os\n", "def f(:\n", "print(y)", "%time x = 2", "!ls", "return 1",
    "x = " + " + ".join(["1"] * 50), "lr = 0.1\nepochs = 3", "accuracy = 0.9"]))
CELLS = st.fixed_dictionaries(
    {"cell_type": st.sampled_from(["code", "markdown", "raw"]),
     "source": SOURCES | st.lists(SOURCES, max_size=3),
     "metadata": st.fixed_dictionaries({}, optional={"tags": st.lists(TAGS, max_size=3)
                                                     | JSON})},
    optional={"outputs": st.just([]) | JSON, "execution_count": st.none() | JSON,
              "id": st.text(max_size=10) | JSON})
CONTENT = (JSON | st.fixed_dictionaries(
    {"cells": st.lists(CELLS, max_size=5) | JSON,
     "nbformat": st.sampled_from([4, 3, 5, "4"]) | JSON},
    optional={"nbformat_minor": st.sampled_from([0, 4, 5, 99]) | JSON,
              "metadata": st.just({"kernelspec": {"name": "python3", "language": "python",
                                                  "display_name": "Python 3"}}) | JSON}))
OBJECTS = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["run", "test", "publish", "sh", ""]) | JSON,
    "path": st.sampled_from(PATHS) | st.text(max_size=30) | JSON,
    "content": CONTENT, "registry": JSON})
BODIES = (st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode())
          | OBJECTS.map(lambda v: json.dumps(v).encode())
          | OBJECTS.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8",
                                                                             "surrogatepass")))
QUERIES = (st.binary(max_size=60).map(urllib.parse.quote_from_bytes)
           | st.text(max_size=40).map(lambda t: urllib.parse.quote(t, safe="=&%+;"))
           | st.sampled_from(PATHS).map(lambda p: "path=" + urllib.parse.quote(
               p, safe="/", errors="surrogatepass")))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A Jupyter server with the extension, rooted at a folder of small notebooks; its
    URL and the id of one finished job."""
    base = tmp_path_factory.mktemp("props")
    served = base / "served"
    (served / "sub").mkdir(parents=True)
    for name in ("quick.ipynb", "sub/quick.ipynb", "../outside.ipynb"):
        write_notebook(served / name, [(["step:one"], "x = 1"), (["step:two"], "print(x)")])
    (served / "broken.ipynb").write_text("{ not JSON")
    (served / "link.ipynb").symlink_to(base / "outside.ipynb")
    (served / "loop.ipynb").symlink_to(served / "loop.ipynb")
    with jupyter(served, base / "home") as (url, _):
        code, job = call("POST", f"{url}/nbship/jobs", {"kind": "run",
                                                        "path": "broken.ipynb"})
        assert code == 201, job
        wait_for("a job to end", lambda: call("GET", f"{url}/nbship/jobs/{job['id']}")[1][
            "status"] != "running", 120)
        yield url, job["id"]


def request(url: str, method: str, target: str, body: bytes | None = None) -> tuple[int, Any]:
    """Exactly these bytes, on a connection of its own (http.client quotes nothing)."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.putheader("Authorization", f"token {TOKEN}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        reply = conn.getresponse()
        text = reply.read()
        try:
            doc = json.loads(text)
        except ValueError:
            doc = text
        return reply.status, doc
    finally:
        conn.close()


def answered(code: int, doc: Any) -> None:
    assert code < 500, (code, doc)
    if code >= 400:
        assert isinstance(doc, dict) and isinstance(doc.get("message"), str), (code, doc)


@settings(max_examples=EXAMPLES * 5, **SETTINGS)  # type: ignore[arg-type]
@given(body=BODIES, where=st.sampled_from(["analysis", "jobs"]))
def test_any_body_is_never_a_5xx(lab: tuple[str, str], body: bytes, where: str) -> None:
    url, _ = lab
    answered(*request(url, "POST", f"/nbship/{where}", body))


@settings(max_examples=EXAMPLES * 5, **SETTINGS)  # type: ignore[arg-type]
@given(content=CONTENT, path=st.sampled_from(NOTEBOOKS))
def test_any_unsaved_notebook_is_analysed_or_refused(lab: tuple[str, str], content: Any,
                                                     path: str) -> None:
    url, _ = lab
    body = json.dumps({"path": path, "content": content}).encode()
    code, doc = request(url, "POST", "/nbship/analysis", body)
    answered(code, doc)
    assert code in (200, 400), (code, doc)


@settings(max_examples=EXAMPLES * 5, **SETTINGS)  # type: ignore[arg-type]
@given(query=QUERIES, which=st.sampled_from(["analysis", "job", "events", "jobs", "config"]),
       job_id=st.none() | st.from_regex(r"[0-9a-f]{16}", fullmatch=True))
def test_any_query_string_is_never_a_5xx(lab: tuple[str, str], query: str, which: str,
                                         job_id: str | None) -> None:
    url, finished = lab
    job = job_id or finished
    target = {"analysis": "/nbship/analysis", "job": f"/nbship/jobs/{job}",
              "events": f"/nbship/jobs/{job}/events", "jobs": "/nbship/jobs",
              "config": "/nbship/config"}[which]
    answered(*request(url, "GET", f"{target}?{query}"))


@settings(max_examples=EXAMPLES * 2, **SETTINGS)  # type: ignore[arg-type]
@given(method=st.sampled_from(["DELETE", "PUT", "PATCH", "POST"]),
       job_id=st.none() | st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
       body=st.none() | st.binary(max_size=50))
def test_any_method_on_a_job_is_never_a_5xx(lab: tuple[str, str], method: str,
                                            job_id: str | None, body: bytes | None) -> None:
    url, finished = lab
    answered(*request(url, method, f"/nbship/jobs/{job_id or finished}", body))
