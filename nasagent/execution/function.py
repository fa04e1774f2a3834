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
from nasagent.core.trial import TrialOutcome, TrialSpec, TrialStatus
from nasagent.execution.base import Runner


class FunctionRunner(Runner):
    """Rewards each architecture with ``reward(arch)``. A ``reward`` that raises for an architecture
    (a surrogate table without it, say) fails that trial at chance, ``1 / num_classes``, as a crashed
    training does in the other runners: the search goes on."""

    def __init__(self, reward: Callable[[Architecture], float], capacity: int = 1, num_classes: int = 10) -> None:
        self.reward = reward
        self.capacity = capacity
        self.num_classes = num_classes
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
        try:
            accuracy = float(self.reward(parse_network(spec.arch)))  # type: ignore[arg-type]
        except Exception as exc:
            reason = f"trial crashed: {type(exc).__name__}: {exc}"
            return [TrialOutcome.failed(spec.trial_id, reason, self.num_classes, worker="function")]
        return [TrialOutcome(spec.trial_id, TrialStatus.DONE, accuracy, train_seconds=0.0, worker="function")]

    @property
    def in_flight(self) -> int:
        return len(self._queue)
