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
  output as server-sent events, to its end; ``GET nbship/config`` the registry.

``NB`` is a path relative to the server's root; a path that leaves the root, or names
anything but an ``.ipynb`` file there, is refused before anything runs.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbship.lab"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from nbship.lab.handlers import handlers

    web_app = serverapp.web_app
    base = web_app.settings["base_url"]
    web_app.add_handlers(".*$", handlers(base, serverapp.root_dir))
    serverapp.log.info("nbship: analysis and runs at %snbship/", base)


# the name jupyter_server looks for in older releases
load_jupyter_server_extension = _load_jupyter_server_extension
