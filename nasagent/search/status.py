"""Where a search stands: the numbers ``nasagent status`` and ``nasagent top`` print."""

from __future__ import annotations

from typing import Any

from nasagent.config import SearchConfig
from nasagent.persistence.postgres import Store
from nasagent.strategies.registry import FOLLOWS_SCHEDULE


def experiment_status(store: Store, name: str) -> dict[str, Any]:
    """The numbers ``nasagent status --json`` prints. Two kinds of failure, counted apart:
    ``failed``, architectures that failed to learn (the paper's chance-level reward), and
    ``infra_failures``, times the machines did not run a trial to its end (never rewarded; the
    trial was trained again), with ``infra_failures_by_kind`` by ``Fault``."""
    experiment = store.get_experiment(name)
    config = SearchConfig.from_dict(experiment.config)
    counts = store.counts(experiment.id)
    infra = store.infra_failure_counts(experiment.id)
    launched = counts["unique_trained"] + counts["running"]
    exhausted = store.exhausted(experiment.id)  # the space ran out before the budget did
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
        "infra_failures": sum(infra.values()),
        "infra_failures_by_kind": infra,
        "best_accuracy": counts["best_accuracy"],
        "epsilon": epsilon,
        "finished": counts["unique_trained"] >= config.budget or (exhausted is not None and counts["running"] == 0),
        "exhausted": exhausted,
        "strategy_summary": _strategy_summary(store, experiment.id),
        "epochs_recorded": store.epoch_count(experiment.id),  # per-epoch metrics (trial_epochs), every trial
    }


def _strategy_summary(store: Store, experiment_id: int) -> dict[str, Any]:
    """What a strategy chose to report about itself (``state_dict()["summary"]``), e.g. reward variance."""
    saved = store.load_agent_state(experiment_id)
    return dict(saved[1].get("summary", {})) if saved else {}


def top_trials(store: Store, name: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` best trained architectures of an experiment, best first, each with its learning
    curve (``curve``: the epochs of its latest run, as recorded while it trained; empty if none were)."""
    experiment = store.get_experiment(name)
    best = store.top(experiment.id, k)
    curves = store.experiment_curves(experiment.id, [trial.id for trial in best])
    return [
        {
            "rank": rank,
            "arch": trial.arch,
            "accuracy": trial.accuracy,
            "params": trial.params,
            "trial_id": trial.id,
            "epsilon": trial.epsilon,
            "train_seconds": trial.train_seconds,
            "curve": [epoch.to_json() for epoch in curves.get(trial.id, [])],
        }
        for rank, trial in enumerate(best, start=1)
    ]
