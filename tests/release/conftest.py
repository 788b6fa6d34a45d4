"""Skips for machines without the image tools, with the reason shown."""

from __future__ import annotations

import socket

import pytest

from nbship.release.tools import which

TOOLS = ("buildah", "skopeo", "docker-registry", "debootstrap")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if which(t) is None]


def needs(*tools: str) -> pytest.MarkDecorator:
    lacking = [t for t in tools if which(t) is None]
    return pytest.mark.skipif(bool(lacking), reason=f"not installed: {', '.join(lacking)} "
                              "(make tools; .ci/run installs them)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

