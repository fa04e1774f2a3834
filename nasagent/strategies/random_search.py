"""Random search: uniform random walks over the space, the baseline every searcher is judged against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nasagent.core.networks import Network
from nasagent.spaces.limited import Sampler, limited_sampler
from nasagent.spaces.metaqnn import MetaQNNSpace
from nasagent.strategies.base import Proposal, Strategy, StrategyContext
from nasagent.strategies.options import options_from


@dataclass(frozen=True)
class RandomOptions:
    """Random search has no settings: any ``--option`` is a mistake, reported with the others' names."""


OPTIONS = RandomOptions


class RandomStrategy(Strategy):
    """Each proposal is a walk choosing uniformly among the legal actions (MetaQNN at ε = 1)."""

    name = "random"

    def __init__(self, space: MetaQNNSpace, seed: int, walker: Sampler | None = None) -> None:
        """``walker`` samples the walks (default ``space.sample``; a ``LimitedWalk``'s under size limits)."""
        self.space = space
        self.walker = walker or space.sample
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def ask(self, unique_launched: int) -> Proposal:
        arch = self.walker(lambda _state, actions: actions[int(self.rng.integers(len(actions)))])
        return Proposal(arch)

    def tell(self, arch: Network, reward: float, first_training: bool) -> None:
        """Random search learns nothing from rewards."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def restore(
        self, state: dict[str, Any] | None, values: dict[tuple[str, str], float], replay: list[tuple[Network, float]]
    ) -> None:
        if state is not None:
            self.rng.bit_generator.state = state["rng"]


def from_context(ctx: StrategyContext) -> RandomStrategy:
    """Uniform random walks over the experiment's MetaQNN space (uniform among the actions that keep the
    network within the size limits, when set)."""
    options_from(RandomOptions, ctx.options, "random")
    space = MetaQNNSpace(ctx.space, min(ctx.input_shape[1:]), ctx.num_classes)
    return RandomStrategy(space, ctx.seed, limited_sampler(space, ctx.input_shape, ctx.limits))
