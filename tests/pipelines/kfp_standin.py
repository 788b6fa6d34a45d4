"""A stand-in for the KFP API (v2beta1) on 127.0.0.1, for testing `nbship kfp`. It is NOT KFP.

It implements only the endpoints nbship's commands call, keeps pipelines, versions,
experiments, runs and recurring runs in memory, and checks every request against the
`kfp-server-api` models: a JSON body must name only the fields of its model (by the
models' own ``attribute_map``), each of the model's type (``openapi_types``; enums by
their ``allowable_values``), plus the fields the KFP server requires (a display name,
a version reference, a cron schedule...). An uploaded pipeline must parse into KFP's
``PipelineSpec``. A run goes PENDING -> RUNNING -> SUCCEEDED over three reads (nothing
executes). Every request and its verdict is kept in ``requests`` for the tests.

Lists page as KFP's do (``page_size`` 0 -> 20, at most 200, an opaque
``next_page_token``; backend/src/apiserver/list/list.go).

**Multi-user mode** (``StandIn(profile="team-a")``), after kubeflow/pipelines' backend
(read at 2.17, backend/src/apiserver/server/{experiment,run,job,pipeline,
pipeline_upload}_server.go, resource/resource_manager.go): healthz says
``multi_user: true``; the authenticated caller owns one profile namespace. What names no
namespace where KFP needs one is refused with KFP's own InvalidInput (HTTP 400: "An
experiment cannot have an empty namespace in multi-user mode", "Experiment id can not be
empty in multi-user mode", "Recurring run cannot have an empty namespace ...",
canAccessExperiment / GetValidExperimentNamespacePair / createJob / canAccessJob /
canAccessRun); a namespace other than the profile's is what the SubjectAccessReview in
``ResourceManager.IsAuthorized`` denies (PermissionDenied, HTTP 403; the upload handler,
``canUploadVersionedPipeline``'s caller, answers 400 "Failed to create a pipeline").
Outside multi-user mode every namespace is replaced by "" (``ReplaceNamespace``).
Credentials: the bearer ``token`` (KFP's TokenReview authenticator, or a gateway) or a
session ``cookie`` (what a Dex/oauth2-proxy or authservice gateway takes before it sets
``kubeflow-userid``, authenticator_http_headers.go); either one is accepted.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import http.server
import itertools
import json
import re
import threading
import urllib.parse
from typing import Any

import kfp_server_api
import yaml

PRIMITIVES = {"str": str, "int": int, "bool": bool, "object": object, "float": (int, float)}
# int64 fields: the models type them `str` (proto3's JSON mapping writes int64 as a
# string), and the KFP server, like every grpc-gateway, reads a number or a string there
INT64_FIELDS = frozenset({"max_concurrency", "interval_second"})


class Invalid(Exception):
    pass


class Denied(Exception):
    """What KFP's SubjectAccessReview refuses (PermissionDenied, HTTP 403)."""


def check(model: str, value: Any, path: str = "$") -> None:
    """Raise Invalid unless ``value`` fits kfp-server-api's model ``model``."""
    if model in PRIMITIVES:
        if model == "str" and path.rsplit(".", 1)[-1] in INT64_FIELDS:
            if not (isinstance(value, int) and not isinstance(value, bool)
                    or isinstance(value, str) and value.lstrip("-").isdigit()):
                raise Invalid(f"{path}: expected an int64 (a number or a string of digits)")
            return
        if model == "str" and not isinstance(value, str):
            raise Invalid(f"{path}: expected a string")
        if model == "int" and (not isinstance(value, (int, str)) or isinstance(value, bool)):
            raise Invalid(f"{path}: expected an integer")
        if model == "bool" and not isinstance(value, bool):
            raise Invalid(f"{path}: expected true or false")
        return
    if model == "datetime":
        if not isinstance(value, str):
            raise Invalid(f"{path}: expected an RFC 3339 time")
        return
    match = re.fullmatch(r"list\[(.+)\]", model)
    if match:
        if not isinstance(value, list):
            raise Invalid(f"{path}: expected a list")
        for i, item in enumerate(value):
            check(match[1], item, f"{path}[{i}]")
        return
    match = re.fullmatch(r"dict\(str, (.+)\)", model)
    if match:
        if not isinstance(value, dict):
            raise Invalid(f"{path}: expected an object")
        for k, item in value.items():
            check(match[1], item, f"{path}.{k}")
        return
    cls = getattr(kfp_server_api, model)
    allowed = getattr(cls, "allowable_values", None)
    if allowed is not None:
        if value not in allowed:
            raise Invalid(f"{path}: {value!r} is not one of {allowed}")
        return
    if not isinstance(value, dict):
        raise Invalid(f"{path}: expected a {model} object")
    fields = {json_name: py for py, json_name in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            raise Invalid(f"{path}.{key}: not a field of {model}")
        if item is not None:
            check(cls.openapi_types[fields[key]], item, f"{path}.{key}")


def require(doc: dict[str, Any], *fields: str) -> None:
    for name in fields:
        if doc.get(name) in (None, ""):
            raise Invalid(f"$.{name} is required")


class StandIn:
    def __init__(self, token: str | None = None, *, profile: str | None = None,
                 cookie: str | None = None) -> None:
        self.token = token
        self.cookie = cookie  # "NAME=VALUE": a gateway's session cookie
        self.profile = profile  # multi-user: the caller's profile namespace
        self.ids = (f"id-{n}" for n in itertools.count(1))
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    @staticmethod
    def now() -> str:
        return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _filtered(self, items: list[dict[str, Any]], query: dict[str, list[str]]
                  ) -> list[dict[str, Any]]:
        flt = json.loads(query.get("filter", ["{}"])[0] or "{}")
        for p in flt.get("predicates", []):
            # the Filter proto's enum, by name or by number (kfp.Client sends 1)
            if p.get("operation") not in ("EQUALS", 1):
                raise Invalid(f"filter operation {p.get('operation')} is not supported here")
            key = {"name": "display_name"}.get(p["key"], p["key"])
            items = [i for i in items if i.get(key) == p.get("stringValue")]
        return items

    def authenticated(self, headers: Any) -> bool:
        if self.token is None and self.cookie is None:
            return True
        if self.token is not None and headers.get("Authorization") == f"Bearer {self.token}":
            return True
        cookies = [c.strip() for c in (headers.get("Cookie") or "").split(";")]
        return self.cookie is not None and self.cookie in cookies

    def ns(self, namespace: str | None) -> str:
        """ResourceManager.ReplaceNamespace: "" unless multi-user."""
        return (namespace or "") if self.profile is not None else ""

    def authorize(self, namespace: str, empty: str) -> None:
        """The multi-user checks before ResourceManager.IsAuthorized: an empty namespace
        (or "-") is InvalidInput with the resource's own message, another namespace than
        the caller's profile is PermissionDenied."""
        if self.profile is None:
            return
        if namespace in ("", "-"):
            raise Invalid(empty)
        if namespace != self.profile:
            raise Denied(f"User is not authorized with reason: namespace {namespace!r} is "
                         f"not the profile {self.profile!r}")

    def exp_ns(self, experiment_id: str) -> str:
        exp = self.experiments.get(experiment_id)
        if exp is None:
            raise Invalid(f"experiment {experiment_id} not found")
        return str(exp.get("namespace") or "")

    @staticmethod
    def page(items: list[dict[str, Any]], query: dict[str, list[str]]) -> tuple[
            list[dict[str, Any]], str]:
        """A page as list.go cuts it: page_size 0 -> 20, over 200 -> 200."""
        import base64

        size = int(query.get("page_size", ["0"])[0] or 0)
        size = 20 if size <= 0 else min(size, 200)
        token = query.get("page_token", [""])[0]
        start = int(base64.b64decode(token).decode().split(":")[1]) if token else 0
        rest = items[start + size:]
        nxt = base64.b64encode(f"offset:{start + size}".encode()).decode() if rest else ""
        return items[start:start + size], nxt

    @staticmethod
    def shown(run: dict[str, Any]) -> dict[str, Any]:
        """A run as the API returns it (a v2beta1 Run has no namespace field)."""
        return {k: v for k, v in run.items() if k not in ("reads", "namespace")}

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes,
               content_type: str) -> tuple[int, Any]:
        api = "/apis/v2beta1/"
        # the Kubernetes API server's service proxy, as kfp.Client reaches KFP from a
        # kubeconfig (Client._KUBE_PROXY_PATH; it joins "proxy/" and "/apis", hence //)
        proxied = re.fullmatch(r"/api/v1/namespaces/[^/]+/services/ml-pipeline:http/proxy/"
                               r"+(apis/.*)", path)
        path = "/" + proxied[1] if proxied else path
        if not path.startswith(api):
            return 404, {"error": "not found"}
        parts = path[len(api):].split("/")
        if method == "GET" and parts == ["healthz"]:
            return 200, {"multi_user": self.profile is not None}
        if parts[:2] == ["pipelines", "upload"] or parts[:2] == ["pipelines", "upload_version"]:
            return self._upload(parts[1], query, body, content_type)
        doc = json.loads(body) if body else {}
        if method == "GET" and parts == ["pipelines"]:
            # pipeline_server.go: a namespace's pipelines (shared ones: namespace "")
            namespace = self.ns(query.get("namespace", [""])[0])
            if namespace:
                self.authorize(namespace, "")
            mine = [p for p in self.pipelines.values() if p.get("namespace", "") == namespace]
            items, nxt = self.page(self._filtered(mine, query), query)
            return 200, {"pipelines": items, "next_page_token": nxt}
        if method == "GET" and len(parts) == 3 and parts[0] == "pipelines" \
                and parts[2] == "versions":
            owner = self.pipelines.get(parts[1], {}).get("namespace", "")
            if owner:  # canAccessPipeline: shared pipelines are readable by all
                self.authorize(owner, "")
            mine = [v for v in self.versions.values() if v["pipeline_id"] == parts[1]]
            items, nxt = self.page(self._filtered(mine, query), query)
            return 200, {"pipeline_versions": items, "next_page_token": nxt}
        if parts == ["experiments"]:
            empty = "An experiment cannot have an empty namespace in multi-user mode"
            if method == "GET":  # listExperiments -> canAccessExperiment
                namespace = self.ns(query.get("namespace", [""])[0])
                self.authorize(namespace, empty)
                mine = [e for e in self.experiments.values() if e["namespace"] == namespace]
                items, nxt = self.page(self._filtered(mine, query), query)
                return 200, {"experiments": items, "next_page_token": nxt}
            check("V2beta1Experiment", doc)
            require(doc, "display_name")
            namespace = self.ns(doc.get("namespace"))
            self.authorize(namespace, empty)  # createExperiment
            exp = {**doc, "experiment_id": next(self.ids), "created_at": self.now(),
                   "storage_state": "AVAILABLE", "namespace": namespace}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if parts == ["runs"]:
            empty = "A run cannot have an empty namespace in multi-user mode"
            if method == "GET":  # listRuns -> canAccessRun
                exp = query.get("experiment_id", [""])[0]
                namespace = self.exp_ns(exp) if exp else self.ns(query.get("namespace",
                                                                           [""])[0])
                self.authorize(namespace, empty)
                runs = [r for r in self.runs.values() if (r["experiment_id"] == exp if exp
                        else r["namespace"] == namespace)]
                items, nxt = self.page(runs, query)
                return 200, {"runs": [self.shown(r) for r in items], "next_page_token": nxt}
            check("V2beta1Run", doc)
            require(doc, "display_name")
            if self.profile is not None and not doc.get("experiment_id"):
                raise Invalid("Experiment id can not be empty in multi-user mode")
            require(doc, "experiment_id")
            self.authorize(self.exp_ns(doc["experiment_id"]), empty)  # createRun
            doc["namespace"] = self.exp_ns(doc["experiment_id"])
            self._version_reference(doc)
            run = {**doc, "run_id": next(self.ids), "state": "PENDING", "created_at": self.now(),
                   "reads": 0}
            self.runs[run["run_id"]] = run
            return 200, self.shown(run)
        if method == "GET" and len(parts) == 2 and parts[0] == "runs":
            run = self.runs.get(parts[1])
            if run is None:
                return 404, {"error": f"run {parts[1]} not found"}
            self.authorize(run["namespace"], "A run cannot have an empty namespace in "
                           "multi-user mode")  # canAccessRun
            run["reads"] += 1
            run["state"] = ["PENDING", "RUNNING", "SUCCEEDED"][min(run["reads"], 2)]
            return 200, self.shown(run)
        if parts == ["recurringruns"]:
            if method == "GET":  # listJobs -> canAccessJob
                exp = query.get("experiment_id", [""])[0]
                namespace = self.exp_ns(exp) if exp else self.ns(query.get("namespace",
                                                                           [""])[0])
                self.authorize(namespace, "a recurring run cannot have an empty namespace "
                               "in multi-user mode")
                # the list's JSON name is the model's own ("recurringRuns", camelCase,
                # unlike every other field): answer as the KFP server does
                key = kfp_server_api.V2beta1ListRecurringRunsResponse.attribute_map[
                    "recurring_runs"]
                items, nxt = self.page([r for r in self.recurring.values() if (
                    r["experiment_id"] == exp if exp else r["namespace"] == namespace)],
                    query)
                return 200, {key: items, "next_page_token": nxt}
            check("V2beta1RecurringRun", doc)
            require(doc, "display_name", "trigger", "mode")
            # createJob -> GetValidExperimentNamespacePair
            if self.profile is not None and not doc.get("experiment_id"):
                raise Invalid("Experiment id can not be empty in multi-user mode")
            require(doc, "experiment_id")
            namespace = self.exp_ns(doc["experiment_id"])
            claimed = self.ns(doc.get("namespace"))
            if claimed and claimed != namespace:
                raise Invalid(f"Experiment {doc['experiment_id']} belongs to namespace "
                              f"'{namespace}' instead of '{claimed}'")
            self.authorize(namespace, "Recurring run cannot have an empty namespace in "
                           "multi-user mode")
            doc["namespace"] = namespace
            self._version_reference(doc)
            cron = (doc["trigger"].get("cron_schedule") or {}).get("cron", "")
            if len(cron.split()) != 6:
                raise Invalid("$.trigger.cron_schedule.cron: KFP takes 6 fields, seconds first")
            if not 1 <= int(doc.get("max_concurrency", 1)) <= 10:
                raise Invalid("$.max_concurrency must be between 1 and 10")
            rec = {**doc, "recurring_run_id": next(self.ids), "created_at": self.now(),
                   "status": "ENABLED" if doc["mode"] == "ENABLE" else "DISABLED"}
            self.recurring[rec["recurring_run_id"]] = rec
            return 200, rec
        match = re.fullmatch(r"recurringruns/([^/:]+)(?::(enable|disable))?", "/".join(parts))
        if match and (method == "POST" and match[2] or method == "DELETE" and not match[2]):
            rec = self.recurring.get(match[1])
            if rec is None:
                return 404, {"error": "recurring run not found"}
            self.authorize(rec["namespace"], "a recurring run cannot have an empty "
                           "namespace in multi-user mode")  # canAccessJob
            if method == "DELETE":
                del self.recurring[match[1]]
            else:
                rec["status"] = "ENABLED" if match[2] == "enable" else "DISABLED"
            return 200, {}
        return 404, {"error": f"{method} {path} is not implemented by the stand-in"}

    def _version_reference(self, doc: dict[str, Any]) -> None:
        ref = doc.get("pipeline_version_reference") or {}
        if ref.get("pipeline_version_id") not in self.versions:
            raise Invalid("$.pipeline_version_reference names no uploaded pipeline version")

    def _upload(self, kind: str, query: dict[str, list[str]], body: bytes,
                content_type: str) -> tuple[int, Any]:
        if not content_type.startswith("multipart/form-data"):
            raise Invalid("an upload is multipart/form-data")
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        files = [part.get_payload(decode=True) for part in message.iter_parts()
                 if part.get_param("name", header="content-disposition") == "uploadfile"]
        if not files:
            raise Invalid("the upload has no 'uploadfile' part")
        from google.protobuf import json_format
        from kfp.pipeline_spec import pipeline_spec_pb2

        docs = list(yaml.safe_load_all(files[0]))
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())  # raises if not IR
        name = query.get("name", [""])[0]
        if not name:
            raise Invalid("?name= is required")
        if kind == "upload":
            namespace = self.ns(query.get("namespace", [""])[0])
            if self.profile is not None and namespace and namespace != self.profile:
                # canUploadVersionedPipeline refused: the handler answers 400
                return 400, {"error": "Failed to create a pipeline", "code": 3}
            if any(p["display_name"] == name and p.get("namespace", "") == namespace
                   for p in self.pipelines.values()):
                return 409, {"error": f"a pipeline named {name} exists"}
            pipeline = {"pipeline_id": next(self.ids), "display_name": name,
                        "description": query.get("description", [""])[0],
                        "created_at": self.now(), "namespace": namespace}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            version = {"pipeline_id": pipeline["pipeline_id"], "pipeline_version_id":
                       next(self.ids), "display_name": name, "created_at": self.now()}
            self.versions[version["pipeline_version_id"]] = version
            return 200, pipeline
        pipeline_id = query.get("pipelineid", [""])[0]
        if pipeline_id not in self.pipelines:
            raise Invalid("?pipelineid= names no pipeline")
        owner = self.pipelines[pipeline_id].get("namespace", "")
        if self.profile is not None and owner and owner != self.profile:
            return 400, {"error": "Failed to create a pipeline version", "code": 3}
        if any(v["display_name"] == name and v["pipeline_id"] == pipeline_id
               for v in self.versions.values()):
            return 409, {"error": f"a version named {name} exists"}
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": next(self.ids),
                   "display_name": name, "description": query.get("description", [""])[0],
                   "created_at": self.now()}
        self.versions[version["pipeline_version_id"]] = version
        return 200, version

    def server(self) -> http.server.ThreadingHTTPServer:
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not standin.authenticated(self.headers):
                    status, doc = 401, {"error": "Unauthenticated", "code": 16}
                else:
                    try:
                        with standin.lock:
                            status, doc = standin.handle(
                                method, url.path, urllib.parse.parse_qs(url.query), body,
                                self.headers.get("Content-Type", ""))
                    except (Invalid, ValueError, KeyError) as exc:
                        status, doc = 400, {"error": f"invalid request: {exc}", "code": 3}
                    except Denied as exc:
                        status, doc = 403, {"error": f"Failed to authorize: {exc}", "code": 7}
                standin.requests.append((method, url.path, status))
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._any("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._any("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._any("DELETE")

            def log_message(self, *args: object) -> None:
                pass

        return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
