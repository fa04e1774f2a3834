"""The search loop: strategy.ask -> store -> runner.submit; runner outcomes -> store -> strategy.tell.

Every step commits in one transaction: the trial record, the replay-memory row, the changed Q-values
and the strategy's state (RNG included). A ``kill -9`` at any moment therefore loses nothing
recorded; on resume, trials that were in flight are run again and nothing is trained twice (the
``trials`` table holds each architecture at most once per experiment: the replay dictionary).

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
from collections import defaultdict
from collections.abc import Sequence

from nasagent.core.networks import Network, parse_network
from nasagent.core.trial import TrialOutcome, TrialSpec, TrialStatus, trial_seed
from nasagent.errors import ConfigError
from nasagent.execution.base import Runner
from nasagent.persistence.postgres import Experiment, Store
from nasagent.search.callbacks import SearchCallback
from nasagent.search.progress import Progress
from nasagent.strategies.base import Proposal, Strategy

log = logging.getLogger(__name__)

# Proposals in a row that are all already known before the search concludes the space is exhausted.
MAX_REPEATS_IN_A_ROW = 20_000


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
    ) -> None:
        self.store = store
        self.experiment = experiment
        self.strategy = strategy
        self.runner = runner
        self.budget = budget
        self.seed = seed
        self.callbacks = list(callbacks)
        self.poll_seconds = poll_seconds
        self.known: dict[str, tuple[int, float]] = {}  # digest -> (trial id, reward) of finished trials
        self.in_flight: dict[str, tuple[int, Network]] = {}  # digest -> (trial id, arch)
        self.waiting: dict[str, list[Proposal]] = defaultdict(list)  # proposals of in-flight archs
        self.progress = Progress(budget=budget)

    # -- set-up --------------------------------------------------------------------------------
    def _restore(self) -> list[TrialSpec]:
        """Load the strategy and the replay dictionary; return the trials to rerun after a crash."""
        eid = self.experiment.id
        saved = self.store.load_agent_state(eid)
        if saved is not None and saved[0] != self.strategy.name:
            raise ConfigError(
                f"experiment {self.experiment.name!r} was searched with --strategy {saved[0]}, not {self.strategy.name}"
            )
        replay = [(parse_network(a), r) for a, r in self.store.load_replay(eid)]
        self.strategy.restore(saved[1] if saved else None, self.store.load_q(eid), replay)
        rerun = []
        for trial in self.store.trials(eid):
            if trial.status == TrialStatus.RUNNING:
                rerun.append(TrialSpec(trial.id, trial.arch, trial_seed(self.seed, trial.digest)))
                self.in_flight[trial.digest] = (trial.id, parse_network(trial.arch))
            else:
                self.known[trial.digest] = (trial.id, float(trial.accuracy))
                self._note_best(trial.arch, float(trial.accuracy), trial.status)
                self.progress.failed += trial.status == TrialStatus.FAILED
        self.progress.unique_launched = len(self.known) + len(rerun)
        self.progress.unique_finished = len(self.known)
        self.progress.trials_done = len(replay)
        if rerun:
            with self.store.transaction() as tx:
                for spec in rerun:
                    tx.restart_trial(spec.trial_id)
            self.progress.notes.append(f"resumed: rerunning {len(rerun)} trial(s) that were in flight")
        return rerun

    def _note_best(self, arch: str, accuracy: float, status: TrialStatus) -> None:
        best = self.progress.best_accuracy
        if status == TrialStatus.DONE and (best is None or accuracy > best):
            self.progress.best_accuracy, self.progress.best_arch = accuracy, arch

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> Progress:
        """Search until ``budget`` unique architectures are trained (or the space runs out)."""
        rerun = self._restore()
        for spec in rerun[: self.runner.capacity]:
            self.runner.submit(spec)
        queued = rerun[self.runner.capacity :]
        exhausted = False
        while True:
            while queued and self.runner.in_flight < self.runner.capacity:
                self.runner.submit(queued.pop(0))
            if not queued and not exhausted:
                exhausted = self._launch_new()
            self._report()
            if self.runner.in_flight == 0 and not queued:
                break
            for outcome in self.runner.wait(self.poll_seconds):
                self._record(outcome)
        for callback in self.callbacks:
            callback.on_search_end(self)
        return self.progress

    def _launch_new(self) -> bool:
        """Fill free capacity with new architectures; True if the space looks exhausted."""
        repeats = 0
        while self.runner.in_flight < self.runner.capacity and self.progress.unique_launched < self.budget:
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
                self.progress.notes.append(f"space exhausted: {repeats} proposals in a row were already trained")
                return True
        return False

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
        """A training came back: record it and reward its proposal and any that waited on it."""
        digest = next((d for d, (tid, _) in self.in_flight.items() if tid == outcome.trial_id), None)
        if digest is None:
            log.warning("ignoring outcome of unknown trial %s", outcome.trial_id)
            return
        _, arch = self.in_flight.pop(digest)
        proposals = [Proposal(arch)] + self.waiting.pop(digest, [])
        self._reward(proposals, outcome.trial_id, outcome.accuracy, outcome)
        self.known[digest] = (outcome.trial_id, outcome.accuracy)
        self.progress.unique_finished += 1
        self.progress.failed += outcome.status == TrialStatus.FAILED
        self.progress.last, self.progress.last_arch = outcome, str(arch)
        self._note_best(str(arch), outcome.accuracy, outcome.status)
        for callback in self.callbacks:
            callback.on_trial_finished(self, outcome)

    def _reward(
        self, proposals: list[Proposal], trial_id: int, reward: float, outcome: TrialOutcome | None = None
    ) -> None:
        """Tell the strategy, then commit everything the step changed in one transaction.
        ``outcome`` is None for a replay-dictionary hit of trial ``trial_id`` (no training happened)."""
        eid = self.experiment.id
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
            for proposal in proposals:
                tx.append_replay(eid, trial_id, str(proposal.arch), reward)
            tx.upsert_q(eid, self.strategy.pop_value_changes())
            tx.save_agent_state(eid, self.strategy.name, self.strategy.state_dict())
        self.progress.trials_done += len(proposals)

    def _report(self) -> None:
        self.progress.in_flight = self.runner.in_flight
        for callback in self.callbacks:
            callback.on_step(self)
