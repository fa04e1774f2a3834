"""The search loop: strategy.ask -> store -> runner.submit; runner outcomes -> store -> strategy.tell.

Every step commits in one transaction: the trial record, the replay-memory row, the changed Q-values
and the strategy's state (RNG included). A ``kill -9`` at any moment therefore loses nothing
recorded; on resume, the results trial pods reported meanwhile are recorded, the runner takes over
the trials still running where it can (cluster Jobs), the others are run again, and nothing is
trained twice (the ``trials`` table holds each architecture at most once per experiment: the
replay dictionary).

Faults (docs/cluster.md, "Faults"): an outcome that is an infrastructure failure
(``TrialOutcome.fault``: preempted, evicted, never scheduled, a worker killed, ...) is no result
of the architecture. It is recorded apart (``infra_failures``), never told to the strategy nor
written to the replay memory, the Q-values or the replay dictionary, and the trial goes back to
the queue. When the machines cannot run trials (``FaultPolicy``: too many infrastructure failures
in a row, one trial requeued too often, an image that cannot be pulled) the search stops with an
``InfrastructureError`` naming the cause, its state intact: run it again to continue. SIGTERM and
SIGINT stop new launches and end the search after the step in progress is committed; the runner
stops its trials or, when the agent is only being moved, leaves them to be taken over
(``Runner.interrupt``).

With W workers the loop keeps W trials in flight and updates as each returns. That departs from
the sequential Algorithm 1 in three ways, all of which vanish at W = 1:
- a proposal is sampled from Q-values that do not yet include the W-1 trials still in flight;
- the ε step of a trial is fixed when it is launched (quotas count launches of new architectures),
  so a step can end while trials of the previous ε are still training;
- a proposal equal to an architecture still in flight is not trained again: it waits, and is
  rewarded with that training's accuracy when it returns.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from nasagent.core.networks import Network, parse_network
from nasagent.core.objective import Objective
from nasagent.core.trial import Fault, TrialOutcome, TrialSpec, TrialStatus, outcome_from_json, trial_seed
from nasagent.errors import ConfigError, InfrastructureError, InternalError
from nasagent.execution.base import Runner
from nasagent.persistence.postgres import Experiment, Store
from nasagent.search.callbacks import SearchCallback
from nasagent.search.progress import Progress
from nasagent.strategies.base import Proposal, Strategy

log = logging.getLogger(__name__)

# Proposals in a row that are all already known before the search concludes that no unseen
# architecture is left to find. Each is a replay-dictionary hit (one replay row), so it bounds
# what a search writes once its space, or its strategy's exploration, has run dry.
MAX_REPEATS_IN_A_ROW = 2_000


@dataclass(frozen=True)
class FaultPolicy:
    """When the search concludes that the machines cannot run trials (counted per agent process,
    so a rerun after the cause is fixed starts afresh): ``max_infra_failures`` infrastructure
    failures in a row (no architecture result between them), or one trial requeued more than
    ``max_requeues`` times. An image that cannot be pulled stops it at once."""

    max_requeues: int = 3
    max_infra_failures: int = 5

    def __post_init__(self) -> None:
        if self.max_requeues < 0:
            raise ConfigError(f"--max-requeues must be at least 0, got {self.max_requeues}")
        if self.max_infra_failures < 1:
            raise ConfigError(f"--max-infra-failures must be at least 1, got {self.max_infra_failures}")


class SearchLoop:
    """Runs one experiment's search to its budget of unique architectures, resuming where it stopped."""

    def __init__(
        self,
        store: Store,
        experiment: Experiment,
        strategy: Strategy,
        runner: Runner,
        budget: int,
        seed: int,
        callbacks: Sequence[SearchCallback] = (),
        poll_seconds: float = 1.0,
        space_size: int | None = None,
        faults: FaultPolicy | None = None,
        objective: Objective | None = None,
    ) -> None:
        """``space_size``: how many distinct architectures the strategy can propose, when known
        (``SearchConfig.space_size``); the search ends as soon as all of them are trained.
        ``faults``: when infrastructure failures stop the search (default ``FaultPolicy()``).
        ``objective``: the reward rule (``SearchConfig.objective_rule``; default: the accuracy)."""
        self.store = store
        self.experiment = experiment
        self.strategy = strategy
        self.runner = runner
        self.budget = budget
        self.seed = seed
        self.callbacks = list(callbacks)
        self.poll_seconds = poll_seconds
        self.space_size = space_size
        self.known: dict[str, tuple[int, float]] = {}  # digest -> (trial id, reward) of finished trials
        self.in_flight: dict[str, tuple[int, Network]] = {}  # digest -> (trial id, arch)
        self.waiting: dict[str, list[Proposal]] = defaultdict(list)  # proposals of in-flight archs
        self.progress = Progress(budget=budget)
        self.faults = faults or FaultPolicy()
        self.objective = objective or Objective()
        self.queue: list[TrialSpec] = []  # trials to (re)submit before any new architecture
        self.requeues: dict[int, int] = {}  # trial id -> infrastructure failures in this process
        self.infra_in_a_row = 0
        self.stop_signal: int | None = None  # SIGTERM or SIGINT received

    # -- set-up --------------------------------------------------------------------------------
    def _restore(self) -> list[TrialSpec]:
        """Load the strategy and the replay dictionary, record the results trial pods reported
        while no agent was there to read them, and return the other trials that were in flight."""
        eid = self.experiment.id
        saved = self.store.load_agent_state(eid)
        if saved is not None and saved[0] != self.strategy.name:
            raise ConfigError(
                f"experiment {self.experiment.name!r} was searched with --strategy {saved[0]}, not {self.strategy.name}"
            )
        replay = [(parse_network(a), r) for a, r in self.store.load_replay(eid)]
        self.strategy.restore(saved[1] if saved else None, self.store.load_q(eid), replay)
        running = []
        for trial in self.store.trials(eid):
            if trial.status == TrialStatus.RUNNING:
                running.append(TrialSpec(trial.id, trial.arch, trial_seed(self.seed, trial.digest)))
                self.in_flight[trial.digest] = (trial.id, parse_network(trial.arch))
            else:
                self.known[trial.digest] = (trial.id, float(trial.score))  # type: ignore[arg-type]
                self._note_best(trial.arch, float(trial.accuracy), trial.status)
                self.progress.failed += trial.status == TrialStatus.FAILED
                self.progress.stopped += trial.status == TrialStatus.STOPPED
        self.progress.unique_launched = len(self.known) + len(running)
        self.progress.unique_finished = len(self.known)
        self.progress.trials_done = len(replay)
        self.progress.infra_failures = sum(self.store.infra_failure_counts(eid).values())
        return self._take_reported(running)

    def _take_reported(self, running: list[TrialSpec]) -> list[TrialSpec]:
        """Record the trials among ``running`` whose result a trial pod already wrote to
        ``trial_results`` (finished GPU work is never trained again); return the others."""
        rest = []
        for spec in running:
            reported = self.store.trial_result(spec.trial_id)
            outcome = outcome_from_json(reported[1]) if reported is not None else None
            if outcome is None or outcome.fault is not None:
                rest.append(spec)
                continue
            outcome.trial_id = spec.trial_id
            outcome.info = {**outcome.info, "attempt": reported[0], "recovered": True}  # type: ignore[index]
            self._record(outcome)
        if len(rest) < len(running):
            self.progress.notes.append(f"resumed: recorded {len(running) - len(rest)} result(s) reported meanwhile")
        return rest

    def _resume(self, running: list[TrialSpec]) -> None:
        """Let the runner take over the trials still in flight; queue the others to train again
        (their work was lost with the agent: an infrastructure failure of kind ``agent``)."""
        rest = self.runner.resume(running)
        if len(rest) < len(running):
            self.progress.notes.append(f"resumed: took over {len(running) - len(rest)} trial(s) still running")
        if rest:
            reason = "the agent stopped while the trial was in flight; training it again"
            with self.store.transaction() as tx:
                for spec in rest:
                    tx.restart_trial(spec.trial_id)
                    tx.record_infra_failure(self.experiment.id, spec.trial_id, Fault.AGENT, reason)
            self.progress.infra_failures += len(rest)
            self.progress.notes.append(f"resumed: rerunning {len(rest)} trial(s) that were in flight")
        self.queue = list(rest)

    def _note_best(self, arch: str, accuracy: float, status: TrialStatus) -> None:
        best = self.progress.best_accuracy
        if status == TrialStatus.DONE and (best is None or accuracy > best):
            self.progress.best_accuracy, self.progress.best_arch = accuracy, arch

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> Progress:
        """Search until ``budget`` unique architectures are trained (or the space runs out).
        InfrastructureError if the machines cannot run trials; KeyboardInterrupt after SIGTERM or
        SIGINT (the search was stopped, its state committed: a rerun continues)."""
        with self._stop_signals():
            self._resume(self._restore())
            exhausted = self._found_exhausted()
            while True:
                if self.stop_signal is not None:
                    self._stop()
                while self.queue and self.runner.in_flight < self.runner.capacity:
                    self.runner.submit(self.queue.pop(0))
                if not self.queue and not exhausted and self.stop_signal is None:
                    exhausted = self._launch_new()
                self._report()
                if self.runner.in_flight == 0 and not self.queue:
                    break
                for outcome in self.runner.wait(self.poll_seconds):
                    self._record(outcome)
        for callback in self.callbacks:
            callback.on_search_end(self)
        return self.progress

    @contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """While the search runs, SIGTERM and SIGINT only set ``stop_signal``: the loop stops at its
        next pass, between two committed steps. A second one acts at once (the previous handler)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: object) -> None:
            self.stop_signal = signum
            signal.signal(signum, previous[signum])

        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop(self) -> None:
        """End the search on a stop signal: the runner stops its trials or leaves them to be taken over."""
        name = signal.Signals(self.stop_signal or signal.SIGINT).name
        left = self.runner.interrupt()
        kept = f"{left} trial(s) left running for the next agent to take over" if left else "no trial left running"
        log.warning("stopped by %s: %s; run the same command again to continue", name, kept)
        self.progress.notes.append(f"stopped by {name}: {kept}")
        self._report()
        raise KeyboardInterrupt(f"stopped by {name}")

    def _launch_new(self) -> bool:
        """Fill free capacity with new architectures; True once no untrained one is left to find."""
        repeats = 0
        while self.runner.in_flight < self.runner.capacity and self.progress.unique_launched < self.budget:
            if self.space_size is not None and len(self.known) + len(self.in_flight) >= self.space_size:
                return self._exhausted(
                    f"space exhausted: all {self.space_size:,} architectures of the space are trained"
                )
            proposal = self.strategy.ask(self.progress.unique_launched)
            digest = proposal.arch.digest
            if digest in self.known:
                self._reward([proposal], *self.known[digest])
            elif digest in self.in_flight:
                self.waiting[digest].append(proposal)
            else:
                self._launch(proposal)
                repeats = 0
                continue
            repeats += 1
            if repeats >= MAX_REPEATS_IN_A_ROW:
                return self._exhausted(
                    f"space exhausted: the strategy proposed {repeats:,} trained architectures in a row"
                )
        return False

    def _exhausted(self, note: str) -> bool:
        """Record that nothing new is left to find (status then reports the search finished, and a
        rerun does not search again), and say so once."""
        self.store.mark_exhausted(self.experiment.id, note)
        found = len(self.known) + len(self.in_flight)
        self.progress.notes.append(f"{note}; the search ends after {found:,} architectures")
        return True

    def _found_exhausted(self) -> bool:
        """Whether an earlier run of this experiment already ran out of architectures."""
        note = self.store.exhausted(self.experiment.id)
        if note is not None:
            self.progress.notes.append(f"{note} (found by an earlier run; nasagent extend to try again)")
        return note is not None

    def _launch(self, proposal: Proposal) -> None:
        eid, arch = self.experiment.id, proposal.arch
        with self.store.transaction() as tx:
            trial_id = tx.insert_trial(eid, str(arch), arch.digest, proposal.epsilon, info=proposal.info)
            tx.save_agent_state(eid, self.strategy.name, self.strategy.state_dict())
        self.in_flight[arch.digest] = (trial_id, arch)
        self.progress.unique_launched += 1
        self.progress.epsilon = proposal.epsilon
        self.runner.submit(TrialSpec(trial_id, str(arch), trial_seed(self.seed, arch.digest)))

    def _record(self, outcome: TrialOutcome) -> None:
        """A training came back: record it and reward its proposal and any that waited on it; an
        infrastructure failure goes back to the queue instead (``_requeue``)."""
        digest = next((d for d, (tid, _) in self.in_flight.items() if tid == outcome.trial_id), None)
        if digest is None:
            log.warning("ignoring outcome of unknown trial %s", outcome.trial_id)
            return
        if outcome.fault is not None:
            self._requeue(digest, outcome)
            return
        self.infra_in_a_row = 0
        _, arch = self.in_flight.pop(digest)
        proposals = [Proposal(arch)] + self.waiting.pop(digest, [])
        reward = self.objective.reward(
            outcome.accuracy,
            outcome.params,
            outcome.macs,
            outcome.latency_ms,
            failed=outcome.status == TrialStatus.FAILED,
        )
        if self.objective.over_latency(outcome.latency_ms):
            outcome.info = {**outcome.info, "over_latency_limit": True}
        self._reward(proposals, outcome.trial_id, reward, outcome)
        self.known[digest] = (outcome.trial_id, reward)
        self.progress.unique_finished += 1
        self.progress.failed += outcome.status == TrialStatus.FAILED
        self.progress.stopped += outcome.status == TrialStatus.STOPPED  # early (--early-stop): in the budget
        self.progress.last, self.progress.last_arch = outcome, str(arch)
        self._note_best(str(arch), outcome.accuracy, outcome.status)
        for callback in self.callbacks:
            callback.on_trial_finished(self, outcome)

    def _requeue(self, digest: str, outcome: TrialOutcome) -> None:
        """An infrastructure failure: record it apart and put the trial back in the queue, where it
        stays in flight for the strategy (nothing learns from it); InfrastructureError when the
        machines cannot run trials (``FaultPolicy``)."""
        trial_id, arch = self.in_flight[digest]
        fault, reason = Fault(outcome.fault), outcome.failure or "no reason given"
        with self.store.transaction() as tx:
            tx.record_infra_failure(self.experiment.id, trial_id, fault, reason, outcome.worker, info=outcome.info)
            tx.restart_trial(trial_id)
        self.progress.infra_failures += 1
        self.infra_in_a_row += 1
        self.requeues[trial_id] = self.requeues.get(trial_id, 0) + 1
        log.warning("trial %s was not run to its end (%s): %s; it goes back to the queue", trial_id, fault, reason)
        cause = None
        if fault == Fault.IMAGE_PULL:
            cause = f"trial pods cannot pull their image ({reason})"
        elif self.infra_in_a_row >= self.faults.max_infra_failures:
            cause = (
                f"{self.infra_in_a_row} infrastructure failures in a row (--max-infra-failures), "
                f"the last of trial {trial_id}: {fault}: {reason}"
            )
        elif self.requeues[trial_id] > self.faults.max_requeues:
            cause = (
                f"trial {trial_id} was not run to its end {self.requeues[trial_id]} times (--max-requeues "
                f"{self.faults.max_requeues}), the last: {fault}: {reason}"
            )
        if cause is not None:
            raise InfrastructureError(
                f"the search stopped because {cause}; its state is intact: fix this and run the same command again"
            )
        self.queue.append(TrialSpec(trial_id, str(arch), trial_seed(self.seed, digest)))

    def _reward(
        self, proposals: list[Proposal], trial_id: int, reward: float, outcome: TrialOutcome | None = None
    ) -> None:
        """Tell the strategy, then commit everything the step changed in one transaction.
        ``outcome`` is None for a replay-dictionary hit of trial ``trial_id`` (no training happened)."""
        eid = self.experiment.id
        if outcome is not None and outcome.fault is not None:
            raise InternalError(f"an infrastructure failure of trial {trial_id} reached the strategy")
        for i, proposal in enumerate(proposals):
            self.strategy.tell(proposal.arch, reward, first_training=outcome is not None and i == 0)
        with self.store.transaction() as tx:
            if outcome is not None:
                tx.finish_trial(
                    trial_id,
                    outcome.status,
                    outcome.accuracy,
                    outcome.params,
                    outcome.failure,
                    outcome.train_seconds,
                    info=outcome.info,
                    worker=outcome.worker,
                )
                tx.record_measures(trial_id, outcome.macs, outcome.latency_ms, reward)
            for proposal in proposals:
                tx.append_replay(eid, trial_id, str(proposal.arch), reward)
            tx.upsert_q(eid, self.strategy.pop_value_changes())
            tx.save_agent_state(eid, self.strategy.name, self.strategy.state_dict())
        self.progress.trials_done += len(proposals)

    def _report(self) -> None:
        self.progress.in_flight = self.runner.in_flight
        for callback in self.callbacks:
            callback.on_step(self)
