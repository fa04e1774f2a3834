"""Datasets as in-memory tensors: ``load_dataset(spec)`` for every ``--dataset`` spec, in one place.

``prepared:URL`` specs are splits stored once by ``nasagent prepare`` (:mod:`nasagent.training.prepared`);
every other spec (``digits``, ``npz:PATH``, torchvision sets) is read and split by
:mod:`nasagent.training.sources`, whose docstring describes them.
"""

from __future__ import annotations

from pathlib import Path

from nasagent.training.prepared import PREFIX, load_prepared
from nasagent.training.sources import DATASETS, DataBundle, Split, load_source

__all__ = ["DATASETS", "DataBundle", "Split", "load_dataset"]


def load_dataset(
    spec: str,
    data_dir: Path,
    *,
    val_size: int | float | None = None,
    seed: int = 0,
    download: bool = True,
) -> DataBundle:
    """Load the dataset named by ``spec`` as a :class:`DataBundle` (see :func:`load_source` for the
    arguments; a prepared dataset keeps the split it was stored with). DataError for missing or
    malformed data or an unknown spec, ConfigError for a bad ``val_size``."""
    if spec.startswith(PREFIX):
        return load_prepared(spec[len(PREFIX) :], Path(data_dir), val_size=val_size)
    return load_source(spec, Path(data_dir), val_size=val_size, seed=seed, download=download)
