"""The parts of kfp.local that nbship wraps, checked before a run uses them.

nbship reports progress and keeps the local cache honest by wrapping
``task_executor.execute_single_task`` and ``LocalCache.get/put``, and starts
steps from its fork server by replacing ``subprocess_task_handler.run_local_subprocess``
for commands of the lightweight component's shape. These are kfp's internals:
if a kfp release changes them, ``nbship run`` stops with a message naming what
changed, never a raw ImportError or a silently wrong run.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from nbship.errors import BackendUnavailableError

# (module, attribute path, keyword arguments nbship relies on)
WRAPPED: list[tuple[str, str, tuple[str, ...]]] = [
    ("kfp.local.orchestrator.task_executor", "execute_single_task",
     ("task_name", "task_spec", "components")),
    ("kfp.local.cache", "LocalCache.get", ("key",)),
    ("kfp.local.cache", "LocalCache.put", ("key", "outputs")),
]
LAUNCHER: list[tuple[str, str, tuple[str, ...]]] = [
    ("kfp.local.subprocess_task_handler", "run_local_subprocess",
     ("full_command", "env_vars")),
]


def _lookup(module: str, path: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _check(items: list[tuple[str, str, tuple[str, ...]]]) -> list[str]:
    changed: list[str] = []
    for module, path, params in items:
        try:
            obj = _lookup(module, path)
        except (ImportError, AttributeError):
            changed.append(f"{module}.{path} is gone")
            continue
        try:
            names = set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            names = set()
        lacking = [p for p in params if p not in names]
        if lacking:
            changed.append(f"{module}.{path} no longer takes {', '.join(lacking)}")
    return changed


def _command_shape() -> list[str]:
    """The lightweight component's command: ``sh -ec`` running kfp.dsl.executor_main."""
    from nbship.pipelines.launcher import COMPONENT_FILE, EXECUTOR_MODULE

    try:
        factory = importlib.import_module("kfp.dsl.component_factory")
        source = inspect.getsource(factory)
    except (ImportError, OSError, TypeError):
        return ["kfp.dsl.component_factory cannot be read"]
    if getattr(factory, "EXECUTOR_MODULE", None) != EXECUTOR_MODULE or \
            COMPONENT_FILE not in source or "'-ec'" not in source:
        return ["the lightweight component's command (kfp.dsl.component_factory) has a new "
                "shape"]
    return []


def require(*, fork_server: bool) -> None:
    """Raise BackendUnavailableError naming what changed in kfp, if anything did."""
    from importlib.metadata import version

    changed = _check(WRAPPED)
    launcher_changed = _check(LAUNCHER) + _command_shape() if fork_server else []
    if not changed and not launcher_changed:
        return
    hint = ("run the steps without nbship's fork server: NBSHIP_STEP_LAUNCH=subprocess"
            if not changed else "install the kfp version nbship is pinned to "
            "(requirements.txt: kfp==2.17.3)")
    raise BackendUnavailableError(
        f"kfp {version('kfp')} changed what nbship wraps in kfp.local: "
        + "; ".join(changed + launcher_changed), hint=hint)
