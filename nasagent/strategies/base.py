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
    and ``pop_value_changes()`` in the same transaction as the trial it belongs to.
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

    def epsilon(self, unique_launched: int) -> float | None:
        """The exploration rate at this budget position, for strategies that have one."""
        return None
