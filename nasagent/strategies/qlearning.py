"""MetaQNN: tabular Q-learning over layer choices with ε-greedy sampling and experience replay.

Algorithms 1-3 of Baker et al. (2017). Q is keyed by (binned state, action); a missing entry is
``q_init`` (0.5 in the paper's appendix D). After every rewarded sample the agent appends it to
the replay memory and replays ``replay_k`` samples drawn uniformly from it, each updated along its
trajectory in temporally reversed order (Algorithm 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nasagent.core.arch import Architecture, Layer
from nasagent.core.networks import Network
from nasagent.spaces.limited import Sampler, limited_sampler
from nasagent.spaces.metaqnn import MetaQNNSpace, State
from nasagent.strategies.base import Proposal, Strategy, StrategyContext
from nasagent.strategies.options import options_from
from nasagent.strategies.schedule import EpsilonSchedule


@dataclass(frozen=True)
class QLearningConfig:
    """Hyperparameters of §4.3: MetaQNN's ``--option`` settings (also ``--alpha``, ``--q-init``, ``--replay-k``),
    stored in ``SearchConfig.qlearning``."""

    alpha: float = 0.01
    """Q-learning rate α."""
    gamma: float = 1.0
    """Discount factor γ (1: no preference for short-term reward)."""
    q_init: float = 0.5
    """Initial value of every Q(s, u)."""
    replay_k: int = 100
    """Replay-memory samples updated after every rewarded sample (K)."""


OPTIONS = QLearningConfig

# One transition of a trajectory: (state key, action key, legal action keys of the next state).
Transition = tuple[str, str, tuple[str, ...]]


class QLearningStrategy(Strategy):
    """ε-greedy Q-learning with experience replay over a MetaQNN space."""

    name = "qlearning"

    def __init__(
        self,
        space: MetaQNNSpace,
        schedule: EpsilonSchedule,
        seed: int,
        config: QLearningConfig | None = None,
        walker: Sampler | None = None,
    ) -> None:
        """``walker`` samples the walks (default ``space.sample``; under size limits a
        :class:`nasagent.spaces.limited.LimitedWalk`'s, which offers ``choose`` only the actions that
        keep the network within them); the Q-table stays the space's."""
        self.space = space
        self.walker = walker or space.sample
        self.schedule = schedule
        self.config = config or QLearningConfig()
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.q: dict[str, dict[str, float]] = {}
        self.replay: list[tuple[str, float]] = []
        self._dirty: set[tuple[str, str]] = set()
        self._trajectories: dict[str, list[Transition]] = {}

    # -- Q table -----------------------------------------------------------------------------
    def value(self, state_key: str, action_key: str) -> float:
        return self.q.get(state_key, {}).get(action_key, self.config.q_init)

    def _set(self, state_key: str, action_key: str, value: float) -> None:
        self.q.setdefault(state_key, {})[action_key] = value
        self._dirty.add((state_key, action_key))

    def _max_value(self, state_key: str, action_keys: tuple[str, ...]) -> float:
        row = self.q.get(state_key, {})
        q0 = self.config.q_init
        return max((row.get(a, q0) for a in action_keys), default=0.0)

    # -- Algorithm 2 -------------------------------------------------------------------------
    def sample(self, epsilon: float) -> Architecture:
        """SAMPLE_NEW_NETWORK: an ε-greedy walk from the start state to a terminal state."""

        def choose(state: State, actions: tuple[Layer, ...]) -> Layer:
            if self.rng.random() > epsilon:
                return self._greedy(state, actions)
            return actions[int(self.rng.integers(len(actions)))]

        return self.walker(choose)

    def _greedy(self, state: State, actions: tuple[Layer, ...]) -> Layer:
        row = self.q.get(state.key, {})
        values = np.array([row.get(str(a), self.config.q_init) for a in actions])
        best = np.flatnonzero(values == values.max())
        return actions[int(best[self.rng.integers(len(best))])]

    def ask(self, unique_launched: int) -> Proposal:
        step, epsilon = self.schedule.position(unique_launched)
        return Proposal(self.sample(epsilon), epsilon=epsilon, info={"epsilon_step": step})

    # -- Algorithms 1 and 3 ------------------------------------------------------------------
    def trajectory(self, arch_text: str) -> list[Transition]:
        """The transitions of an architecture's walk, cached: replay revisits the same ones often."""
        cached = self._trajectories.get(arch_text)
        if cached is None:
            states = self.space.walk(Architecture.parse(arch_text))
            cached = [
                (s.key, str(nxt.layer), tuple(str(a) for a in self.space.actions(nxt)))
                for s, nxt in zip(states, states[1:])
            ]
            self._trajectories[arch_text] = cached
        return cached

    def update(self, arch_text: str, reward: float) -> None:
        """UPDATE_Q_VALUES: the terminal transition moves towards the reward, every earlier one
        towards γ·max Q of its successor, in temporally reversed order."""
        alpha, gamma = self.config.alpha, self.config.gamma
        transitions = self.trajectory(arch_text)
        for i in range(len(transitions) - 1, -1, -1):
            state_key, action_key, next_actions = transitions[i]
            if i == len(transitions) - 1:
                target = reward
            else:
                target = gamma * self._max_value(transitions[i + 1][0], next_actions)
            self._set(state_key, action_key, (1 - alpha) * self.value(state_key, action_key) + alpha * target)

    def tell(self, arch: Network, reward: float, first_training: bool) -> None:
        self.replay.append((str(arch), float(reward)))
        picks = self.rng.integers(len(self.replay), size=self.config.replay_k)
        for index in picks:
            self.update(*self.replay[int(index)])

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def restore(
        self, state: dict[str, Any] | None, values: dict[tuple[str, str], float], replay: list[tuple[Network, float]]
    ) -> None:
        if state is not None:
            self.rng.bit_generator.state = state["rng"]
        self.q = {}
        for (state_key, action_key), value in values.items():
            self.q.setdefault(state_key, {})[action_key] = value
        self.replay = [(str(arch), float(reward)) for arch, reward in replay]
        # Replay revisits these trajectories on every step: walk them once now, not in the first steps.
        for arch_text in dict.fromkeys(a for a, _ in self.replay):
            self.trajectory(arch_text)
        self._dirty.clear()

    def pop_value_changes(self) -> dict[tuple[str, str], float]:
        changes = {(s, a): self.q[s][a] for s, a in self._dirty}
        self._dirty.clear()
        return changes


def from_context(ctx: StrategyContext) -> QLearningStrategy:
    """MetaQNN over the experiment's space, within its size limits; its options are α, γ, Q₀ and K
    (``QLearningConfig``)."""
    config = options_from(QLearningConfig, ctx.options, "qlearning")
    space = MetaQNNSpace(ctx.space, min(ctx.input_shape[1:]), ctx.num_classes)
    return QLearningStrategy(space, ctx.schedule, ctx.seed, config, limited_sampler(space, ctx.input_shape, ctx.limits))
