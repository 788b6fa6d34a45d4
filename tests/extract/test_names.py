"""Def/use analysis of single cells."""

from __future__ import annotations

from nbship.extract.names import analyse


def test_reads_before_definition_in_evaluation_order() -> None:
    code = analyse("x = x + 1\ny = 2\nz = y")
    assert code.names("read") == {"x": 1, "y": 3}
    assert set(code.names("def")) == {"x", "y", "z"}


def test_function_bodies_read_when_called() -> None:
    code = analyse("def f(a):\n    return a + g\n")
    assert code.names("deferred") == {"g": 2}
    assert "a" not in code.names("read")


def test_comprehension_targets_are_local() -> None:
    code = analyse("ys = [x * k for x in xs]")
    assert set(code.names("read")) == {"xs", "k"}


def test_magics_become_python_with_lines_kept() -> None:
    code = analyse("!pip install numpy\n%matplotlib inline\nfiles = !ls\nn = len(files)")
    assert [m.line for m in code.magics] == [1, 2, 3]
    assert [m.install for m in code.magics] == [True, False, False]
    assert code.names("def") == {"files": 3, "n": 4}
    assert code.python.splitlines()[3] == "n = len(files)"


def test_time_magic_keeps_the_statement() -> None:
    code = analyse("%time y = f(x)")
    assert code.python.strip() == "y = f(x)"
    assert set(code.names("read")) == {"f", "x"}


def test_python_cell_magic_body_is_analysed() -> None:
    code = analyse("%%time\ntotal = sum(values)")
    assert code.cell_magic == "time"
    assert code.names("def") == {"total": 2}
    assert code.names("read") == {"sum": 2, "values": 2}


def test_item_and_attribute_assignment_are_mutations() -> None:
    code = analyse("d['k'] = 1\no.attr = 2\nlst[0] += 1")
    assert set(code.names("mut")) == {"d", "o", "lst"}


def test_method_calls_are_possible_mutations() -> None:
    assert set(analyse("model.fit(x)").names("call")) == {"model"}


def test_imports_are_recorded_as_statements() -> None:
    code = analyse("import numpy as np\nfrom os import path as p, sep")
    assert code.imports == {"np": "import numpy as np", "p": "from os import path as p",
                            "sep": "from os import sep"}


def test_syntax_error_has_a_line() -> None:
    assert analyse("x = 1\nif x\n").syntax_error is not None
    assert analyse("x = 1\nif x\n").syntax_error[0] == 2  # type: ignore[index]


def test_global_in_function_defines_module_name() -> None:
    code = analyse("def setup():\n    global cfg\n    cfg = 1\n")
    assert "cfg" in code.names("def")


def test_class_body_reads_are_immediate() -> None:
    code = analyse("class A(Base):\n    size = default_size\n")
    assert set(code.names("read")) == {"Base", "default_size"}
