"""The runner interface: a runner runs trials and reports outcomes; it never decides anything."""

from __future__ import annotations

from abc import ABC, abstractmethod

from nasagent.core.trial import TrialOutcome, TrialSpec


class Runner(ABC):
    """Runs up to ``capacity`` trials at once and hands back one outcome per trial.

    The agent (``nasagent.search.loop.Agent``) drives a runner from its one thread, so a runner
    needs no locks. It fills the free capacity with ``submit``, then calls ``wait`` for outcomes
    while any trial is in flight, fills the room they made, and so on; when the search ends or
    stops (budget reached, Ctrl-C, an error) it leaves the ``with`` block, which calls ``close``.

    The contract, which ``tests/test_runners.py`` checks on every runner (this example included):

    - ``capacity`` is at least 1 and does not change.
    - Every submitted trial yields exactly one ``TrialOutcome`` from ``wait``, carrying its
      ``trial_id``: none lost, none twice. A trial whose network failed to learn (its training
      diverged or crashed, its model did not fit in GPU memory) yields a failed outcome
      (``TrialOutcome.failed``, the paper's chance-level reward) with the reason. A trial that the
      machines did not run to its end (its worker was killed by a signal or the OOM killer, its
      pod was preempted, evicted or never scheduled, ...) yields an infrastructure failure
      (``TrialOutcome.infrastructure_failure``, with its ``Fault``), which the agent never learns
      from: it trains the trial again. Either way the runner goes on with the other trials.
    - ``in_flight`` counts the trials submitted whose outcome ``wait`` has not returned yet.
    - ``wait(timeout)`` returns within about ``timeout`` seconds, also when nothing finishes.
    - ``close`` may be called more than once, and leaves nothing running.
    - ``resume`` and ``interrupt`` have defaults that take nothing over and leave nothing running;
      a cluster runner overrides them so that no finished GPU work is lost (docs/cluster.md, "Faults").

    A working runner that trains nothing: it scores each trial with a function as soon as it is
    submitted, in the agent's thread (``FunctionRunner`` does the same with a W-deep queue)::

        from collections.abc import Callable

        from nasagent.core.trial import TrialOutcome, TrialSpec, TrialStatus
        from nasagent.execution.base import Runner


        class InlineRunner(Runner):
            def __init__(self, score: Callable[[TrialSpec], float], num_classes: int = 10) -> None:
                self.capacity = 1
                self.score = score
                self.num_classes = num_classes
                self._finished: list[TrialOutcome] = []

            def submit(self, spec: TrialSpec) -> None:
                try:
                    outcome = TrialOutcome(spec.trial_id, TrialStatus.DONE, self.score(spec), worker="inline")
                except Exception as exc:  # a crashing trial is a failed outcome, never a crashed search
                    reason = f"trial crashed: {type(exc).__name__}: {exc}"
                    outcome = TrialOutcome.failed(spec.trial_id, reason, self.num_classes, worker="inline")
                self._finished.append(outcome)

            def wait(self, timeout: float) -> list[TrialOutcome]:
                finished, self._finished = self._finished, []
                return finished

            @property
            def in_flight(self) -> int:
                return len(self._finished)
    """

    capacity: int
    """How many trials may be in flight at once (at least 1): worker processes, parallel Jobs or runs."""

    @abstractmethod
    def submit(self, spec: TrialSpec) -> None:
        """Start trial ``spec`` and return without waiting for it.

        The agent calls this only while ``in_flight < capacity``, and only after it has recorded
        the trial as running in the store (a trial pod reads it from there). It never submits a
        trial id twice to one runner; after a crash, a resumed agent submits the trials that were
        in flight again, with their old ids, to a new runner. A trial that fails is reported by
        ``wait``; raise only for what must stop the whole search (the cluster refuses every trial).
        """

    @abstractmethod
    def wait(self, timeout: float) -> list[TrialOutcome]:
        """The outcomes of trials that finished since the last call, in any order.

        The agent calls this after filling the free capacity, while at least one trial is in
        flight, with its poll interval as ``timeout``. Block until at least one outcome is ready;
        if none is, return ``[]`` after about ``timeout`` seconds: not much later (the agent
        refreshes its display between calls) and not at once (its loop would spin). With nothing
        in flight it may return ``[]`` at once. Never return an outcome of a trial that was not
        submitted, nor a trial's outcome twice.
        """

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Trials submitted whose outcome ``wait`` has not returned yet (an outcome that is ready
        but not yet handed over still counts). The agent reads it before every ``submit`` and to
        decide when the search is over (0 with nothing left to launch), so it must be cheap."""

    def close(self) -> None:  # noqa: B027 (a hook: a runner that holds nothing need not override it)
        """Stop workers, Jobs or runs; trials still in flight are abandoned (a resume reruns them).

        Called once the search ends or stops, through the ``with`` block, after which the agent
        calls nothing else; an outer cleanup may call it again, so a second call must do nothing.
        """

    def resume(self, specs: list[TrialSpec]) -> list[TrialSpec]:
        """Take over the trials an earlier agent of the experiment left in flight; return the others.

        The agent calls this once, before its first ``submit``, with every trial the store shows
        as running. A runner whose trials can outlive the agent (a cluster Job) finds theirs and
        waits for them: each one it takes over counts in ``in_flight`` and yields its outcome from
        ``wait`` as a submitted one does (even beyond ``capacity``), and it stops what it finds of
        trials not in ``specs``. The agent submits the trials returned again. Default: none.
        """
        return list(specs)

    def interrupt(self) -> int:
        """The agent got SIGTERM or SIGINT and is about to exit without finishing the search.

        Stop the trials in flight, as ``close`` does, unless they can outlive the agent and the
        agent is only being moved (its pod is being drained or preempted): then leave them for the
        next agent to take over (``resume``). Returns how many trials were left running. Default:
        ``close``, nothing left.
        """
        self.close()
        return 0

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
