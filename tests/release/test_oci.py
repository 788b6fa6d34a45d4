"""The registry client tells "not there" (404) from "could not ask" (401, 5xx, refused)."""

from __future__ import annotations

import http.server
from collections.abc import Iterator

import pytest

from nbship.errors import ReleaseError
from nbship.release import oci
from tests.conftest import serving
from tests.release.conftest import free_port


@pytest.fixture
def answering() -> Iterator[tuple[str, list[int]]]:
    """A registry on 127.0.0.1 that answers every request with the next status given."""
    statuses: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(statuses.pop(0) if statuses else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serving(http.server.HTTPServer(("127.0.0.1", 0), Handler)) as server:
        yield f"127.0.0.1:{server.server_address[1]}", statuses


def test_404_is_not_there(answering: tuple[str, list[int]]) -> None:
    address, statuses = answering
    statuses.append(404)
    assert oci.exists(oci.Reference.parse(f"{address}/releases/x")) is None


@pytest.mark.parametrize("status", [401, 403, 500])
def test_other_errors_are_errors_not_absence(status: int, answering: tuple[str, list[int]],
                                             ) -> None:
    address, statuses = answering
    statuses.append(status)
    with pytest.raises(ReleaseError, match=f"HTTP {status}"):
        oci.exists(oci.Reference.parse(f"{address}/releases/x"))


def test_a_refused_connection_is_an_error_not_absence() -> None:
    with pytest.raises(ReleaseError, match="is the registry up"):
        oci.exists(oci.Reference.parse(f"127.0.0.1:{free_port()}/releases/x"))
