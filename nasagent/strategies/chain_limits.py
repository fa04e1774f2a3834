"""Size limits for REINFORCE's fixed-depth chains: which choice keeps the network within them.

A REINFORCE network is ``depth`` convolutions ``C(filters, kernel, stride)`` then ``SM(K)``, chosen
decision by decision (filters, kernel, stride of layer 1, then of layer 2, ...). As for the MetaQNN
space (:mod:`nasagent.spaces.limited`) every layer only adds parameters and MACs, but the final
softmax layer costs ``C·H·W·K`` on whatever the convolutions leave, so a choice is allowed only when
some way of making the remaining decisions keeps the whole network within ``--max-params`` /
``--max-macs``: the cost so far plus the Pareto-minimal costs of the rest
(:class:`nasagent.core.limits.Frontier`), computed once per (layer, representation shape).

The controller samples from its softmax with the disallowed choices' logits at -inf, and scores
(for the policy gradient) under the same masks, which depend only on the choices before: the
probabilities it learns are those of the networks it may actually propose.
"""

from __future__ import annotations

import itertools

from nasagent.core.arch import Conv, Softmax
from nasagent.core.cost import Shape, layer_step
from nasagent.core.limits import Cost, Frontier, Limits
from nasagent.errors import ConfigError


class ChainLimits:
    """The allowed choices of each decision of a chain of ``depth`` convolutions then ``SM(num_classes)``
    on inputs ``input_shape``. ConfigError at construction when no chain meets ``limits``."""

    def __init__(
        self,
        depth: int,
        choices: dict[str, tuple[int, ...]],
        num_classes: int,
        input_shape: tuple[int, int, int],
        limits: Limits,
        pooling: str = "floor",
        padding: str = "same",
        check: bool = True,
    ) -> None:
        self.depth = depth
        self.choices = choices
        self.num_classes = num_classes
        self.input_shape: Shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
        self.limits = limits
        self.pooling, self.padding = pooling, padding
        self._memo: dict[tuple[int, Shape], Frontier] = {}
        self._allowed: dict[tuple[int, ...], list[bool]] = {}
        if check and self.rest(0, self.input_shape).empty:
            c, h, w = self.input_shape
            raise ConfigError(
                f"no network of the REINFORCE space ({depth} convolutions then SM({num_classes})) for "
                f"{c}x{h}x{w} inputs meets {limits.describe()}: {self._cheapest()}"
            )

    def _conv(self, layer: Conv, shape: Shape) -> tuple[Cost, Shape] | None:
        """The cost of ``layer`` on ``shape`` and the shape after it; None when it cannot be built."""
        try:
            row, after, _ = layer_step(layer, shape, None, self.pooling, self.padding)
        except ConfigError:
            return None
        return self.limits.cost(row.params, row.macs), after

    def _layers(self) -> list[Conv]:
        return [
            Conv(*values) for values in itertools.product(*(self.choices[k] for k in ("filters", "kernel", "stride")))
        ]

    def rest(self, layer: int, shape: Shape) -> Frontier:
        """Pareto-minimal costs of layers ``layer``.. and the softmax on a representation of ``shape``."""
        if layer == self.depth:
            row, _, _ = layer_step(Softmax(self.num_classes), shape, None, self.pooling, self.padding)
            return Frontier.of([self.limits.cost(row.params, row.macs)], self.limits)
        key = (layer, shape)
        if key not in self._memo:
            costs: list[Cost] = []
            for conv in self._layers():
                step = self._conv(conv, shape)
                if step is not None:
                    costs += self.rest(layer + 1, step[1]).shifted(step[0])
            self._memo[key] = Frontier.of(costs, self.limits)
        return self._memo[key]

    def allowed(self, picks: list[int]) -> list[bool]:
        """For the decision after the choice indices ``picks`` (in ``("filters", "kernel", "stride")``
        order, layer by layer): whether each of its choices leaves some chain within the limits.
        Remembered per prefix: the controller asks again for every network it samples and scores."""
        key = tuple(picks)
        if key not in self._allowed:
            self._allowed[key] = self._allowed_after(picks)
        return self._allowed[key]

    def _allowed_after(self, picks: list[int]) -> list[bool]:
        spent: Cost = (0, 0)
        shape = self.input_shape
        full = len(picks) // 3
        for i in range(full):
            f, k, s = (self.choices[kind][picks[3 * i + j]] for j, kind in enumerate(("filters", "kernel", "stride")))
            step = self._conv(Conv(f, k, s), shape)
            if step is None:  # a masked sampler never gets here; a scored prefix may: nothing fits after it
                return [False] * len(self.choices[("filters", "kernel", "stride")[len(picks) % 3]])
            spent, shape = (spent[0] + step[0][0], spent[1] + step[0][1]), step[1]
        partial = picks[3 * full :]
        kind = ("filters", "kernel", "stride")[len(partial)]
        out = []
        for index in range(len(self.choices[kind])):
            fixed = [*partial, index]
            options = [
                self.choices[name] if j >= len(fixed) else (self.choices[name][fixed[j]],)
                for j, name in enumerate(("filters", "kernel", "stride"))
            ]
            fits = False
            for f, k, s in itertools.product(*options):
                step = self._conv(Conv(f, k, s), shape)
                if step is None:
                    continue
                cost = (spent[0] + step[0][0], spent[1] + step[0][1])
                if self.rest(full + 1, step[1]).fits(cost, self.limits):
                    fits = True
                    break
            out.append(fits)
        return out

    def _cheapest(self) -> str:
        """What the cheapest chains cost, for the message of an unmeetable limit."""
        found = []
        for name, limits in (
            ("max_params", Limits(max_params=2**62)),
            ("max_macs", Limits(max_macs=2**62)),
        ):
            if getattr(self.limits, name) is None:
                continue
            probe = ChainLimits(
                self.depth, self.choices, self.num_classes, self.input_shape, limits, self.pooling, self.padding, False
            )
            least = probe.rest(0, self.input_shape).cheapest or (0, 0)
            found.append(
                f"the smallest has {least[0]:,} parameters"
                if name == "max_params"
                else f"the fewest MACs are {least[1]:,}"
            )
        if len(found) == 2:
            found.append("none meets both at once")
        return ", ".join(found)
