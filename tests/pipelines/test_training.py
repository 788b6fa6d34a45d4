"""[tool.nbship.training]: triggers read and checked; data hashed and snapshotted; cron."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from nbship.errors import UnusableInputError
from nbship.pipelines.training import (
    check_cron,
    data_digest,
    fingerprint,
    next_fire,
    read_config,
    snapshot,
)
from tests.conftest import SHOWCASE


def project(tmp_path: Path, table: str) -> Path:
    (tmp_path / "notebooks").mkdir()
    shutil.copy(SHOWCASE, tmp_path / "notebooks" / "marker_classifier.ipynb")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.nbship.training."notebooks/marker_classifier.ipynb"]\n' + table)
    return pyproject


def test_the_showcase_training_table_reads(tmp_path: Path) -> None:
    pyproject = project(tmp_path, 'cron = "0  0 3 * * *"\ndata = "data/markers"\n'
                        'data_parameter = "data_dir"\nparameters = { epochs = 2 }\n'
                        'webhook = true\n')
    (training,) = read_config(pyproject)
    assert training.name == "marker-classifier" and training.cron == "0 0 3 * * *"
    assert training.data == tmp_path / "data" / "markers"
    assert training.notebook == tmp_path / "notebooks" / "marker_classifier.ipynb"
    assert training.parameters == {"epochs": 2} and training.webhook


@pytest.mark.parametrize(("table", "message"), [
    ('cron = "*/5 * * * *"\n', "not a 6-field cron expression"),
    ('cron = "61 * * * * *"\n', "not a 6-field cron expression"),
    ('data = "d"\n', "data needs data_parameter"),
    ('data = "d"\ndata_parameter = "epochs"\n', "must be a string"),
    ('webhook = "yes"\n', "webhook is true or false"),
    ('cron = "0 0 3 * * *"\nparameters = { epoch = 2 }\n', "parameters must name"),
    ('crontab = "0 0 3 * * *"\n', "unknown key(s) crontab"),
    ("parameters = { epochs = 2 }\n", "nothing starts a run"),
    ('cron = "0 0 3 * * *"\nregistry = 5000\n', "registry is where"),
])
def test_mistakes_are_named(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(UnusableInputError, match=message.replace("(", r"\(")
                       .replace(")", r"\)")):
        read_config(project(tmp_path, table))


def test_cron_is_kfps_six_fields_seconds_first() -> None:
    assert check_cron("*/10  * * * * *", "x") == "*/10 * * * * *"
    start = dt.datetime(2026, 11, 30, 5, 0, 3, tzinfo=dt.UTC).timestamp()
    assert next_fire("*/10 * * * * *", start) - start == 7
    monday = next_fire("0 30 9 * * 1", start)  # 1 = Monday, as in KFP and crontab
    assert dt.datetime.fromtimestamp(monday, dt.UTC) == dt.datetime(2026, 11, 30, 9, 30,
                                                                    tzinfo=dt.UTC)


def test_data_digest_and_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "markers"
    source.mkdir()
    assert data_digest(source) is None  # empty: nothing to train on
    (source / "a.npz").write_bytes(b"one")
    (source / ".a.npz.partial").write_bytes(b"hidden files are not data")
    first = data_digest(source)
    before = fingerprint(source)
    assert first is not None
    snap = snapshot(source, first, tmp_path / "snapshots")
    assert snap.name == first and (snap / "a.npz").read_bytes() == b"one"
    assert not (snap / ".a.npz.partial").exists()
    (source / "b.npz").write_bytes(b"two")
    assert data_digest(source) != first and fingerprint(source) != before
    (source / "a.npz").write_bytes(b"ONE")  # rewritten in place: the snapshot keeps "one"
    assert (snap / "a.npz").read_bytes() == b"one" and data_digest(snap) == first
    assert snapshot(source, first, tmp_path / "snapshots") == snap  # made once
    with pytest.raises(UnusableInputError, match="changed while"):
        snapshot(source, first, tmp_path / "other")  # the content is no longer `first`
    single = tmp_path / "one.csv"
    single.write_text("x\n1\n")
    digest = data_digest(single)
    assert digest is not None and (snapshot(single, digest, tmp_path / "s") / "one.csv").exists()
