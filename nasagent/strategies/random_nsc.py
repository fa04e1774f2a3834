"""``--strategy random-nsc``: random search over the NSC space, the NAS environment's baseline."""

from __future__ import annotations

from nasagent.strategies.base import StrategyContext
from nasagent.strategies.env_driver import EnvOptions, EnvStrategy
from nasagent.strategies.options import options_from

OPTIONS = EnvOptions
"""Only the environment's settings: random search has no hyperparameters of its own."""


class RandomNSCStrategy(EnvStrategy):
    """Random search over the NSC space: a uniformly random action at every step of the environment.

    The fair baseline for the environment's learners: same space, same episodes and termination
    rules, same cache; only the choice of actions differs.
    """

    name = "random-nsc"

    def act(self, lane_id: int) -> int:
        return int(self.rng.integers(self.space.n_actions))


def from_context(ctx: StrategyContext) -> RandomNSCStrategy:
    """``--strategy random-nsc``; ``--option depth=, tau=, multi_branch=, sigma=`` set the environment."""
    options = options_from(EnvOptions, ctx.options, "random-nsc")
    return RandomNSCStrategy(options.space(ctx.input_shape, ctx.num_classes, ctx.limits), ctx.seed)
