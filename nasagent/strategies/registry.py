"""Which searchers exist: ``--strategy NAME`` -> a factory, imported only when chosen.

A factory is ``from_config(config: SearchConfig, input_shape: (C, H, W), num_classes) -> Strategy``;
it reads its own settings from ``config.options`` (``--option KEY=VALUE``) and rejects unknown keys.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from nasagent.errors import ConfigError

if TYPE_CHECKING:
    from nasagent.config import SearchConfig
    from nasagent.strategies.base import Strategy

STRATEGIES: dict[str, str] = {
    "qlearning": "nasagent.strategies.qlearning:from_config",
    "random": "nasagent.strategies.random_search:from_config",
    "reinforce": "nasagent.strategies.reinforce:from_config",
    "meta-a2c": "nasagent.strategies.meta_a2c:from_config",
    "dqn": "nasagent.strategies.dqn:from_config",
    "random-nsc": "nasagent.envs.driver:from_config",
}


def make_strategy(config: SearchConfig, input_shape: tuple[int, int, int], num_classes: int) -> Strategy:
    """The searcher named by ``config.strategy``, for data of this shape and class count."""
    target = STRATEGIES.get(config.strategy)
    if target is None:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {config.strategy!r}")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(config, input_shape, num_classes)


def check_options(options: dict[str, object], allowed: set[str], strategy: str) -> None:
    """Reject ``--option`` keys a strategy does not know, naming the ones it does."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"--option {unknown[0]} is not a setting of --strategy {strategy} (settings: {known})")
