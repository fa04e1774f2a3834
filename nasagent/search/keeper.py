"""The top-k checkpoint keeper: a search callback that prunes saved weights to the current top k.

It is also the search's guard against losing weights silently: the artifact store must take a
write before the first trial trains (``search_keeper``), and a trial whose checkpoint could not be
saved (after the worker's retries, see ``save_trial_checkpoint``) stops the search with one line
(``on_trial_finished``) instead of leaving a top trial without weights.
"""

from __future__ import annotations

import logging
import os

from nasagent.core.trial import TrialOutcome, TrialStatus
from nasagent.errors import ArtifactError, ConfigError
from nasagent.persistence.artifacts import ENV_URL, ArtifactStore, open_artifacts
from nasagent.persistence.postgres import Experiment, Store
from nasagent.search.callbacks import SearchCallback, SearchView
from nasagent.training.checkpoints import checkpoint_ids, checkpoint_key, checkpoint_prefix

log = logging.getLogger(__name__)


class CheckpointKeeper(SearchCallback):
    """Keeps the checkpoints of an experiment's current top ``k`` trials and deletes the others."""

    def __init__(self, store: ArtifactStore, experiment: str, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        checkpoint_prefix(experiment)  # the name must be usable in keys: fail before the search starts
        self.store = store
        self.experiment = experiment
        self.k = k

    def keep_top(self, db: Store, experiment: Experiment) -> list[int]:
        """Delete the checkpoints of finished trials outside the top k (by ``db.top``); return their ids.

        Called after each recorded trial (``on_trial_finished``). Checkpoints of trials still running are
        kept: their outcome (and rank) is not known yet. A failing artifact store is logged,
        not raised: losing a checkpoint must not stop a search.
        """
        keep = {trial.id for trial in db.top(experiment.id, self.k)}
        keep |= {trial.id for trial in db.trials(experiment.id, status=TrialStatus.RUNNING)}
        try:
            stale = [tid for tid in checkpoint_ids(self.store, self.experiment) if tid not in keep]
            for trial_id in stale:
                self.store.delete(checkpoint_key(self.experiment, trial_id))
        except ArtifactError as exc:
            log.warning("could not prune checkpoints of %s: %s", self.experiment, exc)
            return []
        return stale

    def on_trial_finished(self, search: SearchView, outcome: TrialOutcome) -> None:
        """Prune to the new top k once the trial's outcome is committed (its rank is known).

        ArtifactError, stopping the search, if the trial's checkpoint could not be written: its
        accuracy is recorded, but a search that goes on would keep losing weights unnoticed."""
        error = outcome.info.get("checkpoint_error") if outcome.info else None
        if error:
            raise ArtifactError(
                f"trial {outcome.trial_id} trained, but its checkpoint could not be saved ({error}); the search "
                f"stopped so that no more weights are lost: fix the artifact store and run the same command to resume"
            )
        self.keep_top(search.store, search.experiment)


def search_keeper(url: str | None, experiment: str, k: int) -> CheckpointKeeper | None:
    """The keeper of a search given ``--artifacts URL`` (else ``$NASAGENT_ARTIFACTS``) and ``--keep-top k``.

    None when neither names a store or ``k`` is 0: the search then saves no weights. The store is
    listed and written to (and the write deleted) once here, so a wrong URL, secret or bucket, or a
    read-only or full store, stops the search before any training (ConfigError or ArtifactError,
    one line).
    """
    if k < 0:
        raise ConfigError(f"--keep-top must be 0 (no checkpoints) or more, got {k}")
    url = url or os.environ.get(ENV_URL)
    if not url or k == 0:
        return None
    store = open_artifacts(url)
    keeper = CheckpointKeeper(store, experiment, k)
    checkpoint_ids(store, experiment)
    store.check_writable(checkpoint_prefix(experiment))
    return keeper
