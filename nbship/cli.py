"""The ``nbship`` command: parses arguments, calls one function per verb, prints.

Heavy libraries (kfp, torch, IPython) load inside the verbs, so ``nbship --help``
is instant.
"""

from __future__ import annotations

import argparse
import os
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
  serve                 defines predict(inputs) for `nbship serve`
  limit:RES:VAL image:REF cache:disabled label:K:V annotation:K:V
  secret:NAME:KEY:ENV   settings of the step's KFP task
  report:disabled       no report of the step's cell outputs (Kale's tag; on by
                        default, report:enabled)

Examples:
  nbship check notebooks/marker_classifier.ipynb
  nbship check notebooks/marker_classifier.ipynb --graph > graph.mmd
  nbship compile notebooks/marker_classifier.ipynb -o build/
  nbship run notebooks/marker_classifier.ipynb -p epochs=5 -p lr=0.01
  nbship test notebooks/          # nbval + papermill + pipeline == notebook
  nbship registry up              # an OCI registry on 127.0.0.1:5000
  nbship publish notebooks/marker_classifier.ipynb   # images + pipeline + release
  nbship release show marker-classifier
  nbship serve marker-classifier  # the newest run's serve cell behind KServe
  nbship model push marker-classifier   # the newest run's model -> models/NAME
  nbship serve 127.0.0.1:5000/models/marker-classifier:latest
  nbship monitor up               # Prometheus + Alertmanager on 127.0.0.1
  nbship trigger notebooks/marker_classifier.ipynb   # retrain on drift alerts
  nbship scheduler up             # cron, new data, webhooks from pyproject.toml
  nbship kfp schedule marker-classifier --host http://localhost:8080

Exit status: 0 success, 1 problems in the notebook or a failed run,
2 unusable input (not a notebook, bad parameter value).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nbship",
        description="Take a tagged Jupyter notebook to a Kubeflow Pipelines v2 pipeline, "
        "test it, publish it as a traceable release, serve its model, watch it and "
        "retrain it.",
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

    b = sub.add_parser("build", help="build the steps' and the model server's images",
                       description="Write a build context per image under .nbship/images "
                       "(Dockerfile, requirements.lock with hashes, the wheels: resolved once "
                       "on this machine with pip, torch's CPU wheel included) and build what "
                       "changed: the tag is the context's content hash, so an unchanged "
                       "context is not rebuilt. Images install with --no-index: no network "
                       "inside the build. Labels carry commit, notebook sha256 and nbship "
                       "version (OCI annotation keys).",
                       epilog="Without --base nbship makes its own Debian bookworm base with "
                       "debootstrap (once). Examples:\n"
                       "  nbship build notebooks/marker_classifier.ipynb\n"
                       "  nbship build notebooks/marker_classifier.ipynb --base "
                       "python:3.11-slim\n"
                       "  nbship build notebooks/marker_classifier.ipynb --dry-run",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _image_options(b)
    b.add_argument("--only", choices=["steps", "server"], default=None,
                   help="build one of the two images")
    b.add_argument("--dry-run", action="store_true", help="write the build contexts only")

    u = sub.add_parser("publish", help="push images, pipeline, manifests and release.json",
                       description="Build (as nbship build), push the images, compile the "
                       "pipeline with the steps' image by digest, push the pipeline YAML, the "
                       "Kubernetes manifests and release.json as one OCI artifact tagged with "
                       "the commit, and only then move the release tag (latest). Publishing "
                       "the same commit again changes nothing; a publish stopped midway "
                       "leaves the previous release as it was.",
                       epilog="Examples:\n"
                       "  nbship registry up\n"
                       "  nbship publish notebooks/marker_classifier.ipynb\n"
                       "  nbship publish notebooks/marker_classifier.ipynb "
                       "--registry registry.example.com/ml\n"
                       "  nbship release show 127.0.0.1:5000/releases/marker-classifier",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _image_options(u)
    u.add_argument("--registry", default=None, metavar="HOST[:PORT][/PATH]",
                   help="where to push (default: the embedded registry, nbship registry up)")
    u.add_argument("--only", choices=["steps"], default=None,
                   help="publish without the model server's image (and its manifest)")
    u.add_argument("--run", type=Path, default=None, metavar="PROVENANCE",
                   help="provenance.json of the CI run whose metrics the release records "
                   "(default: the newest successful run of this notebook, if any)")
    u.add_argument("--compression", choices=["zstd", "gzip"], default="zstd",
                   help="image layers: zstd (default; containerd >= 1.5, Docker >= 23) or "
                   "gzip for older runtimes")
    u.add_argument("--allow-dirty", action="store_true",
                   help="publish although the repository has uncommitted changes")

    rs = sub.add_parser("release", help="show a published release",
                        description="Print what a release contains: images and digests, the "
                        "pipeline and manifests with their sha256, the notebook, its commit, "
                        "the cells of each step, the CI run's metrics.")
    rs.add_argument("action", choices=["show"])
    rs.add_argument("ref", metavar="REF",
                    help="HOST:PORT/releases/NAME[:TAG|@DIGEST], or NAME on the embedded "
                    "registry (tag latest)")
    rs.add_argument("--json", action="store_true", help="print release.json as it is")

    v = sub.add_parser("serve", help="serve a run's model (the serve cell) with KServe",
                       description="Load the values the notebook's `serve` cell reads from a "
                       "finished run, build its predict() and serve it with KServe's "
                       "ModelServer: REST v1 /v1/models/NAME:predict, v2 "
                       "/v2/models/NAME/infer, /v2/health/ready, /metrics. Listens on "
                       "127.0.0.1 unless --host says otherwise; stops on Ctrl-C or SIGTERM.",
                       epilog="Example:\n"
                       "  nbship run notebooks/marker_classifier.ipynb\n"
                       "  nbship serve .nbship/runs/marker-classifier/<run-id> --port 8080\n"
                       "  curl -d '{\"instances\": [[[0, 0, 5, 13, 9, 1, 0, 0], ...]]}' "
                       "http://127.0.0.1:8080/v1/models/marker-classifier:predict",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("run", metavar="MODEL_REF|RUN_DIR",
                   help="a model release (HOST:PORT/models/NAME[:TAG|@DIGEST]), a run folder "
                   "(.nbship/runs/NAME/RUN_ID), or NAME for its newest run")
    v.add_argument("--port", type=_port, default=8080, help="default: 8080")
    v.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    v.add_argument("--root", type=Path, default=Path(".nbship/runs"), metavar="DIR",
                   help="where runs are (default: .nbship/runs)")
    v.add_argument("--verbose", action="store_true", help="KServe's and uvicorn's own logs")
    v.add_argument("--max-body", type=_positive, default=None, metavar="BYTES",
                   help="larger request bodies get a 413 (default: --max-rows rows of the "
                   "model's reference inputs as JSON, 1-16 MiB; 4 MiB without them)")
    v.add_argument("--max-rows", type=_positive, default=None, metavar="ROWS",
                   help="requests with more rows (inputs) get a 413 (default: 1000)")
    v.add_argument("--monitor", type=Path, default=Path(".nbship/monitor"), metavar="DIR",
                   help="where `nbship monitor`'s Prometheus looks for servers to scrape "
                   "(default: .nbship/monitor)")

    kf = sub.add_parser("kfp", help="a release's pipeline on a Kubeflow Pipelines cluster",
                        description="Upload a published release's pipeline to KFP as a "
                        "pipeline version (named from the release and its digest: the same "
                        "release twice is one version), run it (waiting, with its states), "
                        "schedule it as a recurring run (replacing the release's previous "
                        "schedule: never two enabled), show status, disable the schedule. "
                        "Every id made is also printed as SPINNAKER_PROPERTY_<name>=<value> "
                        "for a Spinnaker Run Job stage. Auth: none, --token (or $KFP_TOKEN), "
                        "--sa-token in a pod ($KF_PIPELINES_SA_TOKEN_PATH), --cookies (a "
                        "gateway's session), or --kube-context instead of --host. Multi-user "
                        "KFP: --namespace (or [tool.nbship.kfp] namespace) names the "
                        "profile.",
                        epilog="Examples:\n"
                        "  nbship kfp upload 127.0.0.1:5000/releases/marker-classifier "
                        "--host http://localhost:8080\n"
                        "  nbship kfp run marker-classifier --host $KFP -p epochs=2\n"
                        "  nbship kfp schedule marker-classifier --host $KFP --cron "
                        "'0 0 3 * * *'\n"
                        "  nbship kfp status marker-classifier --host $KFP\n"
                        "  nbship kfp disable marker-classifier --host $KFP",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    kf.add_argument("action", choices=["upload", "run", "schedule", "status", "disable"])
    kf.add_argument("release", metavar="RELEASE",
                    help="HOST:PORT/releases/NAME[:TAG|@DIGEST], or NAME on the embedded "
                    "registry (tag latest); status and disable take NAME")
    kf.add_argument("--host", default=None,
                    help="the KFP API, e.g. http://localhost:8080 (default: "
                    "$KF_PIPELINES_ENDPOINT; without one or --kube-context, this machine: "
                    "kfp.local and the local scheduler)")
    kf.add_argument("--namespace", default=None, metavar="PROFILE",
                    help="multi-user KFP: the profile namespace of experiments, runs, "
                    "recurring runs and uploaded pipelines (default: [tool.nbship.kfp] "
                    "namespace in ./pyproject.toml, else kfp's context file, else the pod's "
                    "own namespace as kfp.Client finds it)")
    kf.add_argument("--cookies", default=None, metavar="NAME=VALUE",
                    help="cookies for a gateway that takes a session, as kfp.Client(cookies=)"
                    " (e.g. authservice_session=...; default: $KFP_COOKIES, else the "
                    "client_authentication_cookie of ~/.config/kfp/context.json)")
    kf.add_argument("--token", default=None, help="a bearer token (default: $KFP_TOKEN)")
    kf.add_argument("--sa-token", type=Path, default=None, metavar="PATH",
                    help="the service account token file in a pod "
                    "(default: $KF_PIPELINES_SA_TOKEN_PATH)")
    kf.add_argument("--kube-context", default=None, metavar="NAME",
                    help="instead of --host: reach KFP through this kubeconfig context's "
                    "API server (its service proxy to ml-pipeline in kubeflow), as "
                    "kfp.Client does")
    kf.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="--host: seconds to wait for a connection to the KFP API (default 10)")
    kf.add_argument("--read-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="--host: seconds to wait for each answer of the KFP API (default 60)")
    kf.add_argument("--experiment", default=None, help="default: the pipeline's name")
    kf.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="run/schedule parameters (JSON values: 2, 0.5, \"text\", true)")
    kf.add_argument("--cron", default=None, help="schedule: 6 fields, seconds first")
    kf.add_argument("--max-concurrency", type=int, default=1)
    kf.add_argument("--catchup", action="store_true",
                    help="schedule: run the fires missed while paused (default: off)")
    kf.add_argument("--no-wait", action="store_true", help="run: return once it started")
    kf.add_argument("--registry", default=None, metavar="HOST[:PORT][/PATH]",
                    help="where NAME is looked up (default: the embedded registry)")

    dp = sub.add_parser("deploy", help="Spinnaker pipelines: render them from a release, "
                        "validate them offline, rehearse them locally",
                        description="render: write the Spinnaker pipelines a release needs "
                        "(ML pipeline CD and rollback, continuous training, model delivery "
                        "with a canary, and its rollback) into spinnaker/, every image and "
                        "model by digest.\n\nrehearse: run one of those files here, stage "
                        "by stage with Spinnaker's semantics: Run Job stages run their nbship "
                        "command in this venv, InferenceServices become real model servers "
                        "on 127.0.0.1 behind a real traffic split, manual judgments take "
                        "--judge or ask; requests are sent throughout and counted. Each "
                        "execution is recorded (nbship deploy history).\n\n"
                        "validate: check Spinnaker pipeline JSON as strictly as Spinnaker "
                        "would: required fields (front50's name/application with --save), "
                        "the stage graph (string refIds, requisiteStageRefIds resolving, no "
                        "cycles), every stage type known with the fields Deck and orca "
                        "require, triggers (Quartz cron with seconds, docker, webhook, pubsub, "
                        "pipeline), expected artifact ids, ${...} expressions, and embedded "
                        "Kubernetes manifests (kubernetes-validate, strict; custom resources "
                        "against their CRD: $NBSHIP_CRDS, ./crds). Each problem names the "
                        "file, the JSON path and what was expected.",
                        epilog="Examples:\n"
                        "  nbship deploy render 127.0.0.1:5000/releases/marker-classifier  "
                        "# -> spinnaker/\n"
                        "  nbship deploy render marker-classifier --env prod\n"
                        "  nbship deploy validate                 # spinnaker/*.json\n"
                        "  nbship deploy validate my-pipeline.json --save\n"
                        "  nbship deploy rehearse spinnaker/marker-classifier-model-delivery.json "
                        "\\\n      --stable 127.0.0.1:5000/models/marker-classifier@sha256:... "
                        "--judge continue --time-scale 0.01\n"
                        "  nbship deploy history\n\n"
                        "render reads [tool.nbship.deploy] (application, account, namespace, "
                        "kfp_host, service_account, docker_account, judgment; "
                        "[tool.nbship.deploy.<env>] overrides) and [tool.nbship.training] "
                        "(the schedule).",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    dp.add_argument("action", choices=["render", "validate", "rehearse", "history"])
    dp.add_argument("files", nargs="*", metavar="FILE|RELEASE",
                    help="validate: pipeline JSON files (default: spinnaker/*.json); render: "
                    "the release (HOST:PORT/releases/NAME[:TAG], or NAME on the embedded "
                    "registry); rehearse: one pipeline file; history: a pipeline's name or "
                    "an execution id (default: all)")
    dp.add_argument("-o", "--output", type=Path, default=Path("spinnaker"),
                    help="render: where the pipelines go (default: spinnaker/)")
    dp.add_argument("--env", default=None, help="render: the [tool.nbship.deploy.ENV] "
                    "variant (e.g. staging, prod)")
    dp.add_argument("--registry", default=None, metavar="HOST[:PORT][/PATH]")
    dp.add_argument("--model", default=None, metavar="MODEL_REF",
                    help="render: also the model delivery of this model release (default: "
                    "models/NAME:latest beside the release, when there is one)")
    dp.add_argument("--save", action="store_true",
                    help="as front50 saves it: name and application required")
    dp.add_argument("--quiet", action="store_true", help="errors only")
    dp.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                    help="rehearse: a pipeline parameter (its parameterConfig), repeatable")
    dp.add_argument("--stable", default=None, metavar="MODEL_REF",
                    help="rehearse: the model release serving before the rehearsal (what "
                    "production runs now; the canary is judged against it)")
    dp.add_argument("--judge", choices=["continue", "stop"], default=None,
                    help="rehearse: the answer to every manual judgment (default: ask on "
                    "the terminal)")
    dp.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                    help="rehearse: wait stages wait X times their waitTime (default 1)")
    dp.add_argument("--traffic", type=float, default=20.0, metavar="PER_SECOND",
                    help="rehearse: requests a second sent to each InferenceService "
                    "throughout, and counted (default 20; 0: none)")
    dp.add_argument("--kfp-host", default=None, metavar="URL",
                    help="rehearse: where nbship kfp jobs go (default: the local pipeline "
                    "host, kfp.local)")
    dp.add_argument("--jobs", choices=["image", "venv"], default="image",
                    help="rehearse: run the Run Job stages in their released image (buildah, "
                    "the default) or in this venv")
    dp.add_argument("--servers", choices=["image", "venv"], default=None,
                    help="rehearse: run the model servers in their InferenceService's image "
                    "(buildah), as KServe does, or in this venv (default: as --jobs)")
    dp.add_argument("--release", default=None, metavar="RELEASE_REF",
                    help="rehearse: the release whose images (by digest, as its release.json "
                    "records them) may have this machine's key, the nbship-key secret "
                    "(default: the release a model release parameter records)")
    dp.add_argument("--trigger-payload", default=None, type=Path, metavar="FILE",
                    help="rehearse: run as if FILE's JSON were posted to the pipeline's "
                    "webhook trigger (Echo's matching: source, payloadConstraints, expected "
                    "artifacts; the trigger's artifacts bound as Orca binds them)")
    dp.add_argument("--trigger-source", default=None, metavar="SOURCE",
                    help="rehearse: the webhook trigger's source --trigger-payload goes to "
                    "(default: the first that fires)")
    dp.add_argument("--json", action="store_true", help="history: the records as JSON")

    sc = sub.add_parser("scheduler", help="continuous training: cron, new data, webhooks",
                        description="Start, stop or show the local training scheduler: one "
                        "process that reads [tool.nbship.training] from pyproject.toml and "
                        "starts runs of the notebooks' pipelines on a cron schedule (6 fields, "
                        "seconds first, as KFP's), when their data source's content changes "
                        "(the run reads a snapshot of it), or on an authenticated webhook "
                        "(POST /trigger/NAME, Authorization: Bearer SECRET). A run whose data "
                        "is what the last successful run had is skipped, and says so. "
                        "Schedules live in .nbship/scheduler/schedules.sqlite: a restart "
                        "loses and doubles nothing.",
                        epilog="pyproject.toml:\n"
                        "  [tool.nbship.training.\"notebooks/marker_classifier.ipynb\"]\n"
                        "  cron = \"0 0 3 * * *\"            # 03:00 every day\n"
                        "  data = \"data/markers\"           # new files start a run\n"
                        "  data_parameter = \"data_dir\"     # ...which gets the snapshot\n"
                        "  parameters = { epochs = 2 }\n"
                        "  webhook = true\n\nExamples:\n  nbship scheduler up\n"
                        "  nbship scheduler status\n"
                        "  curl -X POST -H \"Authorization: Bearer $(cat "
                        ".nbship/scheduler/secret)\" http://127.0.0.1:9096/trigger/"
                        "marker-classifier\n  nbship scheduler down",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("action", choices=["up", "down", "status", "run"],
                    help="run: in the foreground (what up starts)")
    sc.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"),
                    help="where [tool.nbship.training] is (default: ./pyproject.toml)")
    sc.add_argument("--port", type=_port, default=9096, help="webhook and status (default 9096)")
    sc.add_argument("--root", type=Path, default=Path(".nbship/scheduler"), metavar="DIR")

    lb = sub.add_parser("lab", help="JupyterLab with nbship on the cells and a side panel",
                        description="Start JupyterLab on 127.0.0.1 with nbship's extensions: "
                        "each cell's role and step as a badge (the step's colour at its "
                        "margin), the analysis's problems on the cells and lines they name "
                        "while you type, a side panel with the step graph, parameters and "
                        "metrics, Run as pipeline and Test buttons, and a form for a cell's "
                        "step. It prints the URL to open. The front end is built by `make "
                        "labextension` (Node); its configuration lives in .nbship/lab/.",
                        epilog="Example:\n  nbship lab notebooks/marker_classifier.ipynb",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    lb.add_argument("notebook", nargs="?", default=None, help="open this notebook first")
    lb.add_argument("--port", type=_port, default=8888, help="default 8888")

    cn = sub.add_parser("canary", help="judge a canary model server against the stable one",
                        description="judge: send the same inputs to the stable and the canary "
                        "server (KServe v2 /infer, one row a request) and compare error ratio, "
                        "p99 latency, agreement of their predictions and prediction drift "
                        "(PSI); exit 1 when a check fails (a Spinnaker Run Job then fails). "
                        "ready: wait until a server's model answers ready.",
                        epilog="Examples:\n"
                        "  nbship canary judge --stable http://127.0.0.1:8080 --canary "
                        "http://127.0.0.1:8081 --model marker-classifier --reference "
                        "127.0.0.1:5000/models/marker-classifier:latest\n"
                        "  nbship canary ready http://127.0.0.1:8081 --model marker-classifier",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cn.add_argument("action", choices=["judge", "ready"])
    cn.add_argument("url", nargs="?", default=None, help="ready: the server")
    cn.add_argument("--stable", default=None, metavar="URL")
    cn.add_argument("--canary", default=None, metavar="URL")
    cn.add_argument("--model", required=True, help="the model's name on the servers")
    cn.add_argument("--canary-model", default=None, help="default: --model")
    cn.add_argument("--inputs", type=Path, default=None, metavar="FILE.npy",
                    help="the inputs to send (rows), a .npy file")
    cn.add_argument("--reference", default=None, metavar="MODEL_REF|RUN_DIR",
                    help="or: the serve cell's reference_inputs of this model release or run")
    cn.add_argument("--requests", type=int, default=200, help="at least this many (200)")
    cn.add_argument("--seconds", type=float, default=0.0, help="and for at least this long")
    cn.add_argument("--min-agreement", type=float, default=0.9)
    cn.add_argument("--max-psi", type=float, default=0.25)
    cn.add_argument("--max-latency-ratio", type=float, default=1.5)
    cn.add_argument("--max-extra-errors", type=float, default=0.01)
    cn.add_argument("--timeout", type=float, default=600.0, help="ready: seconds (600)")

    md = sub.add_parser("model", help="model releases: push a run's model, show one",
                        description="A model release is an OCI artifact models/NAME tagged "
                        "run-<id> (latest moved last): the values the serve cell reads in safe "
                        "formats where one exists (JSON, .npy, safetensors, skops), the serve "
                        "cell's code, the drift profile the pipeline recorded, the run's "
                        "metrics and provenance (commit, notebook sha256, cells, parameters, "
                        "data hash, pipeline release), signed with this machine's key.",
                        epilog="Examples:\n  nbship registry up\n"
                        "  nbship model push                      # the newest successful run\n"
                        "  nbship model push .nbship/runs/marker-classifier/<run-id>\n"
                        "  nbship model show marker-classifier    # models/NAME:latest\n"
                        "  nbship model show marker-classifier --manifest > isvc.yaml\n"
                        "  nbship serve 127.0.0.1:5000/models/marker-classifier:latest",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    md.add_argument("action", choices=["push", "show"])
    md.add_argument("what", nargs="?", default=None, metavar="RUN|REF",
                    help="push: a run folder or NAME (default: the newest successful run, "
                    "when .nbship/runs holds one pipeline); show: HOST:PORT/models/NAME"
                    "[:TAG|@DIGEST] or NAME on the registry (tag latest)")
    md.add_argument("--registry", default=None, metavar="HOST[:PORT][/PATH]",
                    help="default: the embedded registry (nbship registry up)")
    md.add_argument("--root", type=Path, default=Path(".nbship/runs"), metavar="DIR",
                    help="where runs are (default: .nbship/runs)")
    md.add_argument("--json", action="store_true", help="show: print model.json as it is")
    md.add_argument("--manifest", action="store_true",
                    help="show: print the KServe InferenceService serving this model by "
                    "digest (the server image from the notebook's pipeline release)")

    tr = sub.add_parser("trigger", help="retrain when Alertmanager reports drift (webhook)",
                        description="Listen on 127.0.0.1 for Alertmanager's webhook (POST "
                        "/alerts; `nbship monitor up` routes there). A firing drift alert "
                        "(NbshipInputDrift, NbshipPredictionDrift) starts a run of the "
                        "notebook's pipeline on kfp.local; its provenance says which alert "
                        "started it and on which data (hash). When the run succeeds (the "
                        "notebook's own gate steps passed), its model is pushed as the next "
                        "model release (models/NAME:run-<id>, latest moved). One run at a "
                        "time, at most one per cooldown. GET /runs lists what it started.",
                        epilog="Example:\n  nbship monitor up\n  nbship serve "
                        "marker-classifier &\n  nbship trigger "
                        "notebooks/marker_classifier.ipynb --cooldown 600",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("notebook", type=Path)
    tr.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="parameters of the retraining runs (repeatable)")
    tr.add_argument("--port", type=_port, default=9095, help="default: 9095")
    tr.add_argument("--host", default="127.0.0.1",
                    help="the address to listen on (default: 127.0.0.1); another (0.0.0.0 in "
                    "the pod nbship renders) needs --secret-file")
    tr.add_argument("--secret-file", type=Path, default=None, metavar="PATH",
                    help="take requests only with 'Authorization: Bearer <the file's "
                    "content>' (Alertmanager's http_config.authorization)")
    tr.add_argument("--cooldown", type=float, default=600.0, metavar="SECONDS",
                    help="at most one run per this many seconds (default: 600)")
    tr.add_argument("--root", type=Path, default=Path(".nbship/runs"), metavar="DIR")
    tr.add_argument("--registry", default=None, metavar="HOST[:PORT][/PATH]",
                    help="where the retrained model is pushed (default: the embedded "
                    "registry, nbship registry up)")
    tr.add_argument("--no-push", action="store_true",
                    help="retrain only; push no model release")

    m = sub.add_parser("monitor", help="Prometheus + Alertmanager for the served models",
                       description="Start, stop or show a real Prometheus (scraping every "
                       "`nbship serve` on this machine, evaluating nbship's alert rules: error "
                       "ratio, p99 latency, input drift, prediction drift, server down) and "
                       "Alertmanager (routing alerts to the retraining trigger's webhook), "
                       "both on 127.0.0.1, configuration and data under .nbship/monitor.",
                       epilog="Example:\n  nbship monitor up\n  nbship serve marker-classifier"
                       "\n  open http://127.0.0.1:9090/alerts",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("action", nargs="?", choices=["up", "down", "status"],
                   help="without one: a live view of the served models (Ctrl-C ends it)")
    m.add_argument("--check", action="store_true",
                   help="exit 1 when an nbship alert fires (CI, a canary judge, cron)")
    m.add_argument("--html", type=Path, default=None, metavar="FILE",
                   help="write the last --minutes as plots to FILE")
    m.add_argument("--minutes", type=int, default=30)
    m.add_argument("--prometheus", default=None, metavar="HOST:PORT",
                   help="read this Prometheus (default: the one `nbship monitor up` runs)")
    m.add_argument("--root", type=Path, default=Path(".nbship/monitor"), metavar="DIR")
    m.add_argument("--prometheus-port", type=_port, default=9090)
    m.add_argument("--alertmanager-port", type=_port, default=9093)
    m.add_argument("--webhook", default="http://127.0.0.1:9095/alerts", metavar="URL",
                   help="where Alertmanager sends alerts (default: nbship trigger; the "
                   "scheduler's is http://127.0.0.1:9096/alerts, with --webhook-secret-file)")
    m.add_argument("--webhook-secret-file", type=Path, default=None, metavar="PATH",
                   help="send alerts with 'Authorization: Bearer <the file's content>', e.g. "
                   ".nbship/scheduler/secret")
    m.add_argument("--for", dest="for_", default="1m", metavar="DURATION",
                   help="how long a condition holds before its alert fires (default: 1m)")

    g = sub.add_parser("registry", help="the embedded OCI registry on 127.0.0.1",
                       description="Start, stop or show the registry nbship runs for a "
                       "machine without one (Debian's docker-registry, the CNCF distribution "
                       "registry), listening on 127.0.0.1 and storing under "
                       ".nbship/registry. It runs detached until `nbship registry down`.")
    g.add_argument("action", choices=["up", "down", "status"])
    g.add_argument("--port", type=_port, default=5000, help="port for `up` (default: 5000)")
    g.add_argument("--root", type=Path, default=Path(".nbship/registry"), metavar="DIR",
                   help="storage and state (default: .nbship/registry)")
    return p


def _port(text: str) -> int:
    """A TCP port to listen on: 1-65535."""
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def _positive(text: str) -> int:
    """A count or size: a whole number, 1 or more."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _image_options(p: argparse.ArgumentParser) -> None:
    """What `nbship build` and `nbship publish` share: the notebook and how images are made."""
    p.add_argument("notebook", type=Path)
    p.add_argument("--base", default=None, metavar="REF",
                   help="base image with Python 3.11 (default: nbship's own, debootstrapped)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="image builder: buildah (default where installed), docker, or a "
                   "plug-in's name (entry point group nbship.builders)")
    p.add_argument("-o", "--output", type=Path, default=Path(".nbship/images"), metavar="DIR",
                   help="build contexts and caches (default: .nbship/images)")


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
    if graph.serve is not None:
        steps += " and the serving check"
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


def cmd_build(args: argparse.Namespace) -> int:
    from nbship.extract.cache import analyse
    from nbship.release.build import build_images

    graph = analyse(args.notebook)
    _print_problems(graph)
    print(f"nbship build {args.notebook}" + (" (dry run: contexts only)" if args.dry_run
                                             else ""), flush=True)
    images = build_images(graph, base=args.base, backend_name=args.backend,
                          dry_run=args.dry_run, out=args.output, only=args.only,
                          echo=lambda line: print(line, flush=True))
    for image in images:
        word = ("context " if args.dry_run else "built   " if image.built
                else "up to date")
        print(f"{image.reference}  {word}  {image.context.directory}")
    return 0


def _embedded_registry() -> str:
    from nbship.errors import ReleaseError
    from nbship.release import registry

    state = registry.status()
    if state is None or not state.running:
        raise ReleaseError("no registry given and the embedded one is not running",
                           hint="nbship registry up, or --registry HOST:PORT")
    return state.address


def cmd_publish(args: argparse.Namespace) -> int:
    from nbship.extract.cache import analyse
    from nbship.release.backends import backend
    from nbship.release.build import build_images
    from nbship.release.publish import latest_run, publish, release_commit

    graph = analyse(args.notebook)
    _print_problems(graph)
    release_commit(graph, args.allow_dirty)  # before any work: a release names a commit
    target = args.registry or _embedded_registry()
    say = lambda line: print(line, flush=True)  # noqa: E731
    print(f"nbship publish {args.notebook} -> {target}", flush=True)
    builder = backend(args.backend)
    images = build_images(graph, base=args.base, backend_name=builder.name, out=args.output,
                          only=args.only, echo=say)
    result = publish(graph, images, registry=target, builder=builder, out=args.output,
                     run_provenance=args.run or latest_run(graph),
                     allow_dirty=args.allow_dirty, compression=args.compression, echo=say)
    print(f"release:  {result.release}@{result.digest}")
    print(f"tag:      {result.tag}" + ("" if result.moved else " (unchanged)"))
    print(f"pipeline: sha256 {result.record['pipeline']['sha256']} "
          f"(image {result.record['pipeline']['base_image']})")
    print(f"done in {result.seconds:.2f}s")
    return 0


def _kfp_params(pairs: list[str]) -> dict[str, object]:
    import json

    from nbship.errors import ParameterError

    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ParameterError(f"-p {pair!r}: expected NAME=VALUE")
        try:
            out[name] = json.loads(text)
        except ValueError:
            out[name] = text  # a bare word is a string
    return out


def _schedule_of(name: str, args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    """The cron and parameters of a schedule: --cron and -p, or the pipeline's
    [tool.nbship.training] table in ./pyproject.toml (one vocabulary for both places)."""
    from nbship.errors import UnusableInputError
    from nbship.pipelines.training import check_cron, read_config

    params = _kfp_params(args.param)
    if args.cron:
        return check_cron(args.cron, "--cron"), params
    table = next((t for t in read_config(Path("pyproject.toml")) if t.name == name), None)
    if table is None or table.cron is None:
        raise UnusableInputError("nbship kfp schedule needs --cron (6 fields, seconds first): "
                                 f"./pyproject.toml has no cron for {name}",
                                 hint='[tool.nbship.training."NOTEBOOK"] cron = "0 0 3 * * *"')
    return table.cron, {**table.parameters, **params}


def _pipeline_of(release: str) -> str:
    """The pipeline's name in a release reference (or the name itself)."""
    return release.rsplit("/", 1)[-1].split(":")[0].split("@")[0]


def _kfp_here(args: argparse.Namespace) -> int:
    """nbship kfp without --host: kfp.local and the local scheduler."""
    from nbship.pipelines import kfp_local
    from nbship.pipelines.kfp_remote import spinnaker

    project = Path.cwd()
    scheduler_root = Path(".nbship/scheduler")
    name = _pipeline_of(args.release)
    if args.action == "status":
        doc = kfp_local.status(name, project, scheduler_root)
        current = doc["current"]
        print(f"pipeline {name} (this machine): current version "
              f"{current['version'] if current else 'none (nbship kfp upload)'}")
        for version in doc["versions"]:
            print(f"  version   {version}")
        for sched in doc["schedules"]:
            print(f"  schedule  {sched['name']} cron {sched['cron']} {sched['release']}")
        for run in doc["runs"][-5:]:
            print(f"  run       {run['started']} {run['status']} {run['message'] or ''}")
        return 0
    if args.action == "disable":
        gone = kfp_local.disable(name, scheduler_root)
        print(f"disabled the local schedule of {name}" if gone else
              f"{name} has no local schedule")
        return 0
    ref = args.release if "/" in args.release else \
        f"{args.registry or _embedded_registry()}/releases/{args.release}"
    if args.action == "upload":
        rel, new = kfp_local.upload(ref, project)
        print(f"release {rel.reference}: local version {rel.version_name} "
              f"({'kept' if new else 'already there'}; {rel.yaml})")
        props = {"pipeline_version_id": rel.version_name}
    elif args.action == "run":
        result = kfp_local.run_release(ref, _kfp_params(args.param), project=project)
        print(f"{result.status}: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                              result.metrics.items()))
        print(f"provenance: {result.provenance}")
        props = {"run_id": result.record_dir.name,  # in KFP's v2beta1 words, as a cluster's
                 "run_state": {"SUCCESS": "SUCCEEDED", "FAILURE": "FAILED"}.get(
                     result.status, result.status),
                 **{f"metric_{k}": f"{v:.6g}" for k, v in sorted(result.metrics.items())}}
    else:
        cron, params = _schedule_of(name, args)
        sched, replaced = kfp_local.schedule(ref, cron, params, project,
                                             scheduler_root)
        print(f"schedule {sched} ({cron}) with the local scheduler"
              + (", replacing the previous one" if replaced else "")
              + " (nbship scheduler up runs it)")
        props = {"recurring_run_id": sched}
    for line in spinnaker(**props):
        print(line)
    return 0


def cmd_kfp(args: argparse.Namespace) -> int:
    from nbship.errors import UnusableInputError
    from nbship.jsonhttp import Timeouts
    from nbship.pipelines import kfp_remote

    if args.host and args.kube_context:
        raise UnusableInputError("--host or --kube-context, not both: --kube-context reaches "
                                 "KFP through that context's API server",
                                 hint="--host for a port-forward, a gateway or an in-cluster "
                                 "address")
    if not args.kube_context:
        args.host = args.host or os.environ.get(kfp_remote.ENDPOINT_ENV) or None
    if not args.host and not args.kube_context:
        return _kfp_here(args)
    say = lambda line: print(line, flush=True)  # noqa: E731
    name = _pipeline_of(args.release)
    experiment = args.experiment or name
    if not (args.connect_timeout > 0 and args.read_timeout > 0):
        raise UnusableInputError("--connect-timeout and --read-timeout are seconds above 0")
    namespace = args.namespace or kfp_remote.configured_namespace(Path("pyproject.toml"))
    remote = kfp_remote.Remote(args.host or "", kfp_remote.Auth(
        args.token, args.sa_token, args.kube_context, args.cookies), echo=say,
        timeouts=Timeouts(args.connect_timeout, args.read_timeout),
        namespace=namespace or "")
    args.host = remote.host
    if args.action == "status":
        doc = remote.status(name, experiment)
        print(f"pipeline {name}: {doc['pipeline_id'] or 'not uploaded'}"
              + (f" (namespace {doc['namespace']})" if doc["namespace"] else ""))
        for version in doc["versions"]:
            print(f"  version   {version}")
        for sched in doc["schedules"]:
            print(f"  schedule  {sched['id']} {sched['status']} cron {sched['cron']} "
                  f"version {sched['version']}")
        for run in doc["runs"]:
            print(f"  run       {run['id']} {run['state']} {run['name']}")
        return 0
    if args.action == "disable":
        stopped = remote.disable(name, experiment)
        print(f"disabled {len(stopped)} schedule(s)" + "".join(f" {i}" for i in stopped))
        for line in kfp_remote.spinnaker(disabled_recurring_runs=",".join(stopped)):
            print(line)
        return 0
    ref = args.release if "/" in args.release else \
        f"{args.registry or _embedded_registry()}/releases/{args.release}"
    with kfp_remote.release(ref) as rel:
        print(f"release {rel.reference} -> {args.host} (version {rel.version_name})",
              flush=True)
        if args.action == "upload":
            pipeline_id, version_id, made = remote.upload(rel)
            print(f"pipeline {pipeline_id}, version {version_id} "
                  f"({'uploaded' if made else 'already there'})")
            props = {"pipeline_id": pipeline_id, "pipeline_version_id": version_id}
        elif args.action == "run":
            run_id, state = remote.run(rel, experiment, _kfp_params(args.param),
                                       wait=not args.no_wait)
            print(f"run {run_id}: {state} (metrics: in the run's page of the KFP UI; the "
                  "v2beta1 API does not return them)")
            props = {"run_id": run_id, "run_state": state}
            if state not in ("SUCCEEDED", "PENDING", "RUNNING"):
                for line in kfp_remote.spinnaker(**props):
                    print(line)
                return 1
        else:
            cron, params = _schedule_of(name, args)
            new, replaced = remote.schedule(rel, experiment, cron, params,
                                            max_concurrency=args.max_concurrency,
                                            catchup=args.catchup)
            print(f"schedule {new} ({cron})" + (f", replacing {', '.join(replaced)}"
                                               if replaced else ""))
            props = {"recurring_run_id": new, "replaced_recurring_runs": ",".join(replaced)}
    for line in kfp_remote.spinnaker(**props):
        print(line)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from nbship.errors import UnusableInputError
    from nbship.spinnaker.validate import ERROR, validate_files

    if args.action == "render":
        from nbship.spinnaker.render import render

        if len(args.files) != 1:
            raise UnusableInputError("nbship deploy render needs one RELEASE")
        ref = args.files[0] if "/" in args.files[0] else \
            f"{args.registry or _embedded_registry()}/releases/{args.files[0]}"
        model = args.model
        if model is None:
            from nbship.release import oci

            release = oci.Reference.parse(ref)
            parts = release.repository.split("/")  # [PATH...,] releases, NAME
            guess = oci.Reference(release.registry, "/".join([*parts[:-2], "models",
                                                              parts[-1]]), "latest")
            model = str(guess) if len(parts) >= 2 and oci.exists(guess) else None
        for path in render(ref, args.output, env=args.env, model=model):
            print(f"wrote {path} (validated)")
        if model is None:
            print("(no model release found: the model delivery is rendered with --model REF)")
        return 0
    if args.action == "rehearse":
        return _rehearse(args)
    if args.action == "history":
        return _history(args)
    files = [Path(f) for f in args.files] or sorted(Path("spinnaker").glob("*.json"))
    if not files:
        raise UnusableInputError("no pipeline files: give FILES, or render spinnaker/*.json")
    errors = warnings = 0
    for problem in validate_files(files, save=args.save):  # and across the files
        if problem.severity == ERROR:
            errors += 1
        else:
            warnings += 1
            if args.quiet:
                continue
        print(problem)
    print(f"{len(files)} file(s): {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def _rehearse(args: argparse.Namespace) -> int:
    import sys

    from nbship.errors import UnusableInputError
    from nbship.spinnaker import rehearse

    if len(args.files) != 1:
        raise UnusableInputError("nbship deploy rehearse needs one pipeline FILE",
                                 hint="nbship deploy render RELEASE writes them")
    params = {}
    for item in args.parameter:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UnusableInputError(f"-p {item}: NAME=VALUE")
        params[key] = value
    payload = None
    if args.trigger_payload is not None:
        import json

        try:
            payload = json.loads(args.trigger_payload.read_text())
        except (OSError, ValueError) as exc:
            raise UnusableInputError(f"--trigger-payload {args.trigger_payload}: {exc}") \
                from None
        if not isinstance(payload, dict):
            raise UnusableInputError(f"--trigger-payload {args.trigger_payload}: a JSON "
                                     "object (the webhook's body)")
    options = rehearse.Options(parameters=params, judge=args.judge,
                               time_scale=args.time_scale, stable=args.stable,
                               traffic=args.traffic, kfp_host=args.kfp_host,
                               jobs=args.jobs, servers=args.servers, release=args.release,
                               trigger_payload=payload, trigger_source=args.trigger_source,
                               ask=input if sys.stdin.isatty() else None)
    record, path = rehearse.rehearse(Path(args.files[0]), options,
                                     echo=lambda line: print(line, flush=True))
    print()
    for line in rehearse.summary(record):
        print(line)
    print(f"record: {path} (nbship deploy history {record['id']})")
    return 0 if record["status"] == "SUCCEEDED" else 1


def _history(args: argparse.Namespace) -> int:
    import json

    from nbship.errors import UnusableInputError
    from nbship.spinnaker import rehearse
    from nbship.spinnaker.local_cluster import short

    which = args.files[0] if args.files else None
    records = rehearse.history()
    if which:
        one = [r for r in records if r["id"] == which]
        if one:
            if args.json:
                print(json.dumps(one[0], indent=2, sort_keys=True))
            else:
                for line in rehearse.summary(one[0]):
                    print(line)
            return 0
        records = [r for r in records if r["pipeline"]["name"] == which]
        if not records:
            raise UnusableInputError(f"no rehearsal of {which} and no execution {which} in "
                                     ".nbship/deploy/executions",
                                     hint="nbship deploy rehearse FILE records one")
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    if not records:
        print("no rehearsals yet (nbship deploy rehearse FILE)")
        return 0
    print(f"{'execution':<25} {'pipeline':<36} {'status':<10} {'seconds':>8} "
          f"{'sent':>6} {'failed':>6}  serving after")
    for r in records:
        t = r.get("traffic") or {}
        final = "; ".join(f"{k}: {short(v['stable'] or '-')}" for k, v in
                          (r.get("cluster", {}).get("final") or {}).items())
        print(f"{r['id']:<25} {r['pipeline']['name'][:36]:<36} {r['status']:<10} "
              f"{r['seconds']:>8.1f} {t.get('sent', '-'):>6} {t.get('failed', '-'):>6}  "
              f"{final or '-'}")
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from nbship.pipelines import scheduler

    if args.action == "run":
        scheduler.run_foreground(args.pyproject, args.port, args.root)
        return 0
    if args.action == "up":
        address, started = scheduler.up(args.pyproject, args.root, args.port)
        where = f"${scheduler.SECRET_ENV}" if os.environ.get(scheduler.SECRET_ENV) \
            else args.root / "secret"
        print(f"scheduler: http://{address} ({'started' if started else 'already running'}; "
              f"log {args.root / 'scheduler.log'}, webhook secret {where})")
        return 0
    if args.action == "down":
        print("scheduler: stopped" if scheduler.down(args.root) else "scheduler: not running")
        return 0
    running = scheduler.status(args.root)
    exited = running is None and scheduler.exited(args.root)
    doc = running or scheduler.stored(args.root)  # read before saying: it may be unreadable
    if running is not None:
        print("scheduler: running")
    elif exited:
        print("scheduler: not running: it exited without `nbship scheduler down` (see "
              f"{args.root / 'scheduler.log'}; what it stored:)")
    else:
        print("scheduler: not running (what it stored:)")
    for s in doc["schedules"]:
        triggers = ", ".join(filter(None, [f"cron {s['cron']}" if s["cron"] else None,
                                           f"data {s['data']}" if s["data"] else None,
                                           "webhook" if s["webhook"] else None]))
        print(f"  {s['name']:<20} {triggers}")
        print(f"  {'':<20} next fire {s['next_fire'] or '-'}; last data "
              f"{(s['last_data'] or '-')[:16]}")
    for r in doc["runs"][-10:]:
        print(f"  {r['started']}  {r['name']:<20} {r['trigger']['kind']:<8} {r['status']:<8} "
              f"{r['message'] or ''}")
    if doc.get("running"):
        print(f"  running: {doc['running']}")
    worker = doc.get("worker") or {}
    if worker and (worker.get("restarts") or not worker.get("alive")):
        print(f"  worker: {'alive' if worker.get('alive') else 'dead'}, restarted "
              f"{worker.get('restarts')} time(s); last error: {worker.get('last_error')}")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from nbship.lab.launch import launch

    launch(args.notebook, args.port)
    return 0  # not reached: jupyter lab replaced this process


def cmd_canary(args: argparse.Namespace) -> int:
    import numpy as np

    from nbship.errors import UnusableInputError
    from nbship.serving import canary

    if args.action == "ready":
        if not args.url:
            raise UnusableInputError("nbship canary ready needs the server's URL")
        ok = canary.wait_ready(args.url, args.model, args.timeout)
        print(f"{args.model} at {args.url}: " + ("ready" if ok else
                                                 f"not ready after {args.timeout:g} s"))
        if not ok:
            return 1
        # what a Run Job stage reads (Spinnaker fails one whose property file is empty):
        # the runs serving as canary and stable, the scopes of a Kayenta analysis
        props = {"canary_ready": "true"}
        for side, url in (("canary", args.url), ("stable", args.stable)):
            if url:
                prov = canary.provenance(url, args.model)
                props.update({f"{side}_run": prov["run"], f"{side}_model": prov["model"]})
        for prop, text in props.items():
            print(f"SPINNAKER_PROPERTY_{prop}={text}")
        return 0
    if not args.stable or not args.canary:
        raise UnusableInputError("nbship canary judge needs --stable URL and --canary URL")
    if args.inputs is not None:
        try:
            inputs = np.load(args.inputs, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UnusableInputError(f"{args.inputs}: not a .npy array ({exc})") from None
    elif args.reference is not None:
        from nbship.serving.bundle import load_run

        if _is_reference(args.reference):
            from nbship.release.model import load_model

            served = load_model(args.reference)
        else:
            served = load_run(Path(args.reference))
        inputs = served.reference_inputs
        if inputs is None:
            raise UnusableInputError(f"{args.reference}: its serve cell names no "
                                     "reference_inputs", hint="give --inputs FILE.npy")
    else:
        raise UnusableInputError("nbship canary judge needs --inputs FILE.npy or --reference")
    figures = canary.judge(args.stable, args.canary, args.model,
                           args.canary_model or args.model, np.asarray(inputs),
                           requests=args.requests, seconds=args.seconds,
                           echo=lambda line: print(line, flush=True))
    criteria = canary.Criteria(max_extra_errors=args.max_extra_errors,
                               max_latency_ratio=args.max_latency_ratio,
                               min_agreement=args.min_agreement, max_psi=args.max_psi)
    checks = canary.verdict(figures, criteria)
    for name, passed, what in checks:
        print(f"  {'pass' if passed else 'FAIL'}  {name:<17} {what}")
    good = all(passed for _, passed, _ in checks)
    print(f"canary: {'pass' if good else 'fail'} ({int(figures['requests'])} requests each)")
    for key, value in figures.items():
        print(f"SPINNAKER_PROPERTY_canary_{key}={value:.6g}")
    print(f"SPINNAKER_PROPERTY_canary_verdict={'pass' if good else 'fail'}")
    return 0 if good else 1


def cmd_model(args: argparse.Namespace) -> int:
    import json

    from nbship.release import model

    if args.action == "push":
        run_dir = _run_dir(args.what, args.root)
        registry = args.registry or _embedded_registry()
        print(f"nbship model push {run_dir} -> {registry}", flush=True)
        pushed = model.push(run_dir, registry, echo=lambda line: print(line, flush=True))
        rec = pushed.record
        print(f"model:    {pushed.reference}@{pushed.digest}")
        print("values:   " + ", ".join(f"{var} ({v['serializer']}"
                                        f"{'' if v['safe'] else ', signed pickle'})"
                                        for var, v in rec["serve"]["values"].items()))
        release = rec["pipeline"]["release"]
        print(f"pipeline: {release['reference'] if release else 'no release of this notebook'}")
        return 0
    if not args.what:
        from nbship.errors import UnusableInputError

        raise UnusableInputError("nbship model show needs REF: HOST:PORT/models/NAME[:TAG] "
                                 "or NAME")
    ref = args.what if "/" in args.what else \
        f"{args.registry or _embedded_registry()}/models/{args.what}"
    record, digest, layers = model.show(ref)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    if args.manifest:
        sys.stdout.write(model.inference_service(record, ref, digest))
        return 0
    run = record["run"]
    trigger = run.get("trigger") or {}
    print(f"model {ref}  ({digest})")
    print(f"  name      {record['name']}")
    print(f"  run       {run['id']}  (trigger: {trigger.get('kind')}"
          + (f" {trigger['alert']}" if trigger.get("alert") else "") + ")")
    print(f"  commit    {record.get('commit')}" + ("  (dirty)" if record.get("dirty") else ""))
    nb = record["notebook"]
    print(f"  notebook  {nb['path']}  sha256 {nb['sha256'][:16]}...")
    data = record.get("data") or {}
    print(f"  data      sha256 {str(data.get('sha256'))[:16]}...")
    print("  metrics   " + ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items()))
    print("  params    " + ", ".join(f"{k}={v!r}" for k, v in record["parameters"].items()))
    serve_cells = ", ".join(str(c["index"]) for c in record["cells"]["serve"])
    print(f"  serve     cells {serve_cells}, serve.py sha256 {record['serve']['sha256'][:16]}...")
    for var, v in record["serve"]["values"].items():
        print(f"    {var:<12} from {v['from']:<12} {v['serializer']}"
              + ("" if v["safe"] else " (signed pickle)"))
    print("  profile   " + ("recorded by the pipeline" if record.get("profile") else "none"))
    release = record["pipeline"]["release"]
    print(f"  pipeline  {release['reference'] if release else 'no release'}")
    print("  files     " + ", ".join(
        f"{layer.get('annotations', {}).get('org.opencontainers.image.title', '?')} "
        f"({layer['size']} B)" for layer in layers))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    import json

    from nbship.release.publish import show

    ref = args.ref if "/" in args.ref else f"{_embedded_registry()}/releases/{args.ref}"
    record, digest, layers = show(ref)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    nb = record["notebook"]
    print(f"release {ref}  ({digest})")
    print(f"  name      {record['name']}")
    print(f"  commit    {record['commit']}")
    print(f"  notebook  {nb['path']}  sha256 {nb['sha256'][:16]}...")
    print(f"  nbship    {record['nbship']}")
    print("  images")
    for name, image in record["images"].items():
        print(f"    {name:<14} {image['reference']}")
    print(f"  pipeline  {record['pipeline']['file']}  sha256 {record['pipeline']['sha256']}")
    for manifest in record["manifests"]:
        print(f"  manifest  {manifest['file']} ({manifest['kind']})  sha256 {manifest['sha256']}")
    print("  steps (notebook cells)")
    for name, step in record["steps"].items():
        cells = ", ".join(f"{c['index']} ({c['id']})" if c.get("id") else str(c["index"])
                          for c in step["cells"])
        print(f"    {name:<14} cells {cells}")
    run = record.get("ci_run")
    if run:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in (run.get("metrics") or {}).items())
        print(f"  CI run    {run.get('run_id')} {run.get('status')}  {metrics}")
    else:
        print("  CI run    none recorded")
    print("  files     " + ", ".join(
        f"{layer.get('annotations', {}).get('org.opencontainers.image.title', '?')} "
        f"({layer['size']} B)" for layer in layers))
    return 0


def _run_dir(what: str | None, root: Path) -> Path:
    """A run folder from RUN_DIR, NAME (its newest run) or nothing (the only NAME's)."""
    from nbship.errors import ServeError
    from nbship.serving.bundle import newest_run

    if what is None:
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not names:
            raise ServeError(f"no runs in {root}", hint="nbship run NOTEBOOK first")
        if len(names) != 1:
            raise ServeError(f"{root} holds runs of {len(names)} pipelines "
                             f"({', '.join(names) or 'none'}): name one",
                             hint="nbship model push NAME, or a run folder")
        what = names[0]
    path = Path(what)
    if path.is_dir() and (path / "provenance.json").exists():
        return path
    return newest_run(root / what)


def _is_reference(text: str) -> bool:
    return "/" in text and not Path(text).exists() and ":" in text.split("/", 1)[0]


def cmd_serve(args: argparse.Namespace) -> int:
    from nbship.serving.bundle import load_run
    from nbship.serving.server import serve

    if _is_reference(args.run):
        from nbship.release.model import load_model

        served = load_model(args.run)
        origin = f"release {served.provenance['model']}, run " \
                 f"{(served.provenance.get('run') or {}).get('id')}"
    else:
        served = load_run(_run_dir(args.run, args.root))
        origin = f"run {served.provenance.get('run')}"
    print(f"model {served.name!r} from {origin} "
          f"(commit {served.provenance.get('commit') or 'none'})", flush=True)
    serve(served, host=args.host, port=args.port, verbose=args.verbose,
          announce=lambda line: print(line, flush=True), monitor_root=args.monitor,
          max_body=args.max_body, max_rows=args.max_rows)
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    from nbship.errors import UnusableInputError
    from nbship.extract.cache import analyse
    from nbship.pipelines.params import parse_assignments
    from nbship.pipelines.trigger import Trigger, server

    graph = analyse(args.notebook)  # the notebook and -p values are checked before listening
    values = parse_assignments(args.param, graph.parameters)
    registry = None if args.no_push else (args.registry or _embedded_registry())
    trigger = Trigger(args.notebook, args.root, values, cooldown=args.cooldown,
                      registry=registry, echo=lambda line: print(line, flush=True))
    secret = None
    if args.secret_file is not None:
        try:
            secret = args.secret_file.read_text().strip()
        except OSError as exc:
            raise UnusableInputError(f"--secret-file {args.secret_file}: {exc}") from None
        if not secret:
            raise UnusableInputError(f"--secret-file {args.secret_file} is empty")
    elif args.host not in ("127.0.0.1", "::1", "localhost"):
        raise UnusableInputError(f"--host {args.host} needs --secret-file: the trigger takes "
                                 "alerts from another machine only with a secret")
    httpd = server(trigger, host=args.host, port=args.port, secret=secret)
    print(f"trigger: listening on http://{args.host}:{args.port}/alerts "
          f"({'Bearer secret required' if secret else 'no secret'}) for "
          f"{', '.join(sorted(trigger.alert_names))}; cooldown {args.cooldown:g} s; models "
          f"pushed to {registry or 'nowhere (--no-push)'}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
        trigger.wait(timeout=600)
    return 0


def _running_prometheus(root: Path) -> str:
    from nbship.monitoring import stack

    current = stack.status(root)
    if current is None:
        raise stack.MonitorError("no Prometheus is running here",
                                 hint="nbship monitor up, or --prometheus HOST:PORT")
    return current.prometheus


def cmd_monitor(args: argparse.Namespace) -> int:
    from nbship.monitoring import stack
    from nbship.monitoring.rules import Thresholds

    if args.action is None:
        from nbship.monitoring import view

        prometheus = args.prometheus or _running_prometheus(args.root)
        if args.html:
            plots = view.report(prometheus, args.html, args.minutes)
            print(f"wrote {args.html} ({plots} plots, the last {args.minutes} minutes)")
        if args.check:
            alerts = view.firing(prometheus)
            for alert in alerts:
                print(f"FIRING {alert['alertname']} model={alert.get('model', '?')}")
            print("check: " + ("alerts firing" if alerts else "no alert firing"))
            return 1 if alerts else 0
        if not args.html:
            view.live(prometheus)
        return 0
    if args.action == "up":
        mon = stack.up(args.root, prometheus_port=args.prometheus_port,
                       alertmanager_port=args.alertmanager_port, webhook=args.webhook,
                       thresholds=Thresholds(for_=args.for_),
                       webhook_secret_file=args.webhook_secret_file)
        print(f"prometheus:   http://{mon.prometheus} (rules {mon.root / 'rules.yml'})")
        print(f"alertmanager: http://{mon.alertmanager} -> {args.webhook}")
        print(f"targets:      {stack.targets_dir(mon.root)} (nbship serve adds itself)")
    elif args.action == "down":
        print("monitor: stopped" if stack.down(args.root) else "monitor: not running")
    else:
        current = stack.status(args.root)
        if current is None:
            print("monitor: not running")
            return 1
        print(f"prometheus:   http://{current.prometheus}")
        print(f"alertmanager: http://{current.alertmanager}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from nbship.release import registry

    if args.action == "up":
        state = registry.up(args.root, args.port)
        print(f"registry: http://{state.address} (pid {state.pid}, storage "
              f"{state.root / 'storage'})")
    elif args.action == "down":
        print("registry: stopped" if registry.down(args.root) else "registry: not running")
    else:
        current = registry.status(args.root)
        if current is None or not current.running:
            print("registry: not running")
            return 1
        print(f"registry: http://{current.address} (pid {current.pid})")
    return 0


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
    verbs = {"check": cmd_check, "compile": cmd_compile, "run": cmd_run, "test": cmd_test,
             "build": cmd_build, "publish": cmd_publish, "release": cmd_release,
             "model": cmd_model, "scheduler": cmd_scheduler, "serve": cmd_serve,
             "kfp": cmd_kfp, "deploy": cmd_deploy, "canary": cmd_canary, "lab": cmd_lab,
             "monitor": cmd_monitor, "trigger": cmd_trigger,
             "registry": cmd_registry}
    stopped = _stop_on_sigterm()
    try:
        return verbs[args.verb](args)
    except NbshipError as exc:
        print(f"nbship: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # SIGTERM (timeout, CI cancelling) takes the same way out as Ctrl-C: every
        # `finally` runs, so the fork server, a running step and temporary folders go
        print("nbship: stopped (SIGTERM)" if stopped else "nbship: interrupted",
              file=sys.stderr)
        return 143 if stopped else 130
    except BrokenPipeError:  # `nbship ... | head`: the reader left; nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # an output folder that is a file, read-only, a full disk...
        name = f"{exc.filename}: " if exc.filename else ""
        print(f"nbship: error: {name}{exc.strerror or exc}", file=sys.stderr)
        return 1


def _stop_on_sigterm() -> list[int]:
    """Turn SIGTERM into KeyboardInterrupt in the main thread; the list fills when it came."""
    import signal
    import threading

    stopped: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return stopped

    def handler(signum: int, frame: Any) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    return stopped


if __name__ == "__main__":
    sys.exit(main())
