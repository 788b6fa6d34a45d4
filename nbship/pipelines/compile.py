"""StepGraph -> pipeline module + KFP v2 IR YAML, written atomically and round-trip checked."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbship.errors import AnalysisError, CompileError
from nbship.extract.codegen import Provenance, generate, pipeline_name, printable, serve_source
from nbship.extract.graph import StepGraph
from nbship.extract.report import to_json
from nbship.files import sha256_file
from nbship.modules import imported
from nbship.pipelines.kfp_import import import_kfp

DEFAULT_IMAGE = "nbship-env:latest"
MODULE_FILE = "pipeline.py"
SERVE_FILE = "serve.py"
YAML_FILE = "pipeline.yaml"
GRAPH_FILE = "step-graph.json"
STAMP_FILE = ".nbship-build.json"


@dataclass
class CompiledPipeline:
    graph: StepGraph
    name: str
    out_dir: Path
    module: Path
    yaml: Path
    yaml_sha256: str
    provenance: Provenance
    serve: Path | None = None  # serve.py: the serve cells as build() -> predict


def git_state(path: Path) -> tuple[str | None, bool]:
    """(commit, dirty) of the git work tree holding ``path``; (None, False) outside git."""
    cwd = path.resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, False
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=cwd, capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def _compile_module(module_path: Path, yaml_path: Path) -> list[Any]:
    """Import the module, compile it with KFP into ``yaml_path``; the YAML as read back."""
    import_kfp()
    from kfp import compiler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with imported(module_path, "nbship_generated") as module:
            compiler.Compiler().compile(module.pipeline, str(yaml_path))
            return _rewrite_yaml(module.pipeline, yaml_path)


# What YAML (1.1, PyYAML) takes as a line break: a comment ends at any of them.
_YAML_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def _header(spec: dict[str, Any], description: str | None) -> str:
    """KFP's comment block above the IR, with every notebook text escaped onto its line.

    KFP writes string defaults into the comment as they are, so a default holding a
    newline would add real YAML keys; here they are escaped first. The block is KFP's
    own (``extract_comments_from_pipeline_spec``) where this kfp has it.
    """
    import copy

    from kfp.compiler import pipeline_spec_builder

    shown = copy.deepcopy(spec)
    params = shown.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    for body in params.values():
        if isinstance(body.get("defaultValue"), str):
            body["defaultValue"] = printable(body["defaultValue"])
    name = printable(str(shown.get("pipelineInfo", {}).get("name", "")))
    shown.setdefault("pipelineInfo", {})["name"] = name
    desc = printable(description) if description else None
    extract = getattr(pipeline_spec_builder, "extract_comments_from_pipeline_spec", None)
    text = extract(shown, desc) if extract else f"# PIPELINE DEFINITION\n# Name: {name}\n"
    lines = _YAML_BREAKS.split(text.rstrip("\n"))
    if not all(line.startswith("#") for line in lines):
        text = f"# PIPELINE DEFINITION\n# Name: {name}\n"
    return text


def _rewrite_yaml(pipeline: Any, yaml_path: Path) -> list[Any]:
    """Write the IR as KFP does, under a header with notebook text escaped; check it reads back.

    The documents are KFP's in-memory PipelineSpec (and PlatformSpec); the file must load
    back to exactly them, so no text from the notebook adds or changes a key.
    """
    import yaml
    from google.protobuf import json_format

    docs = [json_format.MessageToDict(pipeline.pipeline_spec)]
    if len(pipeline.platform_spec.platforms) > 0:
        docs.append(json_format.MessageToDict(pipeline.platform_spec))
    text = _header(docs[0], pipeline.description) + yaml.dump_all(docs, sort_keys=True)
    loaded = _load_yaml(text)
    if loaded != docs:
        raise CompileError("the compiled YAML does not read back as the pipeline KFP built")
    yaml_path.write_text(text)
    return loaded


def _load_yaml(text: str) -> list[Any]:
    """All documents of ``text``, with libyaml's safe loader where PyYAML has it (the
    pure-Python one reads a pipeline ten times slower)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return list(yaml.load_all(text, Loader=loader))


def check_round_trip(yaml_path: Path) -> None:
    """Parse the IR back into PipelineSpec; raise CompileError if it does not fit."""
    _fits_spec(_load_yaml(yaml_path.read_text()))


def _fits_spec(docs: list[Any]) -> None:
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
        if len(docs) > 1 and docs[1]:
            json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as exc:
        raise CompileError(
            f"the compiled YAML does not parse back into PipelineSpec: {exc}") from None


def _kfp_version() -> str:
    from importlib.metadata import version

    return version("kfp")


def _up_to_date(out: Path, source: str, graph_json: str, serve: str | None) -> str | None:
    """The YAML's sha256 when ``out`` already holds exactly what this compile would write."""
    try:
        stamp = json.loads((out / STAMP_FILE).read_text())
        yaml_sha = sha256_file(out / YAML_FILE)
        same = (stamp == {"module_sha256": _sha(source), "yaml_sha256": yaml_sha,
                          "kfp": _kfp_version()}
                and (out / MODULE_FILE).read_text() == source
                and (out / GRAPH_FILE).read_text() == graph_json
                and (serve is None or (out / SERVE_FILE).read_text() == serve))
    except (OSError, ValueError):
        return None
    return yaml_sha if same else None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _too_deep(graph: StepGraph) -> CompileError:
    """What a RecursionError while generating or compiling says: the deepest cell's place.

    ``check`` refuses cells nested beyond ``names.MAX_NESTING``, well within what every
    stage handles, so this is a backstop: never a traceback."""
    from nbship.extract.names import MAX_NESTING, nesting

    deepest: tuple[int, Any, int] = (-1, None, 1)
    for step in graph.steps:
        for cell, code in zip(step.cells, step.code):
            if code.tree is not None:
                depth, line = nesting(code.tree)
                if depth > deepest[0]:
                    deepest = (depth, cell, line)
    return CompileError(f"too deeply nested to compile (nested {deepest[0]} levels here; "
                        f"nbship checks for at most {MAX_NESTING})",
                        where=graph.notebook.where(deepest[1], deepest[2]),
                        hint="split the expression; if `nbship check` shows no problem, "
                        "this is a bug in nbship: please report it with the notebook")


def compile_graph(graph: StepGraph, out_dir: str | Path, *,
                  base_image: str = DEFAULT_IMAGE) -> CompiledPipeline:
    """Write pipeline.py, pipeline.yaml and step-graph.json into ``out_dir``.

    Everything is built in a temporary folder inside ``out_dir`` and moved in only
    when complete, so a failure leaves ``out_dir`` as it was. When ``out_dir``
    already holds what this compile would write (same generated module, same kfp),
    KFP's compiler is not run again.
    """
    if graph.errors:
        first = graph.errors[0]
        more = f" (and {len(graph.errors) - 1} more; see `nbship check`)" if len(
            graph.errors) > 1 else ""
        raise AnalysisError(first.message + more, where=first.where, hint=first.hint)
    nb = graph.notebook
    commit, dirty = git_state(nb.path)
    prov = Provenance(notebook=nb.name, sha256=nb.sha256, commit=commit, dirty=dirty)
    try:
        source = generate(graph, base_image=base_image, provenance=prov)
        serve = serve_source(graph) if graph.serve is not None else None
    except RecursionError:
        raise _too_deep(graph) from None
    graph_json = to_json(graph)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CompileError(f"the output folder {out} is a file", where=nb.where(),
                           hint="give -o a folder (it is made if missing)")
    yaml_sha = _up_to_date(out, source, graph_json, serve)
    if yaml_sha is None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".nbship-compile-", dir=out))
        try:
            module_path = tmp / MODULE_FILE
            yaml_path = tmp / YAML_FILE
            module_path.write_text(source)
            try:
                docs = _compile_module(module_path, yaml_path)
            except RecursionError:
                raise _too_deep(graph) from None
            except Exception as exc:
                raise CompileError(
                    f"KFP could not compile the generated pipeline: {exc}",
                    where=nb.where(),
                    hint="`nbship check` lists the notebook's problems; if it shows none, "
                    "this is a bug in nbship: please report it with the notebook") from None
            _fits_spec(docs)  # the YAML as written, parsed back into PipelineSpec
            yaml_sha = sha256_file(yaml_path)
            (tmp / GRAPH_FILE).write_text(graph_json)
            if serve is not None:
                (tmp / SERVE_FILE).write_text(serve)
            (tmp / STAMP_FILE).write_text(json.dumps(
                {"module_sha256": _sha(source), "yaml_sha256": yaml_sha, "kfp": _kfp_version()}))
            for name in (MODULE_FILE, SERVE_FILE, GRAPH_FILE, YAML_FILE, STAMP_FILE):
                if (tmp / name).exists():
                    (tmp / name).replace(out / name)
                elif name == SERVE_FILE:
                    (out / name).unlink(missing_ok=True)  # the notebook no longer serves
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return CompiledPipeline(graph=graph, name=pipeline_name(graph), out_dir=out,
                            module=out / MODULE_FILE, yaml=out / YAML_FILE,
                            yaml_sha256=yaml_sha, provenance=prov,
                            serve=out / SERVE_FILE if serve is not None else None)
