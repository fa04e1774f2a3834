"""The top-k checkpoint keeper: a search callback that prunes saved weights to the current top k."""

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
        """Prune to the new top k once the trial's outcome is committed (its rank is known)."""
        self.keep_top(search.store, search.experiment)


def search_keeper(url: str | None, experiment: str, k: int) -> CheckpointKeeper | None:
    """The keeper of a search given ``--artifacts URL`` (else ``$NASAGENT_ARTIFACTS``) and ``--keep-top k``.

    None when neither names a store or ``k`` is 0: the search then saves no weights. The store is
    asked for its listing once here, so a wrong URL, secret or bucket stops the search before any
    training (ConfigError or ArtifactError, one line).
    """
    if k < 0:
        raise ConfigError(f"--keep-top must be 0 (no checkpoints) or more, got {k}")
    url = url or os.environ.get(ENV_URL)
    if not url or k == 0:
        return None
    store = open_artifacts(url)
    keeper = CheckpointKeeper(store, experiment, k)
    checkpoint_ids(store, experiment)
    return keeper
