"""CustomResourceDefinitions to validate custom resources against (offline).

nbship ships no CRD: a team points it at the CRDs its cluster runs, as written by
``kubectl get crd NAME -o yaml``. Folders searched, first match wins: every folder in
``$NBSHIP_CRDS`` (``:``-separated), ``./crds``, and ``../shared/schemas`` beside the
project (where this project's development copy of KServe's CRD lives). A CRD file
is read with the safe YAML loader; its ``openAPIV3Schema`` for the manifest's
version is used as a JSON schema.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

ENV = "NBSHIP_CRDS"


def folders() -> list[Path]:
    found = [Path(p) for p in os.environ.get(ENV, "").split(":") if p]
    found.append(Path("crds"))
    found.append(Path(__file__).resolve().parents[2].parent / "shared" / "schemas")
    return [f for f in found if f.is_dir()]


@functools.lru_cache(maxsize=4)
def _index(dirs: tuple[Path, ...]) -> dict[tuple[str, str, str], dict[str, Any]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    index: dict[tuple[str, str, str], dict[str, Any]] = {}
    for folder in dirs:
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                docs = list(yaml.load_all(path.read_text(), Loader=loader))
            except (OSError, yaml.YAMLError):
                continue
            for doc in docs:
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc.get("spec") or {}
                group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
                for version in spec.get("versions") or []:
                    schema = (version.get("schema") or {}).get("openAPIV3Schema")
                    if group and kind and schema:
                        index.setdefault((group, version.get("name"), kind), schema)
    return index


def schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The JSON schema of ``kind`` in ``api_version`` (``group/version``), if a CRD has it."""
    group, _, version = api_version.rpartition("/")
    if not group:
        return None  # a core kind
    return _index(tuple(folders())).get((group, version, kind))
