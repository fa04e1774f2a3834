"""In-process runner whose reward is a known function of the architecture (no training).

For surrogate benchmarks and toy problems with a known answer: comparing searchers, checking that a
strategy learns, measuring agent overhead. It keeps up to ``capacity`` trials in flight and returns
them oldest first, one per ``wait``, so the agent sees the same interleaving as with W workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from nasagent.core.arch import Architecture
from nasagent.core.cost import network_cost
from nasagent.core.networks import parse_network
from nasagent.core.trial import TrialOutcome, TrialSpec, TrialStatus
from nasagent.execution.base import Runner


class FunctionRunner(Runner):
    """Rewards each architecture with ``reward(arch)``. A ``reward`` that raises for an architecture
    (a surrogate table without it, say) fails that trial at chance, ``1 / num_classes``, as a crashed
    training does in the other runners: the search goes on."""

    def __init__(
        self,
        reward: Callable[[Architecture], float],
        capacity: int = 1,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] | None = None,
    ) -> None:
        """``input_shape`` (C, H, W): when given, each outcome also reports the network's parameters and
        MACs as built for such inputs (:func:`nasagent.core.cost.network_cost`, SAME padding, floor
        pooling), so objectives and limits over them can be checked without training."""
        self.reward = reward
        self.capacity = capacity
        self.num_classes = num_classes
        self.input_shape = input_shape
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
        outcome = TrialOutcome(spec.trial_id, TrialStatus.DONE, accuracy, train_seconds=0.0, worker="function")
        if self.input_shape is not None:
            outcome.params, outcome.macs = network_cost(parse_network(spec.arch), self.input_shape)
        return [outcome]

    @property
    def in_flight(self) -> int:
        return len(self._queue)
