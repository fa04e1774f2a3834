"""The torch module of a Neural Structure Code network (:mod:`nasagent.core.nsc`, §4.1.1-4.1.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasagent.core.nsc import ADD, AVG_POOL, CONV, CONV_FILTERS, HEAD_DROPOUT, HEAD_UNITS, MAX_POOL, NSCNetwork
from nasagent.training.normalize import Normalize, normalisation


def _pad_to(x: torch.Tensor, height: int, width: int, channels: int | None = None) -> torch.Tensor:
    """Zero-pad N x C x H x W to ``height`` x ``width`` (and ``channels``), centred, the odd pixel after."""
    dh, dw = height - x.shape[2], width - x.shape[3]
    dc = 0 if channels is None else channels - x.shape[1]
    if dh == dw == dc == 0:
        return x
    return nn.functional.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2, dc // 2, dc - dc // 2))


class _MaxPoolSame(nn.Module):
    """k x k max pooling with stride k and TensorFlow SAME padding (padded cells never win)."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        dh = -(-x.shape[2] // k) * k - x.shape[2]
        dw = -(-x.shape[3] // k) * k - x.shape[3]
        if dh or dw:
            x = nn.functional.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=float("-inf"))
        return nn.functional.max_pool2d(x, k, k)


class NSCModel(nn.Module):
    """The torch module of an :class:`NSCNetwork`: normalisation, the NSC graph, the prediction head."""

    def __init__(
        self,
        net: NSCNetwork,
        input_shape: tuple[int, int, int],
        mean: Sequence[float],
        std: Sequence[float],
        padding: str = "valid",
    ) -> None:
        super().__init__()
        shapes = net.shapes(input_shape, padding)
        same = padding == "same"
        self.layers_spec = net.layers
        self.leaf_indices = net.leaves
        self.normalize = Normalize(mean, std)
        self.ops = nn.ModuleDict()
        for layer in net.layers:
            in_channels = shapes[layer.pred1][0]
            if layer.type == CONV:
                # Pre-activation convolutional cell (footnote 2): ReLU, convolution, batch norm.
                self.ops[str(layer.index)] = nn.Sequential(
                    nn.ReLU(),
                    nn.Conv2d(in_channels, CONV_FILTERS, layer.kernel, padding=layer.kernel // 2 if same else 0),
                    nn.BatchNorm2d(CONV_FILTERS),
                )
            elif layer.type == MAX_POOL:
                pool = _MaxPoolSame(layer.kernel) if same else nn.MaxPool2d(layer.kernel, layer.kernel)
                self.ops[str(layer.index)] = pool
            elif layer.type == AVG_POOL:
                self.ops[str(layer.index)] = nn.AvgPool2d(layer.kernel, layer.kernel)
        self.out_shapes = shapes
        c, h, w = shapes[-1]
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, HEAD_UNITS),
            nn.ReLU(),
            nn.Dropout(HEAD_DROPOUT),
            nn.Linear(HEAD_UNITS, net.classes),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.normalize(x)]
        for layer in self.layers_spec:
            a = outputs[layer.pred1]
            if layer.is_merge:
                b = outputs[layer.pred2]
                h, w = max(a.shape[2], b.shape[2]), max(a.shape[3], b.shape[3])
                if layer.type == ADD:
                    c = max(a.shape[1], b.shape[1])
                    outputs.append(_pad_to(a, h, w, c) + _pad_to(b, h, w, c))
                else:
                    outputs.append(torch.cat([_pad_to(a, h, w), _pad_to(b, h, w)], dim=1))
            else:
                outputs.append(self.ops[str(layer.index)](a))
        leaves = [outputs[i] for i in self.leaf_indices]
        if len(leaves) > 1:
            h, w = max(t.shape[2] for t in leaves), max(t.shape[3] for t in leaves)
            merged = torch.cat([_pad_to(t, h, w) for t in leaves], dim=1)
        else:
            merged = leaves[0]
        return self.head(merged)


def build_nsc_model(
    net: NSCNetwork,
    input_shape: tuple[int, int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    padding: str = "valid",
) -> nn.Module:
    """Build ``net`` for inputs (C, H, W) in [0, 1]; ``mean``/``std`` default to 0 and 1 per channel;
    ``padding`` is ``"valid"`` (the authors' code) or ``"same"`` (:meth:`NSCNetwork.shapes`).

    The class count comes from the network (``net.classes``). Raises ``ConfigError`` when the
    network is invalid for this input or the statistics do not match the channels.
    """
    mean, std = normalisation(input_shape, mean, std)
    return NSCModel(net, tuple(int(v) for v in input_shape), mean, std, padding)  # type: ignore[arg-type]
