"""What a trial is between the agent and a runner: its spec going out, its outcome coming back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TrialStatus(str, Enum):
    """Where a trial stands; the value is what the ``trials.status`` column holds."""

    RUNNING = "running"
    """Launched, outcome not recorded yet (after a crash: trained again on resume)."""
    DONE = "done"
    """Trained; its accuracy is the reward."""
    FAILED = "failed"
    """The network could not be trained (diverged, out of memory, crashed): chance-level reward."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TrialSpec:
    """A trial handed to a runner: which architecture, under which record, with which seed."""

    trial_id: int
    arch: str
    seed: int


@dataclass
class TrialOutcome:
    """What a runner hands back: the reward and what the store records about the training."""

    trial_id: int
    status: TrialStatus
    accuracy: float
    params: int | None = None
    failure: str | None = None
    train_seconds: float | None = None
    worker: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, trial_id: int, reason: str, num_classes: int, worker: str | None = None) -> TrialOutcome:
        """A trial that could not finish: chance-level reward, so the search goes on."""
        return cls(trial_id, TrialStatus.FAILED, 1.0 / num_classes, failure=reason, worker=worker)


def trial_seed(experiment_seed: int, digest: str) -> int:
    """A seed fixed by the experiment and the architecture: a rerun after a crash trains the same way."""
    return (experiment_seed * 1_000_003 + int(digest[:8], 16)) % 2**31


def outcome_to_json(outcome: TrialOutcome) -> dict[str, Any]:
    """A ``TrialOutcome`` as JSON (``trial_results.outcome``, ``nasagent trial``'s output)."""
    return dataclasses.asdict(outcome)


def outcome_from_json(data: dict[str, Any]) -> TrialOutcome:
    """Read back ``outcome_to_json``'s JSON (unknown keys, e.g. from a newer trial image, are dropped)."""
    known = {f.name for f in dataclasses.fields(TrialOutcome)}
    values = {k: v for k, v in data.items() if k in known}
    values["status"] = TrialStatus(values["status"])
    return TrialOutcome(**values)
