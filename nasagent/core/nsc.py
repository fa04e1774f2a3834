"""Neural Structure Code (NSC) networks: the search space of Gomez Robles & Vanschoren (§4.1, Table 1).

An NSC network is a list of layers ``(index, type, kernel, pred1, pred2)`` sorted by index, where
index 0 is the input image and every layer reads earlier ones:

=============  ====  ==========  ===========  ===========
layer          type  kernel      predecessor  predecessor 2
=============  ====  ==========  ===========  ===========
convolution    1     1, 3, 5     any earlier  --
max pooling    2     2, 3        any earlier  --
avg pooling    3     2, 3        any earlier  --
addition       5     --          any earlier  any earlier
concatenation  6     --          any earlier  any earlier
=============  ====  ==========  ===========  ===========

(Type 4, identity, is left out as in the paper; type 7, *terminal*, ends an episode of the
environment and adds nothing to the network, so the network value holds no terminal row: its
terminal is the prediction head, ``HEAD(k)``.) Unused fields are 0.

String form: ``NSC[(1,1,3,0,0), (2,2,2,1,0), (3,6,0,2,1); HEAD(10)]`` -- the layers as Table 1's
5-tuples, then the prediction head with its class count (``NSC[HEAD(10)]`` without layers), which is
part of the value so the trainer can check it against the data (``net.terminal.classes``).
``NSCNetwork.parse(str(n)) == n``.

How a network is built (§4.1.1-4.1.2), and shape rules shared with :meth:`NSCNetwork.shapes`:

* convolution: a pre-activation convolutional cell, ReLU -> k x k convolution with 32 filters and
  stride 1 -> batch normalisation (the paper's footnote 2 order);
* max pooling and average pooling: window k, stride k;
* padding, ``padding="valid"`` (the default): none anywhere, as the authors' Keras code (``Conv2D``,
  ``MaxPool2D`` and ``AveragePooling2D`` with Keras' default ``padding="valid"``): a convolution
  gives ``n - k + 1``, a pooling ``floor(n / k)``, and a layer whose window is larger than its
  input makes the network *invalid* (environment rule (e): their builder raises and the network
  earns 0). ``padding="same"``: convolutions keep the size, max pooling pads to ``ceil(n / k)``,
  average pooling stays VALID (only it can make a network invalid);
* addition and concatenation zero-pad the smaller input (centred, the odd pixel after) to the
  larger height/width -- addition also pads channels -- then add or concatenate channels;
* leaves (layers no other layer reads) are concatenated, in index order, with the same padding;
* the prediction head (§4.1.2, from BlockQNN): flatten, dense 1024 + ReLU, dropout 0.4, dense to
  the class count (the softmax is in the cross-entropy loss).

The model starts with per-channel input normalisation, like every model of :mod:`nasagent.training.build`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from nasagent.errors import ConfigError

CONV, MAX_POOL, AVG_POOL, ADD, CONCAT, TERMINAL = 1, 2, 3, 5, 6, 7
LAYER_TYPES = (CONV, MAX_POOL, AVG_POOL, ADD, CONCAT)
KERNELS: dict[int, tuple[int, ...]] = {CONV: (1, 3, 5), MAX_POOL: (2, 3), AVG_POOL: (2, 3)}
MAX_KERNEL = 5
"""k of §4.2.1: the largest kernel size (kernel one-hots have k + 1 entries)."""
NUM_TYPES = 8
"""Type one-hots have 8 entries: types 1..7 and 0 for an empty row (§4.2.1, footnote 6)."""
CONV_FILTERS = 32
HEAD_UNITS = 1024
HEAD_DROPOUT = 0.4
PADDINGS = ("valid", "same")
"""``valid``: the authors' code (Keras' default, no padding); ``same``: size-keeping convolutions."""

_NAMES = {CONV: "conv", MAX_POOL: "max-pool", AVG_POOL: "avg-pool", ADD: "add", CONCAT: "concat"}


@dataclass(frozen=True)
class NSCLayer:
    """One NSC vector: ``index`` >= 1, ``type`` from Table 1, ``kernel`` (0 for merges), predecessors."""

    index: int
    type: int
    kernel: int = 0
    pred1: int = 0
    pred2: int = 0

    def __post_init__(self) -> None:
        if self.index < 1:
            raise ConfigError(f"NSC layer index must be at least 1, got {self.index}")
        if self.type not in LAYER_TYPES:
            raise ConfigError(f"NSC layer {self.index}: type must be one of {LAYER_TYPES}, got {self.type}")
        if self.type in KERNELS and self.kernel not in KERNELS[self.type]:
            raise ConfigError(
                f"NSC layer {self.index}: {_NAMES[self.type]} kernel must be one of {KERNELS[self.type]}, "
                f"got {self.kernel}"
            )
        if self.type not in KERNELS and self.kernel != 0:
            raise ConfigError(f"NSC layer {self.index}: {_NAMES[self.type]} has no kernel, got {self.kernel}")
        if not 0 <= self.pred1 < self.index:
            raise ConfigError(f"NSC layer {self.index}: predecessor {self.pred1} is not an earlier layer")
        if self.is_merge and not 0 <= self.pred2 < self.index:
            raise ConfigError(f"NSC layer {self.index}: predecessor {self.pred2} is not an earlier layer")
        if not self.is_merge and self.pred2 != 0:
            raise ConfigError(
                f"NSC layer {self.index}: {_NAMES[self.type]} takes one predecessor, got a second ({self.pred2})"
            )

    @property
    def is_merge(self) -> bool:
        """Addition and concatenation read two predecessors."""
        return self.type in (ADD, CONCAT)

    @property
    def preds(self) -> tuple[int, ...]:
        return (self.pred1, self.pred2) if self.is_merge else (self.pred1,)

    def __str__(self) -> str:
        return f"({self.index},{self.type},{self.kernel},{self.pred1},{self.pred2})"


@dataclass(frozen=True)
class PredictionHead:
    """The terminal of every NSC network (§4.1.2): dense 1024, ReLU, dropout 0.4, dense ``classes``."""

    classes: int

    def __str__(self) -> str:
        return f"HEAD({self.classes})"


_NSC_RE = re.compile(r"\s*NSC\[(?:(.*);)?\s*HEAD\((\d+)\)\s*\]\s*", re.S)
_ROW_RE = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
_ROWS_RE = re.compile(rf"{_ROW_RE.pattern}(\s*,\s*{_ROW_RE.pattern})*")


@dataclass(frozen=True)
class NSCNetwork:
    """A network of the NSC space: layers with indices 1..n in order, and a prediction head."""

    layers: tuple[NSCLayer, ...]
    classes: int

    def __post_init__(self) -> None:
        if self.classes < 1:
            raise ConfigError(f"an NSC network needs at least one class, got {self.classes}")
        for position, layer in enumerate(self.layers, start=1):
            if layer.index != position:
                raise ConfigError(
                    f"NSC layers must be numbered 1..n in order; layer {position} has index {layer.index}"
                )

    def __str__(self) -> str:
        layers = "".join(f"{layer}, " for layer in self.layers)
        return f"NSC[{layers[:-2]}; {self.terminal}]" if layers else f"NSC[{self.terminal}]"

    @classmethod
    def parse(cls, text: str) -> NSCNetwork:
        """Read the string form back, e.g. ``NSC[(1,1,3,0,0); HEAD(10)]``; ``ConfigError`` if malformed."""
        match = _NSC_RE.fullmatch(text)
        if not match:
            raise ConfigError(f"cannot parse NSC network {text!r} (expected NSC[(i,type,kernel,p1,p2), ...; HEAD(k)])")
        body = (match.group(1) or "").strip()
        if body and not _ROWS_RE.fullmatch(body):
            raise ConfigError(
                f"cannot parse NSC network {text!r} (layers are (index,type,kernel,pred1,pred2) separated by commas)"
            )
        rows = _ROW_RE.findall(body)
        return cls(tuple(NSCLayer(*(int(v) for v in row)) for row in rows), int(match.group(2)))

    @property
    def terminal(self) -> PredictionHead:
        """The prediction head; ``terminal.classes`` is what the trainer checks against the data."""
        return PredictionHead(self.classes)

    @property
    def digest(self) -> str:
        """A stable 16-hex-digit hash of the string form: the replay dictionary's key."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def leaves(self) -> tuple[int, ...]:
        """Indices no layer reads, in order: their concatenation feeds the head (the input if empty)."""
        if not self.layers:
            return (0,)
        used = {p for layer in self.layers for p in layer.preds}
        return tuple(layer.index for layer in self.layers if layer.index not in used)

    @property
    def is_chain(self) -> bool:
        """True when every layer reads the one before it and nothing merges (a chain-structured network)."""
        return all(not layer.is_merge and layer.pred1 == layer.index - 1 for layer in self.layers)

    def shapes(self, input_shape: tuple[int, int, int], padding: str = "valid") -> list[tuple[int, int, int]]:
        """(C, H, W) of the input (position 0) and of every layer, then of the merged leaves (last),
        with ``padding`` ``"valid"`` (the authors' code) or ``"same"`` (see the module docstring).

        Raises ``ConfigError`` when the network is invalid for this input: a window larger than its
        input (VALID), or an average pooling larger than its input (SAME).
        """
        if padding not in PADDINGS:
            raise ConfigError(f"NSC padding must be one of {PADDINGS}, got {padding!r}")
        valid = padding == "valid"
        out: list[tuple[int, int, int]] = [tuple(int(v) for v in input_shape)]  # type: ignore[list-item]
        for layer in self.layers:
            c, h, w = out[layer.pred1]
            if valid and layer.type in KERNELS and layer.kernel > min(h, w):
                kind = _NAMES[layer.type]
                raise ConfigError(
                    f"layer {layer.index} of {self}: {kind} {layer.kernel}x{layer.kernel} without padding "
                    f"of a {h}x{w} representation"
                )
            if layer.type == CONV:
                out.append(
                    (CONV_FILTERS, h - layer.kernel + 1, w - layer.kernel + 1) if valid else (CONV_FILTERS, h, w)
                )
            elif layer.type == MAX_POOL:
                if valid:
                    out.append((c, h // layer.kernel, w // layer.kernel))
                else:
                    out.append((c, -(-h // layer.kernel), -(-w // layer.kernel)))
            elif layer.type == AVG_POOL:
                if layer.kernel > min(h, w):
                    raise ConfigError(
                        f"layer {layer.index} of {self}: average pooling {layer.kernel}x{layer.kernel} "
                        f"of a {h}x{w} representation"
                    )
                out.append((c, h // layer.kernel, w // layer.kernel))
            else:
                c2, h2, w2 = out[layer.pred2]
                channels = max(c, c2) if layer.type == ADD else c + c2
                out.append((channels, max(h, h2), max(w, w2)))
        leaves = [out[i] for i in self.leaves]
        out.append((sum(s[0] for s in leaves), max(s[1] for s in leaves), max(s[2] for s in leaves)))
        return out

    def is_valid(self, input_shape: tuple[int, int, int], padding: str = "valid") -> bool:
        """Whether the network can be built for inputs of ``input_shape`` (see :meth:`shapes`)."""
        try:
            self.shapes(input_shape, padding)
        except ConfigError:
            return False
        return True


__all__ = [
    "ADD",
    "AVG_POOL",
    "CONCAT",
    "CONV",
    "CONV_FILTERS",
    "HEAD_DROPOUT",
    "HEAD_UNITS",
    "KERNELS",
    "LAYER_TYPES",
    "MAX_KERNEL",
    "MAX_POOL",
    "PADDINGS",
    "NSCLayer",
    "NSCNetwork",
    "NUM_TYPES",
    "PredictionHead",
    "TERMINAL",
]
