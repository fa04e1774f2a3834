"""An experiment after (or between) its searches: extend its budget, or delete it and all it left.

Both hold the experiment's lock (:mod:`nasagent.persistence.locks`) while they work, so neither
can happen under a running search: that search is named and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from nasagent.config import SearchConfig
from nasagent.errors import ArtifactError
from nasagent.persistence.artifacts import ArtifactStore, experiment_key, open_artifacts
from nasagent.persistence.locks import experiment_lock
from nasagent.persistence.postgres import Experiment, Store
from nasagent.strategies.registry import FOLLOWS_SCHEDULE


@dataclass(frozen=True)
class Extension:
    """What ``extend_experiment`` changed."""

    experiment: str
    before: int
    after: int
    epsilon: float | None
    """The ε of the new trials, for strategies that follow the schedule; None for the others."""

    def describe(self) -> str:
        """One line for the user, ending with the command that trains the new trials."""
        eps = f" at ε {self.epsilon:g}" if self.epsilon is not None else ""
        return (
            f"experiment {self.experiment}: budget {self.before} -> {self.after}; the {self.after - self.before} new "
            f"trial(s) run{eps} when you run: nasagent search --experiment {self.experiment}"
        )


def extend_experiment(store: Store, name: str, trials: int, epsilon: float | None = None) -> Extension:
    """Raise experiment ``name``'s budget to ``trials`` unique architectures (``SearchConfig.extended``:
    the ε schedule continues at its last ε, or at ``epsilon``), and forget that its space looked
    exhausted, so that the next ``nasagent search`` carries on. StoreError if it is being searched."""
    with experiment_lock(store, name, "extend"):
        experiment = store.get_experiment(name)
        config = SearchConfig.from_dict(experiment.config)
        extended = config.extended(trials, epsilon)
        store.update_config(experiment.id, extended.to_dict())
        store.mark_exhausted(experiment.id, None)
    follows = config.strategy in FOLLOWS_SCHEDULE
    return Extension(name, config.budget, extended.budget, extended.extensions[-1]["epsilon"] if follows else None)


@dataclass(frozen=True)
class Deletion:
    """What ``delete_experiment`` removes: the experiment's rows and its artifacts in ``store``."""

    experiment: Experiment
    trials: int
    artifacts: list[str]
    store: ArtifactStore | None

    def describe(self) -> str:
        """``experiment x: 12 trials and their replay memory, Q-values and state; 5 artifacts in file:///...``."""
        where = (
            f"{len(self.artifacts)} artifact(s) (checkpoints, models, reports) in {self.store.url}"
            if self.store
            else ""
        )
        rows = f"{self.trials} trial(s) with their replay memory, Q-values and agent state"
        return f"experiment {self.experiment.name}: {rows}" + (f"; {where}" if where else "")


def plan_deletion(store: Store, name: str, artifacts: str | None) -> Deletion:
    """What deleting experiment ``name`` would remove (StoreError if there is no such experiment).

    ``artifacts`` is the artifact store the experiment's searches used (``--artifacts``, default
    ``$NASAGENT_ARTIFACTS``, else ``file://$NASAGENT_HOME/artifacts``)."""
    experiment = store.get_experiment(name)
    trials = len(store.trials(experiment.id))
    try:
        prefix = experiment_key(name) + "/"
    except ArtifactError:
        return Deletion(experiment, trials, [], None)  # a name that cannot be a key has no artifacts
    artifact_store = open_artifacts(artifacts)
    return Deletion(experiment, trials, artifact_store.list(prefix), artifact_store)


def delete_planned(store: Store, deletion: Deletion) -> None:
    """Delete what ``plan_deletion`` found: the artifacts first (if that fails the rows remain and the
    deletion can be run again), then every row of the experiment. Hold the experiment's lock."""
    if deletion.store is not None and deletion.artifacts:
        deletion.store.delete_prefix(experiment_key(deletion.experiment.name) + "/")
    store.delete_experiment(deletion.experiment.id)
