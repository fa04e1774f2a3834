"""Which searchers exist: ``--strategy NAME`` -> a factory, imported only when chosen.

A strategy module defines ``from_context(ctx: StrategyContext) -> Strategy`` and ``OPTIONS``, the
dataclass of its ``--option KEY=VALUE`` settings; the factory reads ``ctx.options`` into it with
:func:`nasagent.strategies.options.options_from`, which rejects unknown keys and ill-typed values.
"""

from __future__ import annotations

import importlib
from types import ModuleType
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

FOLLOWS_SCHEDULE = frozenset({"qlearning"})
"""Strategies whose exploration rate is ``--schedule``'s ε (the others ignore the schedule)."""

ACTS_IN_NAS_ENV = frozenset({"meta-a2c", "dqn", "random-nsc"})
"""Strategies acting in the NAS environment: their networks are trained as that paper does (12 epochs,
final-epoch accuracy, no restarts, VALID padding; ``nasagent.envs.nas_env``), unless their options say otherwise."""


def _module(name: str) -> tuple[ModuleType, str]:
    target = STRATEGIES.get(name)
    if target is None:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    module, function = target.split(":")
    return importlib.import_module(module), function


def make_strategy(name: str, ctx: StrategyContext) -> Strategy:
    """The searcher ``name`` (``--strategy``), built from the experiment's context."""
    module, function = _module(name)
    return getattr(module, function)(ctx)


def options_type(name: str) -> type:
    """The dataclass of ``--strategy name``'s ``--option`` settings (field docstrings say what each does)."""
    return _module(name)[0].OPTIONS
