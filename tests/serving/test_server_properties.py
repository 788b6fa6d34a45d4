"""Properties of `nbship serve` over HTTP bodies (issue 17 §4), on a real server on
127.0.0.1 (the stand-in model of tests/serving/standin.py): whatever body a client
sends to v1 ``:predict`` or v2 ``/infer`` (JSON of any shape, arrays of any shape and
type, KServe's binary extension with any header), the answer is a status below 500
with a JSON reply, on the same keep-alive connection, and the server stays up."""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.standin import V1, V2, started
from tests.serving.test_server_limits import connect

pytestmark = pytest.mark.slow

SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16", "FP128", "", "fp32"]

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=40)
numbers = st.integers(-2**40, 2**40) | st.floats(-1e6, 1e6, allow_nan=False) | st.booleans()


@st.composite
def arrays(draw: Any) -> Any:
    """Nested lists of numbers, mostly rectangular: the shape of an image batch, of
    rows, of one image, or anything else small."""
    shape = draw(st.sampled_from([(1, 8, 8), (2, 8, 8), (8, 8), (1, 64), (3, 64), (2, 32),
                                  (1, 7, 7), (64,), (1, 8, 8, 1)])
                 | st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple))
    size = math.prod(shape)
    flat = draw(st.lists(numbers, min_size=size, max_size=size))

    def nest(values: list[Any], dims: tuple[int, ...]) -> Any:
        if len(dims) <= 1:
            return values
        step = len(values) // dims[0] if dims[0] else 0
        return [nest(values[i * step:(i + 1) * step], dims[1:]) for i in range(dims[0])]

    return nest(flat, shape)


v1_bodies = st.one_of(
    st.builds(lambda v: {"instances": v}, arrays()),
    st.builds(lambda v: {"instances": v}, json_values),
    json_values,
).map(lambda doc: json.dumps(doc).encode()) | st.binary(max_size=200)


@st.composite
def v2_inputs(draw: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        tensor["name"] = draw(st.text(max_size=6))
    shape = draw(st.sampled_from([[1, 8, 8], [2, 64], [8, 8], [64]])
                 | st.lists(st.integers(-3, 70) | st.integers(-2**64, 2**64), max_size=4))
    if draw(st.integers(0, 9)):
        tensor["shape"] = shape
    if draw(st.integers(0, 9)):
        tensor["datatype"] = draw(st.sampled_from(DATATYPES))
    sized = all(isinstance(n, int) and 0 <= n <= 200 for n in shape) and \
        math.prod(shape) <= 200
    data = draw(st.lists(numbers, min_size=math.prod(shape), max_size=math.prod(shape))
                if sized and draw(st.booleans()) else json_values)
    if draw(st.integers(0, 9)):
        tensor["data"] = data
    if draw(st.integers(0, 3)) == 0:
        tensor["parameters"] = draw(st.dictionaries(st.text(max_size=20), json_values,
                                                    max_size=3))
    return tensor


@st.composite
def v2_bodies(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": draw(st.lists(v2_inputs(), max_size=2))}
    for key in ("id", "parameters", "outputs"):
        if draw(st.integers(0, 3)) == 0:
            doc[key] = draw(json_values)
    return doc


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[http.client.HTTPConnection, Any]]:
    with started() as (base, proc):
        yield connect(base), proc


def answered(conn: http.client.HTTPConnection, path: str, body: bytes,
             headers: dict[str, str]) -> tuple[int, bytes]:
    """POST on the kept-alive connection: a reset or a closed connection raises."""
    conn.request("POST", path, body=body, headers=headers)
    reply = conn.getresponse()
    text = reply.read()
    assert not reply.will_close, f"the server closed the connection after a {reply.status}"
    return reply.status, text


def check(status: int, text: bytes, body: bytes) -> None:
    assert status < 500, (status, text[:500], body[:500])
    if status >= 400:
        reply = json.loads(text)
        assert reply.get("error") or reply.get("detail"), reply


@SETTINGS
@given(body=v1_bodies, content_type=st.sampled_from(
    ["application/json", "application/json", "text/plain", "application/octet-stream",
     "application/cloudevents+json"]))
def test_any_v1_body_is_answered_below_500(body: bytes, content_type: str,
                                           standin: tuple[Any, Any]) -> None:
    conn, proc = standin
    check(*answered(conn, V1, body, {"Content-Type": content_type}), body)
    assert proc.poll() is None


@SETTINGS
@given(doc=v2_bodies())
def test_any_v2_json_body_is_answered_below_500(doc: dict[str, Any],
                                                standin: tuple[Any, Any]) -> None:
    conn, proc = standin
    body = json.dumps(doc).encode()
    check(*answered(conn, V2, body, {"Content-Type": "application/json"}), body)
    assert proc.poll() is None


@SETTINGS
@given(doc=v2_bodies(), tail=st.binary(max_size=600),
       length=st.none() | st.integers(-10, 2000)
       | st.text(alphabet="0123456789-+.eE xa", max_size=6))
def test_any_v2_binary_body_is_answered_below_500(doc: dict[str, Any], tail: bytes,
                                                  length: int | str | None,
                                                  standin: tuple[Any, Any]) -> None:
    """KServe's binary extension: a JSON header of Inference-Header-Content-Length bytes,
    then the tensors' bytes; any header value, any sizes."""
    conn, proc = standin
    head = json.dumps(doc).encode()
    body = head + tail
    value = str(len(head) if length is None else length)
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": value}
    check(*answered(conn, V2, body, headers), body)
    assert proc.poll() is None
