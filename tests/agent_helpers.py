"""Shared by the agent and strategy tests: a known-reward runner that stops like a killed agent."""

from __future__ import annotations

from collections.abc import Callable

from nasagent.core.trial import TrialOutcome
from nasagent.execution.function import FunctionRunner


class CrashAfter(FunctionRunner):
    """Raises, as a killed agent would stop, after ``n`` outcomes (that outcome is never recorded)."""

    def __init__(self, reward: Callable, n: int, capacity: int = 1) -> None:
        super().__init__(reward, capacity)
        self.n = n

    def wait(self, timeout: float) -> list[TrialOutcome]:
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return super().wait(timeout)
