"""What a MetaQNN architecture costs, layer by layer, without building it: output shapes, trainable
parameters and multiply-accumulates (MACs) of one forward pass of one image.

The numbers follow :mod:`nasagent.training.build` exactly (``count_params`` of the built model
equals :func:`total_params`; the tests check it): convolutions have ``C_in * k * k * filters``
weights plus a bias per filter; poolings and dropout have none; the first FC layer flattens the
map; ``GAP(K)`` is a 1x1 convolution to K channels then an average; ``SM(K)`` a linear layer to K
logits. MACs count the multiplications of convolutions and linear layers (``out_h * out_w *
C_in * k * k * filters`` for a convolution, ``inputs * units`` for a linear layer); poolings and
activations do comparisons and additions only and count 0. The per-channel input normalisation,
a buffer-only first layer, is left out.

Used by ``nasagent arch check``; pure Python, so the command needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from nasagent.core.arch import FC, GAP, Architecture, Conv, Pool, Softmax, output_size
from nasagent.errors import ConfigError


@dataclass(frozen=True)
class LayerCost:
    """One layer: its output shape (C, H, W) (FC and terminals: (units, 1, 1)), parameters and MACs."""

    layer: str
    output: tuple[int, int, int]
    params: int
    macs: int


def layer_costs(
    arch: Architecture, input_shape: tuple[int, int, int], pooling: str = "floor", padding: str = "same"
) -> list[LayerCost]:
    """The cost of every layer of ``arch`` for inputs (C, H, W), sizes shrinking as ``pooling`` and
    ``padding`` say (:func:`nasagent.core.arch.output_size`). ConfigError when a layer's window is
    larger than its input (the builder refuses such a network too)."""
    channels, h, w = (int(v) for v in input_shape)
    flat: int | None = None  # inputs of the next linear layer once the map has been flattened
    rows: list[LayerCost] = []
    for position, layer in enumerate(arch.layers, start=1):
        if (
            isinstance(layer, (Conv, Pool))
            and layer.kernel > min(h, w)
            and (isinstance(layer, Pool) or padding == "valid")
        ):
            raise ConfigError(f"layer {position} {layer} has a {layer.kernel}x{layer.kernel} window on a {h}x{w} map")
        if isinstance(layer, Conv):
            h2, w2 = output_size(h, layer, pooling, padding), output_size(w, layer, pooling, padding)
            weights = channels * layer.kernel * layer.kernel * layer.filters
            rows.append(LayerCost(str(layer), (layer.filters, h2, w2), weights + layer.filters, h2 * w2 * weights))
            channels, h, w = layer.filters, h2, w2
        elif isinstance(layer, Pool):
            h, w = output_size(h, layer, pooling, padding), output_size(w, layer, pooling, padding)
            rows.append(LayerCost(str(layer), (channels, h, w), 0, 0))
        elif isinstance(layer, GAP):
            weights = channels * layer.classes
            rows.append(LayerCost(str(layer), (layer.classes, 1, 1), weights + layer.classes, h * w * weights))
        elif isinstance(layer, (FC, Softmax)):
            units = layer.units if isinstance(layer, FC) else layer.classes
            inputs = channels * h * w if flat is None else flat
            rows.append(LayerCost(str(layer), (units, 1, 1), inputs * units + units, inputs * units))
            flat = units
    return rows


def total_params(costs: list[LayerCost]) -> int:
    """Trainable parameters of the whole network."""
    return sum(c.params for c in costs)


def total_macs(costs: list[LayerCost]) -> int:
    """Multiply-accumulates of one forward pass of one image."""
    return sum(c.macs for c in costs)
