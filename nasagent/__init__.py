"""nasagent: reinforcement-learning neural architecture search.

``nasagent.load_model(DIR)`` loads a finetuned model directory (``nasagent models pull``). It is
imported on first use, so ``import nasagent`` stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from nasagent.training.models import load_model

        return load_model
    raise AttributeError(f"module 'nasagent' has no attribute {name!r}")
