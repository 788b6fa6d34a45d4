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


def _kale_name(name: str) -> str:
    """A step name Kale 2.3 accepts (``[_a-z][_a-z0-9]*``): ``data-loading`` -> ``data_loading``."""
    out = re.sub(r"[^_a-z0-9]", "_", name.lower())
    return out if re.match(r"^[_a-z]", out) else "_" + out


def _translate(tag: str) -> list[str]:
    """nbship's vocabulary -> Kale 2.3's (several Kale tags for one of ours, or none)."""
    if tag in ("parameters", "injected-parameters"):
        return ["pipeline-parameters"]
    if tag.startswith(("block:", "step:")):  # block: is Kale 1.x's spelling
        name = tag.split(":", 1)[1]
        if name in ("imports", "functions"):
            return [name]
        return [f"step:{_kale_name(name)}"] if name else []
    if tag == "serve":  # the model server's cell is not a pipeline step
        return ["skip"]
    if tag.startswith("prev:"):  # several parents in one tag: one tag each for Kale 2.3
        return [f"prev:{_kale_name(p)}" for p in tag.split(":")[1:] if p]
    return [tag]


def _kale_copy(src: Path, dst: Path) -> str:
    """Write the Kale-acceptable copy of ``src`` to ``dst``; return the pipeline name."""
    from kale.config.config import Field
    from kale.processors.constants import TAGS_LANGUAGE
    from kale.processors.nbprocessor import NotebookConfig

    config_fields = {name for cls in NotebookConfig.__mro__ for name, value in vars(cls).items()
                     if isinstance(value, Field)}
    data = json.loads(src.read_text())
    for cell in data.get("cells", []):
        tags = cell.get("metadata", {}).get("tags")
        if not tags:
            continue
        kept: list[str] = []
        for tag in (t for original in tags for t in _translate(original)):
            if any(re.match(rule, tag) for rule in TAGS_LANGUAGE) and tag not in kept:
                kept.append(tag)
        cell["metadata"]["tags"] = kept
    meta = data.setdefault("metadata", {}).get("kubeflow_notebook", {}) or {}
    meta = {k: v for k, v in meta.items()
            if k in config_fields and k != "notebook_path" and v not in ("", None)}
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
            logging.disable(logging.WARNING)  # Kale's own handlers log progress to the terminal
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
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
            logging.disable(logging.NOTSET)
            os.chdir(cwd)
        script_dst = out / "kale_pipeline.py"
        yaml_dst = out / "kale_pipeline.yaml"
        Path(script).replace(script_dst)
        Path(package).replace(yaml_dst)
        return yaml_dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
