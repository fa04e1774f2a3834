"""The strategy interface: a searcher decides which architecture to train next and learns from rewards.

A strategy never launches anything and never touches the store: the agent asks it for proposals,
tells it rewards, and persists what it exposes (``state_dict`` and value-table changes) in the same
transaction as the trial record. That split lets one strategy run unchanged on a laptop or Kubeflow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nasagent.core.limits import Limits
from nasagent.core.networks import Network
from nasagent.spaces.metaqnn import SpaceConfig
from nasagent.strategies.schedule import EpsilonSchedule


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy factory is given: the experiment's settings and the shape of its data.

    Built from the stored experiment config (``SearchConfig.strategy_context``), so a resumed
    search builds the same strategy it started with.
    """

    seed: int
    """Seeds every random choice the strategy makes (it owns and saves its generator)."""
    options: Mapping[str, Any]
    """``--option KEY=VALUE`` settings; the factory rejects keys it does not know."""
    budget: int
    """Unique architectures the search trains."""
    input_shape: tuple[int, int, int]
    """(C, H, W) of the images."""
    num_classes: int
    space: SpaceConfig
    """The experiment's MetaQNN space (``--space``), for the strategies that search it."""
    schedule: EpsilonSchedule
    """The ε schedule (``--schedule``), for the strategies that follow it."""
    limits: Limits = Limits()
    """``--max-params`` / ``--max-macs``: a strategy never proposes a network over them (it masks its
    choices where it can, :mod:`nasagent.spaces.limited`), and its factory raises ConfigError when no
    network it can propose meets them. ``max_latency_ms`` is not the strategy's: it shapes the reward."""


@dataclass(frozen=True)
class Proposal:
    """An architecture to evaluate, with what the strategy wants recorded beside it (e.g. ε)."""

    arch: Network
    epsilon: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """A searcher. Called from the agent's single thread only; it may assume calls never overlap.

    Life cycle: ``restore`` once (also for a new experiment, with empty history), then any sequence
    of ``ask`` and ``tell``. After every ``tell`` and every ``ask`` the agent saves ``state_dict()``
    and ``pop_value_changes()`` in the same transaction as the trial it belongs to. A strategy
    restored from those (and the replay memory) must propose exactly what the saved one would have.

    Example: uniform random walks over the experiment's MetaQNN space that remember the best reward.
    It is complete: ``tests/test_strategies.py`` runs this code through the contract every registered
    strategy meets, so the example cannot rot::

        from typing import Any

        import numpy as np

        from nasagent.core.networks import Network
        from nasagent.spaces.metaqnn import MetaQNNSpace
        from nasagent.strategies.base import Proposal, Strategy, StrategyContext


        class RandomWalk(Strategy):
            name = "random-walk"

            def __init__(self, ctx: StrategyContext) -> None:
                self.space = MetaQNNSpace(ctx.space, min(ctx.input_shape[1:]), ctx.num_classes)
                self.rng = np.random.default_rng(ctx.seed)  # its own generator: saved, so a resume continues it
                self.best = 0.0

            def ask(self, unique_launched: int) -> Proposal:
                def uniform(state: Any, actions: tuple[Any, ...]) -> Any:
                    return actions[int(self.rng.integers(len(actions)))]

                return Proposal(self.space.sample(uniform))

            def tell(self, arch: Network, reward: float, first_training: bool) -> None:
                self.best = max(self.best, reward)

            def state_dict(self) -> dict[str, Any]:
                return {"rng": self.rng.bit_generator.state, "summary": {"best": self.best}}

            def restore(
                self,
                state: dict[str, Any] | None,
                values: dict[tuple[str, str], float],
                replay: list[tuple[Network, float]],
            ) -> None:
                if state is not None:
                    self.rng.bit_generator.state = state["rng"]
                self.best = max((reward for _, reward in replay), default=0.0)

    To offer it as ``--strategy random-walk``, give its module a factory ``from_context(ctx)`` and
    ``OPTIONS``, the dataclass of its settings read with :func:`nasagent.strategies.options.options_from`,
    and name the factory in :data:`nasagent.strategies.registry.STRATEGIES`.
    """

    name: str = "strategy"

    @abstractmethod
    def ask(self, unique_launched: int) -> Proposal:
        """Propose the next architecture. ``unique_launched`` counts distinct architectures sent to
        training so far (the budget position, e.g. where the ε schedule stands)."""

    @abstractmethod
    def tell(self, arch: Network, reward: float, first_training: bool) -> None:
        """Reward for a proposal: after its training, or at once for a replay-dictionary hit
        (``first_training`` is then False)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, JSON-serialisable (RNG state included; tensors as base64).
        An optional ``"summary"`` entry of plain numbers is shown by ``nasagent status``."""

    @abstractmethod
    def restore(
        self,
        state: dict[str, Any] | None,
        values: dict[tuple[str, str], float],
        replay: list[tuple[Network, float]],
    ) -> None:
        """Resume from a saved ``state_dict`` (None for a new search), the persisted value table and
        the replay memory (every rewarded sample, oldest first)."""

    def pop_value_changes(self) -> dict[tuple[str, str], float]:
        """(state, action) -> value entries changed since the last call, for tabular strategies."""
        return {}
