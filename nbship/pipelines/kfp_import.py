"""Import the kfp SDK without its REST client, for compiling and local runs.

``import kfp`` also imports ``kfp.client`` and with it the kubernetes client
(0.15 s of the 0.28 s import), which compiling and ``kfp.local`` never use.
kfp skips that eager import when ``_KFP_RUNTIME=true`` (the flag its own
executor sets inside a step); nbship sets it for the import of the top-level
package only, so ``kfp.dsl``, ``kfp.compiler`` and ``kfp.local`` load in full.
``from kfp.client import Client`` still works when a command needs a cluster.
"""

from __future__ import annotations

import contextlib
import sys

from nbship.environ import environ


def kfp_runtime_flag() -> contextlib.AbstractContextManager[None]:
    """``_KFP_RUNTIME=true`` for a block: a kfp imported inside skips its REST client."""
    return environ("_KFP_RUNTIME", "true")


def import_kfp() -> None:
    if "kfp" in sys.modules:
        return
    with kfp_runtime_flag():
        import kfp  # noqa: F401
