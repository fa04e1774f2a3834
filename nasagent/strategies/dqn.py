"""DQN with experience replay on the NAS environment: the paper's baseline (§6.1 "DEEPQN").

A Q-network (an MLP of two 64-unit tanh layers on the flattened §4.2.1 encoding, as OpenAI
baselines' ``mlp`` that the authors used) is trained on minibatches of 20 transitions drawn
uniformly from a replay buffer of t_max / 2 transitions, towards ``r + γ max_a Q_target(s', a)``
(no bootstrap past the end of an episode) with the Huber loss and Adam at 5e-4. Actions are
ε-greedy, ε falling linearly from 1.0 to 0.1 over the first ``exploration_fraction`` (10%, the
baselines default the paper's curves point to) of t_max environment steps. The target network is
copied every ``target_update`` steps; one gradient step follows every ``train_freq`` steps once
``learning_starts`` transitions are stored.

**Hand-written, not stable-baselines3.** SB3's ``DQN.learn()`` owns the loop: it calls
``env.step`` and needs the reward back at once, so it cannot stop between proposing a network and
hearing its accuracy minutes later from a worker, and it can be saved (``save``,
``save_replay_buffer``: pickles) only between ``learn`` calls, not inside the agent's per-step
PostgreSQL transaction. Its replay sampling and ε-greedy draws also use NumPy's global RNG, so a
resumed run would not continue exactly. The algorithm is small, so it is written here with every
piece of state (weights, target, optimiser, buffer, RNG, counters) in ``state_dict``.

Where the paper is silent: γ = 0.9 (as for meta-A2C, so the two learners discount alike).
t_max counts environment steps, which run several times the agent's budget of unique networks
(cache hits, terminals, shifts); it defaults to 10 x the budget, so ε reaches 0.1 after about as
many steps as the budget has networks, most of them new ones (``--option t_max=`` overrides).
Learning starts after one minibatch (baselines' 1,000 assume far longer runs), and the target
network is refreshed every 100 steps. Dueling heads and double Q-learning (baselines extras) are
left out: the paper names plain DQN with experience replay.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nasagent.envs.nas_env import SPACE_OPTIONS, NSCSpace, Step, encode, space_from_options
from nasagent.errors import ConfigError
from nasagent.strategies.base import StrategyContext
from nasagent.strategies.env_driver import EnvStrategy
from nasagent.strategies.registry import check_options

T_MAX_PER_NETWORK = 10
"""Default t_max: environment steps per network of the agent's budget."""
OPTIONS = SPACE_OPTIONS | {
    "t_max",
    "exploration_fraction",
    "batch_size",
    "lr",
    "gamma",
    "learning_starts",
    "target_update",
    "train_freq",
}


@dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of §6.1 (and the defaults chosen where it is silent, see the module docstring)."""

    t_max: int
    """Environment steps the search is planned for: sets the buffer size and ε's decay."""
    exploration_fraction: float = 0.1
    eps_start: float = 1.0
    eps_final: float = 0.1
    batch_size: int = 20
    lr: float = 5e-4
    gamma: float = 0.9
    learning_starts: int = 20
    target_update: int = 100
    train_freq: int = 1
    hidden: int = 64

    def __post_init__(self) -> None:
        if (
            min(self.t_max, self.batch_size, self.target_update, self.train_freq, self.hidden) < 1
            or self.learning_starts < 0
        ):
            raise ConfigError(
                "t_max, batch_size, target_update, train_freq must be at least 1 and learning_starts non-negative"
            )
        if not 0.0 < self.exploration_fraction <= 1.0 or not 0.0 < self.gamma <= 1.0 or self.lr <= 0:
            raise ConfigError(
                f"need 0 < exploration_fraction <= 1, 0 < gamma <= 1, lr > 0; got {self.exploration_fraction}, {self.gamma}, {self.lr}"
            )

    @property
    def buffer_size(self) -> int:
        """t_max / 2 (§6.1)."""
        return max(1, self.t_max // 2)

    def epsilon(self, steps: int) -> float:
        """Linear from ``eps_start`` to ``eps_final`` over the first ``exploration_fraction`` of t_max."""
        span = self.exploration_fraction * self.t_max
        return self.eps_start + (self.eps_final - self.eps_start) * min(1.0, steps / span)


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

    def __init__(self, space: NSCSpace, seed: int, config: DQNConfig) -> None:
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
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        return {"blob": base64.b64encode(buffer.getvalue()).decode("ascii"), "gradient_steps": self.gradient_steps}

    def restore_learner(self, state: dict[str, Any]) -> None:
        blob = torch.load(io.BytesIO(base64.b64decode(state["blob"])), weights_only=True)
        self.q.load_state_dict(blob["q"])
        self.target.load_state_dict(blob["target"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.buffer.load_tensors(blob["buffer"])
        self.gradient_steps = int(state["gradient_steps"])

    def summary(self) -> dict[str, float]:
        return {**super().summary(), "epsilon": self.epsilon_now(), "gradient_steps": self.gradient_steps}


def from_context(ctx: StrategyContext) -> DQNStrategy:
    """``--strategy dqn``; options: depth, tau, multi_branch, sigma (the environment), t_max,
    exploration_fraction, batch_size, lr, gamma, learning_starts, target_update, train_freq."""
    check_options(ctx.options, OPTIONS, "dqn")
    o = ctx.options
    try:
        cfg = DQNConfig(
            t_max=int(o.get("t_max", T_MAX_PER_NETWORK * ctx.budget)),
            exploration_fraction=float(o.get("exploration_fraction", 0.1)),
            batch_size=int(o.get("batch_size", 20)),
            lr=float(o.get("lr", 5e-4)),
            gamma=float(o.get("gamma", 0.9)),
            learning_starts=int(o.get("learning_starts", 20)),
            target_update=int(o.get("target_update", 100)),
            train_freq=int(o.get("train_freq", 1)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad dqn option: {exc}") from None
    return DQNStrategy(space_from_options(o, ctx.input_shape, ctx.num_classes), ctx.seed, cfg)
