"""Issue 17 §2: a value in a format that can run code (pickles) is opened from exactly
the bytes that were checked: swapping the file right after its sha256 check never gets
another pickle opened."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

from nbship.runtime import serializers
from tests.conftest import Planted


def test_a_pickle_swapped_after_its_check_is_never_opened(tmp_path: Path) -> None:
    value = tmp_path / "value"
    serializers.save({"weights": {1, 2, 3}}, value, using=serializers.FALLBACK)
    target = value / serializers.FALLBACK.filename
    good = target.read_bytes()
    marker = tmp_path / "PWNED"
    evil = pickle.dumps(Planted(marker))
    stop = threading.Event()

    def swap() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tmp = value / f".swap{n % 2}"
            tmp.write_bytes(evil if n % 2 else good)
            tmp.replace(target)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    loaded = refused = 0
    deadline = time.monotonic() + 8
    try:
        while time.monotonic() < deadline and (loaded < 50 or refused < 50):
            try:
                assert serializers.load(value) == {"weights": {1, 2, 3}}
                loaded += 1
            except serializers.UntrustedArtifact:
                refused += 1
            assert not marker.exists(), "a pickle swapped in after the check was opened"
    finally:
        stop.set()
        swapper.join()
    assert loaded and refused  # both sides of the race were seen
