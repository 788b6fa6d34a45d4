"""State files of the helpers nbship starts, generated (hypothesis; issue 17, section 6).

Whatever a state file holds: a record nbship sealed reads back exactly; any change to
any field, any bytes, any JSON document is nbship's error naming the file (never
another exception, never a record); only a small regular file is read at all.

Bounded like tests/test_properties.py: NBSHIP_HYPOTHESIS_EXAMPLES (default 40) each.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nbship import processes
from nbship.errors import SchedulerError

EXAMPLES = int(os.environ.get("NBSHIP_HYPOTHESIS_EXAMPLES", "40"))
BUDGET = settings(max_examples=EXAMPLES, deadline=None,
                  derandomize="NBSHIP_HYPOTHESIS_RANDOM" not in os.environ,
                  suppress_health_check=[HealthCheck.too_slow])

NAMES = st.sampled_from(["registry.json", "scheduler.json", "prometheus.json",
                         "alertmanager.json"])
RECORDS = st.builds(
    processes.Started,
    address=st.integers(1, 65535).map(lambda port: f"127.0.0.1:{port}"),
    pid=st.integers(2, 2**22),
    argv=st.lists(st.text(max_size=40), min_size=1, max_size=8),
    started=st.integers(0, 2**40))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def read(state: Path) -> processes.Started | None:
    return processes.read(state, error=SchedulerError, what="scheduler")


def refused(state: Path) -> str:
    """The message of the error reading ``state`` raised (it must raise nbship's)."""
    with pytest.raises(SchedulerError) as caught:
        read(state)
    message = caught.value.message
    assert str(state) in message and "nothing was signalled" in message
    return message


@BUDGET
@given(record=RECORDS, name=NAMES)
def test_a_sealed_record_reads_back_exactly(record: processes.Started, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / name
        processes.write_state(state, record)
        assert read(state) == record


@BUDGET
@given(record=RECORDS, name=NAMES, data=st.data())
def test_any_change_to_a_sealed_state_is_refused(record: processes.Started, name: str,
                                                 data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / name
        processes.write_state(state, record)
        doc: dict[str, Any] = json.loads(state.read_text())
        key = data.draw(st.sampled_from(sorted(doc)) | st.text(max_size=10), label="field")
        value = data.draw(JSON, label="value")
        assume(key not in doc or doc[key] != value)
        state.write_text(json.dumps({**doc, key: value}))
        refused(state)
        doc.pop(key, None)
        state.write_text(json.dumps(doc))  # a field taken away
        if key in ("hmac", "format", "file", "address", "pid", "argv", "started"):
            refused(state)


@BUDGET
@given(content=st.binary(max_size=4096), name=NAMES)
def test_any_bytes_are_refused_with_a_message(content: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / name
        state.write_bytes(content)
        refused(state)


@BUDGET
@given(doc=JSON, name=NAMES, record=RECORDS)
def test_any_json_document_is_refused_even_with_a_true_record(
        doc: Any, name: str, record: processes.Started) -> None:
    """The record's fields alone (all readable in /proc) never make a state nbship's."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / name
        if isinstance(doc, dict):
            doc = {**doc, **record.__dict__, "format": processes.STATE_FORMAT, "file": name}
        state.write_text(json.dumps(doc))
        refused(state)


@BUDGET
@given(address=st.text(max_size=30), pid=st.integers(-2**31, 2**31), name=NAMES,
       argv=st.lists(st.text(max_size=10), max_size=3), started=st.integers(-5, 2**40))
def test_a_sealed_record_is_read_only_when_it_could_be_nbships(
        address: str, pid: int, argv: list[str], started: int, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / name
        record = processes.Started(address, pid, argv, started)
        processes.write_state(state, record)
        plausible = address.startswith("127.0.0.1:") and pid > 1 and bool(argv)
        if plausible:
            assert read(state) == record
        else:
            refused(state)


@BUDGET
@given(content=st.binary(max_size=300), limit=st.integers(0, 300))
def test_only_a_regular_file_within_the_limit_is_read(content: bytes, limit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        path.write_bytes(content)
        if len(content) <= limit:
            assert processes.read_bounded(path, limit) == content
        else:
            with pytest.raises(processes.StateFileError, match=f"larger than {limit} bytes"):
                processes.read_bounded(path, limit)
        assert processes.read_bounded(Path(tmp) / "absent.json", limit) is None
