"""The Jupyter Server handlers of nbship's lab extension (see :mod:`nbship.lab`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import tornado.iostream
import tornado.web
from jupyter_server.base.handlers import APIHandler

from nbship.errors import NbshipError
from nbship.lab.jobs import KINDS, Job, Jobs, registry_of

MAX_CONTENT = 64 << 20  # bytes of notebook JSON in one analysis request


class NotebookHandler(APIHandler):
    """Resolves a request's notebook path: an .ipynb file under the server's root."""

    root: Path
    jobs: Jobs

    def initialize(self, root: Path, jobs: Jobs) -> None:
        self.root, self.jobs = root, jobs

    def notebook(self, path: Any, *, must_exist: bool = True) -> str:
        """The path relative to the root; 404 for anything else (not under the root, not an
        .ipynb, no such file): nothing is read or run outside the notebook it names."""
        if not isinstance(path, str) or not path.endswith(".ipynb") or "\0" in path:
            raise tornado.web.HTTPError(404, "not a notebook under the server's root")
        target = (self.root / path.lstrip("/")).resolve()
        try:
            relative = target.relative_to(self.root)
        except ValueError:
            raise tornado.web.HTTPError(404, "not a notebook under the server's root") from None
        if must_exist and not target.is_file():
            raise tornado.web.HTTPError(404, f"no notebook {relative}")
        return str(relative)

    def job(self, job_id: str) -> Job:
        found = self.jobs.get(job_id)
        if found is None:
            raise tornado.web.HTTPError(404, f"no job {job_id}")
        return found

    def body(self) -> dict[str, Any]:
        if len(self.request.body) > MAX_CONTENT:
            raise tornado.web.HTTPError(413, "notebook too large to analyse")
        try:
            doc = json.loads(self.request.body or b"{}")
        except ValueError:
            raise tornado.web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(doc, dict):
            raise tornado.web.HTTPError(400, "the body is a JSON object")
        return doc


def analysis(raw: bytes, relative: str) -> dict[str, Any]:
    """`nbship check --format json` of these bytes, named ``relative``, with the Mermaid
    graph: what the side panel and the cell badges show."""
    from nbship.extract.graph import build_graph
    from nbship.extract.report import to_json, to_mermaid
    from nbship.notebook import parse_notebook

    graph = build_graph(parse_notebook(raw, Path(relative), require_code=False))
    doc: dict[str, Any] = json.loads(to_json(graph))
    doc["mermaid"] = to_mermaid(graph)
    doc["path"] = relative
    return doc


class AnalysisHandler(NotebookHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        relative = self.notebook(self.get_argument("path", None))
        await self.answer((self.root / relative).read_bytes(), relative)

    @tornado.web.authenticated
    async def post(self) -> None:
        doc = self.body()
        relative = self.notebook(doc.get("path"), must_exist=False)
        content = doc.get("content")
        if not isinstance(content, dict):
            raise tornado.web.HTTPError(400, "content: the notebook's JSON")
        await self.answer(json.dumps(content).encode(), relative)

    async def answer(self, raw: bytes, relative: str) -> None:
        try:
            doc = await asyncio.get_running_loop().run_in_executor(None, analysis, raw,
                                                                   relative)
        except NbshipError as exc:  # the user's notebook: a message, not a traceback
            self.set_status(400)
            doc = {"path": relative, "message": str(exc)}
        self.finish(json.dumps(doc))


class JobsHandler(NotebookHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        doc = self.body()
        kind = doc.get("kind")
        if kind not in KINDS:
            raise tornado.web.HTTPError(400, f"kind: one of {', '.join(sorted(KINDS))}")
        relative = self.notebook(doc.get("path"))
        # off the event loop: Publish looks for the registry (pyproject.toml, a probe)
        job = await asyncio.get_running_loop().run_in_executor(None, self.jobs.start,
                                                               str(kind), relative)
        if job is None:
            self.set_status(409)
            self.finish(json.dumps({"message": "no registry to publish to: set [tool.nbship] "
                                    "registry in pyproject.toml, or start the embedded one "
                                    "(nbship registry up)"}))
            return
        self.set_status(201)
        self.finish(json.dumps(job.to_json()))


class ConfigHandler(NotebookHandler):
    """What the panel offers: Publish only where a registry is configured."""

    @tornado.web.authenticated
    async def get(self) -> None:
        registry = await asyncio.get_running_loop().run_in_executor(None, registry_of,
                                                                    self.root)
        self.finish(json.dumps({"registry": registry, "kinds": sorted(KINDS)}))


class JobHandler(NotebookHandler):
    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        job = self.job(job_id)
        since = self.get_argument("since", "0") or "0"
        if not since.isdigit():
            raise tornado.web.HTTPError(400, "since: a line number (0, 1, ...)")
        self.finish(json.dumps(job.to_json(int(since))))


class JobEventsHandler(NotebookHandler):
    """The job's output as server-sent events: ``line`` events, then one ``end``."""

    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        job = self.job(job_id)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        sent = 0
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, job.wait_for, sent, 1.0)
            lines = job.lines[sent:]
            for line in lines:
                self.write(f"event: line\ndata: {json.dumps(line)}\n\n")
            sent += len(lines)
            if job.exit_code is not None and sent == len(job.lines):
                self.write(f"event: end\ndata: {json.dumps(job.to_json(sent))}\n\n")
                await self.flush()
                break
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                return
        self.finish()


def handlers(base_url: str, root_dir: str) -> list[tuple[str, type, dict[str, Any]]]:
    root = Path(root_dir).resolve()
    args = {"root": root, "jobs": Jobs(root)}
    at = f"{base_url.rstrip('/')}/nbship"
    return [(f"{at}/analysis", AnalysisHandler, args),
            (f"{at}/config", ConfigHandler, args),
            (f"{at}/jobs", JobsHandler, args),
            (f"{at}/jobs/([0-9a-f]{{16}})", JobHandler, args),
            (f"{at}/jobs/([0-9a-f]{{16}})/events", JobEventsHandler, args)]
