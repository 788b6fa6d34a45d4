"""Write the analysis fixture notebooks in this folder (one behaviour each).

Run ``python tests/notebooks/build_fixtures.py`` after changing a fixture here;
the .ipynb files are committed so the tests read real notebooks from disk.
Each entry: name -> list of cells, a cell being (tags, source) or
(tags, source, execution_count).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

FIXTURES: dict[str, list[tuple]] = {
    "no_tags_one_step": [
        ([], "import math\nradius = 2.0"),
        ([], "area = math.pi * radius ** 2\nprint(area)"),
    ],
    "data_edge_carries_variable": [
        (["step:make"], "numbers = [1, 2, 3]"),
        (["step:total", "prev:make"], "total = sum(numbers)"),
    ],
    "undefined_name": [
        (["step:a"], "x = 1"),
        (["step:b"], "y = x + 1\nz = missing * 2"),
    ],
    "defined_later": [
        (["step:a"], "print(later_value)"),
        (["step:b"], "later_value = 3"),
    ],
    "skip_only_definition": [
        (["skip"], "debug_table = {'a': 1}"),
        (["step:a"], "print(debug_table['a'])"),
    ],
    "prev_cycle": [
        (["step:a", "prev:b"], "a = 1"),
        (["step:b", "prev:a"], "b = 2"),
    ],
    "prev_unknown_step": [
        (["step:a"], "a = 1"),
        (["step:b", "prev:nowhere"], "b = a"),
    ],
    "duplicate_step_names": [
        (["step:load"], "a = 1"),
        (["step:other"], "b = a"),
        (["step:load"], "c = b"),
    ],
    "bad_step_name": [
        (["step:1load"], "a = 1"),
        (["step:Train"], "b = a"),
    ],
    "mutation_method_call": [
        (["step:make"], "items = [1, 2]"),
        (["step:extend"], "items.append(3)"),
        (["step:report"], "print(len(items))"),
    ],
    "mutation_item_assignment": [
        (["step:make"], "config = {}"),
        (["step:fill"], "config['lr'] = 0.1"),
        (["step:use"], "print(config['lr'])"),
    ],
    "mutation_attribute_assignment": [
        (["imports"], "import types"),
        (["step:make"], "state = types.SimpleNamespace(epoch=0)"),
        (["step:bump"], "state.epoch = 5"),
        (["step:use"], "print(state.epoch)"),
    ],
    "execution_counts_out_of_order": [
        (["step:a"], "a = 1", 2),
        (["step:b"], "b = a + 1", 1),
    ],
    "magics_and_shell_lines": [
        (["step:a"], "%matplotlib inline\n!echo hello\nfiles = !ls\nx = len(files)"),
        (["step:b"], "%time y = x * 2\nprint(y)"),
    ],
    "pip_install_line": [
        (["step:a"], "!pip install --quiet requests\nx = 1"),
        (["step:b"], "print(x)"),
    ],
    "cell_magic_time": [
        (["step:a"], "%%time\nx = sum(range(10))"),
        (["step:b"], "print(x)"),
    ],
    "comprehension_scopes": [
        (["step:a"], "xs = [i * 2 for i in range(5)]\npairs = {k: v for k, v in zip(xs, xs)}"),
        (["step:b"], "big = [x for x in xs if x > limit]\ngen = sum(y for y in xs)"),
    ],
    "closure_free_names": [
        (["step:a"], "def scale(v):\n    return v * factor\n\nfactor = 3\nr = scale(2)"),
        (["step:b"], "def shift(v):\n    return v + offset\n\ns = shift(r)"),
    ],
    "global_statement": [
        (["step:a"], "def setup():\n    global cfg\n    cfg = {'seed': 1}\n\nsetup()"),
        (["step:b"], "print(cfg['seed'])"),
    ],
    "del_statement": [
        (["step:a"], "tmp = [1]\nkeep = 2\ndel tmp"),
        (["step:b"], "print(keep)\nprint(tmp)"),
    ],
    "augmented_assignment": [
        (["step:start"], "total = 0"),
        (["step:add"], "total += 5"),
        (["step:show"], "print(total)"),
    ],
    "imports_inside_steps": [
        (["step:a"], "import math as m\nfrom os import path\nx = m.sqrt(4)"),
        (["step:b"], "print(m.pi, path.sep, x)"),
    ],
    "functions_cell_class": [
        (["imports"], "import statistics"),
        (["functions"], "class Scaler:\n    def __init__(self, k):\n        self.k = k\n\n"
                        "    def __call__(self, v):\n        return v * self.k\n\n\n"
                        "def average(values):\n    return statistics.mean(values)"),
        (["step:a"], "s = Scaler(2)\nvalues = [s(1), s(2)]"),
        (["step:b"], "avg = average(values)"),
    ],
    "functions_cell_reads_parameter": [
        (["parameters"], "factor = 2"),
        (["functions"], "def scale(v):\n    return v * factor"),
        (["step:a"], "y = scale(3)"),
    ],
    "parameter_types": [
        (["parameters"], "n = 1\nrate = 0.5\nname = 'x'\nflag = True\nsizes = [1, 2]\n"
                         "opts = {'k': 1}"),
        (["step:a"], "print(n, rate, name, flag, sizes, opts)"),
    ],
    "parameter_not_literal": [
        (["imports"], "import os"),
        (["parameters"], "data_dir = os.path.join('a', 'b')\nepochs = 3"),
        (["step:a"], "print(data_dir, epochs)"),
    ],
    "metrics_cell": [
        (["step:train"], "accuracy = 0.9\nloss = 0.1"),
        (["pipeline-metrics"], "print(accuracy)\nloss"),
    ],
    "unknown_tag_warns": [
        (["step:a", "my-own-tag"], "x = 1"),
    ],
    "nbval_tags_pass_through": [
        (["step:a", "nbval-ignore-output"], "import random\nx = random.random()"),
        (["step:b", "raises-exception"], "y = x"),
        (["nbval-skip", "skip-execution"], "z = 1"),
    ],
    "kale_block_spelling": [
        (["imports"], "import json"),
        (["block:load"], "text = json.dumps({'a': 1})"),
        (["block:parse", "prev:load"], "data = json.loads(text)"),
    ],
    "untagged_joins_step_above": [
        (["step:a"], "x = 1"),
        ([], "y = x + 1"),
        (["step:b"], "print(y)"),
    ],
    "leading_untagged_cells": [
        ([], "import math"),
        (["step:a"], "r = math.floor(2.5)"),
        (["step:b"], "print(r)"),
    ],
    "skip_cells_are_not_checked": [
        (["skip"], "!wget https://example.invalid/data.csv\nprint(broken"),
        (["step:a"], "x = 1"),
    ],
    "syntax_error": [
        (["step:a"], "x = 1\ndef broken(:\n    pass"),
    ],
    "star_import": [
        (["step:a"], "from math import *\nprint(pi)"),
    ],
    "several_parents_one_tag": [
        (["step:a"], "a = 1"),
        (["step:b"], "b = 2"),
        (["step:c", "prev:a:b"], "print('done')"),
    ],
    "walrus_binding": [
        (["step:a"], "if (n := 10) > 5:\n    pass"),
        (["step:b"], "print(n)"),
    ],
    "lambda_free_name": [
        (["step:a"], "f = lambda t: t + offset\nvalue = 1"),
    ],
    "injected_parameters_override": [
        (["parameters"], "epochs = 10\nlr = 0.1"),
        (["injected-parameters"], "epochs = 1"),
        (["step:a"], "print(epochs, lr)"),
    ],
    "multiline_string_kept": [
        (["step:a"], 'text = """line one\n  indented line\nlast"""\nsize = len(text)'),
        (["step:b"], "print(size, text)"),
    ],
    "fan_out_fan_in": [
        (["step:init"], "base = 10"),
        (["step:left"], "l = base + 1"),
        (["step:right"], "r = base + 2"),
        (["step:join"], "both = l + r"),
    ],
    "task_settings_tags": [
        (["step:train", "limit:cpu:2", "limit:memory:4Gi", "limit:nvidia.com/gpu:1",
          "cache:disabled", "label:team:vision", "annotation:owner:ml",
          "secret:db-creds:password:DB_PASSWORD", "image:python:3.11-slim"], "x = 1"),
        (["step:use"], "print(x)"),
    ],
    "failing_step": [
        (["parameters"], "divisor = 0"),
        (["step:prepare"], "value = 10"),
        (["step:divide"], "half = value / 2\nratio = value / divisor"),
        (["step:report"], "print(ratio)"),
    ],
    "conditional_output": [
        (["parameters"], "enabled = False"),
        (["step:maybe"], "if enabled:\n    result = 42"),
        (["step:use"], "print(result)"),
    ],
    "reads_relative_file": [
        (["step:write"], "with open('fixture-data.txt', 'w') as f:\n    f.write('7')"),
        # a file is not a variable: without prev: the two steps may run at the same time
        (["step:read", "prev:write"], "import os\nvalue = int(open('fixture-data.txt').read())\n"
                        "os.remove('fixture-data.txt')"),
        (["pipeline-metrics"], "print(value)"),
    ],
    "hidden_state": [
        (["step:make"], "items = [1, 2]"),
        (["step:extend"], "items.append(3)\nprint(items)"),
        (["step:total"], "total = sum(items)\nprint(total)"),
        (["pipeline-metrics"], "print(total)"),
    ],
    "three_numpy_steps": [
        (["imports"], "import numpy as np"),
        (["parameters"], "n = 50\nseed = 0"),
        (["step:generate"], "rng = np.random.default_rng(seed)\ndata = rng.normal(size=n)"),
        (["step:center"], "centered = data - data.mean()"),
        (["step:summarize"], "spread = float(centered.std())\nbiggest = float(abs(centered).max())"),
        (["pipeline-metrics"], "print(spread)\nprint(biggest)"),
    ],
}


def build(name: str, cells: list[tuple]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(new_markdown_cell(f"# fixture: {name.replace('_', ' ')}"))
    nb.cells[0]["id"] = "md"
    for i, spec in enumerate(cells):
        tags, source = spec[0], spec[1]
        cell = new_code_cell(source)
        cell["id"] = f"c{i + 1}"
        if tags:
            cell.metadata["tags"] = list(tags)
        if len(spec) > 2:
            cell["execution_count"] = spec[2]
        nb.cells.append(cell)
    return nb


def main() -> None:
    for name, cells in FIXTURES.items():
        nbformat.write(build(name, cells), HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
