"""Loaded first by ``nbship test`` (``-p nbship.ci.fast_imports``), before pytest's plugins.

nbval's and papermill's modules import nbformat, whose jsonschema builds an unused
IRI grammar (0.9 s) when rfc3987-syntax is installed; nbship's own import of
nbformat leaves that checker out (nbship.notebook.import_nbformat). Loading this
module early gives every process of the test run (the controller and each xdist
worker) that import. Plain ``pytest --nbship`` works without it, 0.9 s slower.
"""

from nbship.notebook import import_nbformat

import_nbformat()
