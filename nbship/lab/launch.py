"""``nbship lab``: JupyterLab with nbship's extensions (the server's and the built
front end), on 127.0.0.1, headless-friendly (it prints the URL to open).

The Jupyter configuration is a folder of its own (``.nbship/lab/``): the server
extension enabled, the built front end (``nbship/labextension``, made by ``make
labextension`` when Node is there) linked in, and kubeflow-kale's lab extension (a
dependency, for ``--backend kale``) turned off there, since without a Kubeflow it opens
an error dialog. Nothing in the user's own Jupyter configuration changes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nbship.errors import BackendUnavailableError

BUILT = Path(__file__).resolve().parent.parent / "labextension"


def prepare(folder: Path) -> dict[str, str]:
    """Write the configuration into ``folder``; the environment that points Jupyter at it."""
    if not (BUILT / "package.json").is_file():
        raise BackendUnavailableError(
            "the JupyterLab extension is not built", hint="make labextension (needs Node)")
    config, data = folder / "config", folder / "data"
    (config / "labconfig").mkdir(parents=True, exist_ok=True)
    (config / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"nbship.lab": True,
                                               "jupyterlab_kubeflow_kale": False}}}))
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"jupyterlab-kubeflow-kale": True}}))
    settings = folder / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps(
        {"fetchNews": "false", "checkForUpdates": False}))
    link = data / "labextensions" / "nbship-lab"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(BUILT)
    return {"JUPYTER_CONFIG_DIR": str(config), "JUPYTER_DATA_DIR": str(data),
            "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings")}


def launch(notebook: str | None, port: int, folder: Path = Path(".nbship/lab")) -> None:
    """Replace this process with ``jupyter lab`` (it prints the URL with its token)."""
    env = {**os.environ, **prepare(folder.resolve())}
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}"]
    if os.geteuid() == 0:
        argv.append("--ServerApp.allow_root=True")
    if notebook:
        argv.append(notebook)
    os.execve(sys.executable, argv, env)
