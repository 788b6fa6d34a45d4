"""The traffic split in front of an InferenceService's revisions: exact proportions,
weights that move at once, draining before a revision stops, 503 with no revision."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from nbship.serving.router import Router
from tests.conftest import serving


class Tagged(http.server.BaseHTTPRequestHandler):
    """Answers its server's tag, after the server's delay."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(getattr(self.server, "delay", 0.0))
        out = getattr(self.server, "tag", "?").encode() + b":" + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


def upstream(tag: str, delay: float = 0.0) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tagged)
    server.tag, server.delay = tag, delay  # type: ignore[attr-defined]
    return server


@pytest.fixture
def router() -> Iterator[Router]:
    r = Router()
    r.start()
    try:
        yield r
    finally:
        r.stop()


def post(url: str, body: bytes = b"x") -> str:
    with urllib.request.urlopen(urllib.request.Request(url + "/v2/models/m/infer", data=body,
                                                       method="POST"), timeout=10) as reply:
        return str(reply.read().decode())


def test_ten_percent_is_every_tenth_request_and_moves_at_once(router: Router) -> None:
    with serving(upstream("stable")) as a, serving(upstream("canary")) as b:
        ua, ub = (f"http://127.0.0.1:{s.server_address[1]}" for s in (a, b))
        router.route({ua: 90, ub: 10})
        answers = [post(router.url, b"%d" % i) for i in range(50)]
        assert {a.split(":")[1] for a in answers} == {str(i) for i in range(50)}  # bodies pass
        answers = [a.split(":")[0] for a in answers]
        assert answers.count("canary") == 5 and answers.count("stable") == 45
        router.route({ub: 100})
        assert {post(router.url) for _ in range(10)} == {"canary:x"}
        counts = router.counts()
        assert counts[ua] == {"requests": 45, "errors": 0}
        assert counts[ub] == {"requests": 15, "errors": 0}


def test_drain_waits_for_the_last_request_in_flight(router: Router) -> None:
    with serving(upstream("slow", delay=1.0)) as a, serving(upstream("new")) as b:
        ua, ub = (f"http://127.0.0.1:{s.server_address[1]}" for s in (a, b))
        router.route({ua: 100})
        got: list[str] = []
        t = threading.Thread(target=lambda: got.append(post(router.url)))
        t.start()
        time.sleep(0.3)  # the request is at the slow upstream now
        router.route({ub: 100})
        started = time.monotonic()
        assert router.drain(ua, timeout=10)
        assert time.monotonic() - started > 0.4  # it waited for the answer
        t.join(5)
        assert got == ["slow:x"]
        assert post(router.url) == "new:x"


def test_no_revision_is_a_503_and_a_dead_one_a_502(router: Router) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        post(router.url)
    assert err.value.code == 503
    router.route({"http://127.0.0.1:9": 100})  # nothing listens on the discard port
    with pytest.raises(urllib.error.HTTPError) as err:
        post(router.url)
    assert err.value.code == 502
    assert router.counts()["http://127.0.0.1:9"]["errors"] == 1
