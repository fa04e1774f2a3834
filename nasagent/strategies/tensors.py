"""Tensors inside a strategy's JSON state: ``torch.save`` bytes as base64 text.

``Strategy.state_dict`` must be JSON (it is stored in PostgreSQL with the trial it belongs to), so
the learners keep their weights, optimiser moments, buffers and generators in one base64 string.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import torch


def to_base64(obj: Any) -> str:
    """``obj`` (tensors, state dicts, plain containers of them) as base64 text of its ``torch.save`` bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def from_base64(text: str) -> Any:
    """What :func:`to_base64` wrote; ``weights_only``, so a tampered state cannot run code when loaded."""
    return torch.load(io.BytesIO(base64.b64decode(text)), weights_only=True)
