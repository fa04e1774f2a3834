"""The dataset sources read from files or libraries (everything but ``prepared:``), split into
train / validation / test.

:func:`nasagent.training.data.load_dataset` is the entry point; it sends ``prepared:`` specs to
:mod:`nasagent.training.prepared` and the rest here.

Every dataset comes back as a :class:`DataBundle` of images N×C×H×W with values in [0, 1] and
int64 labels 0..K-1, held in their smallest faithful dtype: 8-bit images (uint8 files, every
torchvision set, floats that are all exact multiples of 1/255) stay uint8 codes, a quarter of
float32's memory in the agent and in every worker, and :func:`as_float` turns a batch into the
float32 values k/255 when it is used; other images are float32. The validation split is carved out of the training data,
stratified (class proportions unchanged) and seeded, as in §5 of the paper (5,000 samples for
the large datasets). Per-channel mean/std are computed over the training split only; the
model built by :mod:`nasagent.training.build` normalises with them.

Specs accepted by :func:`load_source` (and ``prepared:`` by :func:`~nasagent.training.data.load_dataset`):

* ``digits``: scikit-learn's bundled 8×8 digits (1,797 images, offline). 20% is held out as a
  stratified test split (always with the same seed, so the test set never depends on the
  search seed), the validation split comes from the rest.
* ``npz:PATH``: a user's ``.npz`` with arrays ``x`` (images) and ``y`` (N integer labels).
  ``x`` may be N×H×W (one channel), N×H×W×C or N×C×H×W. It is read as channels-first when
  dimension 1 is 1, 3 or 4 and the last dimension is not; otherwise as channels-last (so an
  ambiguous N×3×H×3 is read as channels-last, the usual numpy/PIL layout). uint8 values are
  divided by 255; floats already within [0, 1] are kept; anything else is min-max scaled to
  [0, 1] over the whole array. A stratified 20% test split is held out, as for ``digits``.
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``svhn``: through torchvision (optional
  dependency, imported only here), stored under ``data_dir``, with the official train/test
  splits; ``download=False`` uses only files already there.
* ``prepared:URL``: splits made once by ``nasagent prepare`` and stored in an artifact store
  (``nasagent.training.prepared``); loaded as they are, cached under ``data_dir``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nasagent.errors import ConfigError, DataError

TORCHVISION_DATASETS = ("mnist", "fashion_mnist", "cifar10", "svhn")
DATASETS = ("digits", "npz:PATH", *TORCHVISION_DATASETS, "prepared:URL")
TEST_FRACTION = 0.2
# The test split of datasets without an official one is fixed, whatever the search seed.
TEST_SEED = 0


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float32 values in [0, 1]: uint8 codes k become k/255 (a new tensor); float32 is returned as it is.

    Called per batch by the trainer and by prediction, so 8-bit data are never held as floats whole."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


@dataclass
class Split:
    """Images ``x`` (N×C×H×W: float32 in [0, 1], or uint8 codes k of k/255, see :func:`as_float`)
    and labels ``y`` (int64 N, values 0..K-1)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataBundle:
    """A dataset ready for training: splits, class count, image shape and train statistics."""

    name: str
    train: Split
    val: Split
    test: Split | None
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]

    @property
    def nbytes(self) -> int:
        """Bytes of every split's images and labels: what one process holding the dataset holds."""
        splits = [s for s in (self.train, self.val, self.test) if s is not None]
        return sum(t.element_size() * t.nelement() for split in splits for t in (split.x, split.y))


def load_source(
    spec: str,
    data_dir: Path,
    *,
    val_size: int | float | None = None,
    seed: int = 0,
    download: bool = True,
) -> DataBundle:
    """Load the dataset named by ``spec`` (see the module docstring) as a :class:`DataBundle`.

    ``val_size`` is the validation split's size taken from the training data: an int is a count,
    a float in (0, 1) a fraction; the default is ``min(5000, max(K, round(0.2 * n_train)))``.
    ``seed`` fixes which samples go to validation. Raises ``DataError`` for missing or malformed
    data or an unknown spec, and ``ConfigError`` for a bad ``val_size``.
    """
    data_dir = Path(data_dir)
    if spec == "digits":
        x, y = _digits()
        (train_x, train_y), test = _hold_out_test(x, y, "digits")
    elif spec.startswith("npz:"):
        path = Path(spec[4:]).expanduser()
        x, y = _read_npz(path)
        (train_x, train_y), test = _hold_out_test(x, y, str(path))
    elif spec in TORCHVISION_DATASETS:
        (train_x, train_y), test = _torchvision(spec, data_dir, download)
    else:
        raise DataError(f"unknown dataset {spec!r}; valid: {', '.join(DATASETS)}")

    # Labels are remapped with the classes of the training data; a test label unseen in
    # training could never be predicted, so it is an error rather than a silent extra class.
    classes, train_y = np.unique(train_y, return_inverse=True)
    num_classes = len(classes)
    if num_classes < 2:
        raise DataError(f"{spec}: the training data has only one class ({classes[0]}); need at least two")
    test_split = None
    if test is not None:
        test_x, test_y = test
        unseen = np.setdiff1d(np.unique(test_y), classes)
        if unseen.size:
            raise DataError(f"{spec}: test labels {unseen.tolist()[:5]} never occur in the training data")
        test_split = _to_split(test_x, np.searchsorted(classes, test_y))

    n_val = _val_count(val_size, len(train_y), num_classes)
    _check_class_sizes(train_y, 2, f"the training data of {spec}", "a stratified validation split", classes)
    fit_idx, val_idx = _stratified_split(train_y, n_val, np.random.default_rng(seed))
    train = _to_split(train_x[fit_idx], train_y[fit_idx])
    val = _to_split(train_x[val_idx], train_y[val_idx])
    mean, std = _channel_stats(train.x)
    return DataBundle(
        name=spec,
        train=train,
        val=val,
        test=test_split,
        num_classes=num_classes,
        input_shape=tuple(train.x.shape[1:]),  # type: ignore[arg-type]
        mean=mean,
        std=std,
    )


# ---------------------------------------------------------------------------------------------
# Sources. Each returns images N×C×H×W in [0, 1] (uint8 codes or float32, see _as_images) and
# labels as an integer array, validated by _validate.


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # values are 0..16
    return _validate(x, digits.target, "digits")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataError(f"dataset file not found: {path}")
    if not path.is_file():
        raise DataError(f"dataset path is not a file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"{path} is not an .npz archive but a single .npy array; save with numpy.savez(path, x=..., y=...)"
            )
        with loaded as archive:
            keys = list(archive.keys())
            for key in ("x", "y"):
                if key not in keys:
                    found = ", ".join(keys) or "none"
                    raise DataError(
                        f"{path} has no array {key!r} (found: {found}); expected 'x' (images) and 'y' (labels)"
                    )
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as an .npz archive: {reason}") from None
    return _validate(_as_images(x, str(path)), y, str(path))


def _as_images(x: np.ndarray, source: str) -> np.ndarray:
    """Any accepted layout and value range -> N×C×H×W in [0, 1]: uint8 codes for 8-bit data
    (see the module docstring), float32 otherwise."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"x in {source} must be numeric, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        if not (x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4)):
            x = x.transpose(0, 3, 1, 2)  # channels-last -> channels-first
    else:
        raise DataError(f"x in {source} must have shape N×H×W, N×H×W×C or N×C×H×W; got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)  # 8-bit stays 8-bit: as_float scales each batch by 1/255
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size == 0:
        return x
    if not np.isfinite(x).all():
        raise DataError(f"x in {source} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= 0.0 and hi <= 1.0):
        x = (x - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(x)
    return _as_codes_if_exact(x)


def _as_codes_if_exact(x: np.ndarray) -> np.ndarray:
    """Float32 images in [0, 1] as uint8 codes when every value is exactly code/255 as ``as_float``
    computes it (so nothing changes but the memory), else ``x`` itself."""
    codes = np.rint(x * np.float32(255)).astype(np.uint8)
    decoded = codes.astype(np.float32)
    decoded /= 255
    return codes if np.array_equal(decoded, x) else x


def _validate(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check images and labels; returns labels as int64 (not yet remapped)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"y in {source} must be a 1-D array of N labels; got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"x and y in {source} differ in length: {len(x)} images but {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{source} contains no samples")
    if not np.isfinite(x).all():
        raise DataError(f"x in {source} contains NaN or infinite values")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"y in {source} contains NaN or infinite labels")
        if not (y == np.round(y)).all():
            bad = y[y != np.round(y)][0]
            raise DataError(f"labels in {source} must be integers; found {bad}")
    elif y.dtype.kind not in "biu":
        raise DataError(f"labels in {source} must be integers; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"labels in {source} must not be negative; found {y.min()}")
    if len(np.unique(y)) < 2:
        raise DataError(f"{source} has only one class (label {y[0]}); classification needs at least two")
    return x, y


def _torchvision(
    name: str, root: Path, download: bool
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    try:
        from torchvision import datasets
    except Exception as exc:  # ImportError, or a broken install failing on its extension
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"dataset {name!r} needs torchvision, which cannot be imported ({reason}); install nasagent[vision]"
        ) from None

    # split (train?) -> torchvision dataset; SVHN names its splits instead of a train flag.
    makers: dict[str, Callable[[bool], object]] = {
        "mnist": lambda train: datasets.MNIST(str(root), train=train, download=download),
        "fashion_mnist": lambda train: datasets.FashionMNIST(str(root), train=train, download=download),
        "cifar10": lambda train: datasets.CIFAR10(str(root), train=train, download=download),
        "svhn": lambda train: datasets.SVHN(str(root), split="train" if train else "test", download=download),
    }
    out = []
    for train in (True, False):
        try:
            dataset = makers[name](train)
        except ImportError as exc:  # SVHN needs scipy to read its .mat files
            raise DataError(f"dataset {name!r} needs a missing package: {exc}") from None
        except (RuntimeError, OSError, ValueError, EOFError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            how = (
                "download failed or files are corrupt"
                if download
                else "download=False and files are missing or corrupt"
            )
            raise DataError(f"cannot load {name} under {root} ({how}): {reason}") from None
        # Whole arrays at once: indexing the dataset would build one PIL image per sample.
        x = np.asarray(dataset.data)  # type: ignore[attr-defined]
        y = np.asarray(dataset.targets if hasattr(dataset, "targets") else dataset.labels)  # type: ignore[attr-defined]
        # MNIST-style data is N×H×W, CIFAR-10 N×H×W×3, SVHN N×3×H×W: _as_images reads all three.
        out.append(_validate(_as_images(x, f"{name} under {root}"), y, name))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# Splitting


def _hold_out_test(
    x: np.ndarray, y: np.ndarray, source: str
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split off a stratified test set of 20% with a fixed seed: (train_x, train_y), (test_x, test_y)."""
    classes = np.unique(y)
    # One sample each for train, validation and test.
    _check_class_sizes(y, 3, source, "stratified train/validation/test splits")
    n_test = max(len(classes), round(TEST_FRACTION * len(y)))
    keep, test = _stratified_split(y, n_test, np.random.default_rng(TEST_SEED))
    return (x[keep], y[keep]), (x[test], y[test])


def _check_class_sizes(
    y: np.ndarray, minimum: int, source: str, purpose: str, classes: np.ndarray | None = None
) -> None:
    """DataError if a class has fewer than ``minimum`` samples; ``classes`` maps remapped labels back."""
    values, counts = np.unique(y, return_counts=True)
    i = int(counts.argmin())
    if counts[i] < minimum:
        label = values[i] if classes is None else classes[values[i]]
        raise DataError(
            f"class {label} has only {counts[i]} sample(s) in {source}; {purpose} need at least {minimum} per class"
        )


def _val_count(val_size: int | float | None, n_train: int, num_classes: int) -> int:
    """The validation split's size from ``val_size`` (see load_source); ConfigError if unusable."""
    if val_size is None:
        count = min(5000, max(num_classes, round(0.2 * n_train)))
    elif isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise ConfigError(f"val_size must be a count or a fraction in (0, 1), got {val_size!r}")
    elif isinstance(val_size, (float, np.floating)):
        if not 0.0 < val_size < 1.0:
            raise ConfigError(f"val_size as a fraction must be in (0, 1), got {val_size}")
        count = round(val_size * n_train)
    else:
        count = int(val_size)
    # Every class should be able to appear in both the training and the validation split.
    if not num_classes <= count <= n_train - num_classes:
        raise ConfigError(
            f"val_size={val_size!r} gives {count} validation samples out of {n_train}; "
            f"it must be between {num_classes} and {n_train - num_classes} ({num_classes} classes)"
        )
    return count


def _stratified_split(y: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out) with ``size`` held out, each class in proportion to its count.

    Per-class counts are the ideal ``count * size / n`` rounded down, the remaining samples going
    to the classes with the largest fractional parts (largest-remainder rounding), so the
    class distribution is unchanged up to one sample per class.
    """
    values, counts = np.unique(y, return_counts=True)
    ideal = counts * size / len(y)
    take = np.floor(ideal).astype(np.int64)
    short = size - int(take.sum())
    if short > 0:
        # Ties broken by a seeded shuffle so no class is systematically favoured.
        order = rng.permutation(len(values))
        remainders = (ideal - take)[order]
        take[order[np.argsort(-remainders, kind="stable")[:short]]] += 1
    held = []
    for value, k in zip(values, take):
        members = np.flatnonzero(y == value)
        held.append(rng.permutation(members)[:k])
    held_idx = np.sort(np.concatenate(held))
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)), torch.from_numpy(y.astype(np.int64)))


def _channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the float values, one channel at a time (so 8-bit data are
    never converted whole)."""
    means, stds = [], []
    for channel in range(x.shape[1]):
        values = as_float(x[:, channel])
        means.append(float(values.mean(dtype=torch.float64)) if x.shape[0] > 0 else 0.0)
        std = float(values.std(unbiased=False)) if x.shape[0] > 0 else 1.0
        # A constant channel would divide by zero; leave it unscaled instead.
        stds.append(std if std > 1e-6 else 1.0)
    return means, stds
