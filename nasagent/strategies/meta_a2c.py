"""Meta-A2C (Gomez Robles & Vanschoren §4.2.4-4.2.5): a recurrent actor-critic that learns to search.

The policy and the value share an LSTM with 128 units; the policy and value heads are the only
unshared parameters. The LSTM's input at step t is the encoded state x_t (§4.2.1), the one-hot
previous action a_{t-1}, the previous reward r_{t-1} and the step counter c_t within the episode.
A2C with one worker (per lane) updates every j steps (5 chained, 10 multi-branch as in §6.2) on
the j-step returns ``R_t = sum_i γ^i r_{t+i} + γ^j V(s_{t+j})`` with γ = 0.9, entropy coefficient
η = 0.01 and learning rate 1e-3 (Equation 1). The first action of a trial is drawn uniformly (§4.2.4) and is not learned
from (no policy produced it).

Meta-training (``nasagent meta-train``) runs one trial per dataset in sequence, each continuing from
the previous trial's weights; ``nasagent search --strategy meta-a2c --policy FILE`` then runs a
trained policy with its weights fixed on a new dataset (``--option learn=true`` keeps training it).
Without ``--policy`` the strategy learns from scratch within the search.

Departures, and where the paper is silent:

* **The recurrent state is kept across episodes within a trial** and the j-step returns run across
  episode boundaries: a trial is the meta-episode, whose total discounted reward RL² and
  "learning to reinforcement learn" maximise, and carrying h over is what lets the policy adapt
  to the dataset. The authors' code (baselines' LSTM policy, masked with the episode's ``done``)
  reset the recurrent state and cut the returns at every episode's end. A new trial (a new search,
  or the next dataset of meta-training) starts from h = 0, as the paper says.
* c_t enters as c_t / τ, so all inputs lie in [0, 1].
* Optimiser: RMSProp (decay 0.99, ε 1e-5), value-loss coefficient 0.5 and gradient-norm clipping
  at 0.5, the defaults of OpenAI baselines' A2C on which the authors built; the paper gives only
  the learning rate, γ, η and j.
* With W parallel workers each lane (see :mod:`nasagent.strategies.env_driver`) has its own recurrent state
  and rollout, and a lane's update may use weights another lane has updated meanwhile (as in A3C).
  With W = 1 this is the paper's single-worker A2C.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasagent.envs.nas_env import NSCSpace, Step, encode
from nasagent.errors import ConfigError
from nasagent.strategies.base import StrategyContext
from nasagent.strategies.env_driver import EnvOptions, EnvStrategy, Lane
from nasagent.strategies.options import options_from
from nasagent.strategies.tensors import from_base64, to_base64

POLICY_FORMAT = "nasagent-meta-a2c/1"
POLICY_SETTINGS = ("depth", "multi_branch", "hidden")
"""Settings a policy's weights are shaped by: taken from its file, and an explicit other value is an error."""


@dataclass(frozen=True)
class MetaA2COptions(EnvOptions):
    """``--strategy meta-a2c``'s settings: the environment's (:class:`EnvOptions`) and the hyperparameters
    of §4.2.5 and §6.1 (plus baselines' A2C defaults where the paper is silent)."""

    policy: str | None = None
    """A trained policy file (``--policy``); its depth, τ, action set and LSTM size become the defaults."""
    learn: bool | None = None
    """Update the policy during the search; None: only without ``policy`` (a given policy stays fixed)."""
    horizon: int | None = None
    """j: steps between updates; None: 10 multi-branch, else 5 (§6.2)."""
    gamma: float = 0.9
    """Discount factor γ (§6.1)."""
    entropy: float = 0.01
    """η: the entropy regularisation coefficient."""
    lr: float = 1e-3
    """RMSProp learning rate (Equation 1)."""
    value_coef: float = 0.5
    """Weight of the value loss (baselines' A2C)."""
    max_grad_norm: float = 0.5
    """Gradient-norm clipping (baselines' A2C)."""
    hidden: int = 128
    """Units of the shared LSTM (§4.2.5)."""

    def __post_init__(self) -> None:
        if (self.horizon is not None and self.horizon < 1) or self.hidden < 1:
            raise ConfigError(f"horizon and hidden must be at least 1, got {self.horizon} and {self.hidden}")
        if not 0.0 < self.gamma <= 1.0 or self.lr <= 0 or self.entropy < 0:
            raise ConfigError(f"need 0 < gamma <= 1, lr > 0, entropy >= 0; got {self.gamma}, {self.lr}, {self.entropy}")

    def resolved(self, multi_branch: bool, has_policy: bool) -> MetaA2COptions:
        """These options with the context's defaults filled in: ``horizon`` by the action set, ``learn``
        by whether the strategy starts from a trained policy."""
        horizon = self.horizon if self.horizon is not None else (10 if multi_branch else 5)
        learn = self.learn if self.learn is not None else not has_policy
        return replace(self, horizon=horizon, learn=learn)


OPTIONS = MetaA2COptions


def input_size(space: NSCSpace) -> int:
    """Size of the LSTM's input: encoded state, one-hot previous action, previous reward, c_t."""
    rows, width = space.obs_shape
    return rows * width + space.n_actions + 2


def policy_input(space: NSCSpace, lane: Lane) -> np.ndarray:
    """s_t = x_t . a_{t-1} . r_{t-1} . c_t for a lane (a_{t-1} all zeros before its first action)."""
    previous = np.zeros(space.n_actions, dtype=np.float32)
    if lane.prev_action is not None:
        previous[lane.prev_action] = 1.0
    extra = np.array([lane.prev_reward, lane.state.steps / space.tau], dtype=np.float32)
    return np.concatenate([encode(space, lane.state).ravel(), previous, extra])


class MetaA2CNet(nn.Module):
    """LSTM(``hidden``) shared by a policy head (logits over actions) and a value head."""

    def __init__(self, inputs: int, actions: int, hidden: int = 128) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(inputs, hidden)
        self.policy = nn.Linear(hidden, actions)
        self.value = nn.Linear(hidden, 1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Seeded initialisation: PyTorch's LSTM rule, a near-uniform initial policy."""
        bound = 1.0 / self.hidden**0.5
        with torch.no_grad():
            for p in self.lstm.parameters():
                p.uniform_(-bound, bound, generator=generator)
            self.policy.weight.uniform_(-0.01, 0.01, generator=generator)
            self.value.weight.uniform_(-bound, bound, generator=generator)
            self.policy.bias.zero_()
            self.value.bias.zero_()

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x``: T x 1 x inputs; returns logits T x actions, values T, and the new (h, c)."""
        out, new_state = self.lstm(x, state)
        out = out[:, 0]
        return self.policy(out), self.value(out)[:, 0], new_state


@dataclass
class LaneMemory:
    """A lane's recurrent state and the rollout since its last update."""

    h: torch.Tensor
    c: torch.Tensor
    h0: torch.Tensor
    """The recurrent state before the rollout's first input (updates replay the rollout from it)."""
    c0: torch.Tensor
    inputs: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    @classmethod
    def zeros(cls, hidden: int) -> LaneMemory:
        z = torch.zeros(1, 1, hidden)
        return cls(z, z.clone(), z.clone(), z.clone())


class MetaA2CStrategy(EnvStrategy):
    """Meta-A2C acting in the NAS environment (see the module docstring)."""

    name = "meta-a2c"

    def __init__(
        self,
        space: NSCSpace,
        seed: int,
        config: MetaA2COptions | None = None,
        weights: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """``space`` is the environment (``config.space(...)`` when built from options); ``weights`` a
        trained policy's. Unset ``horizon`` and ``learn`` resolve here (:meth:`MetaA2COptions.resolved`)."""
        super().__init__(space, seed)
        self.config = (config or MetaA2COptions()).resolved(space.multi_branch, weights is not None)
        self.net = MetaA2CNet(input_size(space), space.n_actions, self.config.hidden)
        self.net.reset_parameters(torch.Generator().manual_seed(seed))
        if weights is not None:
            self.net.load_state_dict(weights)
        self.optimizer = torch.optim.RMSprop(self.net.parameters(), lr=self.config.lr, alpha=0.99, eps=1e-5)
        self.memory: list[LaneMemory] = []
        self.updates = 0

    def add_lane(self) -> None:
        self.memory.append(LaneMemory.zeros(self.config.hidden))

    def act(self, lane_id: int) -> int:
        lane, memory = self.lanes[lane_id], self.memory[lane_id]
        if lane.prev_action is None:
            return int(self.rng.integers(self.space.n_actions))  # a_0 of the trial: uniform (§4.2.4)
        x = policy_input(self.space, lane)
        if not memory.inputs:
            memory.h0, memory.c0 = memory.h, memory.c
        with torch.no_grad():
            logits, _, (memory.h, memory.c) = self.net(torch.from_numpy(x)[None, None], (memory.h, memory.c))
        probs = torch.softmax(logits[0].double(), dim=0).numpy()
        action = int(self.rng.choice(self.space.n_actions, p=probs / probs.sum()))
        if self.config.learn:
            memory.inputs.append(x)
            memory.actions.append(action)
        return action

    def learn(self, lane_id: int, result: Step, reward: float) -> None:
        memory = self.memory[lane_id]
        if not self.config.learn or len(memory.rewards) == len(memory.actions):
            return  # a fixed policy, or the trial's uniform first action
        memory.rewards.append(reward)
        if len(memory.rewards) >= self.config.horizon:  # type: ignore[operator]  # resolved in __init__
            self._update(lane_id)

    def _update(self, lane_id: int) -> None:
        """One A2C update on the lane's last j steps, bootstrapped with V of its current input."""
        cfg, memory = self.config, self.memory[lane_id]
        x_next = torch.from_numpy(policy_input(self.space, self.lanes[lane_id]))[None, None]
        with torch.no_grad():
            _, v_next, _ = self.net(x_next, (memory.h, memory.c))
        returns = []
        running = float(v_next[0])
        for r in reversed(memory.rewards):
            running = r + cfg.gamma * running
            returns.append(running)
        target = torch.tensor(returns[::-1], dtype=torch.float32)
        inputs = torch.from_numpy(np.stack(memory.inputs))[:, None]
        logits, values, _ = self.net(inputs, (memory.h0, memory.c0))
        log_probs = torch.log_softmax(logits, dim=1)
        chosen = log_probs.gather(1, torch.tensor(memory.actions)[:, None])[:, 0]
        advantage = target - values.detach()
        entropy = -(log_probs.exp() * log_probs).sum(dim=1)
        loss = (
            -(chosen * advantage).mean()
            + cfg.value_coef * ((target - values) ** 2).mean()
            - cfg.entropy * entropy.mean()
        )
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        memory.inputs, memory.actions, memory.rewards = [], [], []

    # -- persistence ----------------------------------------------------------------------------
    def learner_state(self) -> dict[str, Any]:
        lanes = [
            {
                "h": m.h,
                "c": m.c,
                "h0": m.h0,
                "c0": m.c0,
                "inputs": torch.from_numpy(np.stack(m.inputs)) if m.inputs else torch.zeros(0, input_size(self.space)),
                "actions": torch.tensor(m.actions, dtype=torch.int64),
                "rewards": torch.tensor(m.rewards, dtype=torch.float64),
            }
            for m in self.memory
        ]
        blob = {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "lanes": lanes}
        return {"blob": to_base64(blob), "updates": self.updates, "hidden": self.config.hidden}

    def restore_learner(self, state: dict[str, Any]) -> None:
        blob = from_base64(state["blob"])
        self.net.load_state_dict(blob["net"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.memory = [
            LaneMemory(
                m["h"],
                m["c"],
                m["h0"],
                m["c0"],
                [row.numpy() for row in m["inputs"]],
                [int(a) for a in m["actions"]],
                [float(r) for r in m["rewards"]],
            )
            for m in blob["lanes"]
        ]
        self.updates = int(state["updates"])

    def summary(self) -> dict[str, float]:
        return {**super().summary(), "updates": self.updates, "learning": int(bool(self.config.learn))}


# -- policy files ---------------------------------------------------------------------------------


def save_policy(path: Path, weights: dict[str, torch.Tensor], space: dict[str, Any], hidden: int) -> None:
    """Write a policy file (atomically: a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": POLICY_FORMAT, "weights": weights, "space": dict(space), "hidden": hidden}, tmp)
    tmp.replace(path)


def load_policy(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """(weights, environment settings it was trained with, hidden size); ``ConfigError`` if unreadable."""
    try:
        data = torch.load(Path(path), weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"--policy {path}: no such file") from None
    except Exception as exc:  # a corrupt or foreign file: one line, not a traceback
        raise ConfigError(f"--policy {path}: not a policy file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
        raise ConfigError(f"--policy {path}: not a {POLICY_FORMAT} policy file")
    return data["weights"], data["space"], int(data["hidden"])


def save_policy_from_state(state: dict[str, Any], path: Path) -> None:
    """Write the policy held in a saved ``meta-a2c`` strategy state (what meta-training stores)."""
    blob = from_base64(state["learner"]["blob"])
    save_policy(path, blob["net"], state["space"], int(state["learner"]["hidden"]))


def from_context(ctx: StrategyContext) -> MetaA2CStrategy:
    """``--strategy meta-a2c [--policy FILE]``; its options are :class:`MetaA2COptions`. With a policy the
    environment's depth and action set and the LSTM size are the policy's, τ defaults to its, and the
    policy is fixed unless learn=true."""
    options = options_from(MetaA2COptions, ctx.options, "meta-a2c")
    weights = None
    if options.policy:
        weights, trained, hidden = load_policy(options.policy)
        trained = {**trained, "hidden": hidden}
        for key in POLICY_SETTINGS:
            if key in ctx.options and getattr(options, key) != trained[key]:
                raise ConfigError(
                    f"--option {key}={ctx.options[key]} does not match the policy, trained with {key}={trained[key]}"
                )
        settable = {f.name for f in fields(MetaA2COptions)}
        options = replace(options, **{k: v for k, v in trained.items() if k in settable and k not in ctx.options})
    try:
        return MetaA2CStrategy(options.space(ctx.input_shape, ctx.num_classes, ctx.limits), ctx.seed, options, weights)
    except RuntimeError as exc:  # weights of another shape than the file's settings promise
        raise ConfigError(f"--policy {options.policy}: weights do not fit ({str(exc).splitlines()[0][:120]})") from None
