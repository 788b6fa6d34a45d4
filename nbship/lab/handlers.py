"""The Jupyter Server handlers of nbship's lab extension (see :mod:`nbship.lab`)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, NoReturn

import tornado.iostream
import tornado.web
from jupyter_server.base.handlers import APIHandler

from nbship.errors import Location, NbshipError, UnusableInputError
from nbship.lab.jobs import KINDS, Job, Jobs, Refused, option_like, registry_of

MAX_CONTENT = 64 << 20  # bytes of notebook JSON in one analysis request
KEEP_ALIVE = 15.0  # seconds between comments on a quiet event stream
LINE_NUMBER = re.compile(r"[0-9]{1,9}")  # ASCII digits: "²".isdigit(), int("²") fails


class NotebookHandler(APIHandler):
    """Resolves a request's notebook path: an .ipynb file under the server's root. Every
    input it cannot use is a 4xx with a message (JSON ``{"message": ...}``)."""

    root: Path
    jobs: Jobs

    def initialize(self, root: Path, jobs: Jobs) -> None:
        self.root, self.jobs = root, jobs

    def fail(self, status: int, message: str, **more: Any) -> NoReturn:
        """Answer ``status`` with this message (not through tornado's HTTPError, whose
        log line would read a '%' in a path as a format)."""
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, **more}))
        raise tornado.web.Finish()

    def notebook(self, path: Any, *, must_exist: bool = True) -> str:
        """The path relative to the root; 404 for anything else (not under the root, not an
        .ipynb, no such file): nothing is read or run outside the notebook it names."""
        if not isinstance(path, str):
            self.fail(400, "path: the notebook's path under the server's root, a string")
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(400, "path: not valid UTF-8")
        if not path.endswith(".ipynb") or "\0" in path:
            self.fail(404, "not a notebook under the server's root")
        try:
            target = (self.root / path.lstrip("/")).resolve()
            relative = target.relative_to(self.root)
            exists = target.is_file()
        except (OSError, ValueError, RuntimeError):  # too long, a loop, outside the root
            self.fail(404, "not a notebook under the server's root")
        if must_exist and not exists:
            self.fail(404, f"no notebook {relative}")
        return str(relative)

    def job(self, job_id: str) -> Job:
        found = self.jobs.get(job_id)
        if found is None:
            self.fail(404, f"no job {job_id}")
        return found

    def body(self) -> dict[str, Any]:
        if len(self.request.body) > MAX_CONTENT:
            self.fail(413, f"the body is over {MAX_CONTENT} bytes")
        try:
            doc = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deeply
            self.fail(400, "the body is not JSON (UTF-8)")
        if not isinstance(doc, dict):
            self.fail(400, "the body is a JSON object")
        return doc


def analysis(raw: bytes, relative: str) -> dict[str, Any]:
    """`nbship check --format json` of these bytes, named ``relative``, with the Mermaid
    graph: what the side panel and the cell badges show."""
    from nbship.extract.graph import build_graph
    from nbship.extract.report import to_json, to_mermaid
    from nbship.notebook import parse_notebook

    notebook = parse_notebook(raw, Path(relative), require_code=False)
    if not notebook.cells:  # what an editor holds once its last cell is deleted
        raise UnusableInputError("the notebook has no cells: nothing to analyse",
                                 where=Location(relative))
    graph = build_graph(notebook)
    doc: dict[str, Any] = json.loads(to_json(graph))
    doc["mermaid"] = to_mermaid(graph)
    doc["path"] = relative
    return doc


class AnalysisHandler(NotebookHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        relative = self.notebook(self.get_argument("path", None))
        try:
            raw = await asyncio.get_running_loop().run_in_executor(
                None, (self.root / relative).read_bytes)
        except OSError as exc:  # unreadable, or gone since
            self.fail(404, f"cannot read {relative}: {exc.strerror or exc}")
        await self.answer(raw, relative)

    @tornado.web.authenticated
    async def post(self) -> None:
        doc = self.body()
        relative = self.notebook(doc.get("path"), must_exist=False)
        content = doc.get("content")
        if not isinstance(content, dict):
            self.fail(400, "content: the notebook's JSON, an object")
        try:
            raw = json.dumps(content).encode()
        except (ValueError, RecursionError):
            self.fail(400, "content: the notebook's JSON, nested too deeply")
        await self.answer(raw, relative)

    async def answer(self, raw: bytes, relative: str) -> None:
        try:
            doc = await asyncio.get_running_loop().run_in_executor(None, analysis, raw,
                                                                   relative)
        except NbshipError as exc:  # the user's notebook: a message, not a traceback
            self.fail(400, str(exc), path=relative)
        except RecursionError:
            self.fail(400, f"{relative}: nested too deeply to analyse", path=relative)
        self.finish(json.dumps(doc))


class JobsHandler(NotebookHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        """The jobs the server holds (running, and the last finished ones), oldest first,
        without their output."""
        jobs = [{k: v for k, v in job.to_json().items() if k != "lines"}
                for job in self.jobs.all()]
        self.finish(json.dumps({"jobs": jobs, "limit": self.jobs.limit}))

    @tornado.web.authenticated
    async def post(self) -> None:
        doc = self.body()
        kind = doc.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            self.fail(400, f"kind: one of {', '.join(sorted(KINDS))}")
        relative = self.notebook(doc.get("path"))
        if option_like(relative):  # `--junit=...`, pytest's `@FILE`: never an option
            self.fail(400, f"{relative}: a notebook path beginning '-' or '@' would read as "
                      "an option of the command; rename the notebook")
        # off the event loop: Publish looks for the registry (pyproject.toml, a probe)
        try:
            job = await asyncio.get_running_loop().run_in_executor(None, self.jobs.start,
                                                                   kind, relative)
        except Refused as exc:
            more = {"job": exc.job.to_json()} if exc.job is not None else {}
            self.fail(exc.status, exc.message, **more)
        except OSError as exc:  # this machine's limits (processes, files): not the request
            self.fail(503, f"could not start nbship {kind}: {exc.strerror or exc}")
        if job is None:
            self.fail(409, "no registry to publish to: set [tool.nbship] registry in "
                      "pyproject.toml, or start the embedded one (nbship registry up)")
        self.set_status(201)
        self.finish(json.dumps(job.to_json()))


class ConfigHandler(NotebookHandler):
    """What the panel offers: Publish only where a registry is configured."""

    @tornado.web.authenticated
    async def get(self) -> None:
        registry = await asyncio.get_running_loop().run_in_executor(None, registry_of,
                                                                    self.root)
        self.finish(json.dumps({"registry": registry, "kinds": sorted(KINDS),
                                "limit": self.jobs.limit}))


class JobHandler(NotebookHandler):
    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        since = self.get_argument("since", "0") or "0"
        if not LINE_NUMBER.fullmatch(since):
            self.fail(400, "since: a line number (0, 1, ...)")
        self.finish(json.dumps(self.job(job_id).to_json(int(since))))

    @tornado.web.authenticated
    async def delete(self, job_id: str) -> None:
        """Cancel a running job: its process group is stopped; answers once it ended."""
        job = self.job(job_id)
        if not await job.stop():
            self.fail(409, f"job {job_id} already ended ({job.status})", job=job.to_json())
        self.finish(json.dumps(job.to_json()))


class JobEventsHandler(NotebookHandler):
    """The job's output as server-sent events: ``line`` events, then one ``end``.

    A follower is a coroutine waiting on the job's change (:meth:`Job.changes`), not a
    thread: open streams do not hold the executor that the analysis runs in."""

    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        job = self.job(job_id)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        sent = 0
        try:
            await self.flush()  # the headers now: the client knows the stream is open
            while True:
                await job.changes(sent, KEEP_ALIVE)
                with job.changed:
                    lines, ended = job.lines[sent:], job.exit_code is not None
                for line in lines:
                    self.write(f"event: line\ndata: {json.dumps(line)}\n\n")
                sent += len(lines)
                if ended:
                    self.write(f"event: end\ndata: {json.dumps(job.to_json(sent))}\n\n")
                    await self.flush()
                    break
                if not lines:
                    self.write(": keep-alive\n\n")  # a comment; a closed client shows here
                await self.flush()
        except tornado.iostream.StreamClosedError:
            return
        self.finish()


def handlers(base_url: str, root_dir: str, jobs: Jobs | None = None
             ) -> list[tuple[str, type, dict[str, Any]]]:
    root = Path(root_dir).resolve()
    args = {"root": root, "jobs": jobs if jobs is not None else Jobs(root)}
    at = f"{base_url.rstrip('/')}/nbship"
    return [(f"{at}/analysis", AnalysisHandler, args),
            (f"{at}/config", ConfigHandler, args),
            (f"{at}/jobs", JobsHandler, args),
            (f"{at}/jobs/([0-9a-f]{{16}})", JobHandler, args),
            (f"{at}/jobs/([0-9a-f]{{16}})/events", JobEventsHandler, args)]
