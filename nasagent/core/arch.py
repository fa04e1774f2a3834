"""Architecture value objects: layers, the MetaQNN paper's string form, parsing and hashing.

An architecture is an immutable tuple of layers ending in exactly one terminal layer
(``GAP`` or ``SM``). Its string form is the paper's, e.g. ``[C(64,3,1), P(2,2), FC(128), SM(10)]``,
and ``Architecture.parse(str(a)) == a`` for every architecture.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from nasagent.errors import ConfigError


@dataclass(frozen=True)
class Conv:
    """Convolution with ``filters`` output channels, square ``kernel``, ``stride``; SAME padding (or VALID,
    a space's choice: see :func:`output_size`), then the activation."""

    filters: int
    kernel: int
    stride: int

    def __str__(self) -> str:
        return f"C({self.filters},{self.kernel},{self.stride})"


@dataclass(frozen=True)
class Pool:
    """Max pooling with square ``kernel`` and ``stride``, no padding; the output size rounds down as the
    authors' code tracks it, or up as Caffe runs it (a space's choice: see :func:`output_size`)."""

    kernel: int
    stride: int

    def __str__(self) -> str:
        return f"P({self.kernel},{self.stride})"


@dataclass(frozen=True)
class FC:
    """Fully connected layer with ``units`` neurons and ReLU."""

    units: int

    def __str__(self) -> str:
        return f"FC({self.units})"


@dataclass(frozen=True)
class GAP:
    """Terminal: 1x1 convolution to ``classes`` channels, then global average pooling to logits."""

    classes: int

    def __str__(self) -> str:
        return f"GAP({self.classes})"


@dataclass(frozen=True)
class Softmax:
    """Terminal: flatten, then a linear classifier over ``classes`` (softmax lives in the loss)."""

    classes: int

    def __str__(self) -> str:
        return f"SM({self.classes})"


Layer = Conv | Pool | FC | GAP | Softmax
Terminal = GAP | Softmax

_LAYER_RE = re.compile(r"\s*(C|P|FC|GAP|SM)\(\s*(\d+(?:\s*,\s*\d+)*)\s*\)\s*")
_ARITY = {"C": 3, "P": 2, "FC": 1, "GAP": 1, "SM": 1}


def parse_layer(text: str) -> Layer:
    """Parse one layer in the paper's form, e.g. ``C(64,3,1)``."""
    match = _LAYER_RE.fullmatch(text)
    if not match:
        raise ConfigError(f"not a layer: {text.strip()!r} (expected C(n,f,s), P(f,s), FC(n), GAP(k) or SM(k))")
    kind, args = match.group(1), [int(a) for a in match.group(2).split(",")]
    if len(args) != _ARITY[kind] or min(args) < 1:
        raise ConfigError(f"bad arguments in layer {text.strip()!r}")
    if kind == "C":
        return Conv(*args)
    if kind == "P":
        return Pool(*args)
    if kind == "FC":
        return FC(*args)
    if kind == "GAP":
        return GAP(*args)
    return Softmax(*args)


@dataclass(frozen=True)
class Architecture:
    """A CNN topology: hidden layers followed by exactly one terminal layer."""

    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        if not self.layers or not isinstance(self.layers[-1], (GAP, Softmax)):
            raise ConfigError(f"architecture must end in GAP(k) or SM(k): {self}")
        if any(isinstance(layer, (GAP, Softmax)) for layer in self.layers[:-1]):
            raise ConfigError(f"terminal layer before the end: {self}")
        after_fc = False
        for layer in self.layers[:-1]:
            if after_fc and not isinstance(layer, FC):
                raise ConfigError(f"only FC layers may follow an FC layer: {self}")
            after_fc = after_fc or isinstance(layer, FC)
        if after_fc and isinstance(self.layers[-1], GAP):
            raise ConfigError(f"GAP cannot follow an FC layer: {self}")

    def __str__(self) -> str:
        return "[" + ", ".join(str(layer) for layer in self.layers) + "]"

    @classmethod
    def parse(cls, text: str) -> Architecture:
        """Parse the paper's form, e.g. ``[C(64,3,1), P(2,2), SM(10)]``."""
        body = text.strip()
        if not (body.startswith("[") and body.endswith("]")):
            raise ConfigError(f"architecture must be written in brackets: {text!r}")
        parts = re.findall(r"[A-Z]+\([^)]*\)", body[1:-1])
        if ", ".join(parts).replace(" ", "") != body[1:-1].replace(" ", ""):
            raise ConfigError(f"cannot parse architecture: {text!r}")
        return cls(tuple(parse_layer(p) for p in parts))

    @property
    def hidden(self) -> tuple[Layer, ...]:
        """The layers before the terminal layer."""
        return self.layers[:-1]

    @property
    def terminal(self) -> Terminal:
        return self.layers[-1]  # type: ignore[return-value]

    @property
    def digest(self) -> str:
        """A stable 16-hex-digit hash of the string form: the replay dictionary's key."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.layers)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF-style SAME padding (before, after) along one axis so the output is ``ceil(size / stride)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


POOLING_MODES = ("floor", "ceil")
CONV_PADDINGS = ("same", "valid")


def output_size(n: int, layer: Layer, pooling: str = "floor", padding: str = "same") -> int:
    """The spatial size (along one axis) after ``layer`` given input size ``n``, exactly as built.

    Conv: ``padding="same"`` gives ``ceil(n / s)``; ``"valid"`` (no padding) ``floor((n - k) / s) + 1``,
    below 1 when the kernel is larger than the input. Pool, ``pooling="floor"`` (the default):
    ``floor((n - k) / s) + 1``, the authors' ``ceil((n - k + 1) / s)`` (their ``_calc_new_image_size``)
    and PyTorch's default. ``pooling="ceil"``: ``ceil((n - k) / s) + 1``, less one if the last window
    would start past the input: what Caffe, the paper's framework, executes (PyTorch's ``ceil_mode``).
    FC, GAP and SM leave the size unchanged (they end the spatial part of the network).
    """
    if pooling not in POOLING_MODES or padding not in CONV_PADDINGS:
        raise ConfigError(f"pooling must be floor|ceil and padding same|valid, got {pooling!r}, {padding!r}")
    if isinstance(layer, Conv):
        if padding == "valid":
            return (n - layer.kernel) // layer.stride + 1
        return -(-n // layer.stride)
    if isinstance(layer, Pool):
        if pooling == "floor":
            return (n - layer.kernel) // layer.stride + 1
        out = -(-(n - layer.kernel) // layer.stride) + 1
        if (out - 1) * layer.stride >= n:
            out -= 1
        return out
    return n
