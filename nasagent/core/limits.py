"""Deployment limits of a search: ``--max-params``, ``--max-macs`` and ``--max-latency-ms``.

Parameters and MACs are known before a network is trained (:mod:`nasagent.core.cost`), so they are
*hard* limits: a search never proposes a network over them (:mod:`nasagent.spaces.limited` masks
the choices of a walk that would lead there). Latency is known only once a network has been built
and run on the trial's device, so it is a *result* with a penalty (:mod:`nasagent.core.objective`).

Checking that some completion of a prefix fits both size limits at once is a two-criteria question:
the cheapest completion in parameters need not be the cheapest in MACs. :class:`Frontier` holds the
Pareto-minimal (parameters, MACs) pairs of a set of completions, dropping those over a limit, so
"some completion fits" is exact; with one limit the frontier is a single number (the other is 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nasagent.errors import ConfigError

Cost = tuple[int, int]
"""(parameters, MACs) of a network or of part of one."""


@dataclass(frozen=True)
class Limits:
    """The experiment's limits; None: no limit of that kind."""

    max_params: int | None = None
    """Trainable parameters (``--max-params``): hard, never proposed above it."""
    max_macs: int | None = None
    """Multiply-accumulates of one image's forward pass (``--max-macs``): hard, never proposed above it."""
    max_latency_ms: float | None = None
    """Batch-1 inference latency on the trial's device (``--max-latency-ms``): a penalised result."""

    def __post_init__(self) -> None:
        for flag, value in (("--max-params", self.max_params), ("--max-macs", self.max_macs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{flag} must be a positive whole number, got {value!r}")
        latency = self.max_latency_ms
        if latency is not None and (
            isinstance(latency, bool)
            or not isinstance(latency, (int, float))
            or not math.isfinite(latency)
            or latency <= 0
        ):
            raise ConfigError(f"--max-latency-ms must be a positive number of milliseconds, got {latency!r}")

    @property
    def sized(self) -> bool:
        """Whether a size limit (parameters or MACs) is set: the ones the search enforces before training."""
        return self.max_params is not None or self.max_macs is not None

    def admits(self, params: int, macs: int) -> bool:
        """Whether a network of ``params`` parameters and ``macs`` MACs is within the size limits."""
        return (self.max_params is None or params <= self.max_params) and (
            self.max_macs is None or macs <= self.max_macs
        )

    def cost(self, params: int, macs: int) -> Cost:
        """(params, macs) with an unlimited quantity counted as 0, so it never splits a frontier."""
        return (params if self.max_params is not None else 0, macs if self.max_macs is not None else 0)

    def describe(self) -> str:
        """The size limits as flags, for messages: ``--max-params 100,000 --max-macs 2,000,000``."""
        parts = [f"--max-params {self.max_params:,}"] if self.max_params is not None else []
        parts += [f"--max-macs {self.max_macs:,}"] if self.max_macs is not None else []
        return " and ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The limits for ``status --json`` and reports (None where unset)."""
        return {"max_params": self.max_params, "max_macs": self.max_macs, "max_latency_ms": self.max_latency_ms}


class Frontier:
    """Pareto-minimal (parameters, MACs) costs of a set of completions, those over a limit left out.

    ``fits(prefix)`` says exactly whether one of the completions added to ``prefix`` stays within
    the limits. Built with :meth:`of`; ``shifted`` adds a layer's cost in front of every completion."""

    __slots__ = ("points",)

    def __init__(self, points: tuple[Cost, ...]) -> None:
        self.points = points
        """Sorted by parameters ascending (so MACs descending); no point dominates another."""

    @classmethod
    def of(cls, costs: Iterable[Cost], limits: Limits) -> Frontier:
        """The Pareto-minimal costs among ``costs`` that are within ``limits`` themselves."""
        kept: list[Cost] = []
        for params, macs in sorted(set(costs)):
            if not limits.admits(params, macs):
                continue
            if kept and kept[-1][1] <= macs:
                continue  # a cheaper-or-equal point in parameters already costs no more MACs
            kept.append((params, macs))
        return cls(tuple(kept))

    @property
    def empty(self) -> bool:
        """No completion fits: a prefix leading here must not be entered."""
        return not self.points

    def fits(self, prefix: Cost, limits: Limits) -> bool:
        """Whether ``prefix`` plus some completion of this frontier is within ``limits``."""
        return any(limits.admits(prefix[0] + p, prefix[1] + m) for p, m in self.points)

    def shifted(self, cost: Cost) -> list[Cost]:
        """Every completion with ``cost`` paid first."""
        return [(cost[0] + p, cost[1] + m) for p, m in self.points]

    @property
    def cheapest(self) -> Cost | None:
        """The completion with the fewest parameters (ties: fewest MACs); None when empty."""
        return self.points[0] if self.points else None
