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

NSC networks (the NAS environment's) are priced by :func:`nsc_cost` the same way.

Used by ``nasagent arch check``, the limits of a search (``--max-params``, ``--max-macs``:
:mod:`nasagent.spaces.limited`) and the trial worker (every trial records its MACs); pure Python,
so none of them needs torch for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nasagent.core.arch import FC, GAP, Architecture, Conv, Layer, Pool, output_size
from nasagent.core.nsc import CONV, CONV_FILTERS, HEAD_UNITS, NSCNetwork
from nasagent.errors import ConfigError


@dataclass(frozen=True)
class LayerCost:
    """One layer: its output shape (C, H, W) (FC and terminals: (units, 1, 1)), parameters and MACs."""

    layer: str
    output: tuple[int, int, int]
    params: int
    macs: int


Shape = tuple[int, int, int]
"""(C, H, W) of a representation."""


def layer_step(
    layer: Layer, shape: Shape, flat: int | None, pooling: str = "floor", padding: str = "same"
) -> tuple[LayerCost, Shape, int | None]:
    """One layer's cost on a representation of ``shape`` (``flat``: the units of the previous
    linear layer once the map has been flattened, else None), with the shape and ``flat`` after it.

    The walk of :func:`layer_costs`, one layer at a time, so that a search can price a prefix as it
    grows (:mod:`nasagent.spaces.limited`). ConfigError when a window is larger than its input."""
    channels, h, w = shape
    if isinstance(layer, (Conv, Pool)) and layer.kernel > min(h, w) and (isinstance(layer, Pool) or padding == "valid"):
        raise ConfigError(f"{layer} has a {layer.kernel}x{layer.kernel} window on a {h}x{w} map")
    if isinstance(layer, Conv):
        h2, w2 = output_size(h, layer, pooling, padding), output_size(w, layer, pooling, padding)
        weights = channels * layer.kernel * layer.kernel * layer.filters
        return (
            LayerCost(str(layer), (layer.filters, h2, w2), weights + layer.filters, h2 * w2 * weights),
            (
                layer.filters,
                h2,
                w2,
            ),
            flat,
        )
    if isinstance(layer, Pool):
        h2, w2 = output_size(h, layer, pooling, padding), output_size(w, layer, pooling, padding)
        return LayerCost(str(layer), (channels, h2, w2), 0, 0), (channels, h2, w2), flat
    if isinstance(layer, GAP):
        weights = channels * layer.classes
        return LayerCost(str(layer), (layer.classes, 1, 1), weights + layer.classes, h * w * weights), shape, flat
    units = layer.units if isinstance(layer, FC) else layer.classes
    inputs = channels * h * w if flat is None else flat
    return LayerCost(str(layer), (units, 1, 1), inputs * units + units, inputs * units), shape, units


def layer_costs(
    arch: Architecture, input_shape: tuple[int, int, int], pooling: str = "floor", padding: str = "same"
) -> list[LayerCost]:
    """The cost of every layer of ``arch`` for inputs (C, H, W), sizes shrinking as ``pooling`` and
    ``padding`` say (:func:`nasagent.core.arch.output_size`). ConfigError when a layer's window is
    larger than its input (the builder refuses such a network too)."""
    shape: Shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    flat: int | None = None
    rows: list[LayerCost] = []
    for position, layer in enumerate(arch.layers, start=1):
        try:
            row, shape, flat = layer_step(layer, shape, flat, pooling, padding)
        except ConfigError as exc:
            raise ConfigError(f"layer {position} {exc}") from None
        rows.append(row)
    return rows


def total_params(costs: list[LayerCost]) -> int:
    """Trainable parameters of the whole network."""
    return sum(c.params for c in costs)


def total_macs(costs: list[LayerCost]) -> int:
    """Multiply-accumulates of one forward pass of one image."""
    return sum(c.macs for c in costs)


def nsc_cost(net: NSCNetwork, input_shape: tuple[int, int, int], padding: str = "valid") -> tuple[int, int]:
    """(trainable parameters, MACs of one image) of an NSC network as :mod:`nasagent.training.nsc_build`
    builds it: each convolution ``C_in * k * k * 32`` weights, 32 biases and batch normalisation's 64
    scales and shifts, ``out_h * out_w * C_in * k * k * 32`` MACs; poolings, additions and
    concatenations none; the head a dense layer from the flattened merged leaves to 1024 units and one
    to the classes. ConfigError when the network is invalid for this input (:meth:`NSCNetwork.shapes`)."""
    shapes = net.shapes(input_shape, padding)
    params = macs = 0
    for layer, (_, h, w) in zip(net.layers, shapes[1:]):
        if layer.type == CONV:
            weights = shapes[layer.pred1][0] * layer.kernel * layer.kernel * CONV_FILTERS
            params += weights + 3 * CONV_FILTERS
            macs += h * w * weights
    c, h, w = shapes[-1]
    head = c * h * w * HEAD_UNITS + HEAD_UNITS * net.classes
    return params + head + HEAD_UNITS + net.classes, macs + head


def network_cost(
    network: Architecture | NSCNetwork,
    input_shape: tuple[int, int, int],
    pooling: str = "floor",
    padding: str = "same",
    nsc_padding: str = "valid",
) -> tuple[int, int]:
    """(trainable parameters, MACs of one image) of any network a search proposes, built for inputs
    (C, H, W) with a space's ``pooling``/``padding`` (MetaQNN) or ``nsc_padding`` (NSC)."""
    if isinstance(network, NSCNetwork):
        return nsc_cost(network, input_shape, nsc_padding)
    costs = layer_costs(network, input_shape, pooling, padding)
    return total_params(costs), total_macs(costs)
