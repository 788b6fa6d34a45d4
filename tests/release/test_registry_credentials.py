"""Registry credentials go where Docker sends them, no further (issue 17 §8): over plain
HTTP only on this machine, to the registry's own host, and to a token realm elsewhere only
when NBSHIP_REGISTRY_AUTH_HOSTS names it; a redirect to another origin carries none. Real
servers on 127.0.0.1 (the registry and its storage) and 127.0.0.2 (another host)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import ipaddress
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbship.errors import ReleaseError
from nbship.release import oci
from tests.conftest import serving

USER, PASSWORD = "ci-user", "ci-pa55word"
AUTH_HOSTS = "NBSHIP_REGISTRY_AUTH_HOSTS"  # oci.AUTH_HOSTS_ENV
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class TokenService(http.server.BaseHTTPRequestHandler):
    """A token realm: keeps each request's Authorization, answers a token."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.seen.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        body = json.dumps({"token": "tok"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Registry(http.server.BaseHTTPRequestHandler):
    """A registry that wants a bearer token from ``server.realm`` (or Basic credentials when
    ``realm`` is None); manifests are unknown (404); blobs are served from
    ``server.storage`` by a 307, as registries with object storage do."""

    def _answer(self) -> None:
        server: Any = self.server
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        wanted = BASIC if server.realm is None else "Bearer tok"
        if self.headers.get("Authorization") != wanted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="registry"' if server.realm is None
                             else f'Bearer realm="{server.realm}",service="registry",'
                             'scope="repository:releases/x:pull,push"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "/blobs/" in self.path and server.storage:
            self.send_response(307)
            self.send_header("Location", server.storage + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


class Storage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)

    def log_message(self, *args: object) -> None:
        pass


BLOB = b"pipeline bytes"


def _server(handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Any:
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    return server


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBSHIP_REGISTRY_USER", USER)
    monkeypatch.setenv("NBSHIP_REGISTRY_PASSWORD", PASSWORD)
    monkeypatch.delenv(AUTH_HOSTS, raising=False)


@pytest.fixture
def servers() -> Iterator[tuple[Any, Any, Any]]:
    """(the registry on 127.0.0.1, a token service on 127.0.0.2 -- another host --, a
    token service on 127.0.0.1 -- the registry's host, another port)."""
    registry = _server(Registry)
    registry.realm, registry.storage = None, None
    with serving(registry), serving(_server(TokenService, "127.0.0.2")) as elsewhere, \
            serving(_server(TokenService)) as beside:
        yield registry, elsewhere, beside


def _address(server: Any) -> str:
    host, port = server.server_address[:2]
    return f"{host}:{port}"


def _ref(registry: Any) -> oci.Reference:
    return oci.Reference.parse(f"{_address(registry)}/releases/x:latest")


@pytest.mark.usefixtures("creds")
def test_a_realm_on_another_host_gets_no_credentials(servers: tuple[Any, Any, Any]) -> None:
    registry, elsewhere, _ = servers
    registry.realm = f"http://{_address(elsewhere)}/token"
    with pytest.raises(ReleaseError) as caught:
        oci.exists(_ref(registry))
    assert caught.value.message.endswith("127.0.0.2 is another host")
    assert "credentials not sent to the token realm http://127.0.0.2:" in caught.value.message
    assert AUTH_HOSTS in (caught.value.hint or "")
    assert elsewhere.seen == []  # not even asked


@pytest.mark.usefixtures("creds")
def test_a_realm_named_in_the_allow_list_gets_them(servers: tuple[Any, Any, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    registry, elsewhere, _ = servers
    registry.realm = f"http://{_address(elsewhere)}/token"
    monkeypatch.setenv(AUTH_HOSTS, "auth.example.com, 127.0.0.2")
    assert oci.exists(_ref(registry)) is None  # 404 with the token: asked, and not there
    assert elsewhere.seen == [BASIC]
    assert registry.seen[-1][2] == "Bearer tok"


@pytest.mark.usefixtures("creds")
def test_a_realm_on_the_registrys_own_host_gets_them(servers: tuple[Any, Any, Any]) -> None:
    registry, elsewhere, beside = servers
    registry.realm = f"http://{_address(beside)}/token"
    assert oci.exists(_ref(registry)) is None
    assert beside.seen == [BASIC] and elsewhere.seen == []


@pytest.mark.usefixtures("creds")
@pytest.mark.parametrize("realm", ["http://auth.example.com/token",
                                   "http://127.0.0.1@auth.example.com/token",
                                   "http://localhost.example.com/token"])
def test_plain_http_off_this_machine_is_refused_even_when_allowed(
        servers: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch, realm: str) -> None:
    registry, _, _ = servers
    registry.realm = realm
    monkeypatch.setenv(AUTH_HOSTS, urllib.parse.urlsplit(realm).hostname or "")
    with pytest.raises(ReleaseError, match="credentials not sent over plain HTTP"):
        oci.exists(_ref(registry))


def test_without_credentials_an_anonymous_token_is_fetched_anywhere(
        servers: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the user's goes along: the realm's host does not matter then."""
    monkeypatch.delenv("NBSHIP_REGISTRY_USER", raising=False)
    monkeypatch.delenv("NBSHIP_REGISTRY_PASSWORD", raising=False)
    registry, elsewhere, _ = servers
    registry.realm = f"http://{_address(elsewhere)}/token"
    assert oci.exists(_ref(registry)) is None
    assert elsewhere.seen == [None]


@pytest.mark.usefixtures("creds")
def test_a_blob_redirected_to_storage_gets_no_credentials(
        servers: tuple[Any, Any, Any]) -> None:
    """Basic credentials to the registry itself (loopback), none to the storage it
    redirects the blob to (another port: another origin)."""
    registry, _, _ = servers
    with serving(_server(Storage)) as storage:
        registry.storage = f"http://{_address(storage)}"
        digest = "sha256:" + hashlib.sha256(BLOB).hexdigest()
        assert oci.get_blob(_ref(registry), digest) == BLOB
        assert storage.seen == [None]
    assert registry.seen[-1][2] == BASIC


@pytest.mark.usefixtures("creds")
def test_oras_pushes_send_no_credentials_to_a_foreign_realm(
        servers: tuple[Any, Any, Any], tmp_path: Path) -> None:
    registry, elsewhere, _ = servers
    registry.realm = f"http://{_address(elsewhere)}/token"
    (tmp_path / "pipeline.yaml").write_text("x: 1\n")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ReleaseError, match="127.0.0.2 is another host"):
        oci.push_files(_ref(registry), tmp_path, [("pipeline.yaml", "application/yaml")],
                       ("config.json", "application/json"), "release", "hint")
    assert elsewhere.seen == []


@pytest.mark.usefixtures("creds")
def test_buildah_is_not_handed_credentials_for_a_foreign_realm(
        servers: tuple[Any, Any, Any]) -> None:
    """The check Buildah.push makes before it passes --creds (buildah itself sends them to
    any realm)."""
    registry, elsewhere, beside = servers
    registry.realm = f"http://{_address(elsewhere)}/token"
    with pytest.raises(ReleaseError, match="127.0.0.2 is another host"):
        oci.check_token_realm(_address(registry))
    registry.realm = f"http://{_address(beside)}/token"
    oci.check_token_realm(_address(registry))
    assert elsewhere.seen == [] and beside.seen == []


# --- the rule as a property: wherever credentials may go, urllib connects only to the
# registry's host or an allowed one, and over plain HTTP only to loopback --------------

_realm_hosts = st.sampled_from([
    "127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "[::1]", "registry.example.com",
    "REGISTRY.example.com", "auth.example.com", "registry.example.com.evil.net",
    "127.0.0.1.evil.net", "localhost.evil.net", "10.0.0.1", "169.254.169.254"])
_userinfo = st.sampled_from(["", "127.0.0.1@", "registry.example.com@", "u:p@"])
_ports = st.sampled_from(["", ":5000", ":443", ":80"])


def _connects_to(url: str) -> tuple[str, str]:
    """(scheme, host) urllib would connect to, taken apart the way urllib does."""
    req = urllib.request.Request(url)
    host = req.host.rpartition("@")[2]
    host = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    return req.type, host.lower()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["127.0.0.1:5000", "registry.example.com", "[::1]:5000",
                        "registry.example.com:5000"]),
       st.sampled_from(["http", "https", "ftp", "file"]), _userinfo, _realm_hosts, _ports,
       st.sampled_from(["", "auth.example.com", "127.0.0.2", "auth.example.com:443"]))
def test_credentials_go_only_where_the_rule_says(registry: str, scheme: str, user: str,
                                                 host: str, port: str, allowed: str) -> None:
    url = f"{scheme}://{user}{host}{port}/token"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(AUTH_HOSTS, allowed)
        try:
            oci.allow_credentials(registry, url)
        except ReleaseError as exc:
            assert "credentials not sent" in exc.message
            return
    kind, target = _connects_to(url)
    own = registry.rpartition(":")[0] if registry.count(":") == 1 or "]:" in registry \
        else registry
    own = own.strip("[]").lower()
    assert kind in ("http", "https")
    assert target.strip("[]") == own or target in {a.partition(":")[0] for a in [allowed]}
    assert kind == "https" or _loopback(target.strip("[]"))


@pytest.fixture
def buildah_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty image in a buildah store of the test's own (never the machine's)."""
    import shutil
    import subprocess

    if shutil.which("buildah") is None:
        pytest.skip("not installed: buildah (make tools)")
    store = tmp_path / "containers"
    store.mkdir()
    (store / "storage.conf").write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{store}/graph"\n'
                                        f'runroot = "{store}/run"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(store / "storage.conf"))
    made = subprocess.run(["buildah", "from", "scratch"], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"buildah cannot make a container here: {made.stderr.strip()[-300:]}")
    container = made.stdout.strip().splitlines()[-1]
    subprocess.run(["buildah", "commit", "--quiet", container, "localhost/nbship-empty:1"],
                   check=True, capture_output=True)
    subprocess.run(["buildah", "rm", container], capture_output=True)
    return "localhost/nbship-empty:1"


@pytest.mark.usefixtures("creds")
def test_buildah_push_sends_no_credentials_to_a_foreign_realm(
        servers: tuple[Any, Any, Any], buildah_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With real buildah: refused before buildah runs; allowed, buildah itself sends the
    Basic credentials to the realm (which is why nbship checks first)."""
    from nbship.release.backends import Buildah

    registry, elsewhere, _ = servers
    registry.realm = f"http://{_address(elsewhere)}/token"
    target = f"{_address(registry)}/images/x:1"
    with pytest.raises(ReleaseError, match="127.0.0.2 is another host"):
        Buildah().push(buildah_image, target, insecure=True)
    assert elsewhere.seen == [] and not [r for r in registry.seen if r[2]]
    monkeypatch.setenv(AUTH_HOSTS, "127.0.0.2")
    from nbship.release import backends, tools

    commands: list[list[str]] = []
    original = tools.run

    def recording(cmd: list[str], what: str, **kw: Any) -> str:
        commands.append(list(cmd))
        return original(cmd, what, **kw)

    monkeypatch.setattr(backends, "run", recording)
    with pytest.raises(ReleaseError):  # the stand-in registry takes no blobs
        Buildah().push(buildah_image, target, insecure=True)
    assert BASIC in elsewhere.seen  # through --authfile
    assert commands and not [c for c in commands if any(PASSWORD in arg for arg in c)]


def test_a_push_to_where_no_registry_answers_is_a_message_at_once(tmp_path: Path) -> None:
    """oras-py retries a refused connection for minutes; nbship asks /v2/ once first."""
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "a.txt").write_text("a")
    target = oci.repository(f"127.0.0.1:{port}", "models", "m").with_tag("t")
    started = time.monotonic()
    with pytest.raises(ReleaseError, match=f"no registry answers at 127.0.0.1:{port}"):
        oci.push_files(target, tmp_path, [("a.txt", "text/plain")], ("a.txt", "text/plain"),
                       "a model release", "hint")
    assert time.monotonic() - started < 10
