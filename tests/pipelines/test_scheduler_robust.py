"""The scheduler survives its data folder (issue 17, section 5).

A real scheduler process (`nbship scheduler up`) polls a data folder that another
thread keeps changing under it: sub-folders made and removed, files written and removed
while a data run reads them. It must stay up, every queued run must end (ran, failed
or skipped), and a webhook must then start a run that ends too. The worker's
supervision (a worker that dies is restarted, then the scheduler exits) is tested in
this process, with a store that fails.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nbship.errors import SchedulerError
from nbship.pipelines import scheduler
from nbship.pipelines.training import Training, data_digest, fingerprint
from tests.conftest import wait_for, write_notebook
from tests.pipelines.test_scheduler import post
from tests.release.conftest import free_port

ENDED = ("SUCCESS", "FAILURE", "SKIPPED")


def project(folder: Path) -> Path:
    """A one-step notebook that lists its data folder, trained on new data and webhooks."""
    (folder / "notebooks").mkdir(parents=True)
    write_notebook(folder / "notebooks" / "count_files.ipynb", [
        (["parameters"], 'data_dir = ""'),
        (["step:count"], "import os\n"
                         "n = sum(len(f) for _, _, f in os.walk(data_dir)) if data_dir else 0\n"
                         "print(n)"),
    ])
    (folder / "data").mkdir()
    (folder / "data" / "seed.csv").write_text("a,b\n1,2\n")
    pyproject = folder / "pyproject.toml"
    pyproject.write_text('[tool.nbship.training."notebooks/count_files.ipynb"]\n'
                         'data = "data"\ndata_parameter = "data_dir"\nwebhook = true\n')
    return pyproject


@contextmanager
def churning(step: Callable[[int], None], seconds: float) -> Iterator[threading.Event]:
    """``step(i)`` called as fast as it goes from a thread, for ``seconds`` or the block."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        i, end = 0, time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < end:
            try:
                step(i)
            except OSError as exc:  # the churn's own races (rmtree of a folder being made)
                errors.append(exc)
            i += 1
        stop.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join()


def folders(source: Path) -> Callable[[int], None]:
    """Nested sub-folders (with a file each) made and removed."""
    def step(i: int) -> None:
        made = source / f"batch{i % 6}" / "part" / "deep"
        made.mkdir(parents=True, exist_ok=True)
        (made / "rows.csv").write_text(f"{i}\n" * 50)
        shutil.rmtree(source / f"batch{(i + 3) % 6}", ignore_errors=True)
    return step


def files(source: Path) -> Callable[[int], None]:
    """Files written and removed in the folder itself (no sub-folders)."""
    def step(i: int) -> None:
        (source / f"rows{i % 40}.csv").write_text(f"{i}\n" * 2000)
        (source / f"rows{(i + 20) % 40}.csv").unlink(missing_ok=True)
    return step


def settled(root: Path) -> dict[str, Any] | None:
    """The scheduler's status once nothing is queued or running (None while it is busy)."""
    doc = scheduler.status(root)
    assert doc is not None, "the scheduler died:\n" + \
        (root / "scheduler.log").read_text()[-3000:]
    return doc if not doc["queued"] and doc["running"] is None else None


@pytest.mark.slow
@pytest.mark.parametrize("churn", [folders, files], ids=["folders", "files"])
def test_the_scheduler_survives_its_data_folder_changing_under_it(
        churn: Callable[[Path], Callable[[int], None]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject = project(tmp_path)
    monkeypatch.setenv(scheduler.SECRET_ENV, "s3cret")
    root = tmp_path / ".nbship" / "scheduler"
    address, _ = scheduler.up(pyproject, root, free_port())
    try:
        wait_for("the first data run", lambda: (d := settled(root)) and d["runs"])
        with churning(churn(tmp_path / "data"), seconds=10) as done:
            while not done.is_set():
                assert scheduler.status(root) is not None, \
                    "the scheduler died:\n" + (root / "scheduler.log").read_text()[-3000:]
                time.sleep(0.5)
        time.sleep(2 * scheduler.POLL)  # the poll's last look at what the churn left
        doc = wait_for("every queued run to end", lambda: settled(root), timeout=240)
        assert doc["worker"] == {"alive": True, "restarts": 0, "last_error": None}
        assert len(doc["runs"]) >= 2, doc["runs"]  # the churn started runs, and they ended
        assert all(r["status"] in ENDED for r in doc["runs"])
        # the webhook is not told "already waiting": its run is queued, and it ends
        before = len(scheduler.status(root)["runs"])  # type: ignore[index]
        code, answer = post(f"http://{address}/trigger/count-files", "s3cret")
        assert code == 202 and answer["queued"] is True, answer
        doc = wait_for("the webhook's run", lambda: (d := settled(root)) and
                       len(d["runs"]) > before and d, timeout=120)
        hooked = [r for r in doc["runs"][before:] if r["trigger"]["kind"] == "webhook"]
        assert len(hooked) == 1 and hooked[0]["status"] in ENDED, doc["runs"][before:]
    finally:
        assert scheduler.down(root) is True


def test_a_walk_of_a_folder_changing_under_it_never_raises(tmp_path: Path) -> None:
    """What the poll and a data run read, while folders and files come and go."""
    source = tmp_path / "data"
    source.mkdir()
    with churning(folders(source), seconds=5) as done:
        while not done.is_set():
            fingerprint(source)
            data_digest(source)
    with churning(files(source), seconds=3) as done:
        while not done.is_set():
            data_digest(source)


class FailingStore(scheduler.Store):
    """A store whose next ``fail`` records raise, as SQLite does on a full or broken disk."""

    fail = 0

    def record(self, *args: Any, **kwargs: Any) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise sqlite3.OperationalError("disk I/O error")
        super().record(*args, **kwargs)


def test_an_unexpected_error_fails_the_run_and_a_dead_worker_is_restarted_then_exits(
        tmp_path: Path) -> None:
    store = FailingStore(tmp_path / "schedules.sqlite")
    training = Training("nb", tmp_path / "absent.ipynb", webhook=True)
    store.put(training, time.time())
    said: list[str] = []
    sched = scheduler.Scheduler(store, tmp_path, secret="s", echo=said.append)
    sched.start()
    # a run that raises what nbship did not expect is a failed run; the worker goes on
    def boom(training: Training, why: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    original = sched.run
    sched.run = boom  # type: ignore[method-assign]
    assert sched.enqueue(training, {"kind": "webhook", "fired_at": "now"})
    wait_for("the failed run", lambda: store.runs())
    assert store.runs()[-1]["status"] == "FAILURE" and "RuntimeError: boom" in \
        store.runs()[-1]["message"]
    sched.run = original  # type: ignore[method-assign]
    # the store fails twice (the run's record, then the failure's): the worker dies
    store.fail = 2
    assert sched.enqueue(training, {"kind": "webhook", "fired_at": "now"})
    wait_for("the worker to die", lambda: sched._worker is not None
             and not sched._worker.is_alive())
    assert sched.status()["worker"]["alive"] is False
    sched.check_worker()  # what the loop does each tick
    doc = sched.status()
    assert doc["worker"]["alive"] and doc["worker"]["restarts"] == 1
    assert "disk I/O error" in doc["worker"]["last_error"]
    assert doc["runs"][-1]["status"] == "FAILURE" and "worker died" in doc["runs"][-1]["message"]
    assert doc["queued"] == [] and doc["running"] is None
    # a worker that keeps dying: the scheduler stops, and the queued runs end as failures
    for _ in range(scheduler.WORKER_RESTARTS):
        store.fail = 3
        assert sched.enqueue(training, {"kind": "webhook", "fired_at": "now"})
        wait_for("the worker to die", lambda: sched._worker is not None
                 and not sched._worker.is_alive())
        if sched.worker_restarts < scheduler.WORKER_RESTARTS:
            sched.check_worker()
    assert sched.enqueue(training, {"kind": "webhook", "fired_at": "now"})
    with pytest.raises(SchedulerError, match="worker died"):
        sched.check_worker()
    assert sched.queue == [] and "worker kept dying" in store.runs()[-1]["message"]
    sched.stop()


def test_status_says_when_the_scheduler_exited_without_down(tmp_path: Path) -> None:
    """A scheduler that exited on its own (its worker kept dying) leaves its sealed state:
    `status` says it exited and where its log is, not merely "not running"."""
    from nbship import processes

    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started, argv = processes.start_time(gone.pid), processes.cmdline(gone.pid)
    assert started is not None and argv is not None
    processes.write_state(tmp_path / "scheduler.json",
                          processes.Started("127.0.0.1:9096", gone.pid, argv, started))
    assert scheduler.exited(tmp_path) is False  # still running
    gone.kill()
    gone.wait()
    assert scheduler.exited(tmp_path) is True
    done = subprocess.run([sys.executable, "-m", "nbship", "scheduler", "status", "--root",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "exited without `nbship scheduler down`" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "junk"])
def test_a_store_or_secret_that_is_not_a_small_regular_file_is_a_message(
        kind: str, tmp_path: Path) -> None:
    """`scheduler status` reads the store when no scheduler runs, `scheduler up` the
    webhook's secret: a FIFO, a link to /dev/zero or another file is a message at once."""
    env = {k: v for k, v in os.environ.items() if k != scheduler.SECRET_ENV}
    for name, verb in (("schedules.sqlite", "status"), ("secret", "up")):
        root = tmp_path / verb
        root.mkdir()
        if kind == "fifo":
            os.mkfifo(root / name)
        elif kind == "dev-zero":
            (root / name).symlink_to("/dev/zero")
        else:
            (root / name).write_bytes(b"\0junk" * 100 if name == "secret" else b"junk" * 100)
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "nbship", "scheduler", verb, "--root", str(root),
             "--pyproject", str(tmp_path / "absent.toml"), "--port", str(free_port())],
            capture_output=True, text=True, timeout=30, env=env)
        if kind == "junk" and name == "secret":  # odd bytes, but a secret nbship can use
            assert done.returncode == 0, done.stderr
            assert scheduler.down(root) is True
            continue
        assert done.returncode == 1 and str(root / name) in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and time.monotonic() - began < 20


def test_a_schedule_row_nbship_did_not_write_never_runs(tmp_path: Path) -> None:
    """A store a folder brings (or one edited by hand) names a notebook to run every
    second: the real scheduler ignores the row, says so, and runs nothing."""
    import json

    marker = tmp_path / "ran"
    write_notebook(tmp_path / "planted.ipynb", [
        (["step:plant"], f"open({str(marker)!r}, 'w').write('ran')")])
    root = tmp_path / ".nbship" / "scheduler"
    root.mkdir(parents=True)
    db = sqlite3.connect(root / "schedules.sqlite")
    db.execute("CREATE TABLE schedules (name TEXT PRIMARY KEY, spec TEXT NOT NULL, "
               "next_fire REAL, last_data TEXT)")
    spec = Training("kfp:planted", tmp_path / "planted.ipynb", cron="* * * * * *").spec()
    db.execute("INSERT INTO schedules (name, spec, next_fire) VALUES (?, ?, ?)",
               ("kfp:planted", json.dumps(spec), time.time() + 1))
    db.commit()
    db.close()
    scheduler.up(tmp_path / "pyproject.toml", root, free_port())
    try:
        time.sleep(8)
        log = (root / "scheduler.log").read_text()
        assert not marker.exists(), "the scheduler ran a schedule nbship never wrote:\n" + log
        assert "kfp:planted: a schedule this machine's nbship did not write" in log, log
        assert scheduler.status(root)["schedules"] == []  # type: ignore[index]
    finally:
        scheduler.down(root)
