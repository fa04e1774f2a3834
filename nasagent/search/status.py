"""Where a search stands: the numbers ``nasagent status`` and ``nasagent top`` print."""

from __future__ import annotations

from typing import Any

from nasagent.config import SearchConfig
from nasagent.persistence.postgres import Store
from nasagent.strategies.registry import FOLLOWS_SCHEDULE


def experiment_status(store: Store, name: str) -> dict[str, Any]:
    """The numbers ``nasagent status --json`` prints."""
    experiment = store.get_experiment(name)
    config = SearchConfig.from_dict(experiment.config)
    counts = store.counts(experiment.id)
    launched = counts["unique_trained"] + counts["running"]
    epsilon = config.epsilon_schedule().position(launched)[1] if config.strategy in FOLLOWS_SCHEDULE else None
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
