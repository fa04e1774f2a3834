"""The NAS environment of Gomez Robles & Vanschoren (§4.2): NSC states, actions, termination, reward.

The dynamics are pure and kept apart from evaluation: :func:`step` maps (state, action) to the
next state, the termination rules that fired and *which network's accuracy* the reward needs;
:class:`NASEnv` (a ``gymnasium.Env``) and the searchers in :mod:`nasagent.strategies.env_driver` both use it.

**Actions** (Table 2). A0-A2 add a convolution with kernel 1, 3, 5; A3-A4 a max pooling with
window 2, 3; A5-A6 an average pooling with window 2, 3; A7 the terminal. Multi-branch adds A8
addition and A9 concatenation of the layers under the pointers p1 and p2, and A10-A13 shift p1
up, p1 down, p2 up, p2 down. Chain-structured networks use A0-A7 only, each layer reading the
one before it.

**Pointers.** The authors' code keeps each pointer as an offset back from the newest layer, so
``p_i = n - shift_i`` with n the number of layers: without shifts a new layer reads the newest
one (a chain), and the pointers follow the network as it grows. "Up" (``p = p + 1``) lowers the
offset by one, "down" raises it. Both start on the newest layer (the input when n = 0).

**Termination** (§4.2.3): (a) a pointer leaves ``{0..n}`` after the action; (b) the action is the
terminal; (c) the state holds d NSC rows (the terminal row counts, as in the authors' code);
(d) the episode has taken τ actions; (e) the new layer makes the network invalid (a window
larger than its input: see ``padding`` below). :attr:`Step.rules` lists every rule that fired.

**Limits** (``--max-params``, ``--max-macs``; not in the paper). A network over the space's size
limits (``NSCSpace.max_params``, ``max_macs``; :func:`nasagent.core.cost.nsc_cost`) is treated like
an invalid one: rule ``"limit"`` fires, the step earns 0, needs no evaluation and ends the episode.
The environment's learners (DQN, meta-A2C, random) choose among all actions and learn from each
step's reward, so they are not masked: the environment rejects the network before anything trains
it, and the learner sees the 0, as it does for rule (e). The cost of an NSC network is not monotone
(a pooling layer shrinks the dense head), so a network within the limits may follow one over them
in another episode; within an episode, every network evaluated is within them. Since each episode
starts from the empty network, the space refuses limits that every first network of an episode
breaks (ConfigError): no network could ever be proposed.

**Padding** (``NSCSpace.padding``). ``"valid"`` (default) is the authors' code: Keras layers with
their default ``padding="valid"``, so every convolution of kernel k shrinks the map by k - 1 and
every pooling divides it, and a window larger than its input fails to build (their reward code
catches the error: reward 0, episode over). On 28x28 images a chain of convolutions reaches rule (e)
after a handful of layers, as in the paper. ``"same"`` keeps convolutions' sizes; only an average
pooling can then be invalid, so rule (e) almost never fires.

**Evaluation** (§4.1.2, §6.1): a network's accuracy is that of its *final* epoch after ``EPOCHS``
(12, BlockQNN's value) epochs with Adam and the lr × 0.2 every 5 epochs, with no restarts: the
authors' trainer runs a fixed number of steps and evaluates once. This is how the searchers of
:mod:`nasagent.strategies.env_driver` have their networks trained unless told otherwise
(``--option score=best``, ``--option restarts=true``, ``--epochs``).

**Reward** (Algorithm 1): the accuracy of the network of the new state; a pointer shift earns σ
times it (the network did not change). As in the authors' code, a shift that sends a pointer out
of bounds (rule a) and an invalid network (rule e) earn 0 and need no evaluation; so does any
shift when σ = 0. A terminal row adds nothing to the built network, so the terminal's reward is the
accuracy of the network as it stands (a cache hit unless nothing was evaluated yet).

**State encoding** (§4.2.1): d rows, one per NSC vector in index order (empty rows after the
layers), each the concatenation of one-hots of the type (8: types 1-7 and 0 = empty), predecessor
1 (d + 1), predecessor 2 (d + 1; multi-branch only, footnote 7) and kernel (k + 1 = 6); the layer
index is left out, the row's position carries it. Size d x (d + 16) chained, d x (2d + 16)
multi-branch. Departure: the multi-branch observation has one more row holding the pointer
positions (one-hot in the two predecessor slots). Without it a shift changes nothing an agent can
see and the state is not Markov; the authors' code leaves the pointers out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from nasagent.core.cost import nsc_cost
from nasagent.core.limits import Limits
from nasagent.core.nsc import (
    ADD,
    AVG_POOL,
    CONCAT,
    CONV,
    MAX_KERNEL,
    MAX_POOL,
    NUM_TYPES,
    PADDINGS,
    TERMINAL,
    NSCLayer,
    NSCNetwork,
)
from nasagent.errors import ConfigError

# (type, kernel) of the layer-adding actions A0-A6, in Table 2's order.
LAYER_ACTIONS: tuple[tuple[int, int], ...] = (
    (CONV, 1),
    (CONV, 3),
    (CONV, 5),
    (MAX_POOL, 2),
    (MAX_POOL, 3),
    (AVG_POOL, 2),
    (AVG_POOL, 3),
)
EPOCHS = 12
"""Training epochs per network in the paper's environment (§6.1, "the value used in BlockQNN")."""
A_TERMINAL, A_ADD, A_CONCAT = 7, 8, 9
A_P1_UP, A_P1_DOWN, A_P2_UP, A_P2_DOWN = 10, 11, 12, 13
CHAIN_ACTIONS, MULTI_BRANCH_ACTIONS = 8, 14

ACTION_NAMES = (
    "conv1",
    "conv3",
    "conv5",
    "maxpool2",
    "maxpool3",
    "avgpool2",
    "avgpool3",
    "terminal",
    "add",
    "concat",
    "p1-up",
    "p1-down",
    "p2-up",
    "p2-down",
)


@dataclass(frozen=True)
class NSCSpace:
    """One NAS environment's rules: the data's shape and classes, d, τ, σ and the action set."""

    input_shape: tuple[int, int, int]
    num_classes: int
    depth: int = 10
    """d: the most NSC rows a state holds (§6.1: 10)."""
    tau: int = 10
    """τ: the most actions in one episode (§6.1: 10 chained, §6.2: 20 multi-branch)."""
    multi_branch: bool = False
    """14 actions with merges and pointers instead of the 8 chain-structured ones."""
    sigma: float = 0.1
    """σ: a pointer shift's reward is σ times the accuracy (§6.2 tried 0.0 and 0.1)."""
    padding: str = "valid"
    """``valid``: no padding, as the authors' code; ``same``: size-keeping convolutions (module docstring)."""
    max_params: int | None = None
    """``--max-params``: a network with more trainable parameters is rejected (rule ``"limit"``)."""
    max_macs: int | None = None
    """``--max-macs``: a network with more MACs per image is rejected (rule ``"limit"``)."""

    def __post_init__(self) -> None:
        if self.depth < 1 or self.tau < 1:
            raise ConfigError(f"depth and tau must be at least 1, got {self.depth} and {self.tau}")
        if self.padding not in PADDINGS:
            raise ConfigError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        if not 0.0 <= self.sigma <= 1.0:
            raise ConfigError(f"sigma must be in [0, 1], got {self.sigma}")
        if self.num_classes < 1 or len(self.input_shape) != 3:
            raise ConfigError(f"bad data description: {self.num_classes} classes, input shape {self.input_shape}")
        if self.limits.sized:
            self._check_limits()

    @property
    def limits(self) -> Limits:
        """The size limits networks of this environment must meet (none by default)."""
        return Limits(max_params=self.max_params, max_macs=self.max_macs)

    def within_limits(self, network: NSCNetwork) -> bool:
        """Whether ``network`` is within the size limits (a network invalid for the input is not)."""
        if not self.limits.sized:
            return True
        try:
            return self.limits.admits(*nsc_cost(network, self.input_shape, self.padding))
        except ConfigError:
            return False

    def _check_limits(self) -> None:
        """ConfigError when every network an episode can start with is over the limits (then no
        episode ever reaches a network that is within them)."""
        first = [NSCNetwork((), self.num_classes)]
        first += [NSCNetwork((NSCLayer(1, kind, kernel, 0, 0),), self.num_classes) for kind, kernel in LAYER_ACTIONS]
        if self.multi_branch:
            first += [NSCNetwork((NSCLayer(1, kind, 0, 0, 0),), self.num_classes) for kind in (ADD, CONCAT)]
        costs = []
        for network in first:
            try:
                costs.append(nsc_cost(network, self.input_shape, self.padding))
            except ConfigError:
                continue  # invalid for this input: never proposed
            if self.limits.admits(*costs[-1]):
                return
        c, h, w = self.input_shape
        fewest = f"{min((p for p, _ in costs), default=0):,} parameters, {min((m for _, m in costs), default=0):,} MACs"
        raise ConfigError(
            f"no network of the NAS environment for {c}x{h}x{w} inputs meets {self.limits.describe()}: every "
            f"episode starts with a network over them (the fewest among those: {fewest})"
        )

    @property
    def n_actions(self) -> int:
        return MULTI_BRANCH_ACTIONS if self.multi_branch else CHAIN_ACTIONS

    @property
    def width(self) -> int:
        """Columns of the encoding: 2d + k + 11 multi-branch, d + k + 10 chained (k = 5)."""
        preds = 2 if self.multi_branch else 1
        return NUM_TYPES + preds * (self.depth + 1) + MAX_KERNEL + 1

    @property
    def obs_shape(self) -> tuple[int, int]:
        return (self.depth + (1 if self.multi_branch else 0), self.width)

    def describe(self) -> dict[str, Any]:
        """What a trained policy depends on (its input size and meaning)."""
        return {"depth": self.depth, "tau": self.tau, "multi_branch": self.multi_branch}


@dataclass(frozen=True)
class NSCState:
    """An environment state: the NSC layers so far, the terminal row, pointer shifts, actions taken."""

    layers: tuple[NSCLayer, ...] = ()
    terminal: bool = False
    shift1: int = 0
    shift2: int = 0
    steps: int = 0

    @property
    def n(self) -> int:
        """Layers in the network (the terminal row is not a layer)."""
        return len(self.layers)

    @property
    def rows(self) -> int:
        """NSC vectors in the state, the terminal row included."""
        return self.n + int(self.terminal)

    @property
    def pointers(self) -> tuple[int, int]:
        """(p1, p2): the layer indices the next layer would read."""
        return self.n - self.shift1, self.n - self.shift2

    def network(self, classes: int) -> NSCNetwork:
        return NSCNetwork(self.layers, classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [[x.index, x.type, x.kernel, x.pred1, x.pred2] for x in self.layers],
            "terminal": self.terminal,
            "shift1": self.shift1,
            "shift2": self.shift2,
            "steps": self.steps,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NSCState:
        return cls(
            tuple(NSCLayer(*row) for row in data["layers"]),
            bool(data["terminal"]),
            int(data["shift1"]),
            int(data["shift2"]),
            int(data["steps"]),
        )


@dataclass(frozen=True)
class Step:
    """What one action does: the next state, the rules that ended the episode, what the reward needs.

    The reward is ``scale * accuracy(network)``; when ``network`` is None it is 0 and nothing needs
    evaluating (pointer out of bounds, invalid network, or a shift with σ = 0).
    """

    before: NSCState
    action: int
    after: NSCState
    kind: str
    """``"layer"``, ``"terminal"`` or ``"shift"``."""
    rules: tuple[str, ...]
    """Termination rules of §4.2.3 that fired, from ``"a"`` to ``"e"``, and ``"limit"`` for a network over
    the size limits (module docstring); empty if the episode goes on."""
    scale: float
    network: NSCNetwork | None = field(default=None, compare=False)

    @property
    def done(self) -> bool:
        return bool(self.rules)


def step(space: NSCSpace, state: NSCState, action: int) -> Step:
    """Apply ``action`` to ``state`` (which must not be terminated). Pure: no evaluation happens."""
    if not 0 <= action < space.n_actions:
        raise ValueError(f"action {action} is not one of the {space.n_actions} actions")
    if state.terminal or state.rows >= space.depth:
        raise ValueError("the episode is over: reset the state before acting")
    n = state.n
    rules: list[str] = []
    if action >= A_P1_UP:
        delta = -1 if action in (A_P1_UP, A_P2_UP) else 1
        first = action in (A_P1_UP, A_P1_DOWN)
        after = NSCState(
            state.layers,
            False,
            state.shift1 + (delta if first else 0),
            state.shift2 + (0 if first else delta),
            state.steps + 1,
        )
        out_of_bounds = any(not 0 <= p <= n for p in after.pointers)
        if out_of_bounds:
            rules.append("a")
        kind, scale = "shift", 0.0 if out_of_bounds else space.sigma
    elif action == A_TERMINAL:
        after = NSCState(state.layers, True, state.shift1, state.shift2, state.steps + 1)
        rules.append("b")
        kind, scale = "terminal", 1.0
    else:
        p1, p2 = state.pointers if space.multi_branch else (n, 0)
        if action in (A_ADD, A_CONCAT):
            layer = NSCLayer(n + 1, ADD if action == A_ADD else CONCAT, 0, p1, p2)
        else:
            kind_, kernel = LAYER_ACTIONS[action]
            layer = NSCLayer(n + 1, kind_, kernel, p1, 0)
        after = NSCState(state.layers + (layer,), False, state.shift1, state.shift2, state.steps + 1)
        kind, scale = "layer", 1.0
        if not after.network(space.num_classes).is_valid(space.input_shape, space.padding):
            rules.append("e")
            scale = 0.0
    if after.rows >= space.depth:
        rules.append("c")
    if after.steps >= space.tau:
        rules.append("d")
    network = after.network(space.num_classes) if scale > 0 else None
    if network is not None and not space.within_limits(network):
        rules.append("limit")  # over --max-params/--max-macs: rejected before anything trains it
        scale, network = 0.0, None
    return Step(state, action, after, kind, tuple(sorted(rules)), scale, network)


def encode(space: NSCSpace, state: NSCState) -> np.ndarray:
    """The §4.2.1 encoding of ``state`` (plus the pointer row when multi-branch): float32 0/1."""
    d, mb = space.depth, space.multi_branch
    out = np.zeros(space.obs_shape, dtype=np.float32)
    pred2_at = NUM_TYPES + (d + 1)
    kernel_at = NUM_TYPES + (2 if mb else 1) * (d + 1)
    rows = [(layer.type, layer.kernel, layer.pred1, layer.pred2) for layer in state.layers]
    if state.terminal:
        rows.append((TERMINAL, 0, 0, 0))
    rows += [(0, 0, 0, 0)] * (d - len(rows))
    for r, (type_, kernel, pred1, pred2) in enumerate(rows):
        out[r, type_] = 1.0
        out[r, NUM_TYPES + pred1] = 1.0
        if mb:
            out[r, pred2_at + pred2] = 1.0
        out[r, kernel_at + kernel] = 1.0
    if mb:
        p1, p2 = state.pointers
        out[d, NUM_TYPES + p1] = 1.0
        out[d, pred2_at + p2] = 1.0
    return out


class NASEnv(gym.Env):
    """The NAS environment as a ``gymnasium.Env``: one dataset, rewards from ``evaluate``.

    ``evaluate(network) -> accuracy in [0, 1]`` trains a network (or computes a known function of
    it). Accuracies are cached by (dataset, network digest) in ``cache``, which may be shared
    between environments, so no network is evaluated twice for one dataset. ``evaluations`` counts
    the calls to ``evaluate``. Every termination rule sets ``terminated``; ``truncated`` is never set
    (§4.2.3 defines all five as the episode's end). ``info`` holds the rules, the action's kind,
    the network and its accuracy (None when the reward needed none).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        space: NSCSpace,
        evaluate: Callable[[NSCNetwork], float],
        dataset: str = "",
        cache: dict[tuple[str, str], float] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.space = space
        self.evaluate = evaluate
        self.dataset = dataset
        self.cache = {} if cache is None else cache
        self.render_mode = render_mode
        self.evaluations = 0
        self.observation_space = spaces.Box(0.0, 1.0, shape=space.obs_shape, dtype=np.float32)
        self.action_space = spaces.Discrete(space.n_actions)
        self.state = NSCState()
        self._over = False

    def accuracy(self, network: NSCNetwork) -> float:
        """The cached accuracy of ``network`` on this environment's dataset, evaluated on a miss."""
        key = (self.dataset, network.digest)
        if key not in self.cache:
            self.cache[key] = float(self.evaluate(network))
            self.evaluations += 1
        return self.cache[key]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.state = NSCState()
        self._over = False
        return encode(self.space, self.state), {"network": str(self.state.network(self.space.num_classes))}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._over:
            raise RuntimeError("the episode is over: call reset()")
        result = step(self.space, self.state, int(action))
        accuracy = self.accuracy(result.network) if result.network is not None else None
        reward = result.scale * accuracy if accuracy is not None else 0.0
        self.state = result.after
        self._over = result.done
        info = {
            "rules": result.rules,
            "kind": result.kind,
            "accuracy": accuracy,
            "network": str(result.after.network(self.space.num_classes)),
        }
        return encode(self.space, self.state), float(reward), result.done, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        p1, p2 = self.state.pointers
        pointers = f" p1={p1} p2={p2}" if self.space.multi_branch else ""
        terminal = " +terminal" if self.state.terminal else ""
        return f"{self.state.network(self.space.num_classes)}{terminal}{pointers} after {self.state.steps} actions"


__all__ = [
    "ACTION_NAMES",
    "A_ADD",
    "A_CONCAT",
    "A_P1_DOWN",
    "A_P1_UP",
    "A_P2_DOWN",
    "A_P2_UP",
    "A_TERMINAL",
    "CHAIN_ACTIONS",
    "EPOCHS",
    "LAYER_ACTIONS",
    "MULTI_BRANCH_ACTIONS",
    "NASEnv",
    "NSCSpace",
    "NSCState",
    "Step",
    "encode",
    "step",
]
