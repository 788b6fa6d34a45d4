"""IPython inside a step: `%` magics and `!` lines run through IPython's own shell.

A notebook cell's ``%time``/``!ls`` lines become ``get_ipython().…`` calls when the
step is generated; in a step there is no kernel, so they run on an
``InteractiveShell`` of the step's own (package installs are never run: the
image carries the dependencies). The shell's namespace is not the step's: a
magic that reads user variables (``%who``, ``%timeit x``) does not see them.
"""

from __future__ import annotations

from typing import Any


def get_ipython() -> Any:
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.instance()
