"""Prepared datasets: split once, stored in the artifact store, loaded by every pod as they are.

``nasagent prepare`` (the pipeline's first step) loads a dataset with
``nasagent.training.data.load_dataset`` (the stratified, seeded validation split and the fixed
test split), and saves the three splits with the training split's per-channel mean/std as one
compressed ``.npz`` under ``datasets/<name>/<digest>.npz`` of the artifact store. The search,
its trial pods, finetuning and the ensemble then name the dataset ``prepared:URL`` (the URL of
that object), so nobody downloads CIFAR-10 from the internet or re-splits it again, and every
pod trains on exactly the same samples.

The object holds ``x_<split>``/``y_<split>`` for ``train``, ``val`` and ``test``, ``mean``,
``std``, ``num_classes``, ``name`` and ``meta`` (JSON: format, source spec, seed, validation
size). 8-bit images (``load_dataset`` holds them as uint8 codes) are stored as uint8 with
``x_scale = 255`` and come back as the same uint8 codes; others as float32.
``<digest>`` is a hash of the content, so a URL always names the same data: preparing the same
dataset again finds it there and uploads nothing, and an experiment's stored dataset spec pins
its data.

Loading (``load_prepared``) copies the object once into ``<data_dir>/prepared/`` and reads it
from there afterwards. A prepared dataset's split is fixed: asking for another validation size
is a ConfigError.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from nasagent.errors import ConfigError, DataError
from nasagent.persistence.artifacts import ArtifactStore, check_key, open_artifacts
from nasagent.training.sources import DataBundle, Split, load_source

PREFIX = "prepared:"
FORMAT = "nasagent-prepared/1"
SPLITS = ("train", "val", "test")
DIGEST_CHARS = 16


@dataclass(frozen=True)
class PreparedDataset:
    """Where ``prepare_dataset`` put a dataset and what it holds. ``spec`` is what ``--dataset`` takes."""

    spec: str
    url: str
    key: str
    name: str
    sizes: dict[str, int]
    num_classes: int
    input_shape: tuple[int, int, int]
    uploaded: bool
    """False when the store already held this exact content."""

    def to_json(self) -> dict[str, Any]:
        """The summary ``nasagent prepare --json`` prints."""
        return {
            "spec": self.spec,
            "url": self.url,
            "key": self.key,
            "name": self.name,
            "sizes": self.sizes,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "uploaded": self.uploaded,
        }


def val_size_value(value: float | None) -> int | float | None:
    """A ``--val-size`` flag (float) as ``load_dataset`` takes it: a whole count as int, a fraction as float,
    0/None as None.
    """
    if not value:
        return None
    if value < 0 or (value >= 1 and value != int(value)):
        raise ConfigError(f"--val-size must be a fraction in (0, 1) or a whole count, got {value}")
    return int(value) if value >= 1 else float(value)


def dataset_name(spec: str) -> str:
    """A short name for ``spec`` usable as one key segment: ``digits``, ``cifar10``, or a file's stem for
    ``npz:...``.
    """
    base = spec[4:].rstrip("/").rsplit("/", 1)[-1].removesuffix(".npz") if spec.startswith("npz:") else spec
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "dataset"
    return clean[:64]


def prepare_dataset(
    spec: str, store: ArtifactStore, data_dir: Path, *, val_size: int | float | None = None, seed: int = 0
) -> PreparedDataset:
    """Load ``spec`` (any ``load_dataset`` spec, or ``npz:URL`` of an .npz in an artifact store), split
    it with ``val_size`` and ``seed``, and store it in ``store`` unless that content is there already.

    DataError/ConfigError for bad data or settings (as ``load_dataset``), ArtifactError if the
    store fails. A ``prepared:`` spec is refused: it is prepared already.
    """
    if spec.startswith(PREFIX):
        raise ConfigError(f"{spec} is prepared already: pass it to --dataset as it is")
    with tempfile.TemporaryDirectory(prefix="nasagent-prepare-") as tmp:
        data = load_source(_local_spec(spec, Path(tmp)), Path(data_dir), val_size=val_size, seed=seed)
    name = dataset_name(spec)
    meta = {"format": FORMAT, "source": spec, "name": name, "seed": seed, "val_size": val_size}
    arrays = _to_arrays(data, name, meta)
    key = f"datasets/{name}/{_digest(arrays)}.npz"
    uploaded = not store.exists(key)
    if uploaded:
        with tempfile.TemporaryDirectory(prefix="nasagent-prepare-") as tmp:
            path = Path(tmp) / "dataset.npz"
            np.savez_compressed(path, **arrays)
            store.put_file(key, path)
    url = f"{store.url.rstrip('/')}/{key}"
    return PreparedDataset(
        spec=PREFIX + url,
        url=url,
        key=key,
        name=name,
        sizes={split: len(getattr(data, split)) for split in SPLITS if getattr(data, split) is not None},
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        uploaded=uploaded,
    )


def _local_spec(spec: str, tmp: Path) -> str:
    """``spec`` with an ``npz:file://`` or ``npz:s3://`` URL replaced by a local copy of the file."""
    if not spec.startswith("npz:"):
        return spec
    target = spec[4:]
    if not target.startswith(("s3://", "file://")):
        return spec
    directory, _, key = target.rstrip("/").rpartition("/")
    if not key or directory.endswith(":/"):
        raise ConfigError(f"--dataset {spec}: the URL must name a file, like npz:s3://BUCKET/PATH/data.npz")
    local = tmp / "source.npz"
    open_artifacts(directory).get_file(check_key(key), local)
    return f"npz:{local}"


def _to_arrays(data: DataBundle, name: str, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the .npz (see the module docstring)."""
    if data.test is None:
        raise DataError(
            f"dataset {data.name} has no test split; a prepared dataset needs one for finetuning and the ensemble"
        )
    arrays: dict[str, np.ndarray] = {}
    scaled = all(_is_8bit(getattr(data, split).x) for split in SPLITS)
    for split in SPLITS:
        part: Split = getattr(data, split)
        arrays[f"x_{split}"] = _codes(part.x) if scaled else np.ascontiguousarray(part.x.numpy(), dtype=np.float32)
        arrays[f"y_{split}"] = part.y.numpy().astype(np.int64)
    arrays["x_scale"] = np.array(255 if scaled else 1, dtype=np.int64)
    arrays["mean"] = np.array(data.mean, dtype=np.float64)
    arrays["std"] = np.array(data.std, dtype=np.float64)
    arrays["num_classes"] = np.array(data.num_classes, dtype=np.int64)
    arrays["name"] = np.array(name)
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def _codes(x: torch.Tensor) -> np.ndarray:
    """uint8 codes of 8-bit images (``_is_8bit``), whether held as codes or as floats k/255."""
    if x.dtype == torch.uint8:
        return np.ascontiguousarray(x.numpy())
    return np.rint(x.numpy() * 255).astype(np.uint8)


def _is_8bit(x: torch.Tensor) -> bool:
    """Whether every value is k/255 exactly as ``as_float`` computes it, so uint8 storage loses nothing."""
    if x.dtype == torch.uint8:
        return True
    values = x.numpy()
    codes = np.rint(values * 255)
    if codes.min(initial=0) < 0 or codes.max(initial=0) > 255:
        return False
    decoded = codes.astype(np.uint8).astype(np.float32)
    decoded /= 255
    return bool(np.array_equal(decoded, values))


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """A hash of the arrays' names, dtypes, shapes and bytes (not of the zip, which holds timestamps)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


# ---------------------------------------------------------------------------------------------
# Loading


def load_prepared(url: str, data_dir: Path, *, val_size: int | float | None = None) -> DataBundle:
    """The ``DataBundle`` stored at ``url`` (``prepared:URL`` without its prefix) by ``prepare_dataset``.

    Called by ``load_dataset`` for ``prepared:`` specs. The file is cached under
    ``<data_dir>/prepared/`` (a temporary copy is used when that directory is not writable).
    ConfigError for a ``val_size`` (the split is fixed) or a malformed URL, ArtifactError if the
    object cannot be fetched, DataError if it is not a prepared dataset.
    """
    if val_size is not None:
        raise ConfigError(
            f"prepared:{url} has its validation split already (nasagent prepare --val-size); leave out --val-size"
        )
    directory, _, key = url.rpartition("/")
    if not key.endswith(".npz") or not urlsplit(url).scheme:
        raise ConfigError(
            f"prepared:{url}: expected the URL of a prepared .npz, like prepared:s3://BUCKET/datasets/NAME/DIGEST.npz"
        )
    store = open_artifacts(directory)
    cache = Path(data_dir) / "prepared"
    cached = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:DIGEST_CHARS]}-{key}"
    if cached.is_file():
        return _read(cached, url)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache, os.W_OK)
    except OSError:
        writable = False
    if writable:
        store.get_file(key, cached)  # written to a temporary name, then renamed: readers never see half a file
        return _read(cached, url)
    with tempfile.TemporaryDirectory(prefix="nasagent-prepared-") as tmp:
        path = Path(tmp) / key
        store.get_file(key, path)
        return _read(path, url)


def _read(path: Path, url: str) -> DataBundle:
    """Parse a prepared .npz into a ``DataBundle``; DataError if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"cannot read prepared dataset {url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    missing = [
        k
        for k in (*(f"{a}_{s}" for s in SPLITS for a in "xy"), "x_scale", "mean", "std", "num_classes", "name", "meta")
        if k not in arrays
    ]
    if missing:
        raise DataError(
            f"{url} is not a prepared dataset (missing {', '.join(missing)}); make one with nasagent prepare"
        )
    scale = int(arrays["x_scale"])
    splits = {}
    for split in SPLITS:
        x = arrays[f"x_{split}"]
        if scale == 255 and x.dtype == np.uint8:
            x = np.ascontiguousarray(x)  # 8-bit codes, as load_dataset holds them
        else:
            x = x.astype(np.float32)
            if scale != 1:
                x /= scale
        splits[split] = Split(torch.from_numpy(x), torch.from_numpy(arrays[f"y_{split}"].astype(np.int64)))
    return DataBundle(
        name=str(arrays["name"]),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=int(arrays["num_classes"]),
        input_shape=tuple(splits["train"].x.shape[1:]),  # type: ignore[arg-type]
        mean=[float(v) for v in arrays["mean"]],
        std=[float(v) for v in arrays["std"]],
    )
