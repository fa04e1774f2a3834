"""Wires a search together: config -> data -> space -> strategy -> runner -> agent. Used by the CLI.

``run_search`` holds the experiment's lock for the whole search (one live search per experiment,
:mod:`nasagent.persistence.locks`), checks everything a user can get wrong before the experiment
is created (flags, data, strategy options, the artifact store's write access, the workers the
machine can hold), and takes a new experiment away again if the search fails before its first
trial has finished, so a mistake never leaves a half-created experiment behind.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from nasagent.config import SearchConfig, check_experiment_name, resume_config
from nasagent.core.trial import TrialStatus
from nasagent.errors import ConfigError, StoreError
from nasagent.execution.base import Runner
from nasagent.execution.local import LocalRunner, default_workers
from nasagent.persistence.locks import experiment_lock
from nasagent.persistence.postgres import Experiment, Store
from nasagent.search.loop import FaultPolicy, SearchLoop
from nasagent.search.progress import Progress
from nasagent.strategies.qlearning import QLearningConfig
from nasagent.strategies.registry import FOLLOWS_SCHEDULE
from nasagent.training.settings import TrialSettings

if TYPE_CHECKING:
    from nasagent.execution.cluster import LauncherSettings


def experiment_config(store: Store, name: str, given: dict[str, Any]) -> tuple[Experiment | None, SearchConfig]:
    """Experiment ``name`` and its config if it exists (the flags given again must agree with it),
    else None and a new config from the flags (the name checked: ``check_experiment_name``)."""
    existing = store.find_experiment(name)
    if existing is not None:
        return existing, resume_config(existing.config, given, name)
    check_experiment_name(name)
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
    max_memory: int | None = None,
    faults: FaultPolicy | None = None,
) -> Progress:
    """Run or resume experiment ``name`` with the ``launcher``'s runner (``open_runner``) until its
    budget is trained or its space has no untrained architecture left.

    With an artifact store (``artifacts`` or ``$NASAGENT_ARTIFACTS``) the weights of the current
    top ``keep_top`` trials are kept there as checkpoints (``nasagent.training.checkpoints``).
    ``max_memory`` is one local worker's memory (``--max-memory``). StoreError at once if another
    search holds the experiment. ``faults``: when infrastructure failures stop the search
    (``--max-requeues``, ``--max-infra-failures``)."""
    from nasagent.search.display import SearchDisplay
    from nasagent.search.judge import StopJudge
    from nasagent.search.keeper import search_keeper
    from nasagent.search.leaderboard import search_leaderboard

    with experiment_lock(store, name, "search"):
        existing, config = experiment_config(store, name, given)
        # Everything a user can get wrong is checked before the experiment is created.
        keeper = search_keeper(artifacts, name, keep_top)  # the store must take writes
        leaderboard = search_leaderboard(artifacts, store, name)  # refreshed in the artifact store as trials finish
        settings = config.trial_settings(device)
        if keeper is not None:
            settings = dataclasses.replace(settings, artifacts=keeper.store.url, experiment=name)
        data = settings.load_data()
        shape, num_classes, data_bytes = data.input_shape, data.num_classes, data.nbytes
        del data  # the agent needs only the data's shape: every worker loads its own copy
        strategy = config.make_strategy(shape, num_classes)
        space_size = config.space_size(shape, num_classes)
        schedule = config.epsilon_schedule() if config.strategy in FOLLOWS_SCHEDULE else None
        experiment = existing or store.create_experiment(name, config.to_dict())
        try:
            with (
                open_runner(launcher, cluster, store, settings, workers, num_classes, max_memory, data_bytes) as runner,
                SearchDisplay(schedule) as display,
            ):
                # --early-stop: the judge decides each epoch of the running trials (nasagent.search.judge).
                judge = None
                if config.early_stop.enabled:
                    build = settings.build
                    epochs, padding = int(config.epochs or 1), build.conv_padding
                    judge = StopJudge(
                        store, experiment, config.early_stop, epochs, shape, build.pooling, padding, config.seed
                    )
                callbacks = [c for c in (judge, display, keeper, leaderboard) if c is not None]
                loop = SearchLoop(
                    store,
                    experiment,
                    strategy,
                    runner,
                    config.budget,
                    config.seed,
                    callbacks,
                    poll_seconds=poll_seconds(launcher, judging=judge is not None),
                    space_size=space_size,
                    faults=faults,
                    objective=config.objective_rule(),
                )
                return loop.run()
        except BaseException:
            if existing is None:
                _forget_unstarted(store, experiment)
            raise


LOCAL_JUDGE_POLL_SECONDS = 0.2
"""How often the loop passes (and the judge decides) while local workers train with early stopping."""


def poll_seconds(launcher: str, judging: bool) -> float:
    """Seconds between two passes of the search loop. Each judged epoch waits for the judge's next
    pass, so with early stopping on local workers (a GPU trains a small network's epoch in well
    under a second) the loop passes every 0.2 s rather than every second; a pass then costs only
    a few small queries. Cluster runners keep 1 s: each of their passes also asks the Kubernetes
    or KFP API server, which must not be polled five times a second per search."""
    return LOCAL_JUDGE_POLL_SECONDS if judging and launcher == "local" else 1.0


def _forget_unstarted(store: Store, experiment: Experiment) -> None:
    """Delete an experiment this run created if none of its trials has finished: a search that
    failed to start (a cluster that refuses it, workers that do not fit) leaves nothing behind,
    and running the command again, once fixed, starts it cleanly."""
    try:
        if all(trial.status == TrialStatus.RUNNING for trial in store.trials(experiment.id)):
            store.delete_experiment(experiment.id)
    except StoreError:
        pass  # the database is gone too: the error that stopped the search is the one to report


def open_runner(
    launcher: str,
    cluster: LauncherSettings | None,
    store: Store,
    settings: TrialSettings,
    workers: int | None,
    num_classes: int,
    max_memory: int | None = None,
    data_bytes: int = 0,
) -> Runner:
    """The runner of ``--launcher``: local worker processes, or one Kubernetes Job / KFP run per
    trial (``cluster`` holds their settings; trial pods save checkpoints where the search does).
    ``max_memory`` and ``data_bytes`` plan the local workers (``LocalRunner``)."""
    if launcher == "local":
        # The workers record each epoch in the search's store (live learning curves), as trial pods do.
        return LocalRunner(settings, workers or default_workers(), num_classes, max_memory, data_bytes, store.url)
    if max_memory is not None:
        raise ConfigError("--max-memory: only for --launcher local (a trial pod's memory is --trial-memory-limit)")
    if cluster is None:
        raise ConfigError(f"--launcher {launcher} needs its cluster settings")
    from nasagent.execution.launchers import open_cluster_runner

    if settings.artifacts:
        cluster = dataclasses.replace(cluster, artifacts=settings.artifacts)
    return open_cluster_runner(launcher, store, cluster, num_classes)
