"""`nbship kfp` against multi-user KFP 2.x (issue 20, point 10), on the stand-in
(tests/pipelines/kfp_standin.py, not KFP) in its multi-user mode, which refuses what
kubeflow/pipelines' backend refuses (backend/src/apiserver/server/experiment_server.go,
run_server.go, job_server.go, pipeline_upload_server.go; resource/resource_manager.go's
GetValidExperimentNamespacePair, IsEmptyNamespace, IsAuthorized)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, serving
from tests.pipelines.kfp_standin import StandIn
from tests.pipelines.test_kfp_remote import props, release  # noqa: F401 - the fixture

TOKEN = "t0ken"
COOKIE = "authservice_session=s3ss10n"


@pytest.fixture()
def multi(tmp_path: Path) -> Iterator[tuple[StandIn, str]]:
    api = StandIn(token=TOKEN, profile="team-a", cookie=COOKIE)
    with serving(api.server()) as server:
        yield api, f"http://127.0.0.1:{server.server_address[1]}"


def nbship(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
           home: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (
        "KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_SA_TOKEN_PATH", "KFP_COOKIES")}
    base["HOME"] = str(home) if home else base.get("HOME", "/tmp")
    return subprocess.run([sys.executable, "-m", "nbship", "kfp", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=300)


def call(host: str, method: str, path: str, body: dict[str, Any] | None = None,
         auth: str = TOKEN) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{host}/apis/v2beta1/{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {auth}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_standin_refuses_what_multi_user_kfp_refuses(multi: tuple[StandIn, str]) -> None:
    """The stand-in itself, request by request: an empty namespace is KFP's InvalidInput
    (400, its messages), another namespace than the profile's is PermissionDenied (403)."""
    api, host = multi
    assert call(host, "GET", "healthz") == (200, {"multi_user": True})
    status, doc = call(host, "POST", "experiments", {"display_name": "x"})
    assert status == 400 and "An experiment cannot have an empty namespace in multi-user " \
        "mode" in doc["error"]
    assert call(host, "POST", "experiments", {"display_name": "x",
                                              "namespace": "team-b"})[0] == 403
    assert call(host, "GET", "experiments")[0] == 400
    assert call(host, "GET", "experiments?namespace=team-b")[0] == 403
    status, exp = call(host, "POST", "experiments", {"display_name": "x",
                                                     "namespace": "team-a"})
    assert status == 200 and exp["namespace"] == "team-a"
    status, doc = call(host, "POST", "recurringruns", {
        "display_name": "s", "mode": "ENABLE",
        "trigger": {"cron_schedule": {"cron": "0 0 3 * * *"}}})
    assert status == 400 and "Experiment id can not be empty in multi-user mode" in doc["error"]
    status, doc = call(host, "POST", "recurringruns", {
        "display_name": "s", "mode": "ENABLE", "experiment_id": exp["experiment_id"],
        "namespace": "team-b", "trigger": {"cron_schedule": {"cron": "0 0 3 * * *"}}})
    assert status == 400 and "belongs to namespace 'team-a' instead of 'team-b'" in doc["error"]
    assert call(host, "GET", "recurringruns")[0] == 400
    assert call(host, "GET", "runs?namespace=team-b")[0] == 403
    assert call(host, "GET", "healthz", auth="wrong")[0] == 401


def test_multi_user_needs_the_namespace_and_every_call_carries_it(
        multi: tuple[StandIn, str], release: str, tmp_path: Path) -> None:  # noqa: F811
    api, host = multi
    env = {"KFP_TOKEN": TOKEN}
    bare = nbship("run", release, "--host", host, env=env, home=tmp_path)
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert "multi-user" in bare.stderr and "--namespace" in bare.stderr
    assert "Traceback" not in bare.stderr and not api.experiments  # refused before any call

    other = nbship("run", release, "--host", host, "--namespace", "team-b", env=env,
                   home=tmp_path)
    assert other.returncode == 1 and "HTTP 403" in other.stderr and "team-b" in other.stderr

    ran = nbship("run", release, "--host", host, "--namespace", "team-a", env=env,
                 home=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert [e["namespace"] for e in api.experiments.values()] == ["team-a"]
    assert {p["namespace"] for p in api.pipelines.values()} == {"team-a"}
    one = nbship("schedule", release, "--host", host, "--namespace", "team-a",
                 "--cron", "0 0 3 * * *", env=env, home=tmp_path)
    assert one.returncode == 0, one.stderr
    made = api.recurring[props(one.stdout)["recurring_run_id"]]
    assert made["namespace"] == "team-a"

    # [tool.nbship.kfp] namespace in ./pyproject.toml
    (tmp_path / "pyproject.toml").write_text('[tool.nbship.kfp]\nnamespace = "team-a"\n')
    status = nbship("status", "marker-classifier", "--host", host, env=env, cwd=tmp_path,
                    home=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "ENABLED cron 0 0 3 * * *" in status.stdout and "namespace team-a" in status.stdout
    (tmp_path / "pyproject.toml").write_text('[tool.nbship.kfp]\nnamspace = "team-a"\n')
    typo = nbship("status", "marker-classifier", "--host", host, env=env, cwd=tmp_path,
                  home=tmp_path)
    assert typo.returncode == 2 and "namspace" in typo.stderr, typo.stderr
    (tmp_path / "pyproject.toml").unlink()

    # the namespace of kfp's own context file (~/.config/kfp/context.json), as kfp.Client
    context = tmp_path / ".config" / "kfp" / "context.json"
    context.parent.mkdir(parents=True)
    context.write_text(json.dumps({"namespace": "team-a"}))
    off = nbship("disable", "marker-classifier", "--host", host, env=env, cwd=tmp_path,
                 home=tmp_path)
    assert off.returncode == 0 and "disabled 1 schedule(s)" in off.stdout, off.stderr
    assert json.loads(context.read_text()) == {"namespace": "team-a"}  # not rewritten
    assert not [r for r in api.requests if r[2] >= 400 and r[0] != "GET"]


def test_a_session_cookie_authenticates_as_kfp_client_cookies_does(
        multi: tuple[StandIn, str], tmp_path: Path) -> None:
    api, host = multi
    ok = nbship("status", "marker-classifier", "--host", host, "--namespace", "team-a",
                "--cookies", COOKIE, home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    env = nbship("status", "marker-classifier", "--host", host, "--namespace", "team-a",
                 env={"KFP_COOKIES": COOKIE}, home=tmp_path)
    assert env.returncode == 0, env.stderr
    context = tmp_path / ".config" / "kfp" / "context.json"
    context.parent.mkdir(parents=True)  # kfp.Client's client_authentication_cookie
    context.write_text(json.dumps({"namespace": "team-a",
                                   "client_authentication_cookie": COOKIE}))
    saved = nbship("status", "marker-classifier", "--host", host, home=tmp_path)
    assert saved.returncode == 0, saved.stderr
    wrong = nbship("status", "marker-classifier", "--host", host, "--namespace", "team-a",
                   "--cookies", "authservice_session=old", home=tmp_path / "nowhere")
    assert wrong.returncode == 1 and "refused the credentials (HTTP 401)" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_kube_context_reaches_kfp_through_the_api_server_proxy(
        multi: tuple[StandIn, str], tmp_path: Path) -> None:
    """--kube-context: kfp.Client's own path, the context's API server and its service
    proxy (api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/), its token."""
    api, host = multi
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "c", "cluster": {"server": host}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "lab", "context": {"cluster": "c", "user": "u"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "u"}}]}))
    env = {"KUBECONFIG": str(kubeconfig)}
    # kfp.Client's own healthz in its constructor (no namespace yet) goes through the proxy
    bare = nbship("status", "marker-classifier", "--kube-context", "lab", env=env,
                  home=tmp_path)
    assert bare.returncode == 1 and "is multi-user" in bare.stderr, bare.stderr
    done = nbship("status", "marker-classifier", "--kube-context", "lab", "--namespace",
                  "team-a", env=env, home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not uploaded" in done.stdout
    assert api.requests and all(p.startswith(  # every call, not only kfp.Client's first
        "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/apis/v2beta1/")
        for _, p, _ in api.requests), api.requests
    both = nbship("status", "marker-classifier", "--kube-context", "lab", "--host", host,
                  env=env, home=tmp_path)
    assert both.returncode == 2 and "--kube-context" in both.stderr


def test_status_and_disable_create_nothing(tmp_path: Path) -> None:
    api = StandIn(token=TOKEN)
    with serving(api.server()) as server:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        for action in ("status", "disable"):
            done = nbship(action, "marker-classifier", "--host", host,
                          env={"KFP_TOKEN": TOKEN}, home=tmp_path)
            assert done.returncode == 0, done.stderr
    assert not api.experiments
    assert not [r for r in api.requests if r[0] != "GET"]


def test_the_recurring_run_lookup_pages_and_a_new_schedule_deletes_the_old(
        release: str, tmp_path: Path) -> None:  # noqa: F811
    """250 other recurring runs in the experiment (KFP pages at most 200): the release's
    schedule on the third page of 100 is still found; the schedule it replaces is gone."""
    api = StandIn(token=TOKEN)
    with serving(api.server()) as server:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        env = {"KFP_TOKEN": TOKEN}
        first = nbship("schedule", release, "--host", host, "--cron", "0 0 3 * * *",
                       env=env, home=tmp_path)
        assert first.returncode == 0, first.stderr
        old = props(first.stdout)["recurring_run_id"]
        mine = api.recurring.pop(old)
        (exp,) = api.experiments
        for n in range(250):  # before it in the listing
            api.recurring[f"other-{n}"] = {**mine, "recurring_run_id": f"other-{n}",
                                           "display_name": f"other-{n}", "status": "DISABLED"}
        api.recurring[old] = mine
        second = nbship("schedule", release, "--host", host, "--cron", "0 30 2 * * *",
                        env=env, home=tmp_path)
        assert second.returncode == 0, second.stderr
        new = props(second.stdout)["recurring_run_id"]
        assert props(second.stdout)["replaced_recurring_runs"] == old
        assert old not in api.recurring and "deleted" in second.stdout
        named = [r for r in api.recurring.values()
                 if r["display_name"] == "marker-classifier-schedule"]
        assert [r["recurring_run_id"] for r in named] == [new]
        assert named[0]["status"] == "ENABLED" and named[0]["experiment_id"] == exp
        status = nbship("status", "marker-classifier", "--host", host, env=env,
                        home=tmp_path)
        assert status.returncode == 0 and f"schedule  {new} ENABLED" in status.stdout


def test_in_a_pod_the_namespace_is_the_pods_as_kfp_client_finds_it(
        multi: tuple[StandIn, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --namespace, a multi-user API: kfp.Client reads the pod's namespace
    (Client._NAMESPACE_PATH) and would write it into ~/.config/kfp/context.json; nbship
    takes it and writes nothing."""
    from kfp.client import client as kfp_client

    from nbship.pipelines.kfp_remote import Auth, KfpError, Remote

    api, host = multi
    pod_ns = tmp_path / "namespace"
    pod_ns.write_text("team-a")
    context = tmp_path / ".config" / "kfp" / "context.json"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(context))
    monkeypatch.setattr(kfp_client.Client, "_NAMESPACE_PATH", str(pod_ns))
    remote = Remote(host, Auth(token=TOKEN), echo=lambda _: None)
    assert remote.multi_user and remote.namespace == "team-a"
    assert remote.status("marker-classifier", "marker-classifier")["schedules"] == []
    assert not context.exists()
    pod_ns.unlink()  # not in a pod, nothing named: stopped before any call but healthz
    before = len(api.requests)
    with pytest.raises(KfpError, match="multi-user"):
        Remote(host, Auth(token=TOKEN), echo=lambda _: None)
    assert {p for _, p, _ in api.requests[before:]} == {"/apis/v2beta1/healthz"}
