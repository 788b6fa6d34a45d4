"""`nbship kfp --host` over HTTP, against real servers on 127.0.0.1 (issue 17 §8): the bearer
token goes only to the origin it was given for, and an API that does not answer is an
error naming the host and the timeout, soon."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbship import jsonhttp
from nbship.pipelines.kfp_remote import Auth, KfpError, Remote
from tests.conftest import ROOT, serving

TOKEN = "s3cret-t0ken"


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request ``{}`` (what kfp-server-api's models read as empty) and keeps
    (method, path, headers) in the server's ``seen``."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


def redirecting_to(target: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
            self.send_response(302)
            self.send_header("Location", target + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_DELETE = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    return Redirect


def _server(handler: type[http.server.BaseHTTPRequestHandler]) -> Any:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    return server


@pytest.fixture
def origin_and_elsewhere() -> Iterator[tuple[str, Any, Any]]:
    """The KFP --host (a 302 for every request) and the other port it sends them to."""
    with serving(_server(Recorder)) as elsewhere:
        target = f"http://127.0.0.1:{elsewhere.server_address[1]}"
        with serving(_server(redirecting_to(target))) as origin:
            yield f"http://127.0.0.1:{origin.server_address[1]}", origin, elsewhere


def _authorized(seen: list[tuple[str, str, dict[str, str]]]) -> list[str]:
    return [path for _, path, headers in seen
            if any(k.lower() in ("authorization", "cookie") for k in headers)]


def test_a_redirect_to_another_port_gets_no_token(
        origin_and_elsewhere: tuple[str, Any, Any]) -> None:
    """The probe (urllib) and every API call (kfp-server-api's urllib3) follow the 302 to
    another port of 127.0.0.1 without the bearer token; the origin got it."""
    host, origin, elsewhere = origin_and_elsewhere
    remote = Remote(host, Auth(token=TOKEN), echo=lambda _: None)
    remote.status("marker-classifier", "marker-classifier")
    paths = [path for _, path, _ in elsewhere.seen]
    assert any(p.startswith("/apis/v2beta1/healthz") for p in paths), paths
    assert any(p.startswith("/apis/v2beta1/pipelines") for p in paths), paths
    assert _authorized(elsewhere.seen) == []
    assert len(_authorized(origin.seen)) == len(origin.seen) > 1


def test_a_session_cookie_stays_at_its_origin_too(
        origin_and_elsewhere: tuple[str, Any, Any]) -> None:
    """Issue 20 (10): --cookies (kfp.Client's cookies=) is sent to the origin, by the
    probe and by kfp-server-api, and never after a redirect to another port."""
    host, origin, elsewhere = origin_and_elsewhere
    remote = Remote(host, Auth(cookies="authservice_session=s"), echo=lambda _: None)
    remote.status("marker-classifier", "marker-classifier")
    assert elsewhere.seen and _authorized(elsewhere.seen) == []
    cookies = [h.get("Cookie") for _, _, h in origin.seen]
    assert len(cookies) > 1 and set(cookies) == {"authservice_session=s"}


def test_the_cli_keeps_the_token_at_its_origin(
        origin_and_elsewhere: tuple[str, Any, Any]) -> None:
    host, origin, elsewhere = origin_and_elsewhere
    done = subprocess.run([sys.executable, "-m", "nbship", "kfp", "status", "marker-classifier",
                           "--host", host], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "KFP_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert elsewhere.seen and _authorized(elsewhere.seen) == []
    assert _authorized(origin.seen)


@pytest.fixture
def silent() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_api_that_never_answers_is_a_message_naming_host_and_timeout(silent: str) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nbship", "kfp", "status", "marker-classifier",
                           "--host", silent, "--read-timeout", "0.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KFP_TOKEN": TOKEN})
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the KFP API at {silent} did not answer within 0.5 s (read timeout)" in done.stderr
    assert "Traceback" not in done.stderr
    assert took < 30, took  # the interpreter and kfp's import, then half a second


class HealthyThenSilent(http.server.BaseHTTPRequestHandler):
    """healthz answers; every other call hangs until the test lets it go."""

    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/apis/v2beta1/healthz"):
            body = json.dumps({"multi_user": False}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.release.wait(60)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


def test_every_api_call_has_a_read_timeout() -> None:
    """Not only the probe: a call after it (kfp-server-api, urllib3) that gets no answer
    ends at the read timeout with the host named, however long the API would take."""
    HealthyThenSilent.release.clear()
    server = _server(HealthyThenSilent)
    outcome: list[BaseException | None] = []
    with serving(server):
        host = f"http://127.0.0.1:{server.server_address[1]}"
        remote = Remote(host, echo=lambda _: None,
                        timeouts=jsonhttp.Timeouts(connect=2, read=0.5))

        def call() -> None:
            try:
                remote.status("marker-classifier", "marker-classifier")
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        started = time.monotonic()
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(20)
        HealthyThenSilent.release.set()
        assert not worker.is_alive(), "the call hung past 20 s"
        took = time.monotonic() - started
    assert isinstance(outcome[0], KfpError), outcome
    assert outcome[0].message == (f"the KFP API at {host} did not answer within 0.5 s "
                                  "(read timeout)")
    assert took < 5, took  # one try: a call the API did not answer is not repeated


def test_the_timeouts_are_checked_on_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "nbship", "kfp", "status", "x", "--host",
                           "http://127.0.0.1:9", "--read-timeout", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "seconds above 0" in done.stderr, done.stderr


# --- properties of the redirect rule, without a network ------------------------------

_hosts = st.sampled_from(["127.0.0.1", "localhost", "kfp.example.com", "KFP.example.com",
                          "evil.example.net", "[::1]"])
_ports = st.one_of(st.none(), st.sampled_from([80, 443, 8080, 8443]))
_schemes = st.sampled_from(["http", "https"])


def _url(scheme: str, host: str, port: int | None, path: str) -> str:
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"


@settings(max_examples=300, deadline=None)
@given(_schemes, _hosts, _ports, _schemes, _hosts, _ports,
       st.sampled_from(["/", "/apis/v2beta1/healthz", "/a?b=c"]),
       st.sampled_from([301, 302, 303, 307, 308]))
def test_credentials_follow_a_redirect_only_to_the_same_origin(
        s1: str, h1: str, p1: int | None, s2: str, h2: str, p2: int | None, path: str,
        code: int) -> None:
    first = _url(s1, h1, p1, "/start")
    then = _url(s2, h2, p2, path)
    req = urllib.request.Request(first, headers={"Authorization": "Bearer x", "Cookie": "c=1",
                                                 "Accept": "application/json"})
    new = jsonhttp._OriginBoundRedirects().redirect_request(req, None, code, "", {}, then)
    assert new is not None
    kept = {k.lower() for k in [*new.headers, *new.unredirected_hdrs]}
    default = {"http": 80, "https": 443}
    same = (s1, h1.lower(), p1 or default[s1]) == (s2, h2.lower(), p2 or default[s2])
    assert ("authorization" in kept) == same and ("cookie" in kept) == same
    assert "accept" in kept


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A port whose accept queue is full: a new connection is never made (the kernel drops
    the SYN), which is how an unreachable or overloaded API looks."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        port = sock.getsockname()[1]
        waiting = []
        for _ in range(4):
            client = socket.socket()
            client.settimeout(0.3)
            try:
                client.connect(("127.0.0.1", port))
            except OSError:
                client.close()
                break
            waiting.append(client)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            for client in waiting:
                client.close()


def test_a_connection_never_made_is_a_connect_timeout(full_backlog: str) -> None:
    started = time.monotonic()
    with pytest.raises(KfpError) as caught:
        Remote(full_backlog, echo=lambda _: None, timeouts=jsonhttp.Timeouts(0.5, 30))
    assert caught.value.message == (f"the KFP API at {full_backlog} did not connect within "
                                    "0.5 s (connect timeout)")
    assert time.monotonic() - started < 5


def test_a_call_redirected_to_where_no_connection_is_made_ends_too(full_backlog: str) -> None:
    """healthz answers at the origin; the next call is redirected to the full port:
    kfp-server-api's urllib3 gives up after its connect timeouts (three tries)."""
    class Handler(HealthyThenSilent):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/apis/v2beta1/healthz"):
                super().do_GET()
                return
            self.send_response(302)
            self.send_header("Location", full_backlog + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(_server(Handler)) as server:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        remote = Remote(host, echo=lambda _: None, timeouts=jsonhttp.Timeouts(0.5, 30))
        started = time.monotonic()
        with pytest.raises(KfpError, match=r"did not connect within 0.5 s \(connect timeout\)"):
            remote.status("marker-classifier", "marker-classifier")
        assert time.monotonic() - started < 10
