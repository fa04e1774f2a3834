"""Where a search stands: the numbers ``nasagent status`` and ``nasagent top`` print."""

from __future__ import annotations

from typing import Any

from nasagent.config import SearchConfig
from nasagent.core.trial import TrialStatus
from nasagent.persistence.postgres import Store, TrialRow
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
        "stopped": counts["stopped"],  # early (--early-stop): finished, in the budget, rewarded by the rule
        "early_stop": config.early_stop.to_dict(),
        "infra_failures": sum(infra.values()),
        "infra_failures_by_kind": infra,
        "best_accuracy": counts["best_accuracy"],
        "epsilon": epsilon,
        "finished": counts["unique_trained"] >= config.budget or (exhausted is not None and counts["running"] == 0),
        "exhausted": exhausted,
        "strategy_summary": _strategy_summary(store, experiment.id),
        "epochs_recorded": store.epoch_count(experiment.id),  # per-epoch metrics (trial_epochs), every trial
        **_limits_and_objective(store, experiment.id, config),
    }


def _limits_and_objective(store: Store, experiment_id: int, config: SearchConfig) -> dict[str, Any]:
    """The experiment's limits, its objective and the best reward under it (the accuracy's best
    when the objective is the accuracy itself)."""
    best = store.top(experiment_id, 1)
    return {
        "limits": config.limits().to_json(),
        "objective": config.objective_rule().describe(),
        "best_reward": best[0].score if best else None,
    }


def _strategy_summary(store: Store, experiment_id: int) -> dict[str, Any]:
    """What a strategy chose to report about itself (``state_dict()["summary"]``), e.g. reward variance."""
    saved = store.load_agent_state(experiment_id)
    return dict(saved[1].get("summary", {})) if saved else {}


def shows_reward(rows: list[dict[str, Any]]) -> bool:
    """Whether a leaderboard of ``top_trials`` rows needs a reward column: some reward differs from
    its accuracy (``--objective mnas``, a network penalised past ``--max-latency-ms``)."""
    return any(row.get("reward") is not None and row["reward"] != row.get("accuracy") for row in rows)


def objective_line(status: dict[str, Any]) -> str:
    """The experiment's objective and limits in words, from ``experiment_status``; empty when it
    maximises the plain accuracy without limits."""
    parts = []
    objective = status.get("objective") or {}
    if objective.get("kind") == "mnas":
        unit = {"latency": " ms", "params": " parameters", "macs": " MACs"}.get(objective.get("metric"), "")
        parts.append(
            f"objective mnas: accuracy × ({objective.get('metric')} / {objective.get('target'):g}{unit})"
            f"^{objective.get('weight'):g}"
        )
    limits = status.get("limits") or {}
    if limits.get("max_params") is not None:
        parts.append(f"at most {limits['max_params']:,} parameters")
    if limits.get("max_macs") is not None:
        parts.append(f"at most {limits['max_macs']:,} MACs")
    if limits.get("max_latency_ms") is not None:
        parts.append(f"latency over {limits['max_latency_ms']:g} ms penalised × (limit / latency)")
    return "; ".join(parts)


def accuracy_source(row: dict[str, Any]) -> str:
    """Where the accuracy of a ``top_trials`` row comes from: ``trained`` (the network trained to the
    end), or for a trial stopped early (``--early-stop``) ``predicted`` (predict: Baker et al.'s
    predicted final accuracy, its reward) or ``partial`` (median: the best it reached before it stopped)."""
    if row.get("status") != TrialStatus.STOPPED:
        return "trained"
    return "predicted" if row.get("predicted_accuracy") is not None else "partial"


def top_trials(store: Store, name: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` best trained architectures of an experiment by reward (its objective), best first, each
    with its accuracy, reward, parameters, MACs, latency (ms, batch 1, its trial's device; None if not
    measured), where its accuracy comes from (``accuracy_source``: ``trained``, or ``predicted`` /
    ``partial`` for a trial stopped early) and learning curve (``curve``: the epochs of its latest
    run, as recorded while it trained; empty if none were)."""
    experiment = store.get_experiment(name)
    best = store.top(experiment.id, k, stopped=True)  # early-stopped trials rank by their reward too
    curves = store.experiment_curves(experiment.id, [trial.id for trial in best])
    return [
        {
            "rank": rank,
            "arch": trial.arch,
            "status": str(trial.status),
            **stop_details(trial),
            "accuracy": trial.accuracy,
            "accuracy_source": accuracy_source({"status": trial.status, **stop_details(trial)}),
            "reward": trial.score,  # the objective's value (the accuracy unless --objective mnas/--max-latency-ms)
            "params": trial.params,
            "macs": trial.macs,
            "latency_ms": trial.latency_ms,
            "trial_id": trial.id,
            "epsilon": trial.epsilon,
            "train_seconds": trial.train_seconds,
            "curve": [epoch.to_json() for epoch in curves.get(trial.id, [])],
        }
        for rank, trial in enumerate(best, start=1)
    ]


def stop_details(trial: TrialRow) -> dict[str, Any]:
    """For a trial stopped early: the epoch it stopped after, its predicted final accuracy (predict;
    None for median) and the best accuracy it reached; nothing for any other trial. A stopped
    trial's ``accuracy`` is its reward: the prediction where there is one."""
    if trial.status != TrialStatus.STOPPED:
        return {}
    info = trial.info or {}
    return {
        "stopped_epoch": info.get("stopped_epoch"),
        "predicted_accuracy": info.get("predicted_accuracy"),
        "observed_accuracy": info.get("observed_accuracy"),
        "stop_reason": trial.failure,
    }
