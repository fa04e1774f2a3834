"""Live learning curves: each epoch a trial trains goes to the store (``trial_epochs``) as it ends.

The trial worker (``run_trial``) hands an ``EpochRecorder`` to the trainer as its ``on_epoch``
callback, in a local worker process and in a trial pod alike, so the dashboard, ``status`` and
``top`` see a trial learn while it runs. The recorder is the one place that sees every epoch of a
trial as it happens: the place where a decision to stop a trial early belongs, too.

Recording is an observation, never the trial's result: the outcome still travels the usual way
(the local runner's queue, ``trial_results``). A store that cannot take an epoch (the database gone
for longer than the session waits) is logged once and the training goes on without curves. A role
that may not insert epochs at all is a deployment error, reported before the training starts.

Early stopping (``--early-stop``, migration 007): in an experiment with a rule, after recording an
evaluated epoch the recorder waits for the agent's decision on it (``trial_decisions``, written by
the judge, :mod:`nasagent.search.judge`) and hands the trainer a ``StopTraining`` when told to
stop. The wait is bounded (``--early-stop-wait``, 10 s): an agent that does not answer in time (it
is busy, restarting, or gone) costs that wait once, never the training; the trial trains on and
waits at most a second for each later epoch until the agent answers again. No wait where the rule
cannot stop the trial: before ``--early-stop-start-epoch``, after the last epoch of the schedule
(nothing left to save), after a diverged epoch (the trainer ends or restarts the attempt itself).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import psycopg2

from nasagent.errors import StoreError
from nasagent.persistence.postgres import EpochRow, Store
from nasagent.stopping.settings import EarlyStopConfig
from nasagent.training.trainer import EpochMetrics, StopTraining

log = logging.getLogger(__name__)

SHORT_WAIT = 1.0
"""Seconds a trial waits for a decision after the agent missed one (until it answers again)."""


def _finite(value: float | None) -> float | None:
    """None for NaN and infinities: what the store (and JSON) can hold of a diverged number."""
    return value if value is not None and math.isfinite(value) else None


class EpochRecorder:
    """The ``on_epoch`` callback of one run of one trial: writes each ``EpochMetrics`` to ``trial_epochs``
    and, in an experiment with early stopping, returns the agent's decision to stop.

    ``run`` is the launcher's attempt number (a retried trial pod; 1 for local workers); the
    trial's own ``attempts`` (bumped by the agent whenever it trains the trial again) is read from
    its row, the early-stopping settings from its experiment's config. StoreError at once if the
    trial does not exist, or the role may not insert epochs (or, with early stopping, read
    decisions). ``sleep`` and ``clock`` pace the wait for decisions (tests pass their own).
    """

    def __init__(
        self,
        store: Store,
        trial_id: int,
        run: int = 1,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        trial = store.trial(trial_id)
        if trial is None:
            raise StoreError(f"no trial {trial_id} to record epochs for")
        if not store.may_record_epochs():
            raise StoreError(
                "permission denied for table trial_epochs: this database role may not record the epochs "
                "of trials; apply nasagent's schema migration 006 as the database owner"
            )
        config = store.experiment_config(trial.experiment_id)
        self.stopping = EarlyStopConfig.from_value(config.get("early_stop"))
        if self.stopping.enabled and not store.may_read_decisions():
            raise StoreError(
                "permission denied for table trial_decisions: this database role may not read the agent's "
                "early-stopping decisions; apply nasagent's schema migration 007 as the database owner"
            )
        self.epochs = int(config.get("epochs") or 0)
        self.store = store
        self.experiment_id = trial.experiment_id
        self.trial_id = trial_id
        self.attempt = trial.attempts
        self.run = run
        self.recorded = 0
        self.decided = 0
        """Epochs the agent answered in time."""
        self.missed = 0
        """Epochs the trial waited for in vain (and trained on)."""
        self._sleep = sleep
        self._clock = clock
        self._answering = True  # whether the agent answered the last epoch it was asked about
        self._last_elapsed = 0.0
        self._broken = False
        self._deaf = False  # the store refused a decision read: train on without asking

    def __call__(self, metrics: EpochMetrics) -> StopTraining | None:
        """Write one epoch (a failing store is logged once; later epochs are then skipped), then
        wait for the agent's decision on it where the experiment stops trials early."""
        seconds = max(0.0, metrics.elapsed - self._last_elapsed)
        self._last_elapsed = metrics.elapsed
        if self._broken:
            return None
        row = EpochRow(
            experiment_id=self.experiment_id,
            trial_id=self.trial_id,
            attempt=self.attempt,
            run=self.run,
            epoch=metrics.epoch,
            train_loss=_finite(metrics.train_loss),
            val_accuracy=_finite(metrics.val_accuracy),
            lr=_finite(metrics.lr),
            restarts=metrics.restarts,
            seconds=seconds,
        )
        try:
            self.store.record_epoch(row)
        except (StoreError, psycopg2.Error) as exc:
            self._broken = True
            log.warning("trial %s: cannot record epoch %s, no more curves for it: %s", self.trial_id, row.epoch, exc)
            return None
        self.recorded += 1
        if self._judged(metrics):
            return self._await_decision(metrics.epoch)
        return None

    def _judged(self, metrics: EpochMetrics) -> bool:
        """Whether the agent may stop the trial after this epoch, so that it is worth waiting for:
        early stopping on, an evaluated epoch, from ``--early-stop-start-epoch`` to the one before
        the last of the attempt now training (a restart happens only after an attempt's first epoch)."""
        attempt_epoch = metrics.epoch - metrics.restarts
        start = int(self.stopping.start_epoch or 1)
        return (
            self.stopping.enabled
            and not self._deaf
            and metrics.val_accuracy is not None
            and start <= attempt_epoch < self.epochs
        )

    def _await_decision(self, epoch: int) -> StopTraining | None:
        """The agent's decision on ``epoch``, polled until the wait runs out (None: train on)."""
        wait = float(self.stopping.wait_seconds or 0.0)
        deadline = self._clock() + (wait if self._answering else min(wait, SHORT_WAIT))
        delay = 0.05
        while True:
            try:
                decision = self.store.stop_decision(self.trial_id, self.attempt, self.run, epoch)
            except (StoreError, psycopg2.Error) as exc:
                self._deaf = True
                log.warning("trial %s: cannot read stop decisions, training on without them: %s", self.trial_id, exc)
                return None
            if decision is not None:
                self._answering = True
                self.decided += 1
                return StopTraining(decision.reason, decision.predicted) if decision.stop else None
            left = deadline - self._clock()
            if left <= 0:
                if self._answering:
                    log.info("trial %s: no stop decision on epoch %s in time; training on", self.trial_id, epoch)
                self._answering = False
                self.missed += 1
                return None
            self._sleep(min(delay, left))
            delay = min(delay * 2, 0.5)
