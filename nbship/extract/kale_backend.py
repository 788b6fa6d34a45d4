"""``nbship compile --backend kale``: convert through kubeflow-kale 2.3 for teams already on Kale.

Kale is used through its own API (NotebookProcessor -> Compiler -> kfputils), on
a copy of the notebook that Kale 2.3 accepts: tags of the other tools it rejects
(papermill's ``parameters`` becomes Kale's ``pipeline-parameters``; nbval and
unknown tags are dropped) and notebook metadata fields from older Kale
versions (``docker_image``, ``experiment``...) are removed. The original
notebook is never changed. Where the two backends differ: docs/design.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from nbship.errors import BackendUnavailableError, CompileError, Location
from nbship.notebook import read_notebook

_KALE_TAG = re.compile(
    r"^(imports|functions|pipeline-parameters|pipeline-metrics|skip|"
    r"(step|block|prev):.+|limit:.+|image:.+|annotation:.+|label:.+|cache:.+)$"
)
_KALE_CONFIG_FIELDS = {
    "pipeline_name", "experiment_name", "pipeline_description", "base_image",
    "enable_caching", "volumes", "katib_run", "katib_metadata", "abs_working_dir",
    "marshal_path", "steps_defaults", "kfp_host", "storage_class_name",
    "volume_access_mode", "timeout", "autosnapshot",
}


def _kale_copy(src: Path, dst: Path) -> str:
    """Write the Kale-acceptable copy of ``src`` to ``dst``; return the pipeline name."""
    data = json.loads(src.read_text())
    for cell in data.get("cells", []):
        tags = cell.get("metadata", {}).get("tags")
        if not tags:
            continue
        kept = []
        for tag in tags:
            if tag in ("parameters", "injected-parameters"):
                tag = "pipeline-parameters"
            if _KALE_TAG.match(tag) and tag not in kept:
                kept.append(tag)
        cell["metadata"]["tags"] = kept
    meta = data.setdefault("metadata", {}).get("kubeflow_notebook", {}) or {}
    meta = {k: v for k, v in meta.items() if k in _KALE_CONFIG_FIELDS and v not in ("", None)}
    name = re.sub(r"[^a-z0-9-]+", "-", str(meta.get("pipeline_name") or src.stem).lower())
    meta["pipeline_name"] = name.strip("-") or "notebook"
    meta.setdefault("experiment_name", "nbship")
    data["metadata"]["kubeflow_notebook"] = meta
    dst.write_text(json.dumps(data, indent=1))
    return str(meta["pipeline_name"])


def compile_with_kale(notebook: str | Path, out_dir: str | Path) -> Path:
    """Compile ``notebook`` with Kale into ``out_dir``; return the pipeline YAML's path."""
    nb_path = Path(notebook)
    read_notebook(nb_path)  # the same clear errors for unusable input as the main backend
    try:
        from kale.common import kfputils
        from kale.compiler import Compiler
        from kale.processors import NotebookProcessor
    except ImportError as exc:
        raise BackendUnavailableError(
            f"kubeflow-kale is not installed ({exc})", hint="pip install kubeflow-kale==2.3.0"
        ) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nbship-kale-", dir=out))
    log = io.StringIO()
    try:
        copy = tmp / nb_path.name
        _kale_copy(nb_path, copy)
        cwd = os.getcwd()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                logging.getLogger("kale").setLevel(logging.ERROR)
                processor = NotebookProcessor(str(copy), {"output_path": "kale-out"})
                pipeline = processor.run()
                script = Compiler(pipeline, processor.get_imports_and_functions()).compile()
                package = kfputils.compile_pipeline(script, pipeline.config.pipeline_name)
        except Exception as exc:
            raise CompileError(
                f"Kale could not compile the notebook: {type(exc).__name__}: {exc}",
                where=Location(str(nb_path)),
                hint="`nbship check` names the cells involved; Kale 2.3 also rejects unknown "
                "tags and `%` magics",
            ) from None
        finally:
            os.chdir(cwd)
        script_dst = out / "kale_pipeline.py"
        yaml_dst = out / "kale_pipeline.yaml"
        Path(script).replace(script_dst)
        Path(package).replace(yaml_dst)
        return yaml_dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
