"""Wires a search together: config -> data -> space -> strategy -> runner -> agent. Used by the CLI."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from nasagent.config import SearchConfig, resume_config
from nasagent.errors import ConfigError
from nasagent.execution.base import Runner
from nasagent.execution.local import LocalRunner, default_workers
from nasagent.persistence.postgres import Experiment, Store
from nasagent.search.loop import SearchLoop
from nasagent.search.progress import Progress
from nasagent.strategies.qlearning import QLearningConfig
from nasagent.strategies.registry import FOLLOWS_SCHEDULE
from nasagent.training.settings import TrialSettings

if TYPE_CHECKING:
    from nasagent.execution.cluster import LauncherSettings


def experiment_config(store: Store, name: str, given: dict[str, Any]) -> tuple[Experiment | None, SearchConfig]:
    """Experiment ``name`` and its config if it exists (the flags given again must agree with it),
    else None and a new config from the flags."""
    existing = store.find_experiment(name)
    if existing is not None:
        return existing, resume_config(existing.config, given, name)
    values = {k: v for k, v in given.items() if v is not None}
    if "qlearning" in values:
        values["qlearning"] = QLearningConfig(**values["qlearning"])
    return None, SearchConfig(**values)


def open_experiment(store: Store, name: str, given: dict[str, Any]) -> tuple[Experiment, SearchConfig]:
    """Create the experiment, or load it and check the flags given again agree with it."""
    existing, config = experiment_config(store, name, given)
    return existing or store.create_experiment(name, config.to_dict()), config


def run_search(
    store: Store,
    name: str,
    given: dict[str, Any],
    workers: int | None = None,
    device: str = "auto",
    artifacts: str | None = None,
    keep_top: int = 10,
    launcher: str = "local",
    cluster: LauncherSettings | None = None,
) -> Progress:
    """Run or resume experiment ``name`` with the ``launcher``'s runner (``open_runner``) until its budget is trained.

    With an artifact store (``artifacts`` or ``$NASAGENT_ARTIFACTS``) the weights of the current
    top ``keep_top`` trials are kept there as checkpoints (``nasagent.training.checkpoints``)."""
    from nasagent.search.display import SearchDisplay
    from nasagent.search.keeper import search_keeper
    from nasagent.search.leaderboard import search_leaderboard

    keeper = search_keeper(artifacts, name, keep_top)  # before the experiment exists: a bad URL leaves nothing behind
    leaderboard = search_leaderboard(artifacts, store, name)  # refreshed in the artifact store as trials finish
    existing, config = experiment_config(store, name, given)
    settings = config.trial_settings(device)
    if keeper is not None:
        settings = dataclasses.replace(settings, artifacts=keeper.store.url, experiment=name)
    # Data and strategy options are checked before the experiment is created: bad input leaves nothing behind.
    data = settings.load_data()
    strategy = config.make_strategy(data.input_shape, data.num_classes)
    experiment = existing or store.create_experiment(name, config.to_dict())
    schedule = config.epsilon_schedule() if config.strategy in FOLLOWS_SCHEDULE else None
    with (
        open_runner(launcher, cluster, store, settings, workers, data.num_classes) as runner,
        SearchDisplay(schedule) as display,
    ):
        callbacks = [c for c in (display, keeper, leaderboard) if c is not None]
        return SearchLoop(store, experiment, strategy, runner, config.budget, config.seed, callbacks=callbacks).run()


def open_runner(
    launcher: str,
    cluster: LauncherSettings | None,
    store: Store,
    settings: TrialSettings,
    workers: int | None,
    num_classes: int,
) -> Runner:
    """The runner of ``--launcher``: local worker processes, or one Kubernetes Job / KFP run per
    trial (``cluster`` holds their settings; trial pods save checkpoints where the search does)."""
    if launcher == "local":
        return LocalRunner(settings, workers or default_workers(), num_classes)
    if cluster is None:
        raise ConfigError(f"--launcher {launcher} needs its cluster settings")
    from nasagent.execution.launchers import open_cluster_runner

    if settings.artifacts:
        cluster = dataclasses.replace(cluster, artifacts=settings.artifacts)
    return open_cluster_runner(launcher, store, cluster, num_classes)
