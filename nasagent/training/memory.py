"""How much memory training a network takes, worked out from its layers before anything is built.

A search space may allow networks far too big for the machine (a space with 100,000 filters once
grew one worker to 23 GB before the kernel killed it). The trainer therefore estimates every
network's training memory first and records a network that cannot fit its worker's budget as a
failed architecture, "does not fit", without building it (building alone may allocate terabytes).

The estimate counts, in float32 (4 bytes per value):

* parameters × 5: the weights, their gradients, Adam's two moments, and the copy of the best
  epoch's weights the trainer keeps for the checkpoint; plus ``WEIGHT_TEMPORARIES`` copies of the
  largest weight tensor (the temporaries of Adam's update of it, and gradient churn);
* activations at the training batch size: every layer's output (kept for the backward pass),
  plus twice the largest (the gradients flowing back through it), plus dropout masks, times
  ``ACTIVATION_SLACK`` (what the allocator and the kernels' workspaces add, as measured);
* evaluation at ``EVAL_BATCH`` without autograd: the largest layer's input and output;
* on a GPU also the data, which the trainer moves to the device once.

It is deliberately a little pessimistic (bf16 autocast on a GPU halves most activations), and
ignores allocator slack and the framework's own working memory, which the budget's headroom
covers (see ``nasagent.execution.resources``). ``tests/test_memory.py`` compares it with the peak
memory measured while training.
"""

from __future__ import annotations

from dataclasses import dataclass

from nasagent.core.arch import FC, GAP, Architecture, Conv, Softmax, output_size, same_padding
from nasagent.core.nsc import CONV, CONV_FILTERS, HEAD_UNITS, NSCNetwork

FLOAT_BYTES = 4
PARAM_COPIES = 5
"""Weights, gradients, Adam's first and second moments, the best epoch's copy."""
ACTIVATION_SLACK = 3.25
"""Measured peak memory of training on CPU was up to about 3 times the activations counted above
(dropout outputs, autograd's saved tensors and buffers, the allocator keeping freed blocks; the
peak of one network varied by 7% between runs on a loaded machine): tests/test_memory.py checks
that the estimate covers the measured peak without overshooting 4×."""
WEIGHT_TEMPORARIES = 4
"""Copies of the largest weight tensor alive at once in an update: Adam's temporaries, and a new
gradient allocated while the allocator still holds the last one (measured)."""
EVAL_BATCH = 1024
"""The trainer's evaluation batch (``nasagent.training.trainer.EVAL_BATCH``)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """The bytes training one network takes (see the module docstring)."""

    params: int
    """Trainable parameters."""
    param_bytes: int
    """Parameters with gradients, optimiser state and the best-weights copy."""
    activation_bytes: int
    """The larger of training's activations at the batch size and evaluation's."""
    data_bytes: int
    """Data moved to the device (GPU only; on CPU the worker holds them already)."""

    @property
    def total(self) -> int:
        return self.param_bytes + self.activation_bytes + self.data_bytes

    def describe(self) -> str:
        """``about 23.4 GiB (parameters 12.3 GiB with gradients and Adam state, activations 11.1 GiB)``."""
        data = f", data {gib(self.data_bytes)}" if self.data_bytes else ""
        return (
            f"about {gib(self.total)} (parameters {gib(self.param_bytes)} with gradients and Adam state, "
            f"activations {gib(self.activation_bytes)}{data})"
        )


def gib(n: int) -> str:
    """Bytes as GiB with one decimal (MiB below 1 GiB)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def estimate_training_memory(
    network: Architecture | NSCNetwork,
    input_shape: tuple[int, int, int],
    batch_size: int,
    data_bytes: int = 0,
    eval_batch: int = EVAL_BATCH,
) -> MemoryEstimate:
    """Estimate the memory of training ``network`` on inputs (C, H, W) at ``batch_size``, evaluating
    ``eval_batch`` samples at a time (fewer when the validation split is smaller).

    ``data_bytes`` is added when the data live on the training device (a GPU). Pure arithmetic on
    the layer list, so any network can be estimated, however large.
    """
    if isinstance(network, NSCNetwork):
        params, largest_weight, outputs = _nsc_sizes(network, input_shape)
    else:
        params, largest_weight, outputs = _chain_sizes(network, input_shape)
    largest = max(outputs)
    # Kept for backward: each output once, plus gradients of about twice the largest in flight,
    # plus a byte per value for dropout masks (at most one per layer, so bounded by the outputs).
    per_sample = sum(outputs) + 2 * largest
    training = batch_size * (per_sample * FLOAT_BYTES + sum(outputs))
    evaluation = eval_batch * 2 * largest * FLOAT_BYTES
    return MemoryEstimate(
        params=params,
        param_bytes=(params * PARAM_COPIES + WEIGHT_TEMPORARIES * largest_weight) * FLOAT_BYTES,
        activation_bytes=int(max(training, evaluation) * ACTIVATION_SLACK),
        data_bytes=data_bytes,
    )


def _chain_sizes(arch: Architecture, input_shape: tuple[int, int, int]) -> tuple[int, int, list[int]]:
    """(parameters, largest weight tensor, values per sample of each module output) of ``build_model(arch)``."""
    channels, h, w = (int(v) for v in input_shape)
    outputs = [channels * h * w]  # the input batch, and Normalize's output of the same size
    outputs.append(channels * h * w)
    params = largest_weight = 0
    features, flat = channels, False
    for layer in arch.hidden:
        if isinstance(layer, Conv):
            top, bottom = same_padding(h, layer.kernel, layer.stride)
            left, right = same_padding(w, layer.kernel, layer.stride)
            if top != bottom or left != right:  # an explicit ZeroPad2d first
                outputs.append(features * (h + top + bottom) * (w + left + right))
            weight = features * layer.filters * layer.kernel * layer.kernel
            params, largest_weight = params + weight + layer.filters, max(largest_weight, weight)
            features = layer.filters
        elif isinstance(layer, FC):
            if not flat:
                features, flat = features * h * w, True
            params, largest_weight = (
                params + features * layer.units + layer.units,
                max(largest_weight, features * layer.units),
            )
            features = layer.units
        h, w = output_size(h, layer), output_size(w, layer)
        outputs.append(features if flat else features * h * w)
    terminal = arch.terminal
    inputs = features if flat or isinstance(terminal, GAP) else features * h * w
    params, largest_weight = (
        params + inputs * terminal.classes + terminal.classes,
        max(largest_weight, inputs * terminal.classes),
    )
    if isinstance(terminal, GAP):
        outputs += [terminal.classes * h * w, terminal.classes]
    elif isinstance(terminal, Softmax):
        outputs.append(terminal.classes)
    return params, largest_weight, outputs


def _nsc_sizes(net: NSCNetwork, input_shape: tuple[int, int, int]) -> tuple[int, int, list[int]]:
    """(parameters, largest weight tensor, values per sample of each module output) of ``build_nsc_model(net)``."""
    shapes = net.shapes(input_shape)
    outputs = [c * h * w for c, h, w in shapes]
    params = 0
    for layer in net.layers:
        if layer.type == CONV:
            in_channels = shapes[layer.pred1][0]
            params += in_channels * CONV_FILTERS * layer.kernel * layer.kernel + CONV_FILTERS  # convolution
            params += 2 * CONV_FILTERS  # batch norm
            c, h, w = shapes[layer.index]
            outputs += [shapes[layer.pred1][0] * h * w, c * h * w]  # the cell's ReLU and convolution outputs
    c, h, w = shapes[-1]
    params += c * h * w * HEAD_UNITS + HEAD_UNITS + HEAD_UNITS * net.classes + net.classes
    outputs += [HEAD_UNITS, HEAD_UNITS, net.classes]
    largest_weight = max(c * h * w * HEAD_UNITS, max(shapes[i][0] for i in range(len(shapes))) * CONV_FILTERS * 25)
    return params, largest_weight, outputs
