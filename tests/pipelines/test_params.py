"""-p name=value: typed against the parameters cell, never evaluated."""

from __future__ import annotations

import pytest

from nbship.errors import ParameterError
from nbship.pipelines.params import parse_assignments
from tests.conftest import graph_of

PARAMS = graph_of("parameter_types").parameters


def test_values_are_typed_by_the_parameters_cell() -> None:
    got = parse_assignments(["n=3", "rate=1e-3", "name=__import__('os')", "flag=false",
                             "sizes=[3, 4]", 'opts={"k": 2}'], PARAMS)
    assert got == {"n": 3, "rate": 0.001, "name": "__import__('os')", "flag": False,
                   "sizes": [3, 4], "opts": {"k": 2}}


@pytest.mark.parametrize("item, fragment", [
    ("n=1.5", "expected an int"),
    ("rate=fast", "expected a float"),
    ("flag=maybe", "expected a bool"),
    ("sizes={}", "expected a JSON list"),
    ("nope=1", "no parameter 'nope'"),
    ("n", "write -p name=value"),
])
def test_bad_values_are_refused_with_the_declaration(item: str, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment) as info:
        parse_assignments([item], PARAMS)
    assert info.value.exit_code == 2
