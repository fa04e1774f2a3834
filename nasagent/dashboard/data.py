"""What each dashboard page shows, as JSON-ready documents computed from a read-only store.

The figures reuse the report's numbers (:mod:`nasagent.results.report`: Fig 3's accuracy curve and
ε groups, the Q-value views of Figs A3/A4, the time per trial), so ``nasagent report`` and the
dashboard always agree; the dashboard only draws them interactively. Everything that grows with
the experiment is aggregated or paginated here, on the server: a page of an experiment with
10,000 trials is a few hundred kilobytes (``bench/bench_dashboard.py``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.core.cost import layer_costs
from nasagent.core.networks import parse_network
from nasagent.core.nsc import NSCNetwork
from nasagent.core.trial import TrialStatus
from nasagent.dashboard.store import SORT_COLUMNS, ReadOnlyStore, as_trial_rows
from nasagent.errors import ConfigError, StoreError
from nasagent.persistence.artifacts import ArtifactStore, experiment_key
from nasagent.persistence.postgres import EpochRow, Experiment
from nasagent.results.report import accuracy_curve, q_analysis, trial_times
from nasagent.search.status import experiment_status
from nasagent.strategies.qlearning import QLearningConfig
from nasagent.strategies.registry import FOLLOWS_SCHEDULE

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
RECENT = 20
"""Failures (by reason, and the latest infrastructure failures) listed on the experiment page."""
ETA_WINDOW = 50
"""The trial rate behind the ETA: over the last this many finished trials."""
DIGITS = 4
"""Accuracies and means are sent with this many decimals: the page cannot show more."""

# The input (C, H, W) of the built-in datasets, for trials recorded before workers reported their
# input shape (``info["input_shape"]``); an npz dataset without it shows no sizes.
KNOWN_INPUTS = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "svhn": (3, 32, 32),
}


def _round(value: float | None, digits: int = DIGITS) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _trial_json(row: dict[str, Any]) -> dict[str, Any]:
    """A trial row (``ReadOnlyStore.TRIAL_FIELDS``) as JSON: times as ISO strings, NaN as null."""
    out = dict(row)
    out["status"] = str(out["status"])
    for key in ("accuracy", "epsilon"):
        out[key] = _round(out.get(key))
    # The reward is the objective's value (migration 008); older rows' reward was their accuracy.
    out["reward"] = _round(out.get("reward")) if out.get("reward") is not None else out.get("accuracy")
    out["latency_ms"] = _round(out.get("latency_ms"), 3)
    out["train_seconds"] = _round(out.get("train_seconds"), 2)
    for key in ("started_at", "finished_at"):
        out[key] = _time(out.get(key))
    return out


def _curve_json(rows: list[EpochRow]) -> list[dict[str, Any]]:
    return [epoch.to_json() for epoch in rows]


def _config(experiment: Experiment) -> SearchConfig | None:
    """The experiment's config, or None if this nasagent cannot read it (a newer version wrote it)."""
    try:
        return SearchConfig.from_dict(experiment.config)
    except (ConfigError, TypeError, ValueError, KeyError):
        return None


# -- all experiments ------------------------------------------------------------------------------


def experiments_overview(store: ReadOnlyStore) -> dict[str, Any]:
    """Every experiment: name, strategy, dataset, space, progress, best accuracy, running or finished."""
    rows = []
    for row in store.overview():
        config = _config(Experiment(row["id"], row["name"], row["config"], row["created_at"]))
        budget = config.budget if config is not None else None
        finished = budget is not None and (
            row["finished"] >= budget or (row["exhausted"] is not None and row["running"] == 0)
        )
        rows.append(
            {
                "name": row["name"],
                "strategy": row["config"].get("strategy"),
                "dataset": row["config"].get("dataset"),
                "space": row["config"].get("space"),
                "seed": row["config"].get("seed"),
                "trained": row["finished"],
                "budget": budget,
                "running": row["running"],
                "failed": row["failed"],
                "best_accuracy": _round(row["best"]),
                "state": "finished" if finished else ("running" if row["running"] else "stopped"),
                "created_at": _time(row["created_at"]),
                "last_activity": _time(row["last"]),
            }
        )
    return {"experiments": rows}


# -- one experiment -------------------------------------------------------------------------------


def eta(trials: list[Any], remaining: int, running: int) -> dict[str, Any]:
    """Trials per hour over the last ``ETA_WINDOW`` finished trials and the seconds left at that rate."""
    ends = sorted(t.finished_at for t in trials if t.finished_at is not None)[-ETA_WINDOW:]
    if len(ends) < 2 or remaining <= 0:
        return {"trials_per_hour": None, "seconds_left": 0 if remaining <= 0 and not running else None}
    span = (ends[-1] - ends[0]).total_seconds()
    if span <= 0:
        return {"trials_per_hour": None, "seconds_left": None}
    rate = (len(ends) - 1) / span
    return {"trials_per_hour": round(rate * 3600, 2), "seconds_left": round(remaining / rate)}


def schedule_position(config: SearchConfig | None, launched: int) -> dict[str, Any] | None:
    """Where the ε schedule stands: its steps, the current one, and models launched in it."""
    if config is None or config.strategy not in FOLLOWS_SCHEDULE:
        return None
    schedule = config.epsilon_schedule()
    index, epsilon = schedule.position(launched)
    start = sum(count for _, count in schedule.steps[:index])
    return {
        "steps": [{"epsilon": eps, "count": count} for eps, count in schedule.steps],
        "index": index,
        "epsilon": epsilon,
        "in_step": min(launched - start, schedule.steps[index][1]),
        "launched": launched,
    }


def experiment_summary(store: ReadOnlyStore, name: str) -> dict[str, Any]:
    """The experiment page's slow-changing part: status, ETA, ε position, Fig 3, Figs A3/A4 (or the
    strategy's summary), failures and timing. Recomputed only when a trial starts or finishes."""
    experiment = store.get_experiment(name)
    config = _config(experiment)
    status = experiment_status(store, name)
    trials = as_trial_rows(store.light_trials(experiment.id))
    replay = store.load_replay(experiment.id)
    curve = accuracy_curve(trials, replay)
    launched = status["unique_trained"] + status["running"]
    q_init = float(experiment.config.get("qlearning", {}).get("q_init", QLearningConfig.q_init))
    q = q_analysis(store.load_q(experiment.id), q_init, str(status["strategy"]), len(replay))
    _, timing = trial_times(trials)
    return {
        "experiment": name,
        "status": status,
        "config": {k: v for k, v in experiment.config.items() if k != "space_spec"},
        "eta": eta(trials, status["budget"] - status["unique_trained"], status["running"]),
        "schedule": schedule_position(config, launched),
        "fig3": {
            "trial_ids": curve.trial_ids,
            "accuracies": [round(a, DIGITS) for a in curve.accuracies],  # finished trials: finite
            "failed": [i for i, failed in enumerate(curve.failed) if failed],
            "window": curve.window,
            "rolling_start": curve.rolling_iterations[0] if curve.rolling_iterations else None,
            "rolling_mean": [round(m, DIGITS) for m in curve.rolling_mean],
            "groups": [
                {
                    "epsilon": g.epsilon,
                    "count": g.count,
                    "mean": _round(g.mean_accuracy),
                    "first": g.first_iteration,
                    "last": g.last_iteration,
                }
                for g in curve.groups
            ],
            "replay_samples": curve.replay_samples,
            "dictionary_hits": curve.dictionary_hits,
        },
        "q": {
            "entries": q.entries,
            "q_init": q.q_init,
            "note": q.note,
            "by_type": [_q_curve(c) for c in q.by_type],
            "by_kernel": [_q_curve(c) for c in q.by_kernel],
        },
        "failure_reasons": store.failure_reasons(experiment.id, RECENT),
        "infra_failures": [{**f, "at": _time(f["at"])} for f in store.recent_infra_failures(experiment.id, RECENT)],
        "timing": {k: (_round(v, 2) if isinstance(v, float) else v) for k, v in timing.items()},
    }


def _q_curve(curve: Any) -> dict[str, Any]:
    return {
        "label": curve.label,
        "depths": curve.depths,
        "means": [_round(m) for m in curve.means],
        "counts": curve.counts,
    }


def experiment_live(store: ReadOnlyStore, name: str) -> dict[str, Any]:
    """The experiment page's fast-changing part: the trials running now with their learning curves
    (epoch by epoch, as the workers record them) and the counts."""
    experiment = store.get_experiment(name)
    running = store.running_trials(experiment.id)
    curves = store.experiment_curves(experiment.id, [t["id"] for t in running]) if running else {}
    counts = store.counts(experiment.id)
    return {
        "experiment": name,
        "counts": {k: (_round(v) if isinstance(v, float) else v) for k, v in counts.items()},
        "running": [{**_trial_json(t), "curve": _curve_json(curves.get(t["id"], []))} for t in running],
    }


def trials_page(
    store: ReadOnlyStore,
    name: str,
    sort: str = "accuracy",
    order: str = "desc",
    offset: int = 0,
    limit: int = PAGE_SIZE,
    status: str | None = None,
) -> dict[str, Any]:
    """One page of the leaderboard (all trials, or those with ``status``), sorted server-side.
    ConfigError for a sort key, order, status or page outside what the page offers."""
    if sort not in SORT_COLUMNS:
        raise ConfigError(f"sort must be one of {', '.join(SORT_COLUMNS)}, got {sort!r}")
    if order not in ("asc", "desc"):
        raise ConfigError(f"order must be asc or desc, got {order!r}")
    if status is not None and status not in {s.value for s in TrialStatus}:
        raise ConfigError(f"status must be one of {', '.join(s.value for s in TrialStatus)}, got {status!r}")
    if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ConfigError(f"offset must be >= 0 and limit within 1..{MAX_PAGE_SIZE}")
    experiment = store.get_experiment(name)
    total, rows = store.trials_page(experiment.id, sort, order == "desc", offset, limit, status)
    return {
        "experiment": name,
        "total": total,
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "order": order,
        "status": status,
        "trials": [_trial_json(r) for r in rows],
    }


# -- several experiments --------------------------------------------------------------------------


def best_so_far(accuracies: list[float | None]) -> list[list[float]]:
    """[iteration, best accuracy so far] at each improvement and at the last iteration: the whole
    step curve in a handful of points, however many trials there are."""
    points: list[list[float]] = []
    best = -math.inf
    for i, accuracy in enumerate(accuracies, start=1):
        if accuracy is not None and accuracy > best:
            best = accuracy
            points.append([i, round(best, DIGITS)])
    if points and points[-1][0] != len(accuracies):
        points.append([len(accuracies), points[-1][1]])
    return points


def compare(store: ReadOnlyStore, names: list[str]) -> dict[str, Any]:
    """Best accuracy so far against models trained, for each experiment named (strategies or seeds
    side by side). StoreError for an unknown name."""
    if not names:
        raise ConfigError("name at least one experiment to compare")
    series = []
    for name in names:
        experiment = store.get_experiment(name)
        trials = [t for t in store.light_trials(experiment.id) if t.status != TrialStatus.RUNNING]
        done = [t.accuracy if t.status == TrialStatus.DONE else None for t in trials]
        series.append(
            {
                "experiment": name,
                "strategy": experiment.config.get("strategy"),
                "seed": experiment.config.get("seed"),
                "dataset": experiment.config.get("dataset"),
                "trained": len(trials),
                "best_so_far": best_so_far(done),
                "best_accuracy": _round(max((a for a in done if a is not None), default=None)),
            }
        )
    return {"series": series}


# -- one trial ------------------------------------------------------------------------------------


def layer_table(arch_text: str, config: dict[str, Any], input_shape: tuple[int, int, int] | None) -> dict[str, Any]:
    """The trial's layers with output size (C x H x W) and trainable parameters, computed from the
    architecture alone (:mod:`nasagent.core.cost`, no torch). ``note`` says why sizes are missing."""
    try:
        network = parse_network(arch_text)
    except ConfigError as exc:
        return {"layers": [], "total_params": None, "note": str(exc)}
    searched = _config(Experiment(0, "", config, datetime.now()))
    if isinstance(network, NSCNetwork):
        return _nsc_table(network, searched, input_shape)
    assert isinstance(network, Architecture)
    if input_shape is None:
        return {
            "layers": [{"layer": str(layer), "output": None, "params": None} for layer in network.layers],
            "total_params": None,
            "note": "the input size of this dataset is unknown, so are the layers' sizes",
        }
    build = searched.trial_settings("cpu").build if searched is not None else None
    pooling, padding = (build.pooling, build.conv_padding) if build is not None else ("floor", "same")
    try:
        costs = layer_costs(network, input_shape, pooling, padding)
    except ConfigError as exc:
        return {"layers": [], "total_params": None, "note": str(exc)}
    return {
        "layers": [{"layer": c.layer, "output": list(c.output), "params": c.params} for c in costs],
        "total_params": sum(c.params for c in costs),
        "note": f"input {' x '.join(map(str, input_shape))} (C x H x W), pooling {pooling}, convolutions {padding}",
    }


def _nsc_table(network: NSCNetwork, config: SearchConfig | None, shape: tuple[int, int, int] | None) -> dict[str, Any]:
    padding = config.trial_settings("cpu").build.nsc_padding if config is not None else "valid"
    rows = [{"layer": str(layer), "output": None, "params": None} for layer in network.layers]
    note = f"NSC network, padding {padding}; parameters are counted only for chain architectures"
    if shape is not None:
        try:
            shapes = network.shapes(shape, padding)
            for row, out in zip(rows, shapes[1:]):
                row["output"] = list(out)
            rows.append({"layer": "merged leaves", "output": list(shapes[-1]), "params": None})
        except ConfigError as exc:
            note = str(exc)
    rows.append({"layer": str(network.terminal), "output": [network.terminal.classes, 1, 1], "params": None})
    return {"layers": rows, "total_params": None, "note": note}


def checkpoint_key(experiment: str, trial_id: int) -> str:
    """Where a search keeps a trial's weights: ``nasagent.training.checkpoints.checkpoint_key``'s
    format, repeated here so the dashboard never imports torch (a test keeps the two equal)."""
    return experiment_key(experiment, "checkpoints", f"trial-{int(trial_id)}.pt")


def trial_detail(store: ReadOnlyStore, trial_id: int, artifacts: ArtifactStore | None = None) -> dict[str, Any]:
    """One trial: its row, layer table, every recorded run's epochs, timings, infrastructure
    failures and whether its checkpoint is kept. StoreError for an unknown trial."""
    trial = store.trial(trial_id)
    if trial is None:
        raise StoreError(f"unknown trial {trial_id}")
    experiment = next(e for e in store.list_experiments() if e.id == trial.experiment_id)
    info = trial.info or {}
    shape = info.get("input_shape")
    input_shape = tuple(shape) if isinstance(shape, list) and len(shape) == 3 else None
    input_shape = input_shape or KNOWN_INPUTS.get(str(experiment.config.get("dataset")))
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for epoch in store.trial_epochs(trial_id):
        runs.setdefault((epoch.attempt, epoch.run), []).append(epoch.to_json())
    wall = (trial.finished_at - trial.started_at).total_seconds() if trial.started_at and trial.finished_at else None
    checkpoint = None
    if artifacts is not None and trial.status != TrialStatus.RUNNING:
        key = checkpoint_key(experiment.name, trial_id)
        checkpoint = {"key": key, "kept": artifacts.exists(key)}
    row = {name: getattr(trial, name) for name in ("id", "arch", "status", "accuracy", "params", "epsilon")}
    row.update({name: getattr(trial, name) for name in ("train_seconds", "worker", "failure", "attempts", "digest")})
    row.update({name: info.get(name) for name in ("stopped_epoch", "predicted_accuracy")})  # --early-stop
    row.update({name: getattr(trial, name) for name in ("macs", "latency_ms", "reward")})
    return {
        "experiment": experiment.name,
        "trial": _trial_json({**row, "started_at": trial.started_at, "finished_at": trial.finished_at}),
        "created_at": _time(trial.created_at),
        "wall_seconds": _round(wall, 2),
        "layers": layer_table(trial.arch, experiment.config, input_shape),  # type: ignore[arg-type]
        "runs": [{"attempt": a, "run": r, "epochs": epochs} for (a, r), epochs in sorted(runs.items())],
        "info": {k: v for k, v in info.items() if k not in ("history",)},
        "infra_failures": [{**f, "at": _time(f["at"])} for f in store.trial_infra_failures(trial_id)],
        "checkpoint": checkpoint,
    }
