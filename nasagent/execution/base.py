"""The runner interface: a runner runs trials and reports outcomes; it never decides anything."""

from __future__ import annotations

from abc import ABC, abstractmethod

from nasagent.core.trial import TrialOutcome, TrialSpec


class Runner(ABC):
    """Runs up to ``capacity`` trials at once. Used from the agent's thread only.

    Every submitted trial yields exactly one outcome from ``wait``: a trained result, or a failed
    outcome with a reason when its worker, process or pod died.
    """

    capacity: int

    @abstractmethod
    def submit(self, spec: TrialSpec) -> None:
        """Start a trial; the agent only calls this while ``in_flight < capacity``."""

    @abstractmethod
    def wait(self, timeout: float) -> list[TrialOutcome]:
        """Outcomes that finished since the last call, blocking up to ``timeout`` seconds for one."""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Trials submitted whose outcome has not been returned yet."""

    def close(self) -> None:
        """Stop workers; trials still in flight are abandoned (a resume reruns them)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
