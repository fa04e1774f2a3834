"""Wires a search together: config -> data -> space -> strategy -> runner -> agent. Used by the CLI."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from nasagent.agent import Agent, Progress
from nasagent.build import BuildOptions
from nasagent.config import SearchConfig, resume_config
from nasagent.errors import ConfigError
from nasagent.runners.base import Runner
from nasagent.runners.local import LocalRunner, default_workers
from nasagent.store.postgres import Experiment, Store
from nasagent.strategies.qlearning import QLearningConfig
from nasagent.strategies.registry import make_strategy
from nasagent.training.trainer import TrainConfig
from nasagent.trial import TrialSettings

if TYPE_CHECKING:
    from nasagent.runners.cluster import LauncherSettings


def trial_settings(config: SearchConfig, device: str = "auto") -> TrialSettings:
    """How every trial of the experiment loads its data and trains."""
    space = config.space_config()
    return TrialSettings(
        dataset=config.dataset,
        data_dir=config.data_dir,
        data_seed=config.seed,
        val_size=int(config.val_size) if config.val_size is not None and config.val_size >= 1 else config.val_size,
        train=TrainConfig(epochs=config.epochs, seed=config.seed, device=device),
        build=BuildOptions(activation=space.activation, dropout=space.dropout),
    )


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
    store: Store, name: str, given: dict[str, Any], workers: int | None = None, device: str = "auto",
    artifacts: str | None = None, keep_top: int = 10, launcher: str = "local", cluster: LauncherSettings | None = None,
) -> Progress:
    """Run or resume experiment ``name`` with the ``launcher``'s runner (``open_runner``) until its budget is trained.

    With an artifact store (``artifacts`` or ``$NASAGENT_ARTIFACTS``) the weights of the current
    top ``keep_top`` trials are kept there as checkpoints (``nasagent.checkpoints``)."""
    from nasagent.checkpoints import search_keeper
    from nasagent.display import SearchDisplay
    from nasagent.leaderboard import search_leaderboard

    keeper = search_keeper(artifacts, name, keep_top)  # before the experiment exists: a bad URL leaves nothing behind
    leaderboard = search_leaderboard(artifacts, store, name)  # refreshed in the artifact store as trials finish
    existing, config = experiment_config(store, name, given)
    settings = trial_settings(config, device)
    if keeper is not None:
        settings = dataclasses.replace(settings, artifacts=keeper.store.url, experiment=name)
    # Data and strategy options are checked before the experiment is created: bad input leaves nothing behind.
    data = settings.load_data()
    strategy = make_strategy(config, data.input_shape, data.num_classes)
    experiment = existing or store.create_experiment(name, config.to_dict())
    schedule = config.epsilon_schedule() if config.strategy == "qlearning" else None
    with open_runner(launcher, cluster, store, settings, workers, data.num_classes) as runner, SearchDisplay(schedule) as display:
        agent = Agent(store, experiment, strategy, runner, config.budget, config.seed, on_progress=leaderboard.after(display) if leaderboard else display, checkpoints=keeper)
        return agent.run()


def open_runner(
    launcher: str, cluster: LauncherSettings | None, store: Store, settings: TrialSettings, workers: int | None, num_classes: int
) -> Runner:
    """The runner of ``--launcher``: local worker processes, or one Kubernetes Job / KFP run per
    trial (``cluster`` holds their settings; trial pods save checkpoints where the search does)."""
    if launcher == "local":
        return LocalRunner(settings, workers or default_workers(), num_classes)
    if cluster is None:
        raise ConfigError(f"--launcher {launcher} needs its cluster settings")
    from nasagent.runners.cluster import open_cluster_runner

    if settings.artifacts:
        cluster = dataclasses.replace(cluster, artifacts=settings.artifacts)
    return open_cluster_runner(launcher, store, cluster, num_classes)


def experiment_status(store: Store, name: str) -> dict[str, Any]:
    """The numbers ``nasagent status --json`` prints."""
    experiment = store.get_experiment(name)
    config = SearchConfig.from_dict(experiment.config)
    counts = store.counts(experiment.id)
    launched = counts["unique_trained"] + counts["running"]
    epsilon = config.epsilon_schedule().position(launched)[1] if config.strategy == "qlearning" else None
    return {
        "experiment": name,
        "strategy": config.strategy,
        "dataset": config.dataset,
        "trials_done": counts["trials_done"],
        "unique_trained": counts["unique_trained"],
        "budget": config.budget,
        "running": counts["running"],
        "failed": counts["failed"],
        "best_accuracy": counts["best_accuracy"],
        "epsilon": epsilon,
        "finished": counts["unique_trained"] >= config.budget,
        "strategy_summary": _strategy_summary(store, experiment.id),
    }


def _strategy_summary(store: Store, experiment_id: int) -> dict[str, Any]:
    """What a strategy chose to report about itself (``state_dict()["summary"]``), e.g. reward variance."""
    saved = store.load_agent_state(experiment_id)
    return dict(saved[1].get("summary", {})) if saved else {}


def top_trials(store: Store, name: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` best trained architectures of an experiment, best first."""
    experiment = store.get_experiment(name)
    return [
        {
            "rank": rank,
            "arch": trial.arch,
            "accuracy": trial.accuracy,
            "params": trial.params,
            "trial_id": trial.id,
            "epsilon": trial.epsilon,
            "train_seconds": trial.train_seconds,
        }
        for rank, trial in enumerate(store.top(experiment.id, k), start=1)
    ]
