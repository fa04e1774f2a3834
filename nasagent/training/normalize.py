"""Input normalisation shared by every model builder: statistics checked once, applied inside the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasagent.errors import ConfigError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``, with the statistics stored as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def normalisation(
    input_shape: Sequence[int], mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    """Checked per-channel statistics for a model's ``Normalize`` (identity when not given);
    ConfigError for a malformed input shape or statistics that do not fit it."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input shape must be (channels, height, width), got {tuple(input_shape)}")
    channels = int(input_shape[0])
    mean = [0.0] * channels if mean is None else list(mean)
    std = [1.0] * channels if std is None else list(std)
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean/std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ConfigError(f"std must be positive for every channel, got {std}")
    return mean, std
