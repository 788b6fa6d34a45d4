"""The step graph of each fixture notebook: steps, edges, parameters, problems."""

from __future__ import annotations

import pytest

from nbship.extract.graph import ERROR, WARNING, StepGraph
from tests.conftest import NOTEBOOKS, graph_of


def edges(graph: StepGraph) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(e.src, e.dst, e.variables) for e in graph.edges}


def kinds(graph: StepGraph, severity: str) -> list[str]:
    return [p.kind for p in graph.problems if p.severity == severity]


# name -> (edges, error kinds, warning kinds)
EXPECTED = {
    "augmented_assignment": ({("start", "add", ("total",)), ("add", "show", ("total",))}, [], []),
    "data_edge_carries_variable": ({("make", "total", ("numbers",))}, [], []),
    "fan_out_fan_in": ({("init", "left", ("base",)), ("init", "right", ("base",)),
                        ("left", "join", ("l",)), ("right", "join", ("r",))}, [], []),
    "mutation_item_assignment": ({("make", "fill", ("config",)), ("fill", "use", ("config",))},
                                 [], []),
    "mutation_attribute_assignment": ({("make", "bump", ("state",)), ("bump", "use", ("state",))},
                                      [], []),
    "mutation_method_call": ({("make", "extend", ("items",)), ("make", "report", ("items",))},
                             [], ["mutation"]),
    "global_statement": ({("a", "b", ("cfg",))}, [], []),
    "walrus_binding": ({("a", "b", ("n",))}, [], []),
    "cell_magic_time": ({("a", "b", ("x",))}, [], []),
    "magics_and_shell_lines": ({("a", "b", ("x",))}, [], []),
    "pip_install_line": ({("a", "b", ("x",))}, [], ["install"]),
    "imports_inside_steps": ({("a", "b", ("x",))}, [], []),
    "functions_cell_class": ({("a", "b", ("values",))}, [], []),
    "kale_block_spelling": ({("load", "parse", ("text",))}, [], []),
    "untagged_joins_step_above": ({("a", "b", ("y",))}, [], []),
    "leading_untagged_cells": ({("a", "b", ("r",))}, [], []),
    "multiline_string_kept": ({("a", "b", ("size", "text"))}, [], []),
    "several_parents_one_tag": ({("a", "c", ()), ("b", "c", ())}, [], []),
    "nbval_tags_pass_through": ({("a", "b", ("x",))}, [], []),
    "undefined_name": ({("a", "b", ("x",))}, ["undefined-name"], []),
    "defined_later": (set(), ["undefined-name"], []),
    "skip_only_definition": (set(), ["skip-only"], []),
    "prev_cycle": ({("a", "b", ()), ("b", "a", ())}, ["prev-cycle"], []),
    "prev_unknown_step": ({("a", "b", ("a",))}, ["unknown-prev"], []),
    "bad_step_name": ({("1load", "Train", ("a",))}, ["step-name", "step-name"], []),
    "execution_counts_out_of_order": ({("a", "b", ("a",))}, [], ["execution-order"]),
    "comprehension_scopes": ({("a", "b", ("xs",))}, ["undefined-name"], []),
    "closure_free_names": ({("a", "b", ("r",))}, ["undefined-name"], []),
    "del_statement": ({("a", "b", ("keep",))}, ["undefined-name"], []),
    "lambda_free_name": (set(), ["undefined-name"], []),
    "syntax_error": (set(), ["syntax"], []),
    "skip_cells_are_not_checked": (set(), [], []),
    "star_import": (set(), ["star-import", "undefined-name"], []),
    "unknown_tag_warns": (set(), [], ["tag"]),
    "parameter_not_literal": (set(), ["parameter", "undefined-name"], []),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_graph(name: str) -> None:
    graph = graph_of(name)
    want_edges, want_errors, want_warnings = EXPECTED[name]
    assert edges(graph) == want_edges
    assert sorted(kinds(graph, ERROR)) == sorted(want_errors)
    assert sorted(kinds(graph, WARNING)) == sorted(want_warnings)


def test_at_least_thirty_fixture_notebooks() -> None:
    assert len(list(NOTEBOOKS.glob("*.ipynb"))) >= 30


def test_no_tags_is_one_step_named_after_the_notebook() -> None:
    graph = graph_of("no_tags_one_step")
    assert [s.name for s in graph.steps] == ["no-tags-one-step"]
    assert [c.index for c in graph.steps[0].cells] == [1, 2]
    assert graph.problems == []


def test_problems_name_cell_id_and_line() -> None:
    problem = graph_of("undefined_name").errors[0]
    assert (problem.where.cell, problem.where.cell_id, problem.where.line) == (2, "c2", 2)
    assert "'missing'" in problem.message


def test_name_read_before_definition_names_the_later_step() -> None:
    problem = graph_of("defined_later").errors[0]
    assert "defined later, in step 'b'" in problem.message


def test_mutation_warning_names_variable_and_steps() -> None:
    problem = graph_of("mutation_method_call").warnings[0]
    assert "items.append" in problem.message
    assert "'report'" in problem.message and "'make'" in problem.message
    assert problem.where.cell == 2 and problem.where.line == 1


def test_duplicate_step_names_are_an_error() -> None:
    graph = graph_of("duplicate_step_names")
    dup = [p for p in graph.errors if p.kind == "duplicate-step"]
    assert len(dup) == 1 and dup[0].where.cell == 3


def test_parameters_and_their_types() -> None:
    graph = graph_of("parameter_types")
    assert {p.name: p.type for p in graph.parameters.values()} == {
        "n": "int", "rate": "float", "name": "str", "flag": "bool", "sizes": "list",
        "opts": "dict"}
    assert graph.steps[0].params == ["n", "rate", "name", "flag", "sizes", "opts"]


def test_injected_parameters_override_defaults() -> None:
    graph = graph_of("injected_parameters_override")
    assert graph.parameters["epochs"].value == 1
    assert graph.parameters["lr"].value == 0.1


def test_functions_cell_reading_a_parameter_makes_it_a_step_parameter() -> None:
    graph = graph_of("functions_cell_reads_parameter")
    step = graph.steps[0]
    assert step.params == ["factor"]
    assert [c.index for c in step.functions_cells] == [2]


def test_functions_and_imports_cells_are_copied_where_needed() -> None:
    graph = graph_of("functions_cell_class")
    a, b = graph.steps
    assert [c.index for c in a.functions_cells] == [2]
    assert [c.index for c in b.functions_cells] == [2]
    assert [c.index for c in b.imports_cells] == [1]  # average() uses statistics
    assert b.import_names == {"statistics"}


def test_imports_made_in_a_step_are_carried_not_passed_as_data() -> None:
    b = graph_of("imports_inside_steps").steps[1]
    assert b.carried_imports == ["import math as m", "from os import path"]
    assert set(b.inputs) == {"x"}


def test_metrics_are_logged_by_the_step_that_produces_them() -> None:
    graph = graph_of("metrics_cell")
    assert graph.metrics == {"accuracy": "train", "loss": "train"}


def test_task_settings_from_kale_tags() -> None:
    train = graph_of("task_settings_tags").steps[0]
    assert train.limits == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert train.cache is False
    assert train.labels == {"team": "vision"}
    assert train.annotations == {"owner": "ml"}
    assert train.secrets == [("db-creds", "password", "DB_PASSWORD")]
    assert train.image == "python:3.11-slim"


def test_topological_order_follows_edges() -> None:
    graph = graph_of("fan_out_fan_in")
    order = [s.name for s in graph.topological()]
    assert order.index("init") < order.index("left") < order.index("join")
    assert order.index("right") < order.index("join")
