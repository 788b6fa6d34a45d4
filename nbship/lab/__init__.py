"""nbship inside Jupyter: a Jupyter Server extension that serves nbship's analysis of a
notebook and runs ``nbship run`` / ``nbship test`` on it, for the JupyterLab extension.

Enable it in a server: ``jupyter server --ServerApp.jpserver_extensions='{"nbship.lab":
True}'`` (``make lab`` does), or a ``jupyter_server_config.json`` saying the same.
Endpoints (under the server's base URL, authenticated like every Jupyter endpoint:
token or cookie, and XSRF for cookie-authenticated writes):

* ``GET  nbship/analysis?path=NB`` — the saved notebook's step graph and problems
  (``nbship check --format json``), the Mermaid graph, parameters and metrics;
* ``POST nbship/analysis`` ``{"path": NB, "content": {...}}`` — the same for what the
  editor holds before it is saved (analysis while typing);
* ``POST nbship/jobs`` ``{"kind": "run"|"test"|"publish", "path": NB}`` — start
  ``nbship run NB``, ``nbship test NB`` or ``nbship publish NB --registry R`` (R from
  ``[tool.nbship] registry`` or the embedded registry running there; 409 without one);
  ``GET nbship/jobs/ID`` its state and output so far; ``GET nbship/jobs/ID/events`` the
  output as server-sent events, to its end; ``DELETE nbship/jobs/ID`` cancels it (its
  process group is stopped); ``GET nbship/jobs`` the jobs held; ``GET nbship/config``
  the registry.

``NB`` is a path relative to the server's root; a path that leaves the root, or names
anything but an ``.ipynb`` file there, is refused before anything runs, and so is one
that would read as an option (beginning ``-`` or ``@``). One job per notebook at a time
(409 otherwise) and at most 4 on the server (429); the jobs stop when the server stops.
Every input the extension cannot use is a 4xx with ``{"message": ...}``.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbship.lab"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    import atexit
    from pathlib import Path

    from nbship.lab.handlers import handlers
    from nbship.lab.jobs import Jobs

    web_app = serverapp.web_app
    base = web_app.settings["base_url"]
    jobs = Jobs(Path(serverapp.root_dir).resolve())
    web_app.add_handlers(".*$", handlers(base, serverapp.root_dir, jobs))
    # the server stops (SIGTERM, Ctrl-C, /api/shutdown): its jobs stop with it. A module
    # extension gets no stop hook from jupyter_server (only ExtensionApps do); atexit
    # runs once the server's loop has ended, on every one of those ways out.
    atexit.register(jobs.stop_all)
    serverapp.log.info("nbship: analysis and runs at %snbship/", base)


# the name jupyter_server looks for in older releases
load_jupyter_server_extension = _load_jupyter_server_extension
