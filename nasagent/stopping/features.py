"""What the early-stopping rules read of a trial: its learning curve and its architecture.

``Verdict`` is what a rule answers for one epoch of one trial. ``surviving_curve`` turns the epochs
a trial recorded (``trial_epochs``, restarted attempts included) into the curve the rules judge:
the validation accuracies of the attempt now training, epoch 1 of that attempt first.
``architecture_features`` are Baker et al.'s architecture features (the network's number of
weights and of layers), computed from the architecture string without building the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nasagent.core.arch import FC, Architecture, Conv, Pool
from nasagent.core.cost import layer_costs, total_params
from nasagent.core.networks import parse_network
from nasagent.core.nsc import ADD, AVG_POOL, CONCAT, CONV, MAX_POOL, NSCNetwork
from nasagent.errors import ConfigError


@dataclass(frozen=True)
class Verdict:
    """A rule's answer for one epoch of one trial: ``stop`` or go on, why (``reason``, one line for
    people) and, for ``predict``, the predicted final accuracy (the stopped network's reward)."""

    stop: bool
    reason: str
    predicted: float | None = None


class EpochLike(Protocol):
    """One recorded epoch (``nasagent.persistence.postgres.EpochRow`` has these fields)."""

    epoch: int
    val_accuracy: float | None
    restarts: int


def surviving_curve(epochs: Sequence[EpochLike]) -> list[float | None]:
    """The validation accuracies of the attempt the last of ``epochs`` belongs to, in order (a
    restart discards the attempts before it, as the trainer does; None: a diverged epoch)."""
    if not epochs:
        return []
    ordered = sorted(epochs, key=lambda e: e.epoch)
    restarts = ordered[-1].restarts
    return [e.val_accuracy for e in ordered if e.restarts == restarts]


def finite_prefix(curve: Sequence[float | None]) -> list[float]:
    """``curve`` up to its first missing (diverged) value."""
    out: list[float] = []
    for value in curve:
        if value is None or not math.isfinite(value):
            break
        out.append(float(value))
    return out


ARCH_FEATURES = ("log10 weights", "layers", "convolutions", "poolings", "fc or merge layers")
"""The names of ``architecture_features``' values, in order."""


def architecture_features(
    text: str, input_shape: tuple[int, int, int], pooling: str = "floor", padding: str = "same"
) -> tuple[float, ...]:
    """Baker et al.'s architecture features of network ``text`` (``ARCH_FEATURES``): log10 of its
    number of weights (0 where it cannot be counted without building it: an NSC network, a layer
    too large for its input) and its number of layers, in all and by kind."""
    network = parse_network(text)
    if isinstance(network, Architecture):
        try:
            weights = total_params(layer_costs(network, input_shape, pooling, padding))
        except ConfigError:
            weights = 0
        hidden = network.hidden
        return (
            math.log10(1 + weights),
            float(len(network)),
            float(sum(isinstance(layer, Conv) for layer in hidden)),
            float(sum(isinstance(layer, Pool) for layer in hidden)),
            float(sum(isinstance(layer, FC) for layer in hidden)),
        )
    assert isinstance(network, NSCNetwork)
    types = [layer.type for layer in network.layers]
    return (
        0.0,
        float(len(types) + 1),
        float(types.count(CONV)),
        float(types.count(MAX_POOL) + types.count(AVG_POOL)),
        float(types.count(ADD) + types.count(CONCAT)),
    )
