"""Start kfp.local's step processes from a warm fork server instead of a cold interpreter.

kfp.local's SubprocessRunner starts each step as ``sh -ec '<script>' '<code>' ARGS``:
the script writes the component code to a temporary file and runs
``python3 -m kfp.dsl.executor_main --component_module_path FILE ARGS`` in a new
interpreter, which imports kfp (0.7 s here) and the notebook's libraries (torch:
1.5 s) before the step's first line. That is most of a short step's time.

nbship runs the same ``kfp.dsl.executor_main`` with the same arguments, file and
environment, in a process forked from a :mod:`multiprocessing` fork server that
imported kfp's executor and the notebook's third-party libraries once (the
notebook's own modules are never preloaded: they are imported fresh by each step,
from the notebook's folder, as before). kfp.local still orchestrates, caches,
resolves inputs and reads the outputs; only the process start changes.

Commands of any other shape fall back to kfp.local's own subprocess. Set
``NBSHIP_STEP_LAUNCH=subprocess`` to use kfp.local's cold start for every step.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nbship.extract.names import imported_modules

__all__ = ["imported_modules"]

LAUNCH_ENV = "NBSHIP_STEP_LAUNCH"
EXECUTOR_MODULE = "kfp.dsl.executor_main"
COMPONENT_FILE = '"$program_path/ephemeral_component.py"'


def third_party_modules(modules: Iterable[str], local_dir: Path) -> list[str]:
    """The installed top-level modules among ``modules`` (not the notebook's own files)."""
    found: list[str] = []
    local = local_dir.resolve()
    for name in dict.fromkeys(m.split(".")[0] for m in modules):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        origin = getattr(spec, "origin", None) if spec is not None else None
        if not origin or origin in ("built-in", "frozen"):
            continue
        if Path(origin).resolve().is_relative_to(local):
            continue  # a module in the notebook's folder: each step imports its current text
        found.append(name)
    return found


def _split(full_command: list[str]) -> tuple[str, list[str]] | None:
    """(component code, executor arguments) for a lightweight component's command."""
    if (len(full_command) >= 4 and full_command[0] == "sh" and full_command[1] == "-ec"
            and EXECUTOR_MODULE in full_command[2] and COMPONENT_FILE in full_command[2]
            and '"$@"' in full_command[2]):
        return full_command[3], list(full_command[4:])
    return None


def _step_main(code_path: str, args: list[str], env: dict[str, str], cwd: str,
               log_path: str) -> None:
    """In the forked process: what ``python3 -m kfp.dsl.executor_main`` would do."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.environ["_KFP_RUNTIME"] = "true"
    os.chdir(cwd)
    sys.path.insert(0, cwd)  # `python -m` puts the working folder first
    importlib.invalidate_caches()
    sys.argv = [EXECUTOR_MODULE, "--component_module_path", code_path, *args]
    from kfp.dsl import executor_main

    executor_main.executor_main()


def enabled() -> bool:
    return os.environ.get(LAUNCH_ENV, "fork") != "subprocess" and sys.platform != "win32"


def _context(preload: Iterable[str]) -> Any:
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    # ignored while a server runs: each run's server is stopped when the run ends
    ctx.set_forkserver_preload([EXECUTOR_MODULE, "nbship.runtime.step", *preload])
    return ctx


def warm_up(preload: Iterable[str]) -> None:
    """Start the fork server now: its imports overlap the caller's (compiling, kfp).

    The server imports in its own process; the first step waits for it only if it
    is not done by then.
    """
    if enabled():
        from multiprocessing import forkserver

        _context(preload)
        _start(forkserver.ensure_running)


def _start(ensure_running: Any) -> None:
    """Start the server with ``_KFP_RUNTIME=true``: its kfp import skips the REST client."""
    from nbship.pipelines.kfp_import import kfp_runtime_flag

    with kfp_runtime_flag():
        ensure_running()


class ForkLauncher:
    """Runs kfp.local's step commands in processes forked from a preloaded server."""

    def __init__(self, preload: Iterable[str]) -> None:
        self.ctx: Any = _context(preload)

    def run(self, full_command: list[str], env_vars: dict[str, str] | None = None) -> int | None:
        """The step's exit status, or None when the command is not a lightweight component."""
        parts = _split(full_command)
        if parts is None:
            return None
        code, args = parts
        env = {**os.environ, **(env_vars or {})}
        with tempfile.TemporaryDirectory(prefix="nbship-step-") as tmp:
            code_path = os.path.join(tmp, "ephemeral_component.py")
            with open(code_path, "w") as f:
                f.write(code)
            log_path = os.path.join(tmp, "step.log")
            proc = self.ctx.Process(target=_step_main,
                                    args=(code_path, args, env, os.getcwd(), log_path))
            proc.start()
            try:
                proc.join()
            except BaseException:  # Ctrl-C or SIGTERM while the step runs: stop the step too
                if proc.is_alive():
                    proc.kill()
                proc.join(5)
                raise
            with open(log_path, errors="replace") as log:
                for line in log:
                    print(line, end="")
            print("\n")  # as kfp.local separates a step's log from the next
            return int(proc.exitcode if proc.exitcode is not None else 1)


# The exit status of the last step process this thread started (for failure messages).
last_exit = threading.local()


def describe_exit(code: int) -> str:
    """A step process's exit status in words: the signal that killed it, or the status."""
    import signal

    def name(number: int) -> str | None:
        try:
            return signal.Signals(number).name
        except ValueError:
            return None

    if code < 0 and name(-code):
        return f"was killed by signal {name(-code)}"
    if code > 128 and name(code - 128):
        return f"exited with status {code} (killed by signal {name(code - 128)})"
    return f"exited with status {code}"


@contextlib.contextmanager
def installed(preload: Iterable[str]) -> Iterator[None]:
    """kfp.local's SubprocessRunner starts lightweight steps through a ForkLauncher.

    With ``NBSHIP_STEP_LAUNCH=subprocess`` kfp.local starts them itself; either way
    the step's exit status is kept in ``last_exit.code``.
    """
    from kfp.local import subprocess_task_handler as handler

    fork = enabled()
    if fork:
        from multiprocessing import forkserver

        launcher: ForkLauncher | None = ForkLauncher(preload)
        _start(forkserver.ensure_running)  # a no-op when warm_up started it
    else:
        launcher = None
    original = handler.run_local_subprocess

    def run_local_subprocess(full_command: list[str],
                             env_vars: dict[str, str] | None = None) -> int:
        code = launcher.run(full_command, env_vars) if launcher is not None else None
        if code is None:
            code = original(full_command, env_vars)
        last_exit.code = code
        return code

    handler.run_local_subprocess = run_local_subprocess
    try:
        yield
    finally:
        handler.run_local_subprocess = original
        if fork:
            _stop_fork_server()


def _stop_fork_server() -> None:
    """Stop the server now (a SIGKILL: its clean exit tears down torch, ~0.8 s).

    The next run starts one with its own notebook's preload list.
    """
    import signal
    from multiprocessing import forkserver

    server: Any = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if server is None or pid is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        server._stop()
