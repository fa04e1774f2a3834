"""``EarlyStopConfig``: which early-stopping rule an experiment uses, and its settings.

Stored with the experiment (``SearchConfig.early_stop``), so a resume stops trials exactly as the
first run did, and read by every trial (``nasagent.execution.epochs``) to know whether to wait for
the agent's decision after each epoch. Plain data, no numpy: the CLI and the trial pods load it
cheaply.

Defaults (each rule's own settings; giving a setting of another rule is a ConfigError):

=================  ========  =========  =========================================================
setting            median    predict    meaning
=================  ========  =========  =========================================================
``min_trials``     3         100        fully trained trials before the rule is used (Katib's
                                        ``min_trials_required``; the paper's training-set size)
``start_epoch``    4         1          first epoch (of the trial's surviving attempt) judged
                                        (Katib's ``start_step``; predict: its first SRM)
``retrain_every``  --        10         refit the predictor after this many more trained trials
``delta``          --        0.99       Δ: stop when P(final accuracy <= best so far) >= Δ
``wait_seconds``   10        10         how long a trial waits for each epoch's decision
=================  ========  =========  =========================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nasagent.errors import ConfigError

RULES = ("none", "median", "predict")
"""``--early-stop`` values: ``none`` (every trial trains to the end: the paper's MetaQNN), ``median``, ``predict``."""

_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "median": {"min_trials": 3, "start_epoch": 4, "wait_seconds": 10.0},
    "predict": {"min_trials": 100, "start_epoch": 1, "retrain_every": 10, "delta": 0.99, "wait_seconds": 10.0},
}
_FLAGS = {
    "min_trials": "--early-stop-min-trials",
    "start_epoch": "--early-stop-start-epoch",
    "retrain_every": "--early-stop-retrain-every",
    "delta": "--early-stop-delta",
    "wait_seconds": "--early-stop-wait",
}


@dataclass
class EarlyStopConfig:
    """The experiment's early stopping (see the module docstring for the defaults).

    Built from the CLI flags (``rule`` from ``--early-stop``, the others from ``--early-stop-*``)
    or from the stored config; a setting left None takes the rule's default, so the stored config
    always holds numbers. ConfigError for an unknown rule, a value out of range, or a setting the
    chosen rule does not have.
    """

    rule: str = "none"
    min_trials: int | None = None
    start_epoch: int | None = None
    retrain_every: int | None = None
    delta: float | None = None
    wait_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"--early-stop must be one of {', '.join(RULES)}, got {self.rule!r}")
        defaults = _DEFAULTS[self.rule]
        for name, flag in _FLAGS.items():
            value = getattr(self, name)
            if name not in defaults:
                if value is not None:
                    needs = " or ".join(f"--early-stop {r}" for r in RULES if name in _DEFAULTS[r])
                    raise ConfigError(f"{flag} needs {needs} (the experiment's rule is {self.rule})")
                continue
            if value is None:
                setattr(self, name, defaults[name])
        if self.min_trials is not None and (not isinstance(self.min_trials, int) or self.min_trials < 1):
            raise ConfigError(f"--early-stop-min-trials must be a whole number of at least 1, got {self.min_trials}")
        if self.start_epoch is not None and (not isinstance(self.start_epoch, int) or self.start_epoch < 1):
            raise ConfigError(f"--early-stop-start-epoch must be a whole number of at least 1, got {self.start_epoch}")
        if self.retrain_every is not None and (not isinstance(self.retrain_every, int) or self.retrain_every < 1):
            raise ConfigError(
                f"--early-stop-retrain-every must be a whole number of at least 1, got {self.retrain_every}"
            )
        if self.delta is not None and not 0.5 <= float(self.delta) < 1.0:
            raise ConfigError(f"--early-stop-delta must be in [0.5, 1), got {self.delta}")
        if self.wait_seconds is not None and not 0.0 < float(self.wait_seconds) <= 600.0:
            raise ConfigError(f"--early-stop-wait must be in (0, 600] seconds, got {self.wait_seconds}")

    @property
    def enabled(self) -> bool:
        """Whether trials are judged at all (``rule`` is not ``none``)."""
        return self.rule != "none"

    def check_epochs(self, epochs: int) -> None:
        """ConfigError if the rule can never act on trials of ``epochs`` epochs: a trial is judged at
        its epochs ``start_epoch`` .. ``epochs - 1`` (stopping after the last one saves nothing)."""
        if self.enabled and self.start_epoch is not None and self.start_epoch >= epochs:
            raise ConfigError(
                f"--early-stop-start-epoch {self.start_epoch} must be below --epochs {epochs}: "
                "a trial is judged only before its last epoch"
            )

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``SearchConfig.to_dict``)."""
        return asdict(self)

    @classmethod
    def from_value(cls, value: EarlyStopConfig | dict[str, Any] | str | None) -> EarlyStopConfig:
        """An ``EarlyStopConfig`` from what a config may hold: itself, its dict, a rule name, or None."""
        if isinstance(value, EarlyStopConfig):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(rule=value)
        if not isinstance(value, dict):
            raise ConfigError(f"early_stop must be a rule name or a mapping, got {value!r}")
        unknown = sorted(set(value) - {"rule", *_FLAGS})
        if unknown:
            raise ConfigError(f"unknown early-stop setting(s): {', '.join(unknown)}")
        return cls(**value)

    def differences(self, given: dict[str, Any]) -> list[str]:
        """The settings in ``given`` (a resume's flags) that differ from this config, as ``--flag value``."""
        flags = {"rule": "--early-stop", **_FLAGS}
        return [f"{flags[k]} {v}" for k, v in given.items() if v is not None and v != getattr(self, k)]

    def describe(self) -> str:
        """The settings as the flags that give them, e.g. ``--early-stop median --early-stop-min-trials 3 ...``."""
        flags = {"rule": "--early-stop", **_FLAGS}
        return " ".join(f"{flags[k]} {v}" for k, v in asdict(self).items() if v is not None)
