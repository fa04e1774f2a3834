"""What a search maximises: ``--objective accuracy`` (the paper's reward) or ``mnas``, and the latency penalty.

MnasNet (Tan et al., CVPR 2019, eq. 2) rewards a model m with

    ACC(m) × [METRIC(m) / T]^w,    w = α if METRIC(m) <= T else β

where T is the target. Its *soft* form, α = β = -0.07, is what ``--objective mnas`` uses with
``w = --objective-weight`` (default -0.07, the paper's: twice the target costs about 5% of the
reward, half of it earns about 5%). The metric is ``latency`` (milliseconds, measured; the paper's),
``params`` or ``macs`` (:mod:`nasagent.core.cost`), with ``--objective-target``, by default the
limit of the same kind (``--max-latency-ms``, ``--max-params``, ``--max-macs``) when one is set.

``--max-latency-ms L`` is MnasNet's *hard* form, α = 0 and β = -1, applied on top of either
objective: a network slower than L keeps its result but its reward is multiplied by L / LAT(m)
(twice too slow: half the reward), so the search learns to leave it; a network within L is not
touched. Parameters and MACs need no penalty: no network over those limits is ever proposed.

The reward is given to the strategy, written to the replay memory and to ``trials.reward``;
the accuracy stays recorded beside it. A failed training (the paper's chance-level reward)
and a network whose metric is unknown (latency not measured) get no factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nasagent.errors import ConfigError

OBJECTIVES = ("accuracy", "mnas")
METRICS = ("latency", "params", "macs")
MNAS_WEIGHT = -0.07
"""MnasNet's α = β for the soft objective (§3, "we set α = β = -0.07")."""
LATENCY_PENALTY = -1.0
"""MnasNet's β of the hard-constraint form (α = 0, β = -1): the exponent past ``--max-latency-ms``."""


@dataclass(frozen=True)
class Objective:
    """The reward rule of an experiment. Build it with :meth:`resolve` (defaults filled in, checked)."""

    kind: str = "accuracy"
    """``accuracy`` or ``mnas``."""
    metric: str | None = None
    """mnas: ``latency``, ``params`` or ``macs``; None for ``accuracy``."""
    target: float | None = None
    """mnas: T, in the metric's unit (milliseconds, parameters, MACs)."""
    weight: float | None = None
    """mnas: w (α = β), usually negative."""
    max_latency_ms: float | None = None
    """The hard latency limit L (``--max-latency-ms``), None: no penalty."""

    @classmethod
    def resolve(
        cls,
        kind: str,
        metric: str | None,
        target: float | None,
        weight: float | None,
        limits: dict[str, float | None],
    ) -> Objective:
        """The objective the flags describe, with mnas's defaults: metric ``latency``, weight -0.07
        and the target the limit of the metric's kind (``limits``: ``max_latency_ms``,
        ``max_params``, ``max_macs``). ConfigError, one line, for anything inconsistent."""
        if kind not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {kind!r}")
        latency_limit = limits.get("max_latency_ms")
        if kind == "accuracy":
            given = [flag for flag, v in (("metric", metric), ("target", target), ("weight", weight)) if v is not None]
            if given:
                raise ConfigError(f"--objective-{given[0]} applies to --objective mnas only")
            return cls(max_latency_ms=latency_limit)
        metric = metric or "latency"
        if metric not in METRICS:
            raise ConfigError(f"--objective-metric must be one of {', '.join(METRICS)}, got {metric!r}")
        weight = MNAS_WEIGHT if weight is None else weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"--objective-weight must be a number, got {weight!r}")
        if weight > 0:
            raise ConfigError(
                f"--objective-weight must be 0 or negative (MnasNet: -0.07), got {weight}: "
                "a positive weight rewards larger, slower networks"
            )
        if target is None:
            target = limits.get({"latency": "max_latency_ms", "params": "max_params", "macs": "max_macs"}[metric])
            if target is None:
                flag = {"latency": "--max-latency-ms", "params": "--max-params", "macs": "--max-macs"}[metric]
                raise ConfigError(f"--objective mnas needs --objective-target (the {metric} target T) or {flag}")
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
            raise ConfigError(f"--objective-target must be a positive number, got {target!r}")
        return cls("mnas", metric, float(target), float(weight), latency_limit)

    def reward(
        self, accuracy: float, params: int | None, macs: int | None, latency_ms: float | None, failed: bool = False
    ) -> float:
        """The reward of a network with this ``accuracy`` and these measures (None: unknown).
        ``failed``: a training that failed keeps its chance-level accuracy as its reward."""
        if failed or not math.isfinite(accuracy):
            return accuracy
        value = accuracy
        if self.kind == "mnas":
            measure = {"latency": latency_ms, "params": params, "macs": macs}[self.metric or "latency"]
            if measure is not None and measure > 0 and self.target is not None and self.weight is not None:
                value *= (measure / self.target) ** self.weight
        if self.max_latency_ms is not None and latency_ms is not None and latency_ms > self.max_latency_ms:
            value *= (latency_ms / self.max_latency_ms) ** LATENCY_PENALTY
        return value

    def over_latency(self, latency_ms: float | None) -> bool:
        """Whether a measured latency is over ``--max-latency-ms`` (the result is penalised)."""
        return self.max_latency_ms is not None and latency_ms is not None and latency_ms > self.max_latency_ms

    @property
    def plain(self) -> bool:
        """True when the reward is the accuracy itself (``accuracy`` without a latency limit)."""
        return self.kind == "accuracy" and self.max_latency_ms is None

    def describe(self) -> dict[str, object]:
        """The rule as JSON, for ``status --json``, reports and the dashboard."""
        return {
            "kind": self.kind,
            "metric": self.metric,
            "target": self.target,
            "weight": self.weight,
            "max_latency_ms": self.max_latency_ms,
            "latency_penalty": LATENCY_PENALTY if self.max_latency_ms is not None else None,
        }
