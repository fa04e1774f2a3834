"""Random search: uniform random walks over the space, the baseline every searcher is judged against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from nasagent.networks import Network
from nasagent.spaces.metaqnn import MetaQNNSpace
from nasagent.strategies.base import Proposal, Strategy
from nasagent.strategies.registry import check_options

if TYPE_CHECKING:
    from nasagent.config import SearchConfig


class RandomStrategy(Strategy):
    """Each proposal is a walk choosing uniformly among the legal actions (MetaQNN at ε = 1)."""

    name = "random"

    def __init__(self, space: MetaQNNSpace, seed: int) -> None:
        self.space = space
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def ask(self, unique_launched: int) -> Proposal:
        arch = self.space.sample(lambda _state, actions: actions[int(self.rng.integers(len(actions)))])
        return Proposal(arch)

    def tell(self, arch: Network, reward: float, first_training: bool) -> None:
        """Random search learns nothing from rewards."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def restore(self, state: dict[str, Any] | None, values: dict[tuple[str, str], float], replay: list[tuple[Network, float]]) -> None:
        if state is not None:
            self.rng.bit_generator.state = state["rng"]


def from_config(config: SearchConfig, input_shape: tuple[int, int, int], num_classes: int) -> RandomStrategy:
    """Uniform random walks over the experiment's MetaQNN space."""
    check_options(config.options, set(), "random")
    return RandomStrategy(MetaQNNSpace(config.space_config(), min(input_shape[1:]), num_classes), config.seed)
