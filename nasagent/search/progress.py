"""Where a running search stands, as the loop reports it to its callbacks."""

from __future__ import annotations

from dataclasses import dataclass, field

from nasagent.core.trial import TrialOutcome


@dataclass
class Progress:
    """What the agent reports after every step, for the live display."""

    budget: int
    unique_launched: int = 0
    unique_finished: int = 0
    trials_done: int = 0
    in_flight: int = 0
    failed: int = 0
    stopped: int = 0
    """Trials stopped early (``--early-stop``); they count towards the budget."""
    infra_failures: int = 0
    """Trials the machines did not run to their end (requeued, never rewarded)."""
    epsilon: float | None = None
    best_accuracy: float | None = None
    best_arch: str | None = None
    last: TrialOutcome | None = None
    last_arch: str | None = None
    notes: list[str] = field(default_factory=list)
