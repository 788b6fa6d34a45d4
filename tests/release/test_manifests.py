"""The Kubernetes manifests a release carries validate against KServe's CRD schema."""

from __future__ import annotations

import pytest
import yaml

from nbship.release.oci import Reference
from nbship.release.publish import inference_service
from tests.conftest import ROOT

CRD = ROOT.parent / "shared" / "schemas" / "kserve-inferenceservices-crd.yaml"


@pytest.fixture(scope="module")
def v1beta1_schema() -> dict:
    if not CRD.exists():
        pytest.skip(f"KServe's CRD schema is not at {CRD}")
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    return dict(version["schema"]["openAPIV3Schema"])


def test_inference_service_names_the_server_by_digest_and_fits_the_crd(
        v1beta1_schema: dict) -> None:
    import jsonschema

    digest = "sha256:" + "a" * 64
    server = Reference("127.0.0.1:5000", "nbship-server", None, digest)
    record = {"commit": "0123456789abcdef0123", "notebook": {
        "path": "notebooks/marker_classifier.ipynb", "sha256": "b" * 64}}
    doc = yaml.safe_load(inference_service("marker-classifier", str(server), record))
    validator = jsonschema.Draft7Validator(v1beta1_schema)
    validator.validate(doc)
    container = doc["spec"]["predictor"]["containers"][0]
    assert container["image"] == f"127.0.0.1:5000/nbship-server@{digest}"
    assert doc["metadata"]["annotations"]["nbship.dev/commit"] == record["commit"]
    assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == "0123456789ab"
    # the check can fail: an image that is not a string is refused
    broken = dict(doc, spec={"predictor": {"containers": [{"image": 5}]}})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_a_model_releases_inference_service_pulls_the_model_by_digest(
        v1beta1_schema: dict) -> None:
    import jsonschema

    from nbship.release.model import inference_service as model_service

    server = "127.0.0.1:5000/nbship-server@sha256:" + "c" * 64
    digest = "sha256:" + "d" * 64
    record = {"name": "marker-classifier", "commit": "0123456789abcdef0123",
              "notebook": {"path": "notebooks/marker_classifier.ipynb", "sha256": "b" * 64},
              "run": {"id": "20261130-050828-410088"},
              "pipeline": {"release": {"server_image": server}}}
    doc = yaml.safe_load(model_service(record, "127.0.0.1:5000/models/marker-classifier:latest",
                                       digest))
    jsonschema.Draft7Validator(v1beta1_schema).validate(doc)
    container = doc["spec"]["predictor"]["containers"][0]
    model = f"127.0.0.1:5000/models/marker-classifier@{digest}"
    assert container["image"] == server and container["args"][0] == model
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "nbship-key"
    assert doc["metadata"]["annotations"]["nbship.dev/model"] == model
