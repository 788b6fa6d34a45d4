"""The numeric settings a notebook and its pipeline run under when they are compared.

``nbship test`` proves that the pipeline computes what the notebook computes by
running both and comparing every value that crosses a step boundary. Floating-point
results depend on more than the code: how many threads split a sum, whether a
library may pick a non-deterministic kernel, and the memory layout of the arrays
(kept across boundaries by nbship.runtime.layout). So both sides run under one
:class:`Numerics`, carried in the environment variable ``NBSHIP_NUMERICS`` to the
notebook's kernel and to every step process, and applied before the notebook's
first cell and at the start of each step:

* the same number of threads for every native thread pool (OpenMP, MKL, OpenBLAS:
  the environment variables for libraries loaded later, threadpoolctl for the
  ones a fork server already loaded);
* the libraries' own switches where they offer one (``LIBRARIES``): PyTorch's
  ``set_num_threads`` and ``use_deterministic_algorithms(True, warn_only=True)``.

Settings apply only where ``nbship test`` asked for them: ``nbship run`` and the
cluster keep the libraries' defaults.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENV = "NBSHIP_NUMERICS"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class Numerics:
    """One thread per pool by default: the notebook and its pipeline run side by side,
    and ``nbship test -n auto`` runs notebooks in parallel, so more threads would
    only compete for the same cores."""

    threads: int = DEFAULT_THREADS
    libraries: tuple[str, ...] = ()  # those of LIBRARIES the notebook imports

    def to_env(self) -> dict[str, str]:
        """The environment that carries these settings to a kernel or a step process."""
        env = {name: str(self.threads) for name in THREAD_VARIABLES}
        env[ENV] = json.dumps({"threads": self.threads, "libraries": list(self.libraries)})
        return env

    @classmethod
    def for_modules(cls, modules: set[str], threads: int = DEFAULT_THREADS) -> Numerics:
        return cls(threads, tuple(sorted(name for name in LIBRARIES if name in modules)))


def _torch(settings: Numerics) -> None:
    import torch

    torch.set_num_threads(settings.threads)
    # CPU kernels without a deterministic form warn instead of failing the notebook
    torch.use_deterministic_algorithms(True, warn_only=True)


# library -> how to put it under the settings; imported only when the notebook uses it
LIBRARIES: dict[str, Callable[[Numerics], None]] = {"torch": _torch}


def from_env() -> Numerics | None:
    text = os.environ.get(ENV)
    if not text:
        return None
    try:
        doc: Any = json.loads(text)
        threads = int(doc["threads"])
        libraries = tuple(str(name) for name in doc.get("libraries", []))
    except (ValueError, TypeError, KeyError):
        return None
    return Numerics(max(threads, 1), tuple(n for n in libraries if n in LIBRARIES))


def apply(settings: Numerics | None = None) -> Numerics | None:
    """Put this process under ``settings`` (default: what ``NBSHIP_NUMERICS`` says);
    nothing when neither is given. Returns the settings applied."""
    settings = settings or from_env()
    if settings is None:
        return None
    for name in THREAD_VARIABLES:
        os.environ[name] = str(settings.threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:  # pools a fork server loaded before this process was given its settings
        threadpool_limits(limits=settings.threads)
    for name in settings.libraries:
        LIBRARIES[name](settings)
    return settings
