"""DQN with experience replay on the NAS environment: the paper's baseline (§6.1 "DEEPQN").

A Q-network (an MLP of two 64-unit tanh layers on the flattened §4.2.1 encoding, as OpenAI
baselines' ``mlp`` that the authors used) is trained on minibatches of 20 transitions drawn
uniformly from a replay buffer of t_max / 2 transitions, towards ``r + γ max_a Q_target(s', a)``
(no bootstrap past the end of an episode) with the Huber loss and Adam at 5e-4. Actions are
ε-greedy, ε falling linearly from 1.0 to 0.1 over the first ``exploration_fraction`` (all, as the
authors' run script) of t_max environment steps. The target network is
copied every ``target_update`` steps; one gradient step follows every ``train_freq`` steps once
``learning_starts`` transitions are stored.

**Hand-written, not stable-baselines3.** SB3's ``DQN.learn()`` owns the loop: it calls
``env.step`` and needs the reward back at once, so it cannot stop between proposing a network and
hearing its accuracy minutes later from a worker, and it can be saved (``save``,
``save_replay_buffer``: pickles) only between ``learn`` calls, not inside the agent's per-step
PostgreSQL transaction. Its replay sampling and ε-greedy draws also use NumPy's global RNG, so a
resumed run would not continue exactly. The algorithm is small, so it is written here with every
piece of state (weights, target, optimiser, buffer, RNG, counters) in ``state_dict``.

Where the paper is silent: γ = 1.0, undiscounted, as the authors' ``run_nas_dqn.sh`` passes
(``--gamma=1.0``; an episode is at most τ = 10 steps, so the return stays bounded); 0.9, meta-A2C's
§6.1 value, with ``--option gamma=0.9``.
t_max counts environment steps, which run several times the agent's budget of unique networks
(cache hits, terminals, shifts); it defaults to 10 x the budget, and ε reaches 0.1 at the end of
those t_max steps (``--option t_max=`` overrides).
Learning starts after one minibatch (baselines' 1,000 assume far longer runs), and the target
network is refreshed every 100 steps. Dueling heads and double Q-learning (baselines extras) are
left out: the paper names plain DQN with experience replay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from nasagent.envs.nas_env import NSCSpace, Step, encode
from nasagent.errors import ConfigError
from nasagent.strategies.base import StrategyContext
from nasagent.strategies.env_driver import EnvOptions, EnvStrategy
from nasagent.strategies.options import options_from
from nasagent.strategies.tensors import from_base64, to_base64

T_MAX_PER_NETWORK = 10
"""Default t_max: environment steps per network of the agent's budget."""


@dataclass(frozen=True)
class DQNOptions(EnvOptions):
    """``--strategy dqn``'s settings: the environment's (:class:`EnvOptions`) and the hyperparameters of
    §6.1, with the defaults chosen where it is silent (see the module docstring)."""

    t_max: int | None = None
    """Environment steps the search is planned for: sets the buffer size (t_max / 2) and ε's decay;
    None: 10 x the budget of unique networks (resolved by ``from_context``, see :meth:`with_budget`)."""
    exploration_fraction: float = 1.0
    """Fraction of t_max over which ε falls from ``eps_start`` to ``eps_final``: all of it, as the authors'
    ``run_nas_dqn.sh`` (``--exploration_fraction=1.0``); 0.1 is the OpenAI baselines default."""
    eps_start: float = 1.0
    """ε at the first environment step."""
    eps_final: float = 0.1
    """ε after the exploration fraction, to the end."""
    batch_size: int = 20
    """Transitions per gradient step (§6.1)."""
    lr: float = 5e-4
    """Adam learning rate (§6.1)."""
    gamma: float = 1.0
    """Discount factor γ (the paper is silent: the authors' run script's 1.0; meta-A2C discounts with 0.9)."""
    learning_starts: int = 20
    """Stored transitions before the first gradient step (one minibatch)."""
    target_update: int = 100
    """Environment steps between copies of the Q-network into the target network."""
    train_freq: int = 1
    """Environment steps between gradient steps."""
    hidden: int = 64
    """Units of each of the Q-network's two tanh layers (baselines' ``mlp``)."""

    def __post_init__(self) -> None:
        t_max = 1 if self.t_max is None else self.t_max
        if (
            min(t_max, self.batch_size, self.target_update, self.train_freq, self.hidden) < 1
            or self.learning_starts < 0
        ):
            raise ConfigError(
                "t_max, batch_size, target_update, train_freq and hidden must be at least 1, "
                "learning_starts non-negative"
            )
        if not 0.0 < self.exploration_fraction <= 1.0 or not 0.0 < self.gamma <= 1.0 or self.lr <= 0:
            raise ConfigError(
                "need 0 < exploration_fraction <= 1, 0 < gamma <= 1, lr > 0; "
                f"got {self.exploration_fraction}, {self.gamma}, {self.lr}"
            )

    def with_budget(self, budget: int) -> DQNOptions:
        """These options with t_max resolved: given, or ``T_MAX_PER_NETWORK`` x the budget."""
        return self if self.t_max is not None else replace(self, t_max=T_MAX_PER_NETWORK * budget)

    @property
    def planned_steps(self) -> int:
        """t_max; a ValueError while it is still unresolved (the strategy is only built with it set)."""
        if self.t_max is None:
            raise ValueError("DQN options need t_max: resolve it with with_budget()")
        return self.t_max

    @property
    def buffer_size(self) -> int:
        """t_max / 2 (§6.1)."""
        return max(1, self.planned_steps // 2)

    def epsilon(self, steps: int) -> float:
        """Linear from ``eps_start`` to ``eps_final`` over the first ``exploration_fraction`` of t_max."""
        span = self.exploration_fraction * self.planned_steps
        return self.eps_start + (self.eps_final - self.eps_start) * min(1.0, steps / span)


OPTIONS = DQNOptions


def q_network(inputs: int, actions: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, actions)
    )


class ReplayBuffer:
    """A ring buffer of transitions. The encodings are 0/1, so they are stored bit-packed."""

    def __init__(self, capacity: int, obs_bits: int) -> None:
        self.capacity, self.obs_bits = capacity, obs_bits
        width = (obs_bits + 7) // 8
        self.obs = np.zeros((capacity, width), dtype=np.uint8)
        self.next_obs = np.zeros((capacity, width), dtype=np.uint8)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self.size = 0
        self.position = 0

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, done: bool) -> None:
        i = self.position
        self.obs[i] = np.packbits(obs.ravel() > 0.5)
        self.next_obs[i] = np.packbits(next_obs.ravel() > 0.5)
        self.actions[i], self.rewards[i], self.dones[i] = action, reward, float(done)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(self.size, size=n)

        def unpack(bits: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.unpackbits(bits, axis=1, count=self.obs_bits).astype(np.float32))

        return (
            unpack(self.obs[idx]),
            torch.from_numpy(self.actions[idx]),
            torch.from_numpy(self.rewards[idx]),
            unpack(self.next_obs[idx]),
            torch.from_numpy(self.dones[idx]),
        )

    def to_tensors(self) -> dict[str, Any]:
        n = self.size
        return {
            "obs": torch.from_numpy(self.obs[:n].copy()),
            "next_obs": torch.from_numpy(self.next_obs[:n].copy()),
            "actions": torch.from_numpy(self.actions[:n].copy()),
            "rewards": torch.from_numpy(self.rewards[:n].copy()),
            "dones": torch.from_numpy(self.dones[:n].copy()),
            "position": self.position,
        }

    def load_tensors(self, data: dict[str, Any]) -> None:
        n = len(data["actions"])
        self.obs[:n], self.next_obs[:n] = data["obs"].numpy(), data["next_obs"].numpy()
        self.actions[:n], self.rewards[:n], self.dones[:n] = (
            data["actions"].numpy(),
            data["rewards"].numpy(),
            data["dones"].numpy(),
        )
        self.size, self.position = n, int(data["position"])


class DQNStrategy(EnvStrategy):
    """ε-greedy DQN with experience replay and a target network, acting in the NAS environment."""

    name = "dqn"

    def __init__(self, space: NSCSpace, seed: int, config: DQNOptions) -> None:
        """``space`` is the environment (``config.space(...)`` when built from options); ``config.t_max``
        must be set (see :meth:`DQNOptions.with_budget`)."""
        if config.t_max is None:
            raise ValueError("DQNStrategy needs t_max: build it with from_context or DQNOptions.with_budget()")
        super().__init__(space, seed)
        self.config = config
        inputs = space.obs_shape[0] * space.obs_shape[1]
        generator = torch.Generator().manual_seed(seed)
        self.q = q_network(inputs, space.n_actions, config.hidden)
        with torch.no_grad():
            for module in self.q:
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight, generator=generator)
                    nn.init.zeros_(module.bias)
        self.target = q_network(inputs, space.n_actions, config.hidden)
        self.target.load_state_dict(self.q.state_dict())
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.lr)
        self.buffer = ReplayBuffer(config.buffer_size, inputs)
        self.gradient_steps = 0

    def epsilon_now(self) -> float:
        return self.config.epsilon(self.env_steps)

    def act(self, lane_id: int) -> int:
        if self.rng.random() < self.epsilon_now():
            return int(self.rng.integers(self.space.n_actions))
        obs = torch.from_numpy(encode(self.space, self.lanes[lane_id].state).ravel())
        with torch.no_grad():
            return int(self.q(obs[None])[0].argmax())

    def learn(self, lane_id: int, result: Step, reward: float) -> None:
        cfg = self.config
        self.buffer.add(
            encode(self.space, result.before), result.action, reward, encode(self.space, result.after), result.done
        )
        if self.buffer.size >= max(cfg.learning_starts, 1) and self.env_steps % cfg.train_freq == 0:
            self._train()
        if self.env_steps % cfg.target_update == 0:
            self.target.load_state_dict(self.q.state_dict())

    def _train(self) -> None:
        obs, actions, rewards, next_obs, dones = self.buffer.sample(self.rng, self.config.batch_size)
        with torch.no_grad():
            best_next = self.target(next_obs).max(dim=1).values
            target = rewards + self.config.gamma * (1.0 - dones) * best_next
        q = self.q(obs).gather(1, actions[:, None])[:, 0]
        loss = nn.functional.smooth_l1_loss(q, target)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), 10.0)  # baselines' deepq clipping
        self.optimizer.step()
        self.gradient_steps += 1

    # -- persistence ----------------------------------------------------------------------------
    def learner_state(self) -> dict[str, Any]:
        blob = {
            "q": self.q.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.to_tensors(),
        }
        return {"blob": to_base64(blob), "gradient_steps": self.gradient_steps}

    def restore_learner(self, state: dict[str, Any]) -> None:
        blob = from_base64(state["blob"])
        self.q.load_state_dict(blob["q"])
        self.target.load_state_dict(blob["target"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.buffer.load_tensors(blob["buffer"])
        self.gradient_steps = int(state["gradient_steps"])

    def summary(self) -> dict[str, float]:
        return {**super().summary(), "epsilon": self.epsilon_now(), "gradient_steps": self.gradient_steps}


def from_context(ctx: StrategyContext) -> DQNStrategy:
    """``--strategy dqn``; its options are :class:`DQNOptions` (the environment's and the learner's)."""
    options = options_from(DQNOptions, ctx.options, "dqn").with_budget(ctx.budget)
    return DQNStrategy(options.space(ctx.input_shape, ctx.num_classes, ctx.limits), ctx.seed, options)
