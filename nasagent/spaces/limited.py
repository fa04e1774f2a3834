"""Walks of a MetaQNN space that never leave ``--max-params`` / ``--max-macs``.

Every layer of a MetaQNN network adds parameters and MACs and none takes any away, so the cost of a
prefix only grows as the walk goes on. But a prefix within the limits may still have no completion
within them: every walk ends with a terminal layer, and ``SM(K)`` on a large representation costs
``C·H·W·K`` parameters however small the layers before it were. So an action is allowed only when
the prefix it makes has *some* completion within the limits: its cost plus the cheapest way to
finish from the state it leads to. "Cheapest" is a Pareto frontier of (parameters, MACs) when both
limits are set (:class:`nasagent.core.limits.Frontier`), so the test is exact either way, and a walk
that takes only allowed actions always reaches a terminal within the limits.

The cheapest completions depend on the state's depth, layer kind (an FC layer's width), FC run,
the true (C, H, W) of the representation and the flattened width after FC layers, never on how the
walk got there, so they are computed once per such key (dynamic programming, as
:meth:`MetaQNNSpace.count` does) and shared by every walk. The same computation at the start state
is the up-front check: if not even the start has a completion within the limits, no network of the
space meets them and the search refuses to start (ConfigError, naming the cheapest network's cost).

The limits restrict which actions a walk may take (the behaviour policy). The space itself is
unchanged: states, Q-table keys and ``max_u Q(s', u)`` of Q-learning stay those of the space, since
which actions fit depends on the walk's true sizes and cost so far, which a binned state does not hold.
"""

from __future__ import annotations

from collections.abc import Callable

from nasagent.core.arch import FC, Architecture, Layer
from nasagent.core.cost import Shape, layer_step
from nasagent.core.limits import Cost, Frontier, Limits
from nasagent.errors import ConfigError
from nasagent.spaces.metaqnn import MetaQNNSpace, State

_UNLIMITED = 2**62
"""A bound no network reaches: a frontier under it is the plain minimum of its quantity."""

_Key = tuple[int, str, int, int, Shape, int | None]

Sampler = Callable[[Callable[[State, tuple[Layer, ...]], Layer]], Architecture]
"""``sample(choose)``: a walk from the start state to a terminal one, ``choose`` picking each action."""


class LimitedWalk:
    """Samples walks of ``space`` whose networks, built for inputs ``input_shape`` (C, H, W), are within
    ``limits``. ConfigError at construction when no network of the space is."""

    def __init__(
        self, space: MetaQNNSpace, input_shape: tuple[int, int, int], limits: Limits, check: bool = True
    ) -> None:
        if min(input_shape[1:]) != space.input_size:
            raise ConfigError(f"the space walks {space.input_size}-pixel inputs, not {input_shape[1]}x{input_shape[2]}")
        self.space = space
        self.input_shape: Shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
        self.limits = limits
        self._memo: dict[_Key, Frontier] = {}
        if check:
            self.check()

    # -- the cheapest completions --------------------------------------------------------------
    def step(
        self, state: State, shape: Shape, flat: int | None, action: Layer
    ) -> tuple[Cost, State, Shape, int | None]:
        """The cost of ``action`` (counted as ``Limits.cost`` does) and where it leads: (cost, next state,
        next shape, next flattened width)."""
        cfg = self.space.config
        row, shape2, flat2 = layer_step(action, shape, flat, cfg.pooling, cfg.conv_padding)
        nxt, _ = self.space.step(state, min(shape[1:]), action)
        return self.limits.cost(row.params, row.macs), nxt, shape2, flat2

    def completions(self, state: State, shape: Shape, flat: int | None) -> Frontier:
        """The Pareto-minimal costs of finishing a walk from ``state`` (true shape ``shape``, flattened
        width ``flat``), those over the limits left out: empty when no way of finishing fits."""
        if state.terminal:
            return Frontier(((0, 0),))
        layer = state.layer
        kind = "start" if layer is None else type(layer).__name__
        key: _Key = (state.depth, kind, layer.units if isinstance(layer, FC) else 0, state.fc_run, shape, flat)
        found = self._memo.get(key)
        if found is None:
            costs: list[Cost] = []
            for action in self.space.actions(state):
                try:
                    cost, nxt, shape2, flat2 = self.step(state, shape, flat, action)
                except ConfigError:
                    continue  # a window larger than the map: the builder refuses it, so no walk goes there
                costs += self.completions(nxt, shape2, flat2).shifted(cost)
            found = self._memo[key] = Frontier.of(costs, self.limits)
        return found

    def check(self) -> None:
        """ConfigError, one line, when no network of the space is within the limits (naming what the
        cheapest networks cost)."""
        if not self.completions(self.space.start, self.input_shape, None).empty:
            return
        found = []
        if self.limits.max_params is not None:
            fewest = self._cheapest(Limits(max_params=_UNLIMITED))[0]
            found.append(f"the smallest has {fewest:,} parameters")
        if self.limits.max_macs is not None:
            fewest = self._cheapest(Limits(max_macs=_UNLIMITED))[1]
            found.append(f"the one with the fewest MACs has {fewest:,}")
        if len(found) == 2:
            found.append("none meets both at once")
        c, h, w = self.input_shape
        raise ConfigError(
            f"no network of space {self.space.config.name!r} for {c}x{h}x{w} inputs meets "
            f"{self.limits.describe()}: {', '.join(found)}"
        )

    def _cheapest(self, limits: Limits) -> Cost:
        """The least cost of a whole network under ``limits`` (one quantity, unbounded in practice)."""
        frontier = LimitedWalk(self.space, self.input_shape, limits, check=False).completions(
            self.space.start, self.input_shape, None
        )
        return frontier.cheapest or (0, 0)

    # -- sampling ------------------------------------------------------------------------------
    def allowed(self, state: State, shape: Shape, flat: int | None, spent: Cost) -> tuple[Layer, ...]:
        """The actions of ``state`` after which the walk (cost so far ``spent``) can still finish within
        the limits, in the space's order."""
        out = []
        for action in self.space.actions(state):
            try:
                cost, nxt, shape2, flat2 = self.step(state, shape, flat, action)
            except ConfigError:
                continue
            if self.completions(nxt, shape2, flat2).fits((spent[0] + cost[0], spent[1] + cost[1]), self.limits):
                out.append(action)
        return tuple(out)

    def sample(self, choose: Callable[[State, tuple[Layer, ...]], Layer]) -> Architecture:
        """Like :meth:`MetaQNNSpace.sample`, ``choose`` picking each action among the allowed ones only."""
        state, shape, flat = self.space.start, self.input_shape, None
        spent: Cost = (0, 0)
        layers: list[Layer] = []
        while not state.terminal:
            options = self.allowed(state, shape, flat, spent)
            if not options:  # cannot happen once check() passed: every allowed action keeps a completion
                raise ConfigError(f"no action of {state.key} keeps the walk within {self.limits.describe()}")
            action = choose(state, options)
            if action not in options:
                raise ValueError(f"{action} is not an allowed action of {state.key}")
            cost, state, shape, flat = self.step(state, shape, flat, action)
            spent = (spent[0] + cost[0], spent[1] + cost[1])
            layers.append(action)
        return Architecture(tuple(layers))


def limited_sampler(space: MetaQNNSpace, input_shape: tuple[int, int, int], limits: Limits) -> Sampler:
    """``space.sample`` when no size limit is set (the walks of the paper, unchanged), else a
    :class:`LimitedWalk`'s (ConfigError here when no network of the space fits)."""
    if not limits.sized:
        return space.sample
    return LimitedWalk(space, input_shape, limits).sample
