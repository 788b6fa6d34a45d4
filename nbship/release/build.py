"""``nbship build``: the steps' image and the model server's image for a notebook.

Each image gets a build context under ``.nbship/images/NAME/`` whose content
hash is the image's tag (``ctx-<hash>``): a context that did not change is not
rebuilt. Labels carry the provenance in OCI annotation form (commit, notebook and
its sha256, nbship version, the context hash); they are not part of the context,
so they name the commit that first built that content.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nbship import __version__
from nbship.errors import ReleaseError
from nbship.extract.cache import code_digest
from nbship.extract.graph import StepGraph
from nbship.pipelines.compile import git_state
from nbship.pipelines.local import preload_modules
from nbship.release.backends import Backend, backend
from nbship.release.base import embedded_reference, ensure_base
from nbship.release.context import BuildContext, write_context
from nbship.release.wheels import (
    canonical,
    installed_pin,
    nbship_wheel,
    resolve,
    step_requirements,
)

DEFAULT_OUT = Path(".nbship/images")
STEPS_IMAGE = "nbship-steps"
SERVER_IMAGE = "nbship-server"
# the model server (KServe) on top of the steps' environment: it loads what `train` saved
SERVER_EXTRA = ["kserve", "prometheus-client"]
SERVER_MODULES = ["kserve", "prometheus_client"]  # what the server's smoke run imports too
# the environment only: the serving stage gives it its entry point (a kserve ModelServer)
# The model server: `nbship serve` on a run folder mounted at /mnt/models (where KServe's
# storage initializer puts a model); inside a pod it must listen on every address.
SERVER_DOCKERFILE_EXTRA = (
    "EXPOSE 8080\n"
    'ENTRYPOINT ["python", "-m", "nbship", "serve"]\n'
    'CMD ["/mnt/models", "--host", "0.0.0.0", "--port", "8080"]\n')


@dataclass
class BuiltImage:
    context: BuildContext
    reference: str  # localhost/NAME:ctx-HASH
    built: bool  # False: the image with this tag already existed (or --dry-run)
    seconds: float
    labels: dict[str, str] = field(default_factory=dict)


def git_commit(notebook: Path) -> str:
    """The commit the notebook's repository is at (``-dirty`` when it has changes)."""
    commit, dirty = git_state(notebook)
    return (commit or "unknown") + ("-dirty" if dirty else "")


def provenance_labels(graph: StepGraph, context: BuildContext, commit: str) -> dict[str, str]:
    nb = graph.notebook
    return {
        "org.opencontainers.image.title": context.name,
        "org.opencontainers.image.revision": commit,
        "org.opencontainers.image.version": __version__,
        "org.opencontainers.image.description":
            f"nbship {context.name} environment for {nb.path.name}",
        "dev.nbship.notebook": str(nb.path),
        "dev.nbship.notebook.sha256": nb.sha256,
        "dev.nbship.context.sha256": context.digest,
        "dev.nbship.version": __version__,
    }


def build_images(graph: StepGraph, *, base: str | None = None, backend_name: str | None = None,
                 dry_run: bool = False, out: Path = DEFAULT_OUT, only: str | None = None,
                 echo: Callable[[str], None] = print) -> list[BuiltImage]:
    """Write the contexts and build what changed; ``dry_run`` writes the contexts only."""
    local = [(s, m) for s in graph.steps for m in s.local_modules]
    if local:
        step, module = local[0]
        raise ReleaseError(
            f"step {step.name!r} imports {module}, a module beside the notebook; the steps' "
            "image carries installed libraries only", where=graph.notebook.where(step.cells[0]),
            hint="make it an installable package listed in the requirements, or move its "
            "code into a functions cell")
    cache = out / "cache"
    builder: Backend | None = None if dry_run else backend(backend_name)
    pins = step_requirements(graph, preload_modules(graph))
    steps_house = resolve(pins, cache, echo)
    own = nbship_wheel(cache, code_digest(), echo)
    wanted = [(STEPS_IMAGE, [steps_house, own], "")]
    if only in (None, "server"):
        server_pins = sorted({*pins, *(installed_pin(n) or canonical(n) for n in SERVER_EXTRA)})
        wanted.append((SERVER_IMAGE, [resolve(server_pins, cache, echo), own],
                       SERVER_DOCKERFILE_EXTRA))
    if only == "server":
        wanted = wanted[1:]
    base_ref = (base or embedded_reference()) if builder is None else ensure_base(
        base, builder, cache, echo)
    commit = git_commit(graph.notebook.path)
    images = []
    for name, houses, extra in wanted:
        context = write_context(name, out, houses, base=base_ref, version=__version__,
                                extra=extra)
        labels = provenance_labels(graph, context, commit)
        started = time.perf_counter()
        built = False
        if builder is not None and not builder.has_image(context.reference):
            echo(f"  building {context.reference} ({context.wheels} wheels, "
                 f"{context.wheel_bytes / 2**20:.0f} MiB)")
            builder.build(context.directory, context.reference, labels=labels,
                          build_args={"BASE": base_ref}, echo=echo)
            built = True
            echo(f"  smoke run: the step code and its libraries import in {context.tag}")
            smoke_run(graph, builder, context.reference,
                      extra=SERVER_MODULES if name == SERVER_IMAGE else [])
            if name == SERVER_IMAGE:
                echo(f"  smoke run: the model server answers inside {context.tag}")
                answer = builder.run(context.reference, [
                    "python", "-c", "from nbship.serving.server import smoke; smoke()"],
                    mounts={})
                if "serve smoke ok" not in answer:
                    raise ReleaseError(f"the model server's smoke run failed in "
                                       f"{context.reference}: {answer.strip()[-1500:]}")
                echo("    " + next(line for line in answer.splitlines()
                                   if "serve smoke ok" in line))
        images.append(BuiltImage(context, context.reference, built,
                                 time.perf_counter() - started, labels))
    return images


def smoke_run(graph: StepGraph, builder: Backend, reference: str,
              extra: list[str] | None = None) -> str:
    """Import the compiled step code and every library the steps import, inside the image."""
    import tempfile

    from nbship.pipelines.compile import compile_graph

    modules = [*preload_modules(graph), *(extra or [])]
    with tempfile.TemporaryDirectory(prefix="nbship-smoke-") as tmp:
        compile_graph(graph, Path(tmp), base_image=reference)
        code = ("import importlib, sys\n"
                "sys.path.insert(0, '/nbship/pipeline')\n"
                "import pipeline  # the step code, as KFP's executor loads it\n"
                "import nbship.runtime.step\n"
                f"for m in {modules!r}:\n"
                "    importlib.import_module(m)\n"
                "print('smoke ok: python', sys.version.split()[0], 'steps', "
                "len(pipeline.__dict__))\n")
        return builder.run(reference, ["python", "-c", code],
                           mounts={Path(tmp): "/nbship/pipeline"})
