"""load_dataset: digits, user .npz files in every layout, every kind of bad data, torchvision formats."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasagent.errors import ConfigError, DataError
from nasagent.training.data import DataBundle, load_dataset
from nasagent.training.sources import as_float


def class_fractions(y: torch.Tensor, k: int) -> np.ndarray:
    return np.bincount(y.numpy(), minlength=k) / len(y)


def sorted_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_ranges_and_statistics(tmp_path: Path) -> None:
    data = load_dataset("digits", tmp_path)
    assert data.name == "digits" and data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert data.test is not None
    # 20% test (359 of 1797), then the default validation size: 20% of the remaining 1438.
    assert (len(data.train), len(data.val), len(data.test)) == (1150, 288, 359)
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
        assert set(split.y.unique().tolist()) == set(range(10))
    assert data.mean == pytest.approx([data.train.x.mean().item()], rel=1e-5)
    assert data.std == pytest.approx([data.train.x.std(unbiased=False).item()], rel=1e-5)


def test_digits_splits_partition_the_data(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    data = load_dataset("digits", tmp_path)
    parts = np.concatenate([s.x.numpy() for s in (data.train, data.val, data.test)])  # type: ignore[union-attr]
    original = (load_digits().images / 16.0).astype(np.float32)[:, None]
    np.testing.assert_array_equal(sorted_rows(parts), sorted_rows(original))


def test_digits_validation_is_stratified(tmp_path: Path) -> None:
    data = load_dataset("digits", tmp_path, val_size=150, seed=3)
    assert len(data.val) == 150
    train, val = class_fractions(data.train.y, 10), class_fractions(data.val.y, 10)
    assert np.abs(train - val).max() < 0.01


def test_digits_is_deterministic_per_seed(tmp_path: Path) -> None:
    a, b = load_dataset("digits", tmp_path, seed=1), load_dataset("digits", tmp_path, seed=1)
    c = load_dataset("digits", tmp_path, seed=2)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)
    # The held-out test split does not move with the search seed.
    assert torch.equal(a.test.x, c.test.x)  # type: ignore[union-attr]


@pytest.mark.parametrize("val_size, expected", [(100, 100), (0.1, 144), (10, 10)])
def test_val_size(tmp_path: Path, val_size: int | float, expected: int) -> None:
    assert len(load_dataset("digits", tmp_path, val_size=val_size).val) == expected


@pytest.mark.parametrize("val_size", [0, -5, 9, 1438, 5000, 0.0, 1.0, 1.5, -0.1, True, "100"])
def test_bad_val_size_is_config_error(tmp_path: Path, val_size: object) -> None:
    with pytest.raises(ConfigError, match="val_size") as err:
        load_dataset("digits", tmp_path, val_size=val_size)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_unknown_spec_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*digits.*npz:PATH.*mnist.*cifar10.*svhn"):
        load_dataset("imagenet", tmp_path)


# --- npz --------------------------------------------------------------------------------------


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def labels(n: int, k: int = 3) -> np.ndarray:
    return np.arange(n) % k


def test_npz_grayscale_nhw_uint8(tmp_path: Path) -> None:
    x = np.full((30, 5, 6), 51, dtype=np.uint8)
    data = load_dataset(save_npz(tmp_path / "d.npz", x=x, y=labels(30)), tmp_path)
    assert data.input_shape == (1, 5, 6) and data.num_classes == 3
    assert data.train.x.dtype == torch.uint8  # 8-bit data stay 8-bit: a quarter of float32's memory
    assert torch.allclose(as_float(data.train.x), torch.tensor(0.2))
    assert len(data.train) + len(data.val) + len(data.test) == 30  # type: ignore[arg-type]


def test_npz_channels_last(tmp_path: Path) -> None:
    x = np.zeros((30, 5, 6, 3), dtype=np.uint8)
    x[..., 1] = 255  # green channel full
    x[:, 0, 5, 2] = 255  # blue: top-right pixel
    data = load_dataset(save_npz(tmp_path / "d.npz", x=x, y=labels(30)), tmp_path)
    assert data.input_shape == (3, 5, 6)
    img = as_float(data.train.x[0])
    assert img[0].max() == 0 and img[1].min() == 1
    assert img[2, 0, 5] == 1 and img[2].sum() == 1


def test_npz_channels_first_float_in_unit_range_is_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((30, 3, 5, 6)).astype(np.float64)
    data = load_dataset(save_npz(tmp_path / "d.npz", x=x, y=labels(30)), tmp_path)
    assert data.input_shape == (3, 5, 6)
    everything = np.concatenate([s.x.numpy() for s in (data.train, data.val, data.test)])  # type: ignore[union-attr]
    np.testing.assert_allclose(sorted_rows(everything), sorted_rows(x.astype(np.float32)))


def test_npz_other_ranges_are_min_max_scaled(tmp_path: Path) -> None:
    x = np.linspace(-3, 5, 30 * 16).reshape(30, 4, 4)
    data = load_dataset(save_npz(tmp_path / "d.npz", x=x, y=labels(30)), tmp_path)
    everything = torch.cat([data.train.x, data.val.x, data.test.x])  # type: ignore[union-attr]
    assert everything.min() == 0 and everything.max() == pytest.approx(1.0)
    int_data = load_dataset(save_npz(tmp_path / "i.npz", x=(x * 10).astype(np.int32), y=labels(30)), tmp_path)
    assert int_data.train.x.min() >= 0 and int_data.train.x.max() <= 1


def test_npz_labels_remapped_to_contiguous(tmp_path: Path) -> None:
    y = np.where(np.arange(40) % 2 == 0, 3, 7).astype(np.float32)  # integer-valued floats are fine
    data = load_dataset(save_npz(tmp_path / "d.npz", x=np.zeros((40, 4, 4)), y=y), tmp_path)
    assert data.num_classes == 2
    for split in (data.train, data.val, data.test):
        assert set(split.y.tolist()) == {0, 1}  # type: ignore[union-attr]


def test_npz_path_with_user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    save_npz(tmp_path / "d.npz", x=np.zeros((30, 4, 4)), y=labels(30))
    assert load_dataset("npz:~/d.npz", tmp_path).num_classes == 3


def write_bytes(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return f"npz:{path}"


def truncated_npz(path: Path) -> str:
    np.savez(path, x=np.zeros((30, 4, 4)), y=labels(30))
    content = path.read_bytes()
    return write_bytes(path, content[: len(content) // 2])


def npy_not_npz(path: Path) -> str:
    with open(path, "wb") as f:
        np.save(f, np.zeros((30, 4, 4)))
    return f"npz:{path}"


BAD_NPZ = {
    "missing file": (lambda p: f"npz:{p}", "not found"),
    "not a zip": (lambda p: write_bytes(p, b"hello, this is not numpy"), "cannot read .*as an .npz"),
    "truncated zip": (truncated_npz, "cannot read .*as an .npz"),
    "a .npy": (npy_not_npz, "not an .npz archive"),
    "pickled objects": (lambda p: save_npz(p, x=np.array([{"a": 1}] * 30, dtype=object), y=labels(30)), "cannot read"),
    "missing x": (lambda p: save_npz(p, images=np.zeros((30, 4, 4)), y=labels(30)), "no array 'x' .*found: images, y"),
    "missing y": (lambda p: save_npz(p, x=np.zeros((30, 4, 4))), "no array 'y'"),
    "length mismatch": (lambda p: save_npz(p, x=np.zeros((30, 4, 4)), y=labels(29)), "30 images but 29 labels"),
    "rank 2": (lambda p: save_npz(p, x=np.zeros((30, 16)), y=labels(30)), "got shape \\(30, 16\\)"),
    "rank 5": (lambda p: save_npz(p, x=np.zeros((30, 1, 4, 4, 1)), y=labels(30)), "N×H×W, N×H×W×C or N×C×H×W"),
    "string images": (lambda p: save_npz(p, x=np.full((30, 4, 4), "a"), y=labels(30)), "must be numeric"),
    "NaN": (lambda p: save_npz(p, x=np.where(np.arange(480).reshape(30, 4, 4) == 7, np.nan, 0.5), y=labels(30)), "NaN"),
    "infinite": (lambda p: save_npz(p, x=np.full((30, 4, 4), np.inf), y=labels(30)), "NaN or infinite"),
    "fractional labels": (lambda p: save_npz(p, x=np.zeros((30, 4, 4)), y=labels(30) + 0.5), "integers; found 0.5"),
    "string labels": (lambda p: save_npz(p, x=np.zeros((30, 4, 4)), y=np.array(["cat"] * 30)), "must be integers"),
    "NaN labels": (lambda p: save_npz(p, x=np.zeros((30, 4, 4)), y=np.full(30, np.nan)), "NaN or infinite labels"),
    "negative labels": (lambda p: save_npz(p, x=np.zeros((30, 4, 4)), y=labels(30) - 1), "negative; found -1"),
    "2-D labels": (lambda p: save_npz(p, x=np.zeros((30, 4, 4)), y=np.zeros((30, 2))), "1-D"),
    "one class": (lambda p: save_npz(p, x=np.zeros((30, 4, 4)), y=np.full(30, 4)), "only one class \\(label 4\\)"),
    "no samples": (lambda p: save_npz(p, x=np.zeros((0, 4, 4)), y=np.zeros(0, dtype=int)), "no samples"),
    "tiny class": (
        lambda p: save_npz(p, x=np.zeros((31, 4, 4)), y=np.append(labels(30), 9)),
        "class 9 has only 1 sample.*at least 3 per class",
    ),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_gives_one_clear_line(tmp_path: Path, case: str) -> None:
    make, message = BAD_NPZ[case]
    spec = make(tmp_path / "bad.npz")
    with pytest.raises(DataError, match=message) as err:
        load_dataset(spec, tmp_path)
    assert "\n" not in str(err.value)
    if case != "tiny class":
        assert "bad.npz" in str(err.value)  # says where


def test_val_size_must_leave_every_class_room_in_training(tmp_path: Path) -> None:
    # 6 samples, 2 classes: 2 go to test, and 3 of the remaining 4 for validation is too many.
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset(save_npz(tmp_path / "d.npz", x=np.zeros((6, 2, 2)), y=labels(6, 2)), tmp_path, val_size=3)


# --- torchvision datasets, from fake files in torchvision's on-disk formats --------------------


def torchvision_datasets():  # type: ignore[no-untyped-def]
    """torchvision.datasets, or skip: torchvision is optional (and broken on CPU-only torch here)."""
    try:
        from torchvision import datasets
    except Exception as exc:  # ImportError, or its compiled extension failing to load
        pytest.skip(f"torchvision not importable: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    return datasets


def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: zero, zero, type (8 = ubyte), rank, then big-endian int32 sizes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("spec, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_from_raw_idx_files(tmp_path: Path, spec: str, folder: str) -> None:
    torchvision_datasets()
    raw = tmp_path / folder / "raw"
    train_x, test_x = fake_images(50, (28, 28), 0), fake_images(20, (28, 28), 1)
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(50) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    data = load_dataset(spec, tmp_path, download=False)
    check_official_split(data, (1, 28, 28), train_n=50, test_n=20)
    np.testing.assert_allclose(data.test.x[3, 0].numpy(), test_x[3] / 255, rtol=1e-6)  # type: ignore[union-attr]
    assert data.test.y[3] == 3  # type: ignore[union-attr]


def test_cifar10_from_python_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = torchvision_datasets()
    # The fake files cannot match the real MD5 sums torchvision checks.
    monkeypatch.setattr(sys.modules[datasets.CIFAR10.__module__], "check_integrity", lambda *a, **k: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for i, name in enumerate(
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    ):
        images = fake_images(10, (3, 32, 32), i)  # channel planes, as in the real files
        batches[name] = images
        entry = {"data": images.reshape(10, 3072), "labels": list(range(10)), "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    data = load_dataset("cifar10", tmp_path, download=False)
    check_official_split(data, (3, 32, 32), train_n=50, test_n=10)
    np.testing.assert_allclose(data.test.x[4].numpy(), batches["test_batch"][4] / 255, rtol=1e-6)  # type: ignore[union-attr]
    assert data.test.y[4] == 4  # type: ignore[union-attr]


def test_svhn_from_mat_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = torchvision_datasets()
    scipy_io = pytest.importorskip("scipy.io")
    monkeypatch.setattr(sys.modules[datasets.SVHN.__module__], "check_integrity", lambda *a, **k: True)
    images = {}
    for split, n in (("train", 50), ("test", 20)):
        x = fake_images(n, (3, 32, 32), n)
        images[split] = x
        # The .mat layout is H×W×C×N, labels N×1 in 1..10 where 10 stands for the digit 0.
        y = (np.arange(n) % 10 + 1).reshape(n, 1)
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y})
    data = load_dataset("svhn", tmp_path, download=False)
    check_official_split(data, (3, 32, 32), train_n=50, test_n=20)
    np.testing.assert_allclose(as_float(data.test.x[5]).numpy(), images["test"][5] / 255, rtol=1e-6)  # type: ignore[union-attr]
    assert data.test.y[5] == 6 and data.test.y[9] == 0  # type: ignore[union-attr]  # label 10 -> digit 0 -> class 0


def check_official_split(data: DataBundle, shape: tuple[int, int, int], train_n: int, test_n: int) -> None:
    assert data.input_shape == shape and data.num_classes == 10
    assert data.test is not None and len(data.test) == test_n
    assert len(data.train) + len(data.val) == train_n
    assert len(data.val) == 10  # max(num_classes, round(0.2 * train_n))
    assert set(data.val.y.tolist()) == set(range(10))
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.uint8  # 8-bit images are held as codes (as_float: values in [0, 1])


@pytest.mark.parametrize("spec", ["mnist", "fashion_mnist", "cifar10", "svhn"])
def test_torchvision_missing_files_without_download(tmp_path: Path, spec: str) -> None:
    torchvision_datasets()
    if spec == "svhn":
        pytest.importorskip("scipy.io")
    with pytest.raises(DataError, match=f"cannot load {spec} under .*download=False") as err:
        load_dataset(spec, tmp_path, download=False)
    assert "\n" not in str(err.value)


def test_torchvision_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(DataError, match="'cifar10' needs torchvision.*nasagent\\[vision\\]"):
        load_dataset("cifar10", tmp_path, download=False)
