"""In-process runner whose reward is a known function of the architecture (no training).

For surrogate benchmarks and toy problems with a known answer: comparing searchers, checking that a
strategy learns, measuring agent overhead. It keeps up to ``capacity`` trials in flight and returns
them oldest first, one per ``wait``, so the agent sees the same interleaving as with W workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from nasagent.core.arch import Architecture
from nasagent.core.networks import parse_network
from nasagent.core.trial import TrialOutcome, TrialSpec
from nasagent.execution.base import Runner


class FunctionRunner(Runner):
    """Rewards each architecture with ``reward(arch)``."""

    def __init__(self, reward: Callable[[Architecture], float], capacity: int = 1) -> None:
        self.reward = reward
        self.capacity = capacity
        self.submitted: list[TrialSpec] = []
        self._queue: deque[TrialSpec] = deque()

    def submit(self, spec: TrialSpec) -> None:
        if len(self._queue) >= self.capacity:
            raise RuntimeError("submit called at capacity")
        self.submitted.append(spec)
        self._queue.append(spec)

    def wait(self, timeout: float) -> list[TrialOutcome]:
        if not self._queue:
            return []
        spec = self._queue.popleft()
        accuracy = float(self.reward(parse_network(spec.arch)))  # type: ignore[arg-type]
        return [TrialOutcome(spec.trial_id, "done", accuracy, train_seconds=0.0, worker="function")]

    @property
    def in_flight(self) -> int:
        return len(self._queue)
