"""REINFORCE: an LSTM controller samples fixed-depth conv nets and learns by policy gradient.

After Zoph & Le (2017), §3.1-3.2, and the seed's replication of it (``papers/004``): a recurrent
controller emits, layer by layer, the number of filters, the kernel size and the stride of each of
``depth`` convolutions, each from a categorical distribution whose input is the previous choice.
The network is ``depth`` × ``C(filters, kernel, stride)`` then ``SM(num_classes)``.

The update for a rewarded architecture with decisions a_1..a_T (Zoph & Le, eq. 2):

    loss = -(R - b) · Σ_t log π(a_t | a_<t)  -  entropy · Σ_t H(π(· | a_<t))

with R the validation accuracy and b an exponential moving average of the previous accuracies
(``baseline``; b ← β·b + (1-β)·R after each reward, b starts at the first accuracy, so the first
signal is 0). ``clip`` limits R - b to ±clip, as the seed does (±0.05 or ±0.1). ``batch`` > 1
averages the loss over that many rewards before one Adam step (Zoph & Le's m).

Decisions where the source is silent, and how the agent's loop is served:

- **Asynchronous rewards.** With W workers up to W proposals are outstanding. A proposal's choices
  are a function of its architecture (the space is a bijection), so ``tell`` recomputes the
  log-probabilities of those choices under the *current* controller and applies the gradient when
  its reward arrives. At W = 1 that is exact REINFORCE; at W > 1 the policy may have moved by up to
  W-1 updates since the sample, the same staleness as Zoph & Le's asynchronous workers.
- **Replay-dictionary hits** (``first_training=False``) are rewards for sampled architectures and
  update the controller like any other.
- **Size limits** (``--max-params``, ``--max-macs``): a choice after which no network of the chain
  fits them gets probability 0, when sampling and when scoring
  (:mod:`nasagent.strategies.chain_limits`); without limits every choice is open.
- **Small inputs.** Convolutions use SAME padding, so a stride-s layer maps size n to ceil(n/s) ≥ 1:
  every choice is valid for every input size (on 8×8 digits three stride-2 layers leave 1×1). A
  kernel larger than the map only sees padding there. No choice is ever illegal.
- **Initialisation**: every controller weight uniform in [-0.08, 0.08] (Zoph & Le, §4.1), drawn
  from the strategy's own seeded generator, so the same seed gives the same controller.
- **Optimizer**: Adam; the default learning rate (0.03) is much larger than Zoph & Le's 0.0006
  because this runs for tens to hundreds of trials, not 12,800.
- **Bounded logits** (``tanh``, default 1.5; Bello et al. 2016, ENAS). The budget counts unique
  networks, and a controller that has converged proposes only networks already trained: the agent
  then spins on replay-dictionary hits (each one a reward and a transaction) and gives up after
  20,000. On the tests' toy problem (100 unique networks, 8 seeds) unbounded logits took 9 to more
  than 15 proposals per unique network in 6 of 8 seeds; tanh = 1.5 took at most 1.6, at a small
  cost in what was found (mean top-5 reward 0.79 against 0.81; uniform sampling: 0.71).

Statistics the seed reports (reward variance with and without the baseline) are kept in
``state_dict()["summary"]``, which ``nasagent status`` shows as ``strategy_summary``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nasagent.core.arch import Architecture, Conv, Softmax
from nasagent.core.networks import Network
from nasagent.errors import ConfigError
from nasagent.strategies.base import Proposal, Strategy, StrategyContext
from nasagent.strategies.chain_limits import ChainLimits
from nasagent.strategies.options import options_from
from nasagent.strategies.tensors import from_base64, to_base64

KINDS = ("filters", "kernel", "stride")
INIT_RANGE = 0.08


@dataclass(frozen=True)
class ReinforceConfig:
    """``--strategy reinforce``'s settings: the search space and the controller's hyperparameters."""

    depth: int = 3
    """Convolutions per network (fixed depth)."""
    filters: tuple[int, ...] = (8, 16, 32, 64)
    """Choices for the number of filters of each convolution."""
    kernels: tuple[int, ...] = (1, 3, 5)
    """Choices for the (square) kernel size of each convolution."""
    strides: tuple[int, ...] = (1, 2)
    """Choices for the stride of each convolution (SAME padding: size n becomes ceil(n/s))."""
    baseline: bool = True
    """Subtract an exponential moving average of previous accuracies from each reward."""
    beta: float = 0.8
    """EMA decay of the baseline: b ← β·b + (1-β)·accuracy."""
    clip: float | None = None
    """Clip accuracy - baseline to ±clip (the seed uses 0.05 or 0.1); None: no clipping."""
    entropy: float = 0.01
    """Weight of the entropy bonus (summed over the decisions of one network)."""
    lr: float = 0.03
    """Adam learning rate of the controller."""
    hidden: int = 32
    """LSTM hidden units (and embedding size of the previous choice)."""
    batch: int = 1
    """Rewards averaged per Adam step (Zoph & Le's m)."""
    tanh: float | None = 1.5
    """Bound logits to ±tanh as ``tanh·tanh(logits / tanh)`` (Bello et al. 2016; ENAS uses 2.5), so no
    choice's probability reaches 1 and the controller keeps proposing new networks; None: unbounded."""

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or not 1 <= self.depth <= 50:
            raise ConfigError(f"--option depth must be a whole number in 1..50, got {self.depth!r}")
        for name in ("filters", "kernels", "strides"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                raise ConfigError(
                    f"--option {name} must be a non-empty list of positive whole numbers, got {list(values)!r}"
                )
            if len(set(values)) != len(values):
                raise ConfigError(f"--option {name} lists a value twice: {list(values)!r}")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"--option beta must be in [0, 1), got {self.beta!r}")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError(
                f"--option clip must be none or a positive number (the seed uses 0.05 or 0.1), got {self.clip!r}"
            )
        if self.clip is not None and not self.baseline:
            raise ConfigError(
                "--option clip needs baseline=true: without a baseline it would clip every accuracy to +clip"
            )
        if not self.entropy >= 0:
            raise ConfigError(f"--option entropy must be >= 0, got {self.entropy!r}")
        if not self.lr >= 0:
            raise ConfigError(f"--option lr must be >= 0, got {self.lr!r}")
        if not isinstance(self.hidden, int) or isinstance(self.hidden, bool) or self.hidden < 1:
            raise ConfigError(f"--option hidden must be a positive whole number, got {self.hidden!r}")
        if self.tanh is not None and not self.tanh > 0:
            raise ConfigError(f"--option tanh must be none or a positive number, got {self.tanh!r}")
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise ConfigError(f"--option batch must be a positive whole number, got {self.batch!r}")


OPTIONS = ReinforceConfig


class ChainSpace:
    """``depth`` × ``C(filters, kernel, stride)`` then ``SM(num_classes)``; decisions as indices.

    Decision t is of kind ``KINDS[t % 3]`` for layer ``t // 3``. ``encode`` and ``decode`` are
    inverse: an architecture of the space is exactly one sequence of choice indices.
    """

    def __init__(self, config: ReinforceConfig, num_classes: int) -> None:
        self.depth = config.depth
        self.choices: dict[str, tuple[int, ...]] = {
            "filters": config.filters,
            "kernel": config.kernels,
            "stride": config.strides,
        }
        self.num_classes = num_classes

    @property
    def steps(self) -> int:
        return 3 * self.depth

    def kind(self, step: int) -> str:
        return KINDS[step % 3]

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(len(c) for c in self.choices.values()) ** self.depth

    def decode(self, indices: list[int]) -> Architecture:
        values = [self.choices[self.kind(t)][i] for t, i in enumerate(indices)]
        convs = tuple(Conv(*values[3 * k : 3 * k + 3]) for k in range(self.depth))
        return Architecture(convs + (Softmax(self.num_classes),))

    def encode(self, arch: Network) -> list[int]:
        """The choice indices of ``arch``; ValueError if it is not an architecture of this space."""
        parsed = arch if isinstance(arch, Architecture) else Architecture.parse(str(arch))
        hidden = parsed.hidden
        if (
            len(hidden) != self.depth
            or parsed.terminal != Softmax(self.num_classes)
            or not all(isinstance(layer, Conv) for layer in hidden)
        ):
            raise ValueError(
                f"{parsed} is not in the REINFORCE space ({self.depth} convolutions then SM({self.num_classes}))"
            )
        indices = []
        for layer in hidden:
            for kind, value in zip(KINDS, (layer.filters, layer.kernel, layer.stride)):  # type: ignore[union-attr]
                if value not in self.choices[kind]:
                    raise ValueError(f"{parsed}: {kind} {value} is not one of {list(self.choices[kind])}")
                indices.append(self.choices[kind].index(value))
        return indices


class Controller(nn.Module):
    """An LSTM cell fed the embedding of the previous choice, with one softmax head per decision kind."""

    def __init__(
        self,
        space: ChainSpace,
        hidden: int,
        tanh: float | None = None,
        allowed: Callable[[list[int]], list[bool]] | None = None,
    ) -> None:
        """``allowed(picks)``: which choices of the decision after ``picks`` may be taken (size limits,
        :class:`nasagent.strategies.chain_limits.ChainLimits`); the others get probability 0."""
        super().__init__()
        self.space = space
        self.tanh = tanh
        self.allowed = allowed
        sizes = [len(space.choices[k]) for k in KINDS]
        # Token 0 is "start"; the choices of kind k follow at offset[k].
        self.offset = {k: 1 + sum(sizes[:i]) for i, k in enumerate(KINDS)}
        self.embed = nn.Embedding(1 + sum(sizes), hidden)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in zip(KINDS, sizes)})

    def initialise(self, generator: torch.Generator) -> None:
        """Every weight uniform in [-0.08, 0.08], from ``generator`` (no global RNG)."""
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.uniform_(-INIT_RANGE, INIT_RANGE, generator=generator)

    def run(
        self, choices: torch.Tensor | None = None, generator: torch.Generator | None = None, batch: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unroll over the decisions of ``batch`` networks: sample them (``choices`` None, with
        ``generator``) or score the given ``choices`` (B×T indices). Returns the choices, their
        log-probabilities and the entropies of the distributions they were drawn from (all B×T)."""
        if choices is not None:
            batch = choices.shape[0]
        token = torch.zeros(batch, dtype=torch.long)
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        picked, log_probs, entropies = [], [], []
        for t in range(self.space.steps):
            kind = self.space.kind(t)
            state = self.cell(self.embed(token), state)
            logits = self.heads[kind](state[0])
            if self.tanh is not None:
                logits = self.tanh * torch.tanh(logits / self.tanh)
            mask = None
            if self.allowed is not None:
                prefixes = torch.stack(picked, 1).tolist() if picked else [[] for _ in range(batch)]
                mask = torch.tensor([self.allowed(prefix) for prefix in prefixes], dtype=torch.bool)
                logits = logits.masked_fill(~mask, float("-inf"))
            logits = torch.log_softmax(logits, dim=-1)
            if choices is None:
                pick = torch.multinomial(logits.exp(), 1, generator=generator).squeeze(1)
            else:
                pick = choices[:, t]
            picked.append(pick)
            log_probs.append(logits.gather(1, pick.unsqueeze(1)).squeeze(1))
            finite = logits if mask is None else logits.masked_fill(~mask, 0.0)  # 0·log 0 counts 0, not NaN
            entropies.append(-(logits.exp() * finite).sum(-1))
            token = pick + self.offset[kind]
        return torch.stack(picked, 1), torch.stack(log_probs, 1), torch.stack(entropies, 1)


@dataclass
class RunningStats:
    """Count, mean and variance of a stream of numbers (Welford), as plain JSON numbers."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    sum_sq: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
        self.sum_sq += x * x

    @property
    def variance(self) -> float:
        """Population variance (0 for fewer than two values)."""
        return self.m2 / self.n if self.n > 1 else 0.0

    @property
    def mean_square(self) -> float:
        return self.sum_sq / self.n if self.n else 0.0


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the controller's tiny tensor ops on one thread, restoring the caller's setting after.
    Intra-op threads only add synchronisation at this size: ask + tell measured 90 ms with 2 threads
    and 13 ms with 1 on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class ReinforceStrategy(Strategy):
    """REINFORCE with an LSTM controller over a fixed-depth chain of convolutions."""

    name = "reinforce"

    def __init__(
        self, space: ChainSpace, seed: int, config: ReinforceConfig | None = None, limits: ChainLimits | None = None
    ) -> None:
        """``limits``: the size limits' masks (``--max-params``/``--max-macs``); None: every choice allowed."""
        self.space = space
        self.config = config or ReinforceConfig()
        self.generator = torch.Generator().manual_seed(seed)
        self.controller = Controller(
            space, self.config.hidden, self.config.tanh, None if limits is None else limits.allowed
        )
        self.controller.initialise(self.generator)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.config.lr)
        self.baseline: float | None = None
        self.pending: dict[str, int] = {}  # architecture -> proposals still waiting for their reward
        self.buffer: list[tuple[str, float]] = []  # (architecture, signal) awaiting a batched step
        self.rewards = RunningStats()  # accuracies as told
        self.signals = RunningStats()  # what multiplies ∇log π: accuracy - baseline, clipped
        self.updates = 0
        self.last_entropy: float | None = None

    # -- sampling ------------------------------------------------------------------------------
    def ask(self, unique_launched: int) -> Proposal:
        with torch.no_grad(), _one_thread():
            choices, log_probs, _ = self.controller.run(generator=self.generator)
        arch = self.space.decode(choices[0].tolist())
        self.pending[str(arch)] = self.pending.get(str(arch), 0) + 1
        return Proposal(arch, info={"log_prob": round(float(log_probs.sum()), 6)})

    # -- learning ------------------------------------------------------------------------------
    def signal(self, reward: float) -> float:
        """The factor of ∇log π for this reward; moves the baseline past it."""
        value = reward
        if self.config.baseline:
            b = reward if self.baseline is None else self.baseline
            value = reward - b
            self.baseline = self.config.beta * b + (1 - self.config.beta) * reward
        if self.config.clip is not None:
            value = max(-self.config.clip, min(self.config.clip, value))
        return value

    def tell(self, arch: Network, reward: float, first_training: bool) -> None:
        self.space.encode(arch)  # fail loudly on an architecture this controller cannot have sampled
        key = str(arch)
        if self.pending.get(key, 0) > 1:
            self.pending[key] -= 1
        else:
            self.pending.pop(key, None)
        signal = self.signal(float(reward))
        self.rewards.add(float(reward))
        self.signals.add(signal)
        self.buffer.append((key, signal))
        if len(self.buffer) >= self.config.batch:
            with _one_thread():
                self.step(self.buffer)
            self.buffer = []

    def step(self, samples: list[tuple[str, float]]) -> None:
        """One Adam step on the REINFORCE loss of these (architecture, signal) pairs."""
        choices = torch.tensor([self.space.encode(Architecture.parse(a)) for a, _ in samples])
        signals = torch.tensor([s for _, s in samples])
        _, log_probs, entropies = self.controller.run(choices)
        loss = -(signals * log_probs.sum(1)).mean() - self.config.entropy * entropies.sum(1).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        self.last_entropy = float(entropies.detach().mean())

    def log_prob(self, arch: Network) -> float:
        """log π(arch) under the current controller."""
        choices = torch.tensor([self.space.encode(arch)])
        with torch.no_grad(), _one_thread():
            return float(self.controller.run(choices)[1].sum())

    # -- persistence ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Plain numbers for ``nasagent status``: the reward statistics the seed compares."""
        label = f"with baseline (beta={self.config.beta})" if self.config.baseline else "without baseline"
        return {
            "baseline": label,
            "clip": self.config.clip,
            "rewards": self.rewards.n,
            "reward_mean": self.rewards.mean,
            "reward_variance": self.rewards.variance,
            "signal_mean": self.signals.mean,
            "signal_variance": self.signals.variance,
            "signal_mean_square": self.signals.mean_square,
            "baseline_value": self.baseline,
            "updates": self.updates,
            "mean_decision_entropy": self.last_entropy,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": to_base64(
                {
                    "controller": self.controller.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "generator": self.generator.get_state(),
                }
            ),
            "baseline": self.baseline,
            "pending": dict(self.pending),
            "buffer": [[a, s] for a, s in self.buffer],
            "rewards": asdict(self.rewards),
            "signals": asdict(self.signals),
            "updates": self.updates,
            "last_entropy": self.last_entropy,
            "summary": self.summary(),
        }

    def restore(
        self, state: dict[str, Any] | None, values: dict[tuple[str, str], float], replay: list[tuple[Network, float]]
    ) -> None:
        """Everything comes from ``state`` (the value table and replay memory are not used)."""
        if state is None:
            return
        saved = from_base64(state["torch"])
        self.controller.load_state_dict(saved["controller"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        self.baseline = state["baseline"]
        self.pending = {str(a): int(n) for a, n in state["pending"].items()}
        self.buffer = [(str(a), float(s)) for a, s in state["buffer"]]
        self.rewards = RunningStats(**state["rewards"])
        self.signals = RunningStats(**state["signals"])
        self.updates = int(state["updates"])
        self.last_entropy = state["last_entropy"]


def from_context(ctx: StrategyContext) -> ReinforceStrategy:
    """REINFORCE over the space its ``--option`` settings define (``--space`` does not apply, except for how
    its convolutions pad), never proposing a network over the size limits (ConfigError if none meets them)."""
    settings = options_from(ReinforceConfig, ctx.options, "reinforce")
    space = ChainSpace(settings, ctx.num_classes)
    limits = None
    if ctx.limits.sized:
        cfg = ctx.space
        limits = ChainLimits(
            space.depth, space.choices, ctx.num_classes, ctx.input_shape, ctx.limits, cfg.pooling, cfg.conv_padding
        )
    return ReinforceStrategy(space, ctx.seed, settings, limits)
