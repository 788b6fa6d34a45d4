"""The small JSON-over-HTTP servers nbship runs on 127.0.0.1 (the retraining trigger, the
scheduler's webhook): one request handler base for their replies; and ``open_url``, the
client every request nbship makes itself goes through (credentials bound to their
origin, connect and read timeouts)."""

from __future__ import annotations

import http.client
import http.server
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class JSONHandler(http.server.BaseHTTPRequestHandler):
    """Replies are JSON documents; requests are not logged to stderr."""

    def reply(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


# The client side: the HTTP requests nbship makes itself (the KFP API's health check, the
# registry's manifests, blobs and tokens). Two rules hold for every one of them:
#
# * credentials stay with their origin: a redirect to another scheme, host or port drops
#   Authorization, Cookie and Proxy-Authorization (urllib keeps them; a 302 to another
#   host would carry a bearer token there);
# * every request has a connect timeout and a read timeout (urllib has one timeout for
#   both, and none unless asked): a peer that accepts and never answers is a TimedOut
#   naming the timeout, not a hang.

CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port made explicit: what credentials are bound to."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): plain HTTP never leaves the
    machine there."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for a connection, and for each read of the answer once connected."""

    connect: float = 10.0
    read: float = 60.0

    def __str__(self) -> str:
        return f"{self.connect:g} s to connect, {self.read:g} s to answer"


class TimedOut(OSError):
    """A peer did not connect or answer in time."""

    def __init__(self, url: str, phase: str, seconds: float) -> None:
        self.url, self.phase, self.seconds = url, phase, seconds
        verb = "connect" if phase == "connect" else "answer"
        super().__init__(f"{url} did not {verb} within {seconds:g} s ({phase} timeout)")


class _OriginBoundRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(new.full_url) != origin(req.full_url):
            for table in (new.headers, new.unredirected_hdrs):
                for name in [n for n in table if n.lower() in CREDENTIAL_HEADERS]:
                    del table[name]
        return new


def _timed(base: type[http.client.HTTPConnection], read: float) -> Any:
    class Timed(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()  # within the connect timeout (and TLS's handshake with it)
            self.sock.settimeout(read)

    return Timed


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, read: float) -> None:
        super().__init__()
        self._class = _timed(http.client.HTTPConnection, read)

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._class, req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, read: float) -> None:
        super().__init__()
        self._class = _timed(http.client.HTTPSConnection, read)

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._class, req, context=getattr(self, "_context", None))


def open_url(req: urllib.request.Request, timeouts: Timeouts = Timeouts()) -> Any:
    """``urllib.request.urlopen(req)`` with origin-bound credentials and both timeouts.

    HTTPError and URLError come through as urllib raises them; a timeout is TimedOut.
    Reading the body may still time out: ``read_all`` says so the same way.
    """
    opener = urllib.request.build_opener(_OriginBoundRedirects(), _HTTP(timeouts.read),
                                         _HTTPS(timeouts.read))
    try:
        return opener.open(req, timeout=timeouts.connect)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise TimedOut(req.full_url, "connect", timeouts.connect) from None
        raise
    except TimeoutError:
        raise TimedOut(req.full_url, "read", timeouts.read) from None


def read_all(reply: Any, url: str, timeouts: Timeouts) -> bytes:
    """The body of an ``open_url`` reply; TimedOut when the peer stops sending."""
    try:
        return bytes(reply.read())
    except TimeoutError:
        raise TimedOut(url, "read", timeouts.read) from None
