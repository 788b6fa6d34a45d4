"""The ``nbship`` command: parses arguments, calls one function per verb, prints.

Heavy libraries (kfp, torch, IPython) load inside the verbs, so ``nbship --help``
is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nbship import __version__
from nbship.errors import NbshipError

EPILOG = """\
Tag cells in JupyterLab (View > Cell toolbar or the property inspector):
  imports               cells every step may need (copied where used)
  functions             function/class definitions (copied where used)
  parameters            papermill's tag; the pipeline's parameters (also
                        pipeline-parameters, Kale's name)
  pipeline-metrics      lines `print(name)`: metrics the pipeline reports
  step:NAME             opens a step (Kale 1.x: block:NAME); untagged cells
                        join the step above
  prev:NAME             run after NAME (ordering only; data edges are inferred)
  skip                  not part of the pipeline
  limit:RES:VAL image:REF cache:disabled label:K:V annotation:K:V
  secret:NAME:KEY:ENV   settings of the step's KFP task

Examples:
  nbship check notebooks/marker_classifier.ipynb
  nbship check notebooks/marker_classifier.ipynb --graph > graph.mmd
  nbship compile notebooks/marker_classifier.ipynb -o build/
  nbship run notebooks/marker_classifier.ipynb -p epochs=5 -p lr=0.01
  nbship test notebooks/          # nbval + papermill + pipeline == notebook

Exit status: 0 success, 1 problems in the notebook or a failed run,
2 unusable input (not a notebook, bad parameter value).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nbship",
        description="Take a tagged Jupyter notebook to a Kubeflow Pipelines v2 pipeline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"nbship {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")

    c = sub.add_parser("check", help="analyse a notebook: steps, data edges, problems",
                       description="Build the step graph from the notebook's code and report "
                       "steps, the variables each edge carries, parameters, metrics and "
                       "problems. Nothing runs. Exit 0 clean, 1 problems, 2 unusable input.")
    c.add_argument("notebook", type=Path)
    c.add_argument("--format", choices=["text", "json"], default="text")
    c.add_argument("--graph", action="store_true", help="print a Mermaid graph instead")
    c.add_argument("--strict", action="store_true", help="warnings count as problems too")

    k = sub.add_parser("compile", help="write the pipeline module and the KFP v2 IR YAML",
                       description="Write DIR/pipeline.py (readable step code), "
                       "DIR/pipeline.yaml (KFP v2 IR, deterministic) and DIR/step-graph.json.")
    k.add_argument("notebook", type=Path)
    k.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    k.add_argument("--image", default=None, metavar="REF",
                   help="the steps' base image (default: nbship-env:latest)")
    k.add_argument("--backend", choices=["nbship", "kale"], default="nbship",
                   help="kale: convert through kubeflow-kale 2.3 instead")

    r = sub.add_parser("run", help="compile, then run the pipeline on kfp.local",
                       description="Compile the notebook and run the compiled YAML on "
                       "kfp.local (subprocesses, no venvs, caching on). Unchanged steps come "
                       "from the cache; a changed step re-runs with its descendants.")
    r.add_argument("notebook", type=Path)
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter of the parameters cell (repeatable)")
    r.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="where the compiled pipeline goes (default: .nbship/build/NAME)")
    r.add_argument("--root", type=Path, default=Path(".nbship/runs"), metavar="DIR",
                   help="where runs and artifacts go (default: .nbship/runs)")
    r.add_argument("--image", default=None, metavar="REF")

    t = sub.add_parser("test", help="test notebooks: nbval, papermill, pipeline equivalence",
                       description="Test each notebook four ways through nbship's pytest "
                       "plugin: the step graph check, its cells as nbval tests, a papermill "
                       "run with a parameter set, and the compiled pipeline on kfp.local "
                       "computing the same metrics and step-boundary values as the notebook. "
                       "Writes JUnit XML and keeps each executed notebook with an HTML render.",
                       epilog="Settings per notebook (parameter sets, nbval strict/lax, "
                       "tolerance): [tool.nbship] in pyproject.toml or the notebook's "
                       "metadata.nbship; see docs/design.md. Arguments after -- go to pytest: "
                   "nbship test notebooks/ -- -k equivalence -x")
    t.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="notebooks or folders (default: notebooks/ if present, else .)")
    t.add_argument("-n", "--workers", default="auto",
                   help="parallel workers (pytest-xdist; default: auto)")
    t.add_argument("--set", dest="parameter_set", default=None, metavar="NAME",
                   help="parameter set (default: as configured, else 'ci')")
    t.add_argument("--artifacts", type=Path, default=Path(".nbship/test"), metavar="DIR",
                   help="executed notebooks, HTML and pipeline runs (default: .nbship/test)")
    t.add_argument("--junit", type=Path, default=None, metavar="FILE",
                   help="JUnit XML (default: ARTIFACTS/junit.xml)")
    t.add_argument("--no-html", action="store_true", help="skip the HTML renders")
    return p


def _print_problems(graph: Any, *, warnings_only: bool = True) -> None:
    items = graph.warnings if warnings_only else graph.problems
    for problem in items:
        print(f"nbship: {problem}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    from nbship.extract.graph import build_graph
    from nbship.extract.report import to_json, to_mermaid, to_text
    from nbship.notebook import read_notebook

    graph = build_graph(read_notebook(args.notebook))
    if args.graph:
        sys.stdout.write(to_mermaid(graph))
    elif args.format == "json":
        sys.stdout.write(to_json(graph))
    else:
        sys.stdout.write(to_text(graph))
    failing = graph.problems if args.strict else graph.errors
    return 1 if failing else 0


def _compile(notebook: Path, output: Path, image: str | None) -> Any:
    from nbship.extract.graph import build_graph
    from nbship.notebook import read_notebook
    from nbship.pipelines.compile import DEFAULT_IMAGE, compile_graph

    graph = build_graph(read_notebook(notebook))
    _print_problems(graph)
    return compile_graph(graph, output, base_image=image or DEFAULT_IMAGE)


def cmd_compile(args: argparse.Namespace) -> int:
    if args.backend == "kale":
        from nbship.extract.kale_backend import compile_with_kale

        result = compile_with_kale(args.notebook, args.output)
        print(f"kale: wrote {result}")
        return 0
    compiled = _compile(args.notebook, args.output, args.image)
    n = len(compiled.graph.steps)
    print(f"compiled {compiled.name}: {n} step" + ("s" if n != 1 else ""))
    print(f"  step code  {compiled.module}")
    print(f"  KFP IR     {compiled.yaml}  (sha256 {compiled.yaml_sha256[:16]})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from nbship.extract.cache import analyse
    from nbship.pipelines.compile import DEFAULT_IMAGE, compile_graph
    from nbship.pipelines.local import run_compiled, warm_up
    from nbship.pipelines.params import parse_assignments

    graph = analyse(args.notebook)
    values = parse_assignments(args.param, graph.parameters)
    _print_problems(graph)
    warm_up(graph)  # the steps' libraries load while the pipeline compiles
    from nbship.extract.codegen import pipeline_name

    out = args.output or Path(".nbship/build") / pipeline_name(graph)
    compiled = compile_graph(graph, out, base_image=args.image or DEFAULT_IMAGE)
    shown = " ".join(f"{k}={v!r}" for k, v in values.items())
    steps = f"{len(graph.steps)} step" + ("s" if len(graph.steps) != 1 else "")
    print(f"nbship run {compiled.name}: {steps} on kfp.local"
          + (f" ({shown})" if shown else ""), flush=True)
    result = run_compiled(compiled, values, root=args.root)
    ran = sum(1 for t in result.tasks.values() if not t.cached)
    print(f"{result.status} in {result.seconds:.2f}s ({ran} ran, "
          f"{len(result.tasks) - ran} from cache)")
    if result.metrics:
        print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))
    print(f"provenance: {result.provenance}")
    print(f"step logs:  {result.record_dir / 'run.log'}")
    print(f"artifacts:  {result.record_dir.parent / 'artifacts'}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from nbship.ci.runner import run_tests

    paths = args.paths or [Path("notebooks") if Path("notebooks").is_dir() else Path(".")]
    extra = getattr(args, "pytest_args", [])
    return run_tests(paths, workers=args.workers, parameter_set=args.parameter_set,
                     artifacts=args.artifacts, junit=args.junit, html=not args.no_html,
                     extra=extra)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `nbship test ... -- -k equivalence -x`: what follows `--` goes to pytest
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = parser.parse_args(argv)
    args.pytest_args = passthrough
    if not args.verb:
        parser.print_help()
        return 2
    verbs = {"check": cmd_check, "compile": cmd_compile, "run": cmd_run, "test": cmd_test}
    try:
        return verbs[args.verb](args)
    except NbshipError as exc:
        print(f"nbship: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("nbship: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
