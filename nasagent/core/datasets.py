"""Dataset specs (``--dataset``) as an experiment stores them: a local ``npz:PATH`` made absolute, the rest as given."""

from __future__ import annotations

from pathlib import Path


def resolve_dataset(spec: str) -> str:
    """``npz:PATH`` with ``PATH`` expanded and absolute (a search resumed from another directory
    must find the same file); remote ``npz:s3://`` and ``npz:file://`` and every other name unchanged."""
    if spec.startswith("npz:") and not spec.startswith(("npz:s3://", "npz:file://")):
        return "npz:" + str(Path(spec[4:]).expanduser().resolve())
    return spec
