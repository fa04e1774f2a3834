"""Turns an :class:`~nasagent.core.arch.Architecture` into a PyTorch module, as MetaQNN trains it.

The model takes float images N×C×H×W with values in [0, 1]; per-channel normalisation (or, with
``BuildOptions.gcn``, global contrast normalisation of each image) is its first module, so callers
never normalise by hand and a checkpoint carries its own statistics.

Layer semantics (and :func:`output_size`, which the search space uses to track the
representation size, so both must agree):

* ``C(n,f,s)``: convolution with TensorFlow-style SAME padding: the output is ``ceil(size / s)``;
  the padding needed is split evenly, any odd pixel going after (right/bottom). Then the activation.
  With ``conv_padding="valid"`` (the ``metaqnn-mnist`` reconstruction): no padding,
  ``floor((size - f) / s) + 1``.
* ``P(f,s)``: max pooling without padding. ``pooling="floor"`` (default): the output is
  ``floor((size - f) / s) + 1``, the size the authors' code tracks (``_calc_new_image_size``) and
  the one Table A2's parameter counts imply; ``pooling="ceil"``: ``ceil((size - f) / s) + 1``, what
  Caffe executes (their prototxt files run in ceil mode). The two differ only when the stride does
  not divide ``size - f``, and then change the size the next layers see (README, "Pooling").
* ``FC(n)``: flatten (before the first FC only), linear, activation.
* ``GAP(k)``: 1×1 convolution to ``k`` channels, then global average pooling: the logits.
* ``SM(k)``: flatten, linear to ``k`` logits; the softmax lives in the cross-entropy loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasagent.core.arch import FC, GAP, Architecture, Conv, Layer, Pool, Softmax, output_size, same_padding
from nasagent.core.nsc import NSCNetwork
from nasagent.errors import ConfigError
from nasagent.training.normalize import Normalize, normalisation
from nasagent.training.nsc_build import build_nsc_model
from nasagent.training.settings import BuildOptions


def _activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.ELU(inplace=True)


class ContrastNormalize(nn.Module):
    """Global contrast normalisation (§5, CIFAR-10 finetuning): each image minus its mean, divided by
    its standard deviation over all pixels and channels. ``bias`` (10 on the 0-255 scale, as in
    Goodfellow et al.'s maxout preprocessing the paper's comparison tables use) keeps flat images finite."""

    def __init__(self, bias: float = 10 / 255**2) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        var = flat.var(dim=1, unbiased=False).view(-1, 1, 1, 1)
        return (x - mean) / torch.sqrt(var + self.bias)


def _conv(in_ch: int, layer: Conv, h: int, w: int, padding: str = "same") -> list[nn.Module]:
    if padding == "valid":
        return [nn.Conv2d(in_ch, layer.filters, layer.kernel, layer.stride)]
    top, bottom = same_padding(h, layer.kernel, layer.stride)
    left, right = same_padding(w, layer.kernel, layer.stride)
    if top == bottom and left == right:
        return [nn.Conv2d(in_ch, layer.filters, layer.kernel, layer.stride, padding=(top, left))]
    # Asymmetric SAME padding (even kernels, or stride > 1) needs an explicit pad first.
    return [
        nn.ZeroPad2d((left, right, top, bottom)),
        nn.Conv2d(in_ch, layer.filters, layer.kernel, layer.stride),
    ]


def _dropout_after(hidden: Sequence[Layer], options: BuildOptions) -> dict[int, float]:
    """Index of the hidden layer -> dropout probability of the dropout layer that follows it."""
    if options.dropout == "fc":
        return {i: options.fc_dropout for i, layer in enumerate(hidden) if isinstance(layer, FC)}
    n = len(hidden) // 2
    return {2 * i - 1: i / (2 * n) for i in range(1, n + 1)}


def build_model(
    arch: Architecture | NSCNetwork,
    input_shape: tuple[int, int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    options: BuildOptions = BuildOptions(),
) -> nn.Module:
    """Build ``arch`` for inputs of shape ``input_shape`` = (C, H, W): an ``nn.Sequential`` for a chain
    architecture, the NAS environment's module for an ``NSCNetwork``.

    ``mean``/``std`` are per-channel statistics of the training images (defaults 0 and 1; unused
    with ``options.gcn``). Weights get Xavier (Glorot uniform) initialisation and zero biases, as in
    the paper. Raises ``ConfigError`` when the architecture does not fit the input (a pooling or
    VALID convolution window larger than the representation) or the statistics do not match the channels.
    """
    if isinstance(arch, NSCNetwork):
        return build_nsc_model(arch, input_shape, mean, std, padding=options.nsc_padding)
    mean, std = normalisation(input_shape, mean, std)
    channels, h, w = (int(v) for v in input_shape)

    modules: list[nn.Module] = [ContrastNormalize() if options.gcn else Normalize(mean, std)]
    dropout = _dropout_after(arch.hidden, options)
    features = channels  # channels while spatial, units after the first FC
    flat = False
    for i, layer in enumerate(arch.hidden):
        if isinstance(layer, Conv):
            if options.conv_padding == "valid" and layer.kernel > min(h, w):
                raise ConfigError(
                    f"layer {i + 1} {layer} of {arch} convolves a {h}x{w} representation with a larger "
                    "kernel and no padding"
                )
            modules += _conv(features, layer, h, w, options.conv_padding)
            modules.append(_activation(options.activation))
            features = layer.filters
        elif isinstance(layer, Pool):
            if layer.kernel > min(h, w):
                raise ConfigError(
                    f"layer {i + 1} {layer} of {arch} pools a {h}x{w} representation with a larger window"
                )
            modules.append(nn.MaxPool2d(layer.kernel, layer.stride, ceil_mode=options.pooling == "ceil"))
        elif isinstance(layer, FC):
            if not flat:
                modules.append(nn.Flatten())
                features, flat = features * h * w, True
            modules += [nn.Linear(features, layer.units), _activation(options.activation)]
            features = layer.units
        h = output_size(h, layer, options.pooling, options.conv_padding)
        w = output_size(w, layer, options.pooling, options.conv_padding)
        if i in dropout:
            modules.append(nn.Dropout(dropout[i]))

    terminal = arch.terminal
    if isinstance(terminal, GAP):
        modules += [nn.Conv2d(features, terminal.classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    elif isinstance(terminal, Softmax):
        if not flat:
            modules.append(nn.Flatten())
            features = features * h * w
        modules.append(nn.Linear(features, terminal.classes))

    model = nn.Sequential(*modules)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters (buffers such as the normalisation statistics excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["BuildOptions", "ContrastNormalize", "build_model", "count_params"]
