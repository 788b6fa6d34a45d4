"""registry.json is only trusted as far as it is proven: nothing else is ever signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nbship import processes
from nbship.cli import main
from nbship.errors import ReleaseError
from nbship.release import registry

CORRUPT = [
    "", "{", "[]", "null", "42", '"text"',
    '{"address": "127.0.0.1:5000", "pid": -1, "argv": ["r", "serve", "c"], "started": 1}',
    '{"address": "127.0.0.1:5000", "pid": 0, "argv": ["r", "serve", "c"], "started": 1}',
    '{"address": "127.0.0.1:5000", "pid": 1, "argv": ["r", "serve", "c"], "started": 1}',
    '{"address": "127.0.0.1:5000", "pid": "12", "argv": ["r", "serve", "c"], "started": 1}',
    '{"address": "10.0.0.1:5000", "pid": 4242, "argv": ["r", "serve", "c"], "started": 1}',
    '{"address": "127.0.0.1:5000", "pid": 4242}',
    "[" * 100_000,
]


@pytest.fixture
def no_signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(signal, "pidfd_send_signal", lambda fd, sig: sent.append((fd, sig)))
    return sent


@pytest.mark.parametrize("text", CORRUPT, ids=range(len(CORRUPT)))
def test_a_corrupt_state_file_is_a_message_and_signals_nothing(
        text: str, tmp_path: Path, no_signals: list[tuple[int, int]],
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "registry.json").write_text(text)
    with pytest.raises(ReleaseError, match="not a registry state nbship wrote"):
        registry.down(tmp_path)
    assert main(["registry", "status", "--root", str(tmp_path)]) == 1
    assert main(["registry", "down", "--root", str(tmp_path)]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert no_signals == []


def test_a_live_process_that_is_not_the_registry_is_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # sealed as nbship seals it: the pid, start time and command line still decide
        processes.write_state(tmp_path / "registry.json", processes.Started(
            "127.0.0.1:5000", other.pid, ["/usr/bin/docker-registry", "serve", "x"], 1))
        assert registry.status(tmp_path).pid is None  # type: ignore[union-attr]
        assert registry.down(tmp_path) is False
        assert other.poll() is None, "an unrelated process was signalled"
        assert not (tmp_path / "registry.json").exists()
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("port", ["0", "-5", "70000", "http"])
def test_a_port_outside_1_to_65535_is_refused(port: str, capsys: pytest.CaptureFixture[str],
                                              ) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["registry", "up", "--port", port])
    assert stop.value.code == 2
    assert "port" in capsys.readouterr().err
