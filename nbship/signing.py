"""A secret key of this machine's user, and HMACs with it: "nbship wrote this, here".

Files that nbship reads back with a format that can run code (the analysis cache's
pickles, cloudpickle/joblib artifacts between steps) carry an HMAC-SHA256 made
with this key. A folder copied from elsewhere cannot carry a valid one, so what
it brings is never unpickled. The key lives outside any project folder, in
``$NBSHIP_KEY_FILE`` or ``$XDG_CACHE_HOME/nbship/key`` (``~/.cache/nbship/key``),
mode 0600, made on first use. ``NBSHIP_ARTIFACT_KEY`` (hex) gives the key
directly: a KFP cluster's steps run in separate pods, so they get the same key
from a Kubernetes secret (docs/design.md, "Trust").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

KEY_ENV = "NBSHIP_ARTIFACT_KEY"
KEY_FILE_ENV = "NBSHIP_KEY_FILE"
MAC_SIZE = 32


def key_file() -> Path:
    explicit = os.environ.get(KEY_FILE_ENV)
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nbship" / "key"


def _key() -> bytes:
    given = os.environ.get(KEY_ENV)
    if given:
        try:
            key = bytes.fromhex(given)
        except ValueError:
            key = b""
        if len(key) >= 16:
            return key
        raise ValueError(f"{KEY_ENV} must be at least 16 bytes written in hex")
    path = key_file()
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(fresh)
    try:
        os.link(tmp, path)  # the first writer wins; everyone then reads the same key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def key_hex() -> str:
    """This machine's key in hex: what ``NBSHIP_ARTIFACT_KEY`` gives a container that must
    verify what this machine signed (a cluster's ``nbship-key`` secret; a rehearsal's Job)."""
    return _key().hex()


def mac(data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` with this machine's key."""
    return hmac.new(_key(), data, hashlib.sha256).digest()


def verify(data: bytes, tag: bytes) -> bool:
    """True when ``tag`` is ``mac(data)``: this machine's nbship wrote ``data``."""
    try:
        return hmac.compare_digest(mac(data), tag)
    except (OSError, ValueError):
        return False


SIGNATURE = "hmac"  # the field of a signed JSON document that holds its MAC (hex)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != SIGNATURE},
                      sort_keys=True).encode()


def sign(doc: dict[str, Any]) -> str:
    """The MAC (hex) of a JSON document's fields: what ``doc[SIGNATURE]`` should hold."""
    return mac(_canonical(doc)).hex()


def signed(doc: dict[str, Any]) -> bool:
    """True when ``doc[SIGNATURE]`` is this machine's MAC of the document's other fields."""
    tag = doc.get(SIGNATURE)
    try:
        return isinstance(tag, str) and verify(_canonical(doc), bytes.fromhex(tag))
    except ValueError:  # not hex
        return False


def seal(data: bytes) -> bytes:
    """``data`` with its MAC in front."""
    return mac(data) + data


def unseal(blob: bytes) -> bytes | None:
    """The data of a sealed blob, or None when the MAC does not match (written elsewhere)."""
    tag, data = blob[:MAC_SIZE], blob[MAC_SIZE:]
    return data if len(tag) == MAC_SIZE and verify(data, tag) else None
