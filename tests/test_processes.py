"""`down` and `status` trust only what nbship wrote (issue 17, section 6).

Each test runs the real command line (`python -m nbship ...`) against a state file and a
real process: a `sleep` this test starts, whose pid, command line and start time anyone
can read in /proc. nbship must never signal it, and must answer a FIFO or a symbolic
link to /dev/zero with a message, at once.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbship import processes
from nbship.errors import NbshipError

# the helpers whose `down` signals a process, and their state files (the first is read first)
STATES = {"registry": ["registry.json"], "scheduler": ["scheduler.json"],
          "monitor": ["prometheus.json", "alertmanager.json"]}


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process nbship never started."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def described(pid: int) -> processes.Started:
    """What /proc says of ``pid``: everything an unsealed state file could hold."""
    started, argv = processes.start_time(pid), processes.cmdline(pid)
    assert started is not None and argv is not None
    return processes.Started("127.0.0.1:5000", pid, argv, started)


def nbship(*args: str, timeout: float = 30) -> tuple[int, str, float]:
    """``python -m nbship ARGS`` with at most 4 GiB of address space (a reader of /dev/zero
    fails instead of taking the machine's memory): exit status, stderr, seconds."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    began = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "nbship", *args], capture_output=True,
                              text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"nbship {' '.join(args)} did not end in {timeout} s")
    return done.returncode, done.stderr, time.monotonic() - began


def forge(state: Path, record: processes.Started, how: str) -> None:
    if how == "unsealed":  # what nbship wrote before states were sealed
        state.write_text(json.dumps(record.__dict__))
    elif how == "edited":  # a state nbship sealed, then pointed at another process
        processes.write_state(state, processes.Started(record.address, 4242, ["x"], 1))
        doc = json.loads(state.read_text())
        doc.update(pid=record.pid, argv=record.argv, started=record.started)
        state.write_text(json.dumps(doc))
    else:  # sealed with a key that is not this machine's
        doc = {"format": processes.STATE_FORMAT, "file": state.name, **record.__dict__}
        state.write_text(json.dumps({**doc, "hmac": "ab" * 32}))


@pytest.mark.parametrize("how", ["unsealed", "edited", "other-key"])
@pytest.mark.parametrize("verb", sorted(STATES))
def test_a_forged_state_naming_a_live_process_signals_nothing(
        verb: str, how: str, tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    record = described(sleeper.pid)
    assert processes.ours(record)  # the state names it exactly: only the seal can refuse it
    for name in STATES[verb]:
        forge(tmp_path / name, record, how)
    code, err, _ = nbship(verb, "down", "--root", str(tmp_path))
    time.sleep(0.2)
    assert sleeper.poll() is None, f"`nbship {verb} down` signalled a process it never started"
    assert code == 1 and "nothing was signalled" in err and "Traceback" not in err, err
    assert "seal" in err, err
    assert all((tmp_path / name).exists() for name in STATES[verb])  # left for the user


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "large"])
@pytest.mark.parametrize("action", ["down", "status"])
@pytest.mark.parametrize("verb", sorted(STATES))
def test_a_state_that_is_not_a_small_regular_file_is_a_message_at_once(
        verb: str, action: str, kind: str, tmp_path: Path) -> None:
    for name in STATES[verb]:
        state = tmp_path / name
        if kind == "fifo":
            os.mkfifo(state)
        elif kind == "dev-zero":
            state.symlink_to("/dev/zero")
        else:
            state.write_bytes(b" " * (processes.MAX_STATE_BYTES + 1))
    code, err, seconds = nbship(verb, action, "--root", str(tmp_path))
    why = {"fifo": "a FIFO", "dev-zero": "a symbolic link", "large": "larger than"}[kind]
    assert code == 1 and why in err and "nothing was signalled" in err, err
    assert "Traceback" not in err and seconds < 10


def test_a_state_sealed_for_another_helper_is_refused(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    processes.write_state(tmp_path / "scheduler.json", described(sleeper.pid))
    (tmp_path / "scheduler.json").rename(tmp_path / "registry.json")
    code, err, _ = nbship("registry", "down", "--root", str(tmp_path))
    assert code == 1 and "written as 'scheduler.json'" in err, err
    assert sleeper.poll() is None


def test_a_sealed_state_still_decides_by_start_time_and_command_line(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """The seal proves nbship wrote it; the process must still be the one it started (a
    reused pid, a process that ended)."""
    record = described(sleeper.pid)
    processes.write_state(tmp_path / "registry.json",
                          processes.Started(record.address, record.pid, record.argv,
                                            record.started + 1))
    code, out_err, _ = nbship("registry", "down", "--root", str(tmp_path))
    assert code == 0 and sleeper.poll() is None
    assert not (tmp_path / "registry.json").exists()
    # and one that names it exactly, sealed here, is stopped: the seal is what decides
    processes.write_state(tmp_path / "registry.json", record)
    assert processes.read(tmp_path / "registry.json", error=NbshipError,
                          what="registry") == record
    assert processes.stop(record, tmp_path / "registry.json") is True
    assert sleeper.wait(timeout=10) is not None
