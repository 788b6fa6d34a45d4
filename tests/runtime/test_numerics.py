"""The numeric settings that the notebook's kernel and the pipeline's steps share under
`nbship test` (nbship.runtime.numerics), applied in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nbship.runtime.numerics import ENV, Numerics, from_env

PROBE = """
import json, os
from nbship.runtime import numerics
applied = numerics.apply()
out = {"applied": applied is not None, "omp": os.environ.get("OMP_NUM_THREADS")}
import torch
out["threads"] = torch.get_num_threads()
out["deterministic"] = torch.are_deterministic_algorithms_enabled()
print(json.dumps(out))
"""


def probe(env: dict[str, str]) -> dict[str, object]:
    pytest.importorskip("torch")
    base = {k: v for k, v in os.environ.items() if k != ENV and not k.endswith("_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_settings_reach_torch_through_the_environment() -> None:
    out = probe(Numerics.for_modules({"torch", "numpy"}, threads=1).to_env())
    assert out == {"applied": True, "omp": "1", "threads": 1, "deterministic": True}


def test_without_settings_nothing_changes() -> None:
    out = probe({})
    assert out["applied"] is False and out["deterministic"] is False


def test_only_known_libraries_are_configured() -> None:
    assert Numerics.for_modules({"sklearn", "torch", "os"}).libraries == ("torch",)
    assert Numerics.for_modules({"sklearn"}).libraries == ()


@pytest.mark.parametrize("text", ["", "{", "[]", '{"threads": "x"}', '{"libraries": []}'])
def test_unreadable_settings_are_none(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(ENV, text)
    assert from_env() is None


def test_unknown_library_names_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, json.dumps({"threads": 0, "libraries": ["torch", "os; rm"]}))
    assert from_env() == Numerics(1, ("torch",))
