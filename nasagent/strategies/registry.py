"""Which searchers exist: ``--strategy NAME`` -> a factory, imported only when chosen.

A factory is ``from_context(ctx: StrategyContext) -> Strategy``; it reads its own settings from
``ctx.options`` (``--option KEY=VALUE``) and rejects unknown keys.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from nasagent.errors import ConfigError

if TYPE_CHECKING:
    from nasagent.strategies.base import Strategy, StrategyContext

STRATEGIES: dict[str, str] = {
    "qlearning": "nasagent.strategies.qlearning:from_context",
    "random": "nasagent.strategies.random_search:from_context",
    "reinforce": "nasagent.strategies.reinforce:from_context",
    "meta-a2c": "nasagent.strategies.meta_a2c:from_context",
    "dqn": "nasagent.strategies.dqn:from_context",
    "random-nsc": "nasagent.strategies.random_nsc:from_context",
}


def make_strategy(name: str, ctx: StrategyContext) -> Strategy:
    """The searcher ``name`` (``--strategy``), built from the experiment's context."""
    target = STRATEGIES.get(name)
    if target is None:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(ctx)


def check_options(options: dict[str, object], allowed: set[str], strategy: str) -> None:
    """Reject ``--option`` keys a strategy does not know, naming the ones it does."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"--option {unknown[0]} is not a setting of --strategy {strategy} (settings: {known})")
