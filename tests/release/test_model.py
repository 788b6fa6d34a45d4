"""Model releases: a run's model pushed as models/NAME (run-<id>, then latest), shown,
pulled by digest and served; safe formats; refused when not ours or changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nbship.errors import RunError, ServeError
from nbship.extract.graph import build_graph
from nbship.notebook import read_notebook
from nbship.pipelines.compile import compile_graph
from nbship.pipelines.local import run_compiled
from nbship.release import model, oci
from nbship.runtime import serializers
from nbship.serving.bundle import load_run
from tests.conftest import ROOT, run_showcase, write_notebook
from tests.release.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def showcase_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_showcase(tmp_path_factory.mktemp("model"))


@pytest.fixture
def model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(model.CACHE_ENV, str(tmp_path / "models"))
    return tmp_path / "models"


def test_the_pipeline_records_the_drift_profile(showcase_run: Path) -> None:
    prov = json.loads((showcase_run / "provenance.json").read_text())
    check = prov["serve"]["check"]
    assert check["task"] == "nbship-serve" and check["status"] == "SUCCESS"
    profile = load_run(showcase_run).profile
    assert profile is not None and profile.rows == 1797  # the digits the model learned from
    assert profile.classes is not None and set(profile.classes) == {str(d) for d in range(10)}
    assert len(prov["data"]["sha256"]) == 64 and "load" in prov["data"]["from"]


def test_a_predict_that_fails_on_the_reference_inputs_fails_the_run(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "bad_serve.ipynb", [
        (["step:make"], "import numpy as np\ndata = np.ones((4, 3))"),
        (["serve"], "def predict(x):\n    return x.reshape(5)\n\nreference_inputs = data"),
    ])
    compiled = compile_graph(build_graph(read_notebook(nb)), tmp_path / "build")
    with pytest.raises(RunError) as info:
        run_compiled(compiled, {}, root=tmp_path / "runs", echo=lambda line: None)
    err = info.value
    assert "nbship-serve" in str(err) and "reshape" in str(err)
    assert err.where is not None and err.where.cell == 1 and err.where.line == 2


def test_push_show_pull_and_serve_by_digest(showcase_run: Path, local_registry: str,
                                            model_cache: Path) -> None:
    from sklearn.datasets import load_digits

    lines: list[str] = []
    pushed = model.push(showcase_run, local_registry, echo=lines.append)
    prov = json.loads((showcase_run / "provenance.json").read_text())
    repo = model.model_repository(local_registry, "marker-classifier")
    assert oci.tags(repo) == ["latest", f"run-{prov['run']['id']}"]
    assert pushed.moved and oci.exists(repo.with_tag("latest")) == pushed.digest
    latest = str(repo.with_tag("latest"))
    record, digest, layers = model.show(latest)
    assert digest == pushed.digest and record == pushed.record
    values = record["serve"]["values"]
    assert (values["images"]["serializer"], values["images"]["safe"]) == ("numpy", True)
    assert (values["model"]["serializer"], values["model"]["safe"]) == ("torch-module", False)
    assert record["run"]["id"] == prov["run"]["id"]
    assert record["run"]["trigger"] == {"kind": "manual"}
    assert record["notebook"] == prov["notebook"] and record["metrics"] == prov["metrics"]
    assert record["parameters"] == prov["parameters"] and record["data"] == prov["data"]
    assert record["cells"]["serve"] == prov["serve"]["cells"]
    assert record["profile"] is not None and len(record["hmac"]) == 64
    titles = sorted(layer["annotations"]["org.opencontainers.image.title"] for layer in layers)
    assert titles == ["model.json", "profile.json", "serve.py", "value-0.tar", "value-1.tar"]

    again = model.push(showcase_run, local_registry, echo=lines.append)
    assert again.digest == pushed.digest and not again.moved  # same run, same bytes

    served = model.load_model(latest)
    local = load_run(showcase_run)
    digits = load_digits().images
    assert served.predict(digits).tolist() == local.predict(digits).tolist()
    assert served.profile == local.profile
    assert served.provenance["model"] == f"{repo.registry}/{repo.repository}@{digest}"
    assert (model_cache / digest.replace(":", "-") / "values").is_dir()

    # a file changed in the cache after the pull is refused, not run
    serve_py = model_cache / digest.replace(":", "-") / "serve.py"
    serve_py.write_text(serve_py.read_text() + "\nraise SystemExit('planted')\n")
    with pytest.raises(ServeError, match="changed since it was pulled"):
        model.load_model(f"{repo.registry}/{repo.repository}@{digest}")


def test_cli_push_show_and_a_foreign_key(showcase_run: Path, local_registry: str,
                                         tmp_path: Path) -> None:
    env = {**os.environ, model.CACHE_ENV: str(tmp_path / "models")}

    def nbship(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nbship", *args], cwd=ROOT, text=True,
                              capture_output=True, timeout=300, env={**env, **extra})

    pushed = nbship("model", "push", str(showcase_run), "--registry", local_registry)
    assert pushed.returncode == 0, pushed.stderr
    assert "values:   images (numpy), model (torch-module, signed pickle)" in pushed.stdout
    ref = f"{local_registry}/models/marker-classifier"
    shown = nbship("model", "show", ref)
    assert shown.returncode == 0, shown.stderr
    assert "(trigger: manual)" in shown.stdout and "recorded by the pipeline" in shown.stdout
    assert json.loads(nbship("model", "show", ref, "--json").stdout)["schema"] == \
        "nbship.model/v1"
    manifest = nbship("model", "show", ref, "--manifest")
    assert manifest.returncode == 1 and "no server image" in manifest.stderr
    missing = nbship("model", "show", f"{local_registry}/models/nothing-here")
    assert missing.returncode == 1 and "no model" in missing.stderr
    assert "Traceback" not in missing.stderr + manifest.stderr

    # pushed with this machine's key; a server with another key runs none of it
    other = nbship("serve", f"{ref}:latest", "--port", str(free_port()),
                   NBSHIP_ARTIFACT_KEY="ab" * 32)
    assert other.returncode == 1 and "not pushed with this machine's key" in other.stderr
    assert "Traceback" not in other.stderr


def _double(a: np.ndarray) -> np.ndarray:
    return a * 2


def test_scikit_learn_values_are_released_as_skops(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    rng = np.random.default_rng(0)
    x, y = rng.random((40, 3)), np.arange(40) % 2
    fitted = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    serializers.save(fitted, tmp_path / "run" / "estimator")
    meta = model._releasable(tmp_path / "run" / "estimator", tmp_path / "release" / "e")
    assert meta["serializer"] == "skops"
    assert not (tmp_path / "release" / "e" / "value.joblib").exists()
    back = serializers.load(tmp_path / "release" / "e")
    assert back.predict(x).tolist() == fitted.predict(x).tolist()

    # a function of the project's own is code: skops would have to trust it; kept as joblib
    custom = make_pipeline(FunctionTransformer(_double), LogisticRegression()).fit(x, y)
    serializers.save(custom, tmp_path / "run" / "custom")
    meta = model._releasable(tmp_path / "run" / "custom", tmp_path / "release" / "c")
    assert meta["serializer"] == "sklearn" and "hmac" in meta


def test_value_archives_hold_files_only(tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("value.npy")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ServeError, match="not a file"):
        model._untar(buf.getvalue(), tmp_path / "out")
    assert not (tmp_path / "out" / "value.npy").exists()


def test_a_model_json_of_the_wrong_shape_is_a_message(local_registry: str,
                                                      tmp_path: Path) -> None:
    import oras.client

    (tmp_path / "model.json").write_text(json.dumps({"schema": "nbship.model/v1",
                                                     "name": "x", "run": {}}))
    client = oras.client.OrasClient(hostname=local_registry, insecure=True)
    ref = f"{local_registry}/models/forged:latest"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        client.push(target=ref, files=[f"model.json:{model.MODEL_MEDIA_TYPE}"],
                    manifest_config=f"model.json:{model.MODEL_MEDIA_TYPE}", quiet=True)
    finally:
        os.chdir(cwd)
    done = subprocess.run([sys.executable, "-m", "nbship", "model", "show", ref], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "not an nbship.model/v1 record (serve)" in done.stderr
    assert "Traceback" not in done.stderr
