"""Live learning curves: each epoch a trial trains goes to the store (``trial_epochs``) as it ends.

The trial worker (``run_trial``) hands an ``EpochRecorder`` to the trainer as its ``on_epoch``
callback, in a local worker process and in a trial pod alike, so the dashboard, ``status`` and
``top`` see a trial learn while it runs. The recorder is the one place that sees every epoch of a
trial as it happens: the place where a decision to stop a trial early belongs, too.

Recording is an observation, never the trial's result: the outcome still travels the usual way
(the local runner's queue, ``trial_results``). A store that cannot take an epoch (the database gone
for longer than the session waits) is logged once and the training goes on without curves. A role
that may not insert epochs at all is a deployment error, reported before the training starts.
"""

from __future__ import annotations

import logging
import math

import psycopg2

from nasagent.errors import StoreError
from nasagent.persistence.postgres import EpochRow, Store
from nasagent.training.trainer import EpochMetrics

log = logging.getLogger(__name__)


def _finite(value: float | None) -> float | None:
    """None for NaN and infinities: what the store (and JSON) can hold of a diverged number."""
    return value if value is not None and math.isfinite(value) else None


class EpochRecorder:
    """The ``on_epoch`` callback of one run of one trial: writes each ``EpochMetrics`` to ``trial_epochs``.

    ``run`` is the launcher's attempt number (a retried trial pod; 1 for local workers); the
    trial's own ``attempts`` (bumped by the agent whenever it trains the trial again) is read from
    its row. StoreError at once if the trial does not exist or the role may not insert epochs.
    """

    def __init__(self, store: Store, trial_id: int, run: int = 1) -> None:
        trial = store.trial(trial_id)
        if trial is None:
            raise StoreError(f"no trial {trial_id} to record epochs for")
        if not store.may_record_epochs():
            raise StoreError(
                "permission denied for table trial_epochs: this database role may not record the epochs "
                "of trials; apply nasagent's schema migration 006 as the database owner"
            )
        self.store = store
        self.experiment_id = trial.experiment_id
        self.trial_id = trial_id
        self.attempt = trial.attempts
        self.run = run
        self.recorded = 0
        self._last_elapsed = 0.0
        self._broken = False

    def __call__(self, metrics: EpochMetrics) -> None:
        """Write one epoch (a failing store is logged once; later epochs are then skipped)."""
        seconds = max(0.0, metrics.elapsed - self._last_elapsed)
        self._last_elapsed = metrics.elapsed
        if self._broken:
            return
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
            return
        self.recorded += 1
