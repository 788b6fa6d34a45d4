"""Kale's 114 unit-test expectations, as data: nbship agrees, differs on purpose, or has no
counterpart. The table is asserted, so a regression (or a fixed difference) shows."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.extract.kale_cases import (
    AGREE,
    CASES,
    DELIBERATE,
    DIFFERS,
    NO_COUNTERPART,
    NOT_COMPARABLE,
    verdicts,
)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    if not CASES.exists():
        pytest.skip(f"{CASES} is not here (the shared corpus; set NBSHIP_CORPUS)")
    return verdicts()


def test_the_verdict_table(rows: list[dict[str, object]]) -> None:
    assert len(rows) == 114
    assert Counter(r["verdict"] for r in rows) == {AGREE: 75, DIFFERS: 25, NOT_COMPARABLE: 14}


def test_not_comparable_only_for_kales_ast_helpers(rows: list[dict[str, object]]) -> None:
    """No row is "not comparable" because nbship lacks a Kale feature: only Kale's
    internal AST helpers, which answer questions nbship's analysis never asks."""
    assert {r["kind"] for r in rows if r["verdict"] not in (AGREE, DIFFERS)} == \
        set(NO_COUNTERPART)
    assert "get_trailing_variable" not in NO_COUNTERPART


def test_every_difference_is_deliberate_and_explained(rows: list[dict[str, object]]) -> None:
    unexplained = [(r["id"], r["kind"], r["detail"]) for r in rows
                   if r["verdict"] == DIFFERS and r["id"] not in DELIBERATE]
    assert unexplained == []


def test_no_stale_explanations(rows: list[dict[str, object]]) -> None:
    agreeing = [r["id"] for r in rows if r["id"] in DELIBERATE and r["verdict"] != DIFFERS]
    assert agreeing == []


def test_the_cases_nbship_once_got_wrong_now_agree(rows: list[dict[str, object]]) -> None:
    by_id = {r["id"]: r for r in rows}
    # colons in annotation values, invalid secret names and env vars, Kale's
    # pipeline-parameters extended by untagged cells; a tag that is not a string (the
    # notebook is refused), the trailing bare variable, the report: tags
    for case in (108, 109, 110, 98, 99, 91, 93, 94, 89, *range(62, 74), 103, 104, 105):
        assert by_id[case]["verdict"] == AGREE, by_id[case]
