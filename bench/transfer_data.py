"""Generated image datasets for the transfer experiment (bench/transfer.py), of different kinds.

Seed 003's transfer claim needs datasets the meta-trained policy never saw, and training datasets
that differ from each other (the paper's were Omniglot, VGG Flower and DTD: characters, objects,
textures; the unseen ones aircraft and birds). Here every set is 12×12 grayscale (or scikit-learn's
8×8 ``digits``), small enough for 2 CPU cores, each a different *kind* of task:

* ``shapes``   (train) six geometric shapes, filled or hollow, at random position, size, brightness;
* ``gratings`` (train) eight oriented sinusoidal textures (4 orientations × 2 frequencies), random phase;
* ``digits``   (train) scikit-learn's 8×8 handwritten digits (a real dataset, different size);
* ``glyphs``   (unseen) ten random stroke "characters" (fixed per class), drawn with affine jitter;
* ``counts``   (unseen) how many dots (1-6) an image holds: counting, not recognising a form.

All are deterministic for their seed, saved as ``.npz`` (``x`` N×12×12 float32 in [0, 1], ``y``
int labels) and read by nasagent's ``npz:PATH`` source, which holds out its fixed 20% test split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZE = 12
NOISE = 0.3


def _finish(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    """Random brightness times the clean image plus Gaussian noise, clipped to [0, 1]."""
    brightness = rng.uniform(0.5, 1.0)
    return np.clip(brightness * clean + rng.normal(0, NOISE, clean.shape), 0, 1).astype(np.float32)


def _labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    y = np.arange(n) % classes
    rng.shuffle(y)
    return y


def shape_mask(label: int, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """The pixels of shape ``label`` (0 filled square, 1 hollow square, 2 disc, 3 ring, 4 plus, 5 X)
    of radius ``r``, given each pixel's offset ``dy``, ``dx`` from the centre (both ``shapes`` sets)."""
    d = np.hypot(dy, dx)
    box = (abs(dy) <= r) & (abs(dx) <= r)
    return [
        box,
        box & ~((abs(dy) <= r - 1.5) & (abs(dx) <= r - 1.5)),
        d <= r,
        (d <= r) & (d >= r - 1.5),
        ((abs(dy) <= 0.8) & (abs(dx) <= r)) | ((abs(dx) <= 0.8) & (abs(dy) <= r)),
        ((abs(dy - dx) <= 1.0) | (abs(dy + dx) <= 1.0)) & box,
    ][label]


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Filled square, hollow square, disc, ring, plus, X (the comparison's ``shapes`` kind)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    y = _labels(rng, n, 6)
    x = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        r = rng.uniform(2.0, 4.5)
        cy, cx = rng.uniform(r, SIZE - 1 - r, 2)
        dy, dx = yy - cy, xx - cx
        mask = shape_mask(int(y[i]), dy, dx, r)
        x[i] = _finish(rng, mask.astype(np.float32))
    return x, y


def gratings(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sinusoidal stripes: class = orientation (0°, 45°, 90°, 135°) × period (8 or 4 px),
    orientation jittered by ±10° and phase random, so only the texture's direction and scale tell."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    y = _labels(rng, n, 8)
    x = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        angle = np.deg2rad(45.0 * (y[i] % 4) + rng.uniform(-10, 10))
        period = 8.0 if y[i] < 4 else 4.0
        u = xx * np.cos(angle) + yy * np.sin(angle)
        clean = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        x[i] = _finish(rng, clean)
    return x, y


def _draw_segment(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Rasterise the segment a-b (y, x) onto ``img`` with 1-pixel width."""
    steps = int(np.ceil(np.abs(b - a).max() * 2)) + 1
    for t in np.linspace(0.0, 1.0, steps):
        py, px = np.rint(a + t * (b - a)).astype(int)
        if 0 <= py < SIZE and 0 <= px < SIZE:
            img[py, px] = 1.0


def glyphs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten "characters": each class a fixed random polyline of 4 strokes (drawn from the class's own
    seed), shown rotated by ±15°, scaled by 0.8-1.1 and shifted by ±1.5 px."""
    rng = np.random.default_rng(seed)
    templates = [np.random.default_rng(1000 + k).uniform(-3.5, 3.5, (5, 2)) for k in range(10)]
    y = _labels(rng, n, 10)
    x = np.zeros((n, SIZE, SIZE), np.float32)
    centre = np.array([SIZE / 2 - 0.5, SIZE / 2 - 0.5])
    for i in range(n):
        theta = np.deg2rad(rng.uniform(-15, 15))
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        points = templates[y[i]] @ rot.T * rng.uniform(0.8, 1.1) + centre + rng.uniform(-1.5, 1.5, 2)
        clean = np.zeros((SIZE, SIZE), np.float32)
        for a, b in zip(points[:-1], points[1:], strict=True):
            _draw_segment(clean, a, b)
        x[i] = _finish(rng, clean)
    return x, y


def counts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-6 non-overlapping 2×2 dots at random places; the label is their number minus one."""
    rng = np.random.default_rng(seed)
    y = _labels(rng, n, 6)
    x = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        clean = np.zeros((SIZE, SIZE), np.float32)
        placed = 0
        while placed < y[i] + 1:
            py, px = rng.integers(0, SIZE - 1, 2)
            if clean[max(py - 1, 0) : py + 3, max(px - 1, 0) : px + 3].any():
                continue  # keep dots apart so that the count is unambiguous
            clean[py : py + 2, px : px + 2] = 1.0
            placed += 1
        x[i] = _finish(rng, clean)
    return x, y


GENERATORS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray]]] = {
    "shapes": shapes,
    "gratings": gratings,
    "glyphs": glyphs,
    "counts": counts,
}
"""Generated kinds by name; ``digits`` is nasagent's own source and needs no file."""


def dataset_spec(name: str, directory: Path, n: int, seed: int = 0) -> str:
    """The ``--dataset`` value of a transfer dataset, generating its ``.npz`` under ``directory`` once."""
    if name == "digits":
        return "digits"
    if name not in GENERATORS:
        raise ValueError(f"unknown transfer dataset {name!r} (known: digits, {', '.join(GENERATORS)})")
    path = Path(directory) / f"{name}{SIZE}-n{n}-s{seed}.npz"
    if not path.exists():
        x, y = GENERATORS[name](n, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, x=x, y=y)
        tmp.replace(path)
    return f"npz:{path}"
