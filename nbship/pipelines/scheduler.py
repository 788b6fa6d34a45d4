"""The local training scheduler: cron, new data and webhooks start pipeline runs.

``nbship scheduler up`` starts one detached process (recorded like the registry's:
pid, start time, command line) that reads ``[tool.nbship.training]`` from
pyproject.toml (``nbship.pipelines.training``) and keeps its schedules in SQLite
(``.nbship/scheduler/schedules.sqlite``: one row per pipeline, JSON columns — no
pickles, unlike APScheduler's SQLAlchemy job store, since a database a folder brings
must not run code). It fires:

* **cron** — 6-field expressions, seconds first (KFP's), computed with croniter; a
  fire missed while the scheduler was down is not caught up (KFP's default);
* **data** — a folder or file polled every second (names, sizes, mtimes; then the
  content's sha256): new content starts a run, on a snapshot of that content;
* **webhook** — ``POST /trigger/NAME`` on 127.0.0.1 with ``Authorization: Bearer
  SECRET`` (``NBSHIP_TRIGGER_SECRET``, or ``.nbship/scheduler/secret`` made at the
  first start); and ``POST /alerts``, Alertmanager's drift alerts with the same
  secret (``nbship monitor up --webhook http://127.0.0.1:9096/alerts
  --webhook-secret-file .nbship/scheduler/secret``): the alert's ``model`` label names
  the pipeline.

A run that passes (the notebook's own gate steps and the serving check) is pushed as
the next model release when the table names a ``registry``. Runs go one at a time
through one worker; a pipeline already waiting is not queued
twice; every queued run ends, recorded as run, failed or skipped (an error the run
did not expect is a failed run, and the worker goes on). A worker that dies all the
same is restarted (status says so: ``worker``), up to ``WORKER_RESTARTS`` times; then
the scheduler exits non-zero, saying why in its log. Folders and files that come and go
while the data source is polled or snapshotted are taken as they are found. A run
whose data has the sha256 of the pipeline's last successful run is
**skipped**, and the record says so. Restarting (even after SIGKILL) loses nothing
and doubles nothing: schedules are rows keyed by pipeline name, the next fire time
is stored, and ``up`` re-reads pyproject.toml into the same rows.
"""

from __future__ import annotations

import datetime as dt
import hmac
import http.server
import json
import os
import secrets
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.errors import NbshipError, SchedulerError
from nbship.jsonhttp import JSONHandler
from nbship.monitoring import alerts
from nbship.pipelines.training import Training, data_digest, fingerprint, next_fire, snapshot

DEFAULT_PORT = 9096
RELEASE_PREFIX = "kfp:"  # schedules `nbship kfp schedule` registered: a release's pipeline
SECRET_ENV = "NBSHIP_TRIGGER_SECRET"
POLL = 1.0  # seconds between looks at the data sources
TICK = 0.25
WORKER_RESTARTS = 5  # a worker that died more often than this: the scheduler exits


def _now_iso(t: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if t is None else t, dt.UTC).isoformat(
        timespec="seconds")


def _row_seal(name: str, spec: str) -> str:
    """A schedule row's seal: the machine key's MAC of its name and spec (what it runs)."""
    from nbship import signing

    return signing.mac(b"nbship-schedule/1\0" + name.encode() + b"\0" + spec.encode()).hex()


def _sealed(name: object, spec: object, seal: object) -> bool:
    """True when the row's seal is this machine's (columns of any type: SQLite's are not
    typed, and a foreign database may hold anything)."""
    if not (isinstance(name, str) and isinstance(spec, str) and isinstance(seal, str)):
        return False
    try:
        return hmac.compare_digest(seal, _row_seal(name, spec))
    except (OSError, ValueError, TypeError):  # TypeError: a seal that is not ASCII
        return False


class Store:
    """Schedules and run records in SQLite (thread-safe through one lock).

    Each schedule row carries a seal (the machine key's MAC of its name and spec): a
    row this machine's nbship did not write (a database a cloned folder brings, one
    edited by hand) is never run; ``unsealed()`` names them."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, "
                            "spec TEXT NOT NULL, next_fire REAL, last_data TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, "
                            "name TEXT, trigger TEXT, status TEXT, run_dir TEXT, "
                            "message TEXT, started TEXT, seconds REAL)")
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(schedules)")}
            if "seal" not in columns:  # a store from before rows were sealed
                self.db.execute("ALTER TABLE schedules ADD COLUMN seal TEXT")

    def sync(self, trainings: list[Training], now: float) -> list[str]:
        """Make the rows what pyproject.toml declares (rows `nbship kfp schedule` made,
        named ``kfp:NAME``, are left alone); what changed, in words."""
        said = []
        with self.lock:
            rows = {n: (s, seal) for n, s, seal in
                    self.db.execute("SELECT name, spec, seal FROM schedules")
                    if not n.startswith(RELEASE_PREFIX)}
            for t in trainings:
                spec = json.dumps(t.spec())
                if t.name in rows and rows[t.name][0] == spec and _sealed(t.name, *rows[t.name]):
                    continue
                nxt = next_fire(t.cron, now) if t.cron else None
                if t.name in rows:
                    self.db.execute("UPDATE schedules SET spec = ?, seal = ?, next_fire = ? "
                                    "WHERE name = ?", (spec, _row_seal(t.name, spec), nxt, t.name))
                    said.append(f"{t.name}: schedule changed")
                else:
                    self.db.execute("INSERT INTO schedules (name, spec, seal, next_fire) VALUES "
                                    "(?, ?, ?, ?)", (t.name, spec, _row_seal(t.name, spec), nxt))
                    said.append(f"{t.name}: scheduled")
            for gone in set(rows) - {t.name for t in trainings}:
                self.db.execute("DELETE FROM schedules WHERE name = ?", (gone,))
                said.append(f"{gone}: no longer in pyproject.toml, unscheduled")
        return said

    def put(self, training: Training, now: float) -> bool:
        """Add or replace one schedule (one row per name: never two); True if it replaced."""
        nxt = next_fire(training.cron, now) if training.cron else None
        spec = json.dumps(training.spec())
        with self.lock:
            old = self.db.execute("SELECT 1 FROM schedules WHERE name = ?",
                                  (training.name,)).fetchone()
            self.db.execute("INSERT INTO schedules (name, spec, seal, next_fire) VALUES "
                            "(?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, "
                            "seal = excluded.seal, next_fire = excluded.next_fire",
                            (training.name, spec, _row_seal(training.name, spec), nxt))
        return old is not None

    def remove(self, name: str) -> bool:
        with self.lock:
            return self.db.execute("DELETE FROM schedules WHERE name = ?",
                                   (name,)).rowcount > 0

    def schedules(self) -> list[tuple[Training, float | None, str | None]]:
        """The sealed schedules (a row nbship did not write is left out: ``unsealed``)."""
        with self.lock:
            rows = list(self.db.execute(
                "SELECT name, spec, seal, next_fire, last_data FROM schedules ORDER BY name"))
        return [(Training.from_spec(n, json.loads(s)), nxt, last)
                for n, s, seal, nxt, last in rows if _sealed(n, s, seal)]

    def unsealed(self) -> list[str]:
        """The names of rows this machine's nbship did not write: never run."""
        with self.lock:
            rows = list(self.db.execute("SELECT name, spec, seal FROM schedules"))
        return sorted(str(n) for n, s, seal in rows if not _sealed(n, s, seal))

    def set_next(self, name: str, when: float | None) -> None:
        with self.lock:
            self.db.execute("UPDATE schedules SET next_fire = ? WHERE name = ?", (when, name))

    def last_data(self, name: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT last_data FROM schedules WHERE name = ?",
                                  (name,)).fetchone()
        return row[0] if row else None

    def set_last_data(self, name: str, digest: str | None) -> None:
        with self.lock:
            self.db.execute("UPDATE schedules SET last_data = ? WHERE name = ?", (digest, name))

    def record(self, name: str, trigger: dict[str, Any], status: str, run_dir: str | None,
               message: str, seconds: float) -> None:
        with self.lock:
            self.db.execute("INSERT INTO runs (name, trigger, status, run_dir, message, started,"
                            " seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (name, json.dumps(trigger), status, run_dir, message,
                             trigger.get("fired_at"), round(seconds, 3)))

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.lock:
            rows = list(self.db.execute(
                "SELECT name, trigger, status, run_dir, message, started, seconds FROM runs "
                "ORDER BY id DESC LIMIT ?", (limit,)))
        return [{"name": n, "trigger": json.loads(t), "status": s, "run": r, "message": m,
                 "started": st, "seconds": sec} for n, t, s, r, m, st, sec in rows][::-1]


def secret(root: Path) -> str:
    """The webhook's shared secret: $NBSHIP_TRIGGER_SECRET, or a file made once (0600)."""
    from nbship import processes

    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = root / "secret"
    if not path.exists() and not path.is_symlink():
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    try:  # a regular file of a few bytes: a FIFO or a link to /dev/zero is a message
        raw = processes.read_bounded(path, 4096) or b""
    except (processes.StateFileError, OSError) as exc:
        raise SchedulerError(f"cannot use {path} as the webhook's secret ({exc})",
                             hint=f"delete it (nbship makes a new one), or set ${SECRET_ENV}"
                             ) from None
    token = raw.decode(errors="replace").strip()
    if not token:
        raise SchedulerError(f"{path} is empty: no webhook secret",
                             hint=f"delete it (nbship makes a new one), or set ${SECRET_ENV}")
    return token


@dataclass
class Scheduler:
    """The loop (cron and data), the worker (one run at a time) and the webhook's handler."""

    store: Store
    project: Path  # where .nbship/ is: runs, builds, data snapshots
    secret: str
    echo: Callable[[str], None] = print
    queue: list[tuple[Training, dict[str, Any]]] = field(default_factory=list)
    running: str | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _seen: dict[str, Any] = field(default_factory=dict)  # data fingerprints last polled
    _stop: threading.Event = field(default_factory=threading.Event)
    _worker: threading.Thread | None = None
    _current: tuple[Training, dict[str, Any]] | None = None  # what the worker runs now
    worker_restarts: int = 0
    worker_error: str | None = None  # why the worker last died
    _said: dict[str, str] = field(default_factory=dict)  # a source's last poll error, said once

    def enqueue(self, training: Training, why: dict[str, Any]) -> bool:
        """Queue a run unless one for this pipeline already waits; True when queued."""
        with self._cond:
            if any(t.name == training.name for t, _ in self.queue):
                return False
            self.queue.append((training, why))
            self._cond.notify()
        return True

    def start(self) -> None:
        """What restarts must do: skip the fires missed while down; run for data that
        changed while down."""
        now = time.time()
        for name in self.store.unsealed():
            self.echo(f"{name}: a schedule this machine's nbship did not write (no valid "
                      "seal) is ignored; `nbship kfp schedule` it again to run it")
        for training, nxt, last in self.store.schedules():
            if training.cron and (nxt is None or nxt < now):
                if nxt is not None:
                    self.echo(f"{training.name}: the fire at {_now_iso(nxt)} was missed while "
                              "the scheduler was down; not caught up")
                self.store.set_next(training.name, next_fire(training.cron, now))
            if training.data is not None:
                self._seen[training.name] = fingerprint(training.data)
                try:
                    digest = data_digest(training.data)
                except OSError as exc:  # unreadable now: the run reads it again, and says
                    self.echo(f"{training.name}: cannot read {training.data}: {exc}")
                    digest = ""
                if digest not in (None, last):
                    self.enqueue(training, {"kind": "data", "fired_at": _now_iso(),
                                            "reason": "new data since the last run"})
        self._start_worker()

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._work, daemon=True, name="nbship-worker")
        self._worker.start()

    def check_worker(self) -> None:
        """Restart a worker that died (a run it held is recorded as failed); after
        ``WORKER_RESTARTS`` restarts, SchedulerError: the scheduler exits non-zero."""
        if self._worker is None or self._worker.is_alive() or self._stop.is_set():
            return
        lost, self._current, self.running = self._current, None, None
        if lost is not None:
            try:
                self._done(lost[0], lost[1], "FAILURE", None,
                           f"the scheduler's worker died: {self.worker_error}", time.perf_counter())
            except Exception as exc:  # noqa: BLE001 - said in the log; the restart decides
                self.echo(f"{lost[0].name}: the run's failure could not be recorded: {exc}")
        if self.worker_restarts >= WORKER_RESTARTS:
            with self._cond:
                dropped, self.queue = self.queue, []
            for training, why in dropped:  # they end too: as failures, where the store works
                try:
                    self._done(training, why, "FAILURE", None, "the scheduler stopped: its "
                               f"worker kept dying ({self.worker_error})", time.perf_counter())
                except Exception:  # noqa: BLE001, S112 - the store may be what fails
                    continue
            raise SchedulerError(f"the scheduler's worker died {self.worker_restarts + 1} times "
                                 f"(last: {self.worker_error}); the scheduler stops",
                                 hint="see the traceback above; nbship scheduler up starts "
                                 "it again")
        self.worker_restarts += 1
        self.echo(f"the worker died ({self.worker_error}); restarted "
                  f"({self.worker_restarts} of {WORKER_RESTARTS})")
        self._start_worker()

    def tick(self, poll: bool = True) -> None:
        """Fire the crons that are due; with ``poll``, look at the data sources too."""
        now = time.time()
        for training, nxt, _ in self.store.schedules():
            if training.cron and nxt is not None and nxt <= now:
                # catch-up off: the next fire is computed from now, not from the missed one
                self.store.set_next(training.name, next_fire(training.cron, now))
                self.enqueue(training, {"kind": "cron", "schedule": training.cron,
                                        "fired_at": _now_iso(nxt)})
            if poll and training.data is not None:
                try:
                    seen = fingerprint(training.data)
                except OSError as exc:  # said once per error, then polled again
                    if self._said.get(training.name) != str(exc):
                        self._said[training.name] = str(exc)
                        self.echo(f"{training.name}: cannot poll {training.data}: {exc}")
                    continue
                self._said.pop(training.name, None)
                before = self._seen.get(training.name)
                self._seen[training.name] = seen
                if before is not None and seen != before:
                    self.enqueue(training, {"kind": "data", "fired_at": _now_iso(),
                                            "source": str(training.data)})

    def serve_forever(self) -> None:
        """Tick until stopped (SIGTERM arrives as KeyboardInterrupt)."""
        last_poll = 0.0
        while not self._stop.is_set():
            # crons every tick, so that they fire on time; data sources once a second
            poll = time.monotonic() - last_poll >= POLL
            if poll:
                last_poll = time.monotonic()
            self.tick(poll)
            self.check_worker()
            self._stop.wait(TICK)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def _work(self) -> None:
        """Take queued runs one at a time. Whatever a run raises ends that run as a
        failure; should even that fail (the store), the worker dies saying why, and
        ``check_worker`` restarts it."""
        try:
            while not self._stop.is_set():
                with self._cond:
                    while not self.queue and not self._stop.is_set():
                        self._cond.wait()
                    if self._stop.is_set():
                        return
                    training, why = self.queue.pop(0)
                    self.running = training.name
                    self._current = (training, why)
                started = time.perf_counter()
                try:
                    self.run(training, why)
                except Exception as exc:  # noqa: BLE001 - the run failed; the worker goes on
                    self.echo(f"{training.name}: the run raised\n{traceback.format_exc()}")
                    self._done(training, why, "FAILURE", None,
                               f"nbship failed: {type(exc).__name__}: {exc}", started)
                self._current = None
                self.running = None
        except BaseException as exc:
            self.worker_error = f"{type(exc).__name__}: {exc}"
            self.echo(f"the worker died:\n{traceback.format_exc()}")

    def run(self, training: Training, why: dict[str, Any]) -> None:
        """One triggered run (or its skip), recorded."""
        from nbship.extract.cache import analyse
        from nbship.pipelines.compile import compile_graph
        from nbship.pipelines.local import run_compiled

        started = time.perf_counter()
        values = dict(training.parameters)
        if training.data is not None:
            try:
                digest = data_digest(training.data)
            except OSError as exc:  # unreadable, or a file became a folder while read
                why["data"] = {"source": str(training.data), "sha256": None}
                self._done(training, why, "SKIPPED", None,
                           f"cannot read {training.data}: {exc}", started)
                return
            why["data"] = {"source": str(training.data), "sha256": digest}
            if digest is None:
                self._done(training, why, "SKIPPED", None, f"no data at {training.data}",
                           started)
                return
            if digest == self.store.last_data(training.name):
                self._done(training, why, "SKIPPED", None,
                           f"data unchanged since the last run (sha256 {digest[:16]}...)",
                           started)
                return
            try:
                snap = snapshot(training.data, digest, self.project / ".nbship" / "data")
            except (NbshipError, OSError) as exc:
                self._done(training, why, "SKIPPED", None, str(exc), started)
                return
            why["data"]["snapshot"] = str(snap)
            values[str(training.data_parameter)] = str(snap)
        self.echo(f"{training.name}: {why['kind']} -> run")
        try:
            if training.release:
                from nbship.pipelines.kfp_local import run_release

                why["release"] = training.release
                result = run_release(training.release, values, project=self.project,
                                     trigger=why, echo=lambda line: None)
            else:
                graph = analyse(training.notebook)
                compiled = compile_graph(graph,
                                         self.project / ".nbship" / "build" / training.name)
                result = run_compiled(compiled, values, root=self.project / ".nbship" / "runs",
                                      trigger=why, echo=lambda line: None)
        except NbshipError as exc:
            self._done(training, why, "FAILURE", None, str(exc).splitlines()[0], started)
            return
        if training.data is not None:
            self.store.set_last_data(training.name, why["data"]["sha256"])
        message = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
        if training.registry and result.status == "SUCCESS":
            message += "; " + self._push(training, result.record_dir)
        self._done(training, why, result.status, str(result.record_dir), message, started)

    def _push(self, training: Training, run_dir: Path) -> str:
        """The run passed the notebook's gate: its model is the next model release."""
        from nbship.release.model import push

        assert training.registry is not None
        try:
            pushed = push(run_dir, training.registry, echo=lambda line: None)
        except NbshipError as exc:
            return f"model not pushed: {exc.message}"
        return f"model release {pushed.reference}@{pushed.digest}"

    def _done(self, training: Training, why: dict[str, Any], status: str, run_dir: str | None,
              message: str, started: float) -> None:
        self.store.record(training.name, why, status, run_dir, message,
                          time.perf_counter() - started)
        self.echo(f"{training.name}: {why['kind']} -> {status}"
                  + (f": {message}" if message else "") + (f" ({run_dir})" if run_dir else ""))

    def webhook(self, name: str, authorization: str) -> tuple[int, dict[str, Any]]:
        expected = f"Bearer {self.secret}"
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            return 401, {"error": "a webhook needs 'Authorization: Bearer <secret>' (the "
                         f"scheduler's secret: ${SECRET_ENV} or .nbship/scheduler/secret)"}
        found = [t for t, _, _ in self.store.schedules() if t.name == name]
        if not found or not found[0].webhook:
            return 404, {"error": f"no pipeline {name!r} takes webhooks (webhook = true in "
                         "[tool.nbship.training])"}
        queued = self.enqueue(found[0], {"kind": "webhook", "fired_at": _now_iso()})
        return 202, {"queued": queued, "pipeline": name,
                     "reason": None if queued else "a run of it is already waiting"}

    def alerts(self, payload: Any, authorization: str) -> tuple[int, dict[str, Any]]:
        """Alertmanager's webhook (``POST /alerts``): each firing drift alert names its
        model, which is a pipeline; those that take webhooks get a run."""
        if not hmac.compare_digest(authorization.encode(), f"Bearer {self.secret}".encode()):
            return 401, {"error": "alerts need 'Authorization: Bearer <secret>' (nbship "
                         "monitor up --webhook-secret-file .nbship/scheduler/secret)"}
        firing = alerts.firing(payload)
        if firing is None:
            return 400, {"error": "not an Alertmanager webhook payload (no 'alerts' list)"}
        takes = {t.name: t for t, _, _ in self.store.schedules() if t.webhook}
        queued: list[str] = []
        for alert in firing:
            training = takes.get(str(alert["labels"].get("model")))
            if training is not None and self.enqueue(
                    training, {**alerts.trigger(alert), "fired_at": _now_iso()}):
                queued.append(training.name)
        return 202, {"queued": queued}

    def status(self) -> dict[str, Any]:
        return {"schedules": [{**t.spec(), "name": t.name, "next_fire": _now_iso(n) if n else None,
                               "last_data": last} for t, n, last in self.store.schedules()],
                "running": self.running, "queued": [t.name for t, _ in self.queue],
                "worker": {"alive": self._worker is not None and self._worker.is_alive(),
                           "restarts": self.worker_restarts, "last_error": self.worker_error},
                "runs": self.store.runs(20)}


MAX_BODY = 1 << 16


def http_server(scheduler: Scheduler, port: int) -> http.server.ThreadingHTTPServer:
    """127.0.0.1 only: GET /health, GET /status, POST /trigger/NAME (webhook), POST /alerts
    (Alertmanager)."""

    class Handler(JSONHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/health":
                self.reply(200, {"ok": True})
            elif self.path == "/status":
                self.reply(200, scheduler.status())
            else:
                self.reply(404, {"error": "GET /health or /status; POST /trigger/NAME"})

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = self.headers.get("Content-Length") or "0"
            body = b""
            if length.isdigit() and 0 < int(length) <= MAX_BODY:
                body = self.rfile.read(int(length))
            elif length != "0":
                self.close_connection = True
            if self.path == "/alerts":
                try:
                    payload = json.loads(body) if body else None
                except ValueError:
                    payload = None
                self.reply(*scheduler.alerts(payload, self.headers.get("Authorization", "")))
                return
            if not self.path.startswith("/trigger/"):
                self.reply(404, {"error": "POST /trigger/NAME or /alerts"})
                return
            self.reply(*scheduler.webhook(self.path[len("/trigger/"):].strip("/"),
                                           self.headers.get("Authorization", "")))

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


def run_foreground(pyproject: Path, port: int, root: Path) -> None:
    """What ``nbship scheduler up`` starts: sync, then loop until SIGTERM."""
    from nbship.pipelines.training import read_config

    def say(line: str) -> None:
        print(f"{_now_iso()} {line}", flush=True)

    trainings = read_config(pyproject)
    store = Store(root / "schedules.sqlite")
    for line in store.sync(trainings, time.time()):
        say(line)
    scheduler = Scheduler(store, pyproject.resolve().parent, secret(root), echo=say)
    server = http_server(scheduler, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheduler.start()
    say(f"scheduler on http://127.0.0.1:{port}: {len(trainings)} pipeline(s)")
    try:
        scheduler.serve_forever()
    except KeyboardInterrupt:
        say("stopping")
    finally:
        scheduler.stop()
        server.shutdown()


def _state(root: Path) -> Path:
    return root / "scheduler.json"


def up(pyproject: Path, root: Path, port: int = DEFAULT_PORT) -> tuple[str, bool]:
    """Start the scheduler detached (or find it running): (address, started now)."""
    from nbship import processes
    from nbship.pipelines.training import read_config

    read_config(pyproject)  # a mistake in pyproject.toml is reported here, not in a log
    root.mkdir(parents=True, exist_ok=True)
    record = processes.read(_state(root), error=SchedulerError, what="scheduler")
    if record is not None and processes.ours(record):
        return record.address, False
    secret(root)
    argv = [sys.executable, "-m", "nbship", "scheduler", "run", "--pyproject",
            str(pyproject.resolve()), "--port", str(port), "--root", str(root.resolve())]
    address = f"127.0.0.1:{port}"
    processes.start(argv, log=root / "scheduler.log", address=address,
                    ready=lambda: processes.answers(f"http://{address}/health"),
                    state=_state(root), error=SchedulerError, what="the scheduler",
                    timeout=60)
    return address, True


def down(root: Path) -> bool:
    from nbship import processes

    record = processes.read(_state(root), error=SchedulerError, what="scheduler")
    return record is not None and processes.stop(record, _state(root))


def status(root: Path) -> dict[str, Any] | None:
    """The running scheduler's status, or None when it is not running."""
    import urllib.request

    from nbship import processes

    record = processes.read(_state(root), error=SchedulerError, what="scheduler")
    if record is None or not processes.ours(record):
        return None
    try:
        with urllib.request.urlopen(f"http://{record.address}/status", timeout=10) as reply:
            return dict(json.loads(reply.read()))
    except OSError as exc:
        if not processes.ours(record):  # it ended while we asked
            return None
        raise SchedulerError(f"the scheduler on {record.address} does not answer: {exc}",
                             hint=f"see {root / 'scheduler.log'}") from None


def exited(root: Path) -> bool:
    """True when the scheduler nbship started is gone without ``down`` (it exited, say
    because its worker kept dying: its log says why)."""
    from nbship import processes

    record = processes.read(_state(root), error=SchedulerError, what="scheduler")
    return record is not None and not processes.ours(record)


def stored(root: Path) -> dict[str, Any]:
    """What the store holds, read while no scheduler runs (nothing: no store made). A store
    that is not a regular SQLite file (a FIFO, a link, another file) is SchedulerError."""
    import stat

    path = root / "schedules.sqlite"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return {"schedules": [], "running": None, "queued": [], "runs": []}
    if not stat.S_ISREG(mode):
        raise SchedulerError(f"{path} is not a scheduler store nbship made (not a regular "
                             "file)", hint=f"delete {path}: the scheduler makes a new one")
    try:
        store = Store(path)
        return {"schedules": [{**t.spec(), "name": t.name,
                               "next_fire": _now_iso(n) if n else None, "last_data": last}
                              for t, n, last in store.schedules()],
                "running": None, "queued": [], "runs": store.runs(20)}
    except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:  # not nbship's rows
        raise SchedulerError(f"{path} is not a scheduler store nbship can read ({exc})",
                             hint=f"delete {path}: the scheduler makes a new one") from None

