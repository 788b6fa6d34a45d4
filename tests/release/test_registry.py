"""The embedded registry: up, status, down; on 127.0.0.1 only; storage under the root."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from nbship.errors import ReleaseError
from nbship.release import registry
from tests.release.conftest import free_port, needs

pytestmark = needs("docker-registry")


def test_up_status_down(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    port = free_port()
    state = registry.up(root, port)
    try:
        assert state.address == f"127.0.0.1:{port}" and registry.is_up(state.address)
        again = registry.up(root, port)  # already up: the same one
        assert again.pid == state.pid
        current = registry.status(root)
        assert current is not None and current.running
        assert (root / "config.yml").read_text().count(f"addr: 127.0.0.1:{port}") == 1
    finally:
        assert registry.down(root) is True
    assert not registry.is_up(state.address)
    assert registry.status(root) is None
    assert registry.down(root) is False


def test_a_port_taken_by_something_else_is_an_error(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    port = server.server_address[1]

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server.RequestHandlerClass = Ok
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ReleaseError, match="something else already answers"):
            registry.up(tmp_path / "r", port)
    finally:
        server.shutdown()
