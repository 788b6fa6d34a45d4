"""The few OCI distribution API calls nbship makes itself: read a manifest, put a tag, list tags.

Files go up and down with oras-py; images with buildah/skopeo. Moving a tag is
one manifest PUT, which the registry applies atomically: that is what makes a
release appear all at once.

Credentials (NBSHIP_REGISTRY_USER / NBSHIP_REGISTRY_PASSWORD) go, as Docker's do, over
plain HTTP only to this machine (loopback), and only to the registry's own host: a token
realm on another host gets them only when NBSHIP_REGISTRY_AUTH_HOSTS names it (e.g.
``auth.docker.io``); any other realm is refused before anything is sent. A redirect to
another origin (a blob served from storage) is followed without them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from nbship.errors import ReleaseError
from nbship.jsonhttp import TimedOut, Timeouts, is_loopback, open_url, origin, read_all

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


# The OCI distribution spec's grammar (a host as in a URL).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?$")
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    registry: str  # host:port
    repository: str  # path, e.g. releases/marker-classifier
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """``HOST[:PORT]/PATH[:TAG][@sha256:...]``, as the OCI distribution spec spells them."""
        original, digest = text, None
        if "@" in text:
            text, digest = text.split("@", 1)
        host, _, path = text.partition("/")
        tag = None
        if ":" in path.rsplit("/", 1)[-1]:
            path, tag = path.rsplit(":", 1)
        if (not _HOST.match(host) or ("." not in host and ":" not in host
                                      and host != "localhost")
                or not _REPOSITORY.match(path) or (tag is not None and not _TAG.match(tag))
                or (digest is not None and not _DIGEST.match(digest))):
            raise ReleaseError(f"not a registry reference: {original!r}",
                               hint="HOST:PORT/REPOSITORY[:TAG], e.g. "
                               "127.0.0.1:5000/releases/marker-classifier:latest")
        return cls(host, path, tag, digest)

    @property
    def ref(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        base = f"{self.registry}/{self.repository}"
        if self.digest:
            return f"{base}@{self.digest}"
        return f"{base}:{self.tag or 'latest'}"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)


def repository(registry: str, kind: str, name: str) -> Reference:
    """``HOST[:PORT][/PATH]/<kind>/<name>``: where nbship keeps releases and model releases."""
    host, _, path = registry.partition("/")
    return Reference(host, "/".join(filter(None, [path, kind, name])))


def insecure(registry: str) -> bool:
    """Plain HTTP for a registry on this machine only."""
    host = registry.rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


def _url(ref: Reference, kind: str, what: str) -> str:
    scheme = "http" if insecure(ref.registry) else "https"
    return f"{scheme}://{ref.registry}/v2/{ref.repository}/{kind}/{what}"


AUTH_HOSTS_ENV = "NBSHIP_REGISTRY_AUTH_HOSTS"
TIMEOUTS = Timeouts(connect=10.0, read=60.0)


def credentials() -> tuple[str, str] | None:
    """(user, password) from NBSHIP_REGISTRY_USER / NBSHIP_REGISTRY_PASSWORD (CI secrets)."""
    user = os.environ.get("NBSHIP_REGISTRY_USER")
    password = os.environ.get("NBSHIP_REGISTRY_PASSWORD")
    return (user, password) if user and password else None


def allow_credentials(registry: str, url: str, what: str = "") -> None:
    """Raise ReleaseError unless ``registry``'s credentials may be sent to ``url``: HTTPS,
    or plain HTTP to loopback; the registry's own host name, or one NBSHIP_REGISTRY_AUTH_HOSTS
    names (``HOST`` or ``HOST:PORT``, comma-separated)."""
    scheme, host, port = origin(url)
    own = origin(f"https://{registry}")[1]
    where = f"{what} {url}" if what else url
    if scheme not in ("http", "https") or not host:
        raise ReleaseError(f"{registry}: credentials not sent to {where!r}, not an http(s) "
                           "URL")
    if scheme == "http" and not is_loopback(host):
        raise ReleaseError(f"{registry}: credentials not sent over plain HTTP to {where} "
                           "(plain HTTP carries credentials only on this machine)",
                           hint="the registry's token service must use https")
    allowed = {h.strip().lower() for h in os.environ.get(AUTH_HOSTS_ENV, "").split(",")
               if h.strip()}
    if host != own and host not in allowed and f"{host}:{port}" not in allowed:
        raise ReleaseError(f"{registry}: credentials not sent to {where}: {host} is another "
                           "host", hint=f"if {host} is the registry's token service, allow "
                           f"it: {AUTH_HOSTS_ENV}={host}")


def _challenge(params: str) -> dict[str, str]:
    return {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', params)}


def _authorization(challenge: str, registry: str, url: str) -> str | None:
    """The Authorization header answering a 401's WWW-Authenticate (Basic or Bearer token)
    from ``registry`` at ``url``."""
    creds = credentials()
    scheme, _, params = challenge.partition(" ")
    basic = ("Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
             if creds else None)
    if scheme.lower() == "basic":
        if basic:
            allow_credentials(registry, url)
        return basic
    if scheme.lower() != "bearer":
        return None
    fields = _challenge(params)
    realm = fields.get("realm", "")
    if basic:  # an anonymous token request carries nothing of the user's
        allow_credentials(registry, realm, "the token realm")
    query = urllib.parse.urlencode({k: v for k, v in fields.items() if k in ("service", "scope")})
    req = urllib.request.Request(f"{realm}?{query}",
                                 headers={"Authorization": basic} if basic else {})
    with open_url(req, TIMEOUTS) as reply:
        doc = json.loads(read_all(reply, realm, TIMEOUTS))
    token = doc.get("token") or doc.get("access_token")
    return f"Bearer {token}" if token else None


def check_token_realm(registry: str) -> None:
    """Before a tool (buildah) is handed the credentials: ReleaseError when the registry's
    token realm is one ``allow_credentials`` refuses. Nothing is sent; an unreachable
    registry is left for the tool to report."""
    scheme = "http" if insecure(registry) else "https"
    try:
        with open_url(urllib.request.Request(f"{scheme}://{registry}/v2/"), TIMEOUTS):
            return
    except urllib.error.HTTPError as exc:
        kind, _, params = exc.headers.get("WWW-Authenticate", "").partition(" ")
        if exc.code == 401 and kind.lower() == "bearer":
            allow_credentials(registry, _challenge(params).get("realm", ""), "the token realm")
    except (urllib.error.URLError, OSError, ValueError):
        return


def _request(url: str, *, method: str = "GET", data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[bytes, Any]:
    headers = dict(headers or {})
    for attempt in (1, 2):
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with open_url(req, TIMEOUTS) as reply:
                return read_all(reply, url, TIMEOUTS), reply.headers
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "")
            if exc.code == 401 and attempt == 1 and challenge:
                answer = _authorization(challenge, urllib.parse.urlsplit(url).netloc, url)
                if answer:
                    headers["Authorization"] = answer
                    continue
            hint = ("set NBSHIP_REGISTRY_USER and NBSHIP_REGISTRY_PASSWORD"
                    if exc.code in (401, 403) else None)
            error = ReleaseError(f"{method} {url}: HTTP {exc.code} {exc.reason}", hint=hint)
            error.status = exc.code
            raise error from None
        except TimedOut as exc:
            raise ReleaseError(f"{method} {url}: {exc}",
                               hint="is the registry up? (nbship registry status)") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ReleaseError(f"{method} {url}: {exc}",
                               hint="is the registry up? (nbship registry status)") from None
    raise AssertionError("unreachable")


def get_manifest(ref: Reference) -> tuple[bytes, str, str]:
    """(bytes, digest, media type) of the manifest ``ref`` names."""
    body, headers = _request(_url(ref, "manifests", ref.ref), headers={"Accept": MANIFEST_TYPES})
    digest = headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
    media = headers.get("Content-Type") or json.loads(body).get("mediaType", "")
    return body, digest, media


def exists(ref: Reference) -> str | None:
    """The manifest digest if ``ref`` exists, None if the registry says it does not.

    Any other answer (401, 403, 5xx, no registry at all) is a ReleaseError: "not
    there" and "could not ask" are different things.
    """
    try:
        return get_manifest(ref)[1]
    except ReleaseError as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise


def put_manifest(ref: Reference, tag: str, body: bytes, media_type: str) -> str:
    """Point ``tag`` at the manifest ``body`` (one atomic PUT); its digest."""
    _, headers = _request(_url(ref, "manifests", tag), method="PUT", data=body,
                          headers={"Content-Type": media_type})
    return str(headers.get("Docker-Content-Digest")
               or "sha256:" + hashlib.sha256(body).hexdigest())


def get_blob(ref: Reference, digest: str) -> bytes:
    body, _ = _request(_url(ref, "blobs", digest))
    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        raise ReleaseError(f"blob {digest} of {ref} does not match its digest")
    return body


def tags(ref: Reference) -> list[str]:
    try:
        body, _ = _request(_url(ref, "tags", "list"))
    except ReleaseError:
        return []
    return sorted(json.loads(body).get("tags") or [])


def _guard_token_requests(auth: Any, registry: str) -> None:
    """oras-py sends the Basic credentials to whatever token realm the registry names, over
    whatever scheme it names: check the realm first (``allow_credentials``)."""
    request_token = auth.request_token

    def guarded(h: Any) -> Any:
        realm = str(h.realm or "")
        if not realm.startswith("http"):  # oras-py's own completion of a bare realm
            realm = f"{getattr(auth, 'prefix', 'https')}://{realm}"
        try:
            allow_credentials(registry, realm, "the token realm")
        except ReleaseError as exc:  # oras-py retries any other error, minutes long
            from oras.auth import AuthenticationException

            raise AuthenticationException(exc.message) from None
        return request_token(h)

    auth.request_token = guarded


def check_answers(registry: str, what: str) -> None:
    """ReleaseError at once when nothing answers at ``registry``: oras-py retries a refused
    connection with back-off for minutes. Any HTTP answer (a 401 asking for credentials
    included) counts; nothing is sent but a GET of ``/v2/``."""
    scheme = "http" if insecure(registry) else "https"
    try:
        with open_url(urllib.request.Request(f"{scheme}://{registry}/v2/"), TIMEOUTS):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ReleaseError(f"pushing {what}: no registry answers at {registry} ({reason})",
                           hint="is the registry up? (nbship registry status; nbship "
                                "registry up starts the embedded one)") from None


def push_files(target: Reference, folder: Any, files: list[tuple[str, str]],
               config: tuple[str, str], what: str, hint: str) -> None:
    """Push ``files`` (names in ``folder``, media types) as one artifact with ``config`` as
    its config blob, with oras-py; ReleaseError naming ``what`` when it fails."""
    check_answers(target.registry, f"{what} {target}")
    try:
        import oras.client
    except ImportError:
        from nbship.errors import ToolMissingError

        raise ToolMissingError("pushing needs the oras package, which is not installed here",
                               hint="make venv installs it (requirements.txt)") from None
    client = oras.client.OrasClient(hostname=target.registry,
                                    insecure=insecure(target.registry))
    creds = credentials()
    if creds:
        client.auth.set_basic_auth(*creds)
        _guard_token_requests(client.auth, target.registry)
    cwd = os.getcwd()
    try:
        os.chdir(folder)  # oras names each layer by its path: keep them bare
        client.push(target=str(target), files=[f"{name}:{media}" for name, media in files],
                    manifest_config=f"{config[0]}:{config[1]}", quiet=True)
    except Exception as exc:  # requests' and oras' errors: nothing was tagged
        raise ReleaseError(f"pushing {what} {target} failed: {exc}", hint=hint) from None
    finally:
        os.chdir(cwd)
