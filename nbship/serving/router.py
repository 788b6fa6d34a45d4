"""A traffic split between model server revisions: what KServe's router (Knative's
activator and Istio's weighted routes) does for an InferenceService, on 127.0.0.1.

:class:`Router` is an asyncio reverse proxy (aiohttp) in a thread of its own. Each
request goes to one upstream, chosen by smooth weighted round robin, so 10 % is
exactly every tenth request, not 10 % on average. :meth:`Router.route` changes the
weights at once; :meth:`Router.drain` waits until no request is in flight to an
upstream, so a revision is stopped only after the last request it took has answered:
moving traffic never fails a request. Requests and errors per upstream are counted
(:meth:`Router.counts`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass
class Upstream:
    url: str
    weight: int = 0
    current: int = 0  # smooth weighted round robin's running score
    in_flight: int = 0
    requests: int = 0
    errors: int = 0  # 5xx answers and failed connections


@dataclass
class Router:
    host: str = "127.0.0.1"
    port: int = 0
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Listen (port 0: a free one); the router's URL."""
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=main, name="nbship-router", daemon=True)
        self._thread.start()
        started.wait(30)
        if failure:
            raise failure[0]
        return self.url

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(limit=256))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        from nbship.serving.server import bind

        sock = bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def _close(self) -> None:
        await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def route(self, weights: Mapping[str, int]) -> None:
        """Send traffic to these upstreams in these proportions (0 takes none)."""
        with self._lock:
            for url, weight in weights.items():
                up = self.upstreams.setdefault(url, Upstream(url))
                up.weight, up.current = max(0, int(weight)), 0
            for url, up in self.upstreams.items():
                if url not in weights:
                    up.weight, up.current = 0, 0

    def weights(self) -> dict[str, int]:
        with self._lock:
            return {u.url: u.weight for u in self.upstreams.values() if u.weight}

    def drain(self, url: str, timeout: float = 60) -> bool:
        """Wait until no request is in flight to ``url`` (it gets no new ones once its
        weight is 0); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                up = self.upstreams.get(url)
                if up is None or up.in_flight == 0:
                    return True
            time.sleep(0.02)
        return False

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {u.url: {"requests": u.requests, "errors": u.errors}
                    for u in self.upstreams.values()}

    def _pick(self) -> Upstream | None:
        with self._lock:
            live = [u for u in self.upstreams.values() if u.weight > 0]
            if not live:
                return None
            total = sum(u.weight for u in live)
            for u in live:
                u.current += u.weight
            best = max(live, key=lambda u: u.current)
            best.current -= total
            best.in_flight += 1
            best.requests += 1
            return best

    async def _handle(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        up = self._pick()
        if up is None:
            return web.Response(status=503, text="no revision takes traffic\n")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with self._session.request(request.method, up.url + request.path_qs,
                                             data=await request.read(), headers=headers,
                                             allow_redirects=False) as reply:
                body = await reply.read()
                if reply.status >= 500:
                    with self._lock:
                        up.errors += 1
                out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=reply.status, body=body, headers=out)
        except (TimeoutError, aiohttp.ClientError) as exc:
            with self._lock:
                up.errors += 1
            return web.Response(status=502, text=f"upstream {up.url} failed: {exc}\n")
        finally:
            with self._lock:
                up.in_flight -= 1
