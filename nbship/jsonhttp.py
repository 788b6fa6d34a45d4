"""The small JSON-over-HTTP servers nbship runs on 127.0.0.1 (the retraining trigger, the
scheduler's webhook): one request handler base for their replies."""

from __future__ import annotations

import http.server
import json
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
