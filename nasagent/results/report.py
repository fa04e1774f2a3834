"""The experiment report a person looks at: the MetaQNN paper's analysis of one search.

``build_report(store, name)`` computes every number from the store (so tests can check them);
``make_figures(report)`` draws them with matplotlib (``Figure`` objects, no pyplot state, Agg);
``write_report(report, out_dir)`` writes ``index.html`` (self-contained: figures as base64 PNG,
tables as HTML, inline CSS, no scripts or links), ``report.json`` (the numbers behind each
figure) and ``leaderboard.md`` (for Kubeflow's markdown viewer).

What each figure shows (Baker et al. 2017, §6 Figure 3 and appendix D):

- Fig 3: the accuracy of every *unique* architecture trained, in launch order (trial id), with a
  trailing rolling mean over ``w = min(100, max(1, n // 5))`` models (the paper's 100 once
  n >= 500; a fifth of the run for short ones) and bars of the mean accuracy per ε, each spanning
  the models launched at that ε. Replay-dictionary hits are not models trained and are left out
  (the paper's x-axis also counts models trained). Failed trials count with the chance-level
  reward the agent received and are marked.
- Fig A2: the accuracy distribution per ε on shared bins (fraction of that ε's models per bin).
- Fig A3: the mean of the stored Q-values per layer type of the action (convolution, pooling,
  fully connected, termination = GAP/SM) against the depth of the layer the action adds (state
  depth + 1). Only Q(s, u) entries the agent has updated are stored; never-visited entries still
  hold Q₀ and are not averaged in.
- Fig A4: the same mean over convolution actions, per receptive field (kernel) size.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from nasagent.core.arch import FC, GAP, Conv, Pool, Softmax, parse_layer
from nasagent.core.trial import TrialStatus
from nasagent.errors import ConfigError
from nasagent.persistence.postgres import Store, TrialRow
from nasagent.search.leaderboard import (
    LEADERBOARD_SIZE,
    STOPPED_NOTE,
    accuracy_text,
    leaderboard_columns,
    leaderboard_markdown,
    shows_stops,
    status_text,
)
from nasagent.search.status import experiment_status, objective_line, shows_reward, stop_details, top_trials
from nasagent.strategies.qlearning import QLearningConfig

# The paper's rolling-mean window (§6, Figure 3).
PAPER_WINDOW = 100
HISTOGRAM_BINS = 20
LAYER_TYPES = ("convolution", "pooling", "fully connected", "termination")


@dataclass(frozen=True)
class EpsilonGroup:
    """The finished trials launched at one ε (None for strategies without ε)."""

    epsilon: float | None
    count: int
    mean_accuracy: float
    first_iteration: int
    """1-based position in launch order of this ε's first model."""
    last_iteration: int
    histogram: list[int]
    """Models per bin of ``AccuracyCurve.histogram_edges`` (Fig A2)."""


@dataclass(frozen=True)
class AccuracyCurve:
    """Fig 3 and Fig A2: every finished unique trial in launch order."""

    trial_ids: list[int]
    accuracies: list[float]
    epsilons: list[float | None]
    failed: list[bool]
    window: int
    rolling_iterations: list[int]
    """1-based iteration at the end of each full window."""
    rolling_mean: list[float]
    groups: list[EpsilonGroup]
    histogram_edges: list[float]
    replay_samples: int
    """Rewarded samples (replay memory rows), replay-dictionary hits included."""
    dictionary_hits: int


@dataclass(frozen=True)
class QCurve:
    """Mean Q-value against layer depth for one layer type (Fig A3) or kernel size (Fig A4)."""

    label: str
    depths: list[int]
    means: list[float]
    counts: list[int]


@dataclass(frozen=True)
class QAnalysis:
    """Fig A3 and A4. ``note`` explains why there are no curves (e.g. a strategy without Q-values)."""

    entries: int
    skipped: int
    """Stored entries whose keys are not MetaQNN (state, layer) keys."""
    q_init: float
    by_type: list[QCurve]
    by_kernel: list[QCurve]
    note: str | None


@dataclass(frozen=True)
class TrialTime:
    """How long one finished trial took: training (reported by the worker) and wall time (timestamps)."""

    trial_id: int
    status: str
    train_seconds: float | None
    wall_seconds: float | None
    started_offset: float | None
    """Seconds from the experiment's first trial start to this trial's start."""
    finished_offset: float | None


@dataclass(frozen=True)
class Report:
    """Everything the report page shows, computed from the store by ``build_report``."""

    experiment: str
    generated_at: str
    config: dict[str, Any]
    status: dict[str, Any]
    accuracy: AccuracyCurve
    q: QAnalysis
    leaderboard: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    failure_reasons: list[dict[str, Any]]
    times: list[TrialTime]
    timing: dict[str, Any] = field(default_factory=dict)
    infra_failures: list[dict[str, Any]] = field(default_factory=list)
    """Times the machines did not run a trial to its end (never rewarded; the trial ran again)."""
    infra_by_kind: dict[str, int] = field(default_factory=dict)
    stopped: list[dict[str, Any]] = field(default_factory=list)
    """Trials stopped early (``--early-stop``): where, why, and the reward they were given."""

    def to_json(self) -> dict[str, Any]:
        """The numbers behind each figure and table, keyed by figure (written as ``report.json``)."""
        return {
            "experiment": self.experiment,
            "generated_at": self.generated_at,
            "config": self.config,
            "status": self.status,
            "fig3": {
                "models": "unique trainings in launch order (replay-dictionary hits excluded)",
                **{k: v for k, v in asdict(self.accuracy).items() if k not in ("groups", "histogram_edges")},
                "per_epsilon": [{k: v for k, v in asdict(g).items() if k != "histogram"} for g in self.accuracy.groups],
            },
            "figA2": {
                "histogram_edges": self.accuracy.histogram_edges,
                "per_epsilon": [{"epsilon": g.epsilon, "histogram": g.histogram} for g in self.accuracy.groups],
            },
            "figA3": {"q_init": self.q.q_init, "note": self.q.note, "curves": [asdict(c) for c in self.q.by_type]},
            "figA4": {"q_init": self.q.q_init, "note": self.q.note, "curves": [asdict(c) for c in self.q.by_kernel]},
            "q_entries": self.q.entries,
            "q_entries_skipped": self.q.skipped,
            "leaderboard": self.leaderboard,
            "failures": self.failures,
            "failure_reasons": self.failure_reasons,
            "infra_failures": {"by_kind": self.infra_by_kind, "failures": self.infra_failures},
            "stopped": self.stopped,
            "timing": {"summary": self.timing, "trials": [asdict(t) for t in self.times]},
        }


# -- numbers ------------------------------------------------------------------------------------


def rolling_window(n: int) -> int:
    """The paper's 100-model window, or a fifth of a shorter run (at least 1)."""
    return min(PAPER_WINDOW, max(1, n // 5))


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Trailing means over full windows: element j is the mean of values[j : j + window]."""
    if window < 1 or len(values) < window:
        return []
    # Summing each window afresh (n * 100 additions at most) keeps float error from accumulating.
    return [sum(values[j : j + window]) / window for j in range(len(values) - window + 1)]


def _histogram_edges(values: list[float], bins: int) -> list[float]:
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.005, high + 0.005
    step = (high - low) / bins
    return [low + i * step for i in range(bins)] + [high]


def _histogram(values: list[float], edges: list[float]) -> list[int]:
    """Counts per bin; bins are [e_i, e_i+1) except the last, which includes its right edge (as numpy)."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        counts[min(max(bisect.bisect_right(edges, value) - 1, 0), len(counts) - 1)] += 1
    return counts


def accuracy_curve(trials: list[TrialRow], replay: list[tuple[str, float]]) -> AccuracyCurve:
    """Fig 3 / A2 numbers from the finished trials (ordered by id) and the replay memory."""
    # Stopped trials (--early-stop) were rewarded too: they are models of the search like the others.
    finished = [t for t in trials if t.status in ("done", "failed", "stopped") and t.accuracy is not None]
    accuracies = [float(t.accuracy) for t in finished]  # type: ignore[arg-type]
    window = rolling_window(len(accuracies))
    means = rolling_mean(accuracies, window)
    edges = _histogram_edges(accuracies, HISTOGRAM_BINS) if accuracies else []
    positions: dict[float | None, list[int]] = {}
    for i, trial in enumerate(finished):
        positions.setdefault(trial.epsilon, []).append(i)
    groups = []
    for eps, idx in positions.items():  # dicts keep first-appearance order: the schedule's order
        values = [accuracies[i] for i in idx]
        groups.append(
            EpsilonGroup(
                epsilon=eps,
                count=len(idx),
                mean_accuracy=sum(values) / len(values),
                first_iteration=idx[0] + 1,
                last_iteration=idx[-1] + 1,
                histogram=_histogram(values, edges),
            )
        )
    return AccuracyCurve(
        trial_ids=[t.id for t in finished],
        accuracies=accuracies,
        epsilons=[t.epsilon for t in finished],
        failed=[t.status == TrialStatus.FAILED for t in finished],
        window=window,
        rolling_iterations=list(range(window, len(accuracies) + 1)) if means else [],
        rolling_mean=means,
        groups=groups,
        histogram_edges=edges,
        replay_samples=len(replay),
        dictionary_hits=len(replay) - len({arch for arch, _ in replay}),
    )


def _layer_type(layer: Any) -> str:
    if isinstance(layer, Conv):
        return "convolution"
    if isinstance(layer, Pool):
        return "pooling"
    if isinstance(layer, FC):
        return "fully connected"
    if isinstance(layer, (GAP, Softmax)):
        return "termination"
    raise TypeError(f"not a layer: {layer!r}")


def _curves(sums: dict[Any, dict[int, list[float]]], order: list[Any], label: Any) -> list[QCurve]:
    curves = []
    for key in order:
        by_depth = sums.get(key)
        if not by_depth:
            continue
        depths = sorted(by_depth)
        curves.append(
            QCurve(
                label=label(key),
                depths=depths,
                means=[sum(by_depth[d]) / len(by_depth[d]) for d in depths],
                counts=[len(by_depth[d]) for d in depths],
            )
        )
    return curves


def q_analysis(q: dict[tuple[str, str], float], q_init: float, strategy: str, rewarded: int) -> QAnalysis:
    """Fig A3 / A4 numbers from a Q-table keyed by (``depth|layer|size|fc_run``, layer string);
    ``rewarded`` (replay memory rows) tells "nothing learnt yet" from "a strategy without Q"."""
    by_type: dict[str, dict[int, list[float]]] = {}
    by_kernel: dict[int, dict[int, list[float]]] = {}
    skipped = 0
    for (state, action), value in q.items():
        try:
            depth = int(state.split("|", 1)[0]) + 1  # the depth of the layer the action adds
            layer = parse_layer(action)
        except (ValueError, ConfigError):
            skipped += 1
            continue
        by_type.setdefault(_layer_type(layer), {}).setdefault(depth, []).append(value)
        if isinstance(layer, Conv):
            by_kernel.setdefault(layer.kernel, {}).setdefault(depth, []).append(value)
    note = None
    if not q and rewarded == 0:
        note = "no model has been rewarded yet, so there are no Q-values to plot for Figures A3 and A4."
    elif not q:
        note = f"strategy {strategy!r} keeps no Q-values, so there is nothing to plot for Figures A3 and A4."
    elif not by_type:
        note = f"the {len(q)} stored values are not keyed by MetaQNN states and layers; Figures A3 and A4 do not apply."
    return QAnalysis(
        entries=len(q),
        skipped=skipped,
        q_init=q_init,
        by_type=_curves(by_type, list(LAYER_TYPES), str),
        by_kernel=_curves(by_kernel, sorted(by_kernel), lambda k: f"{k}×{k}"),
        note=note,
    )


def trial_times(trials: list[TrialRow]) -> tuple[list[TrialTime], dict[str, Any]]:
    """Per finished trial: worker-reported training time and timestamp wall time; and a summary."""
    finished = [t for t in trials if t.status in ("done", "failed", "stopped")]
    starts = [t.started_at for t in finished if t.started_at is not None]
    t0 = min(starts) if starts else None
    times = []
    for t in finished:
        wall = (t.finished_at - t.started_at).total_seconds() if t.started_at and t.finished_at else None
        times.append(
            TrialTime(
                trial_id=t.id,
                status=t.status,
                train_seconds=t.train_seconds,
                wall_seconds=wall,
                started_offset=(t.started_at - t0).total_seconds() if t0 and t.started_at else None,
                finished_offset=(t.finished_at - t0).total_seconds() if t0 and t.finished_at else None,
            )
        )
    train = [x.train_seconds for x in times if x.train_seconds is not None]
    wall = [x.wall_seconds for x in times if x.wall_seconds is not None]
    ends = [x.finished_offset for x in times if x.finished_offset is not None]
    span = max(ends) if ends else None
    summary = {
        "trials": len(times),
        "train_seconds_total": sum(train) if train else None,
        "train_seconds_mean": statistics.fmean(train) if train else None,
        "train_seconds_median": statistics.median(train) if train else None,
        "wall_seconds_mean": statistics.fmean(wall) if wall else None,
        "wall_seconds_median": statistics.median(wall) if wall else None,
        "span_seconds": span,
        "trials_per_hour": len(times) / span * 3600 if span else None,
    }
    return times, summary


def build_report(store: Store, experiment_name: str, leaderboard_size: int = LEADERBOARD_SIZE) -> Report:
    """Compute the report of ``experiment_name`` (StoreError if there is no such experiment).

    Works at any point of a search: running trials are counted in the status but appear in no figure.
    """
    experiment = store.get_experiment(experiment_name)
    trials = store.trials(experiment.id)
    status = experiment_status(store, experiment_name)
    q_init = float(experiment.config.get("qlearning", {}).get("q_init", QLearningConfig.q_init))
    failed = [t for t in trials if t.status == TrialStatus.FAILED]
    reasons: dict[str, int] = {}
    for t in failed:
        reason = t.failure or "(no reason recorded)"
        reasons[reason] = reasons.get(reason, 0) + 1
    times, timing = trial_times(trials)
    replay = store.load_replay(experiment.id)
    return Report(
        experiment=experiment_name,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=dict(experiment.config),
        status=status,
        accuracy=accuracy_curve(trials, replay),
        q=q_analysis(store.load_q(experiment.id), q_init, str(status["strategy"]), len(replay)),
        leaderboard=top_trials(store, experiment_name, leaderboard_size),
        failures=[
            {
                "trial_id": t.id,
                "arch": t.arch,
                "epsilon": t.epsilon,
                "failure": t.failure,
                "reward": t.accuracy,
                "attempts": t.attempts,
            }
            for t in failed
        ],
        failure_reasons=[
            {"failure": r, "count": n} for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        times=times,
        timing=timing,
        infra_failures=[
            {
                "trial_id": f.trial_id,
                "arch": f.arch,
                "fault": f.fault,
                "reason": f.reason,
                "worker": f.worker,
                "at": f.created_at.isoformat(timespec="seconds"),
            }
            for f in store.infra_failures(experiment.id)
        ],
        infra_by_kind=store.infra_failure_counts(experiment.id),
        stopped=[
            {"trial_id": t.id, "epsilon": t.epsilon, "reward": t.accuracy, **stop_details(t), "arch": t.arch}
            for t in trials
            if t.status == TrialStatus.STOPPED
        ],
    )


# -- figures ------------------------------------------------------------------------------------


def _eps_label(eps: float | None) -> str:
    return "no ε" if eps is None else f"ε={eps:g}"


def figure_accuracy(report: Report) -> Any:
    """Fig 3: accuracies in launch order, their rolling mean (label 'rolling mean') and the mean
    per ε (a bar container labelled 'mean per ε'). None without finished trials."""
    from matplotlib.figure import Figure

    curve = report.accuracy
    if not curve.accuracies:
        return None
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(
        [(g.first_iteration + g.last_iteration) / 2 for g in curve.groups],
        [g.mean_accuracy for g in curve.groups],
        width=[g.last_iteration - g.first_iteration + 1 for g in curve.groups],
        color="#a6cee3",
        edgecolor="white",
        label="mean per ε",
    )
    for g in curve.groups:
        # Vertical labels at the foot of each bar stay readable however narrow a step is.
        ax.text(
            (g.first_iteration + g.last_iteration) / 2,
            0.01,
            _eps_label(g.epsilon),
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=7,
            color="#1f4e79",
            transform=ax.get_xaxis_transform(),
        )
    iterations = list(range(1, len(curve.accuracies) + 1))
    ok = [(i, a) for i, a, f in zip(iterations, curve.accuracies, curve.failed) if not f]
    bad = [(i, a) for i, a, f in zip(iterations, curve.accuracies, curve.failed) if f]
    if ok:
        ax.scatter(*zip(*ok), s=6, color="#999999", label="model accuracy")
    if bad:
        ax.scatter(*zip(*bad), s=24, marker="x", color="#d62728", label="failed (chance reward)")
    if curve.rolling_mean:
        ax.plot(
            curve.rolling_iterations,
            curve.rolling_mean,
            color="#1f77b4",
            lw=2,
            label=f"rolling mean ({curve.window} models)",
        )
    ax.set_xlabel("iteration (unique models trained, in launch order; replay-dictionary hits excluded)")
    ax.set_ylabel("validation accuracy")
    ax.set_xlim(0.5, len(iterations) + 0.5)
    ax.set_title(f"Q-learning performance (Fig 3): {len(iterations)} models, window {curve.window}")
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)  # outside: it would hide the ε labels
    return fig


def figure_distribution(report: Report) -> Any:
    """Fig A2: per ε, the fraction of its models in each accuracy bin (one axes per ε, in order)."""
    from matplotlib.figure import Figure

    curve = report.accuracy
    if not curve.groups:
        return None
    cols = min(5, len(curve.groups))
    rows = -(-len(curve.groups) // cols)
    fig = Figure(figsize=(2.6 * cols, 2.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    edges = curve.histogram_edges
    widths = [b - a for a, b in zip(edges, edges[1:])]
    for ax, g in zip(axes, curve.groups):
        ax.bar(edges[:-1], [c / g.count for c in g.histogram], width=widths, align="edge", color="#1f77b4")
        ax.set_title(f"{_eps_label(g.epsilon)} (n={g.count})", fontsize=9)
    for ax in axes[len(curve.groups) :]:
        ax.set_visible(False)
    fig.supxlabel("validation accuracy")
    fig.supylabel("fraction of models")
    fig.suptitle("Accuracy distribution per ε (Fig A2)")
    return fig


def _figure_q(curves: list[QCurve], q_init: float, title: str) -> Any:
    from matplotlib.figure import Figure

    if not curves:
        return None
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for c in curves:
        ax.plot(c.depths, c.means, marker="o", label=c.label)
    ax.axhline(q_init, color="#999999", ls="--", lw=1, label=f"Q₀ = {q_init:g}")
    ax.set_xlabel("layer depth of the action")
    ax.set_ylabel("mean Q-value (updated entries)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def figure_q_by_type(report: Report) -> Any:
    """Fig A3: one line per layer type (labelled by type) of mean Q against depth; None without Q."""
    return _figure_q(report.q.by_type, report.q.q_init, "Mean Q-value per layer type vs depth (Fig A3)")


def figure_q_by_kernel(report: Report) -> Any:
    """Fig A4: one line per conv receptive field size (labelled 'k×k'); None without conv Q-values."""
    return _figure_q(
        report.q.by_kernel, report.q.q_init, "Mean Q-value of convolutions per receptive field vs depth (Fig A4)"
    )


def figure_timing(report: Report) -> Any:
    """Time per trial: histograms of training and wall seconds, and a timeline of every trial."""
    from matplotlib.figure import Figure

    times = report.times
    if not times:
        return None
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    train = [t.train_seconds for t in times if t.train_seconds is not None]
    wall = [t.wall_seconds for t in times if t.wall_seconds is not None]
    if train or wall:
        left.hist(
            [train, wall], bins=20, label=["training (worker)", "wall (start to finish)"], color=["#1f77b4", "#ff7f0e"]
        )
        left.legend(fontsize=8)
    left.set_xlabel("seconds per trial")
    left.set_ylabel("trials")
    left.set_title("Time per trial")
    timed = [t for t in times if t.started_offset is not None and t.finished_offset is not None]
    # One LineCollection for all trials: thousands of separate lines would render slowly.
    right.hlines(
        list(range(len(timed))),
        [t.started_offset for t in timed],
        [t.finished_offset for t in timed],
        colors=["#d62728" if t.status == TrialStatus.FAILED else "#1f77b4" for t in timed],
        lw=2,
    )
    right.set_xlabel("seconds since the first trial started")
    right.set_ylabel("finished trial (launch order)")
    right.set_title("Timeline (red: failed)")
    return fig


def make_figures(report: Report) -> dict[str, Any]:
    """The report's matplotlib figures by key (fig3, figA2, figA3, figA4, timing); a figure with
    nothing to show is left out (the page says why instead)."""
    makers = {
        "fig3": figure_accuracy,
        "figA2": figure_distribution,
        "figA3": figure_q_by_type,
        "figA4": figure_q_by_kernel,
        "timing": figure_timing,
    }
    return {key: fig for key, make in makers.items() if (fig := make(report)) is not None}


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches the Agg canvas: no display, no pyplot
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- page ---------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str] | None, rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table; cells are formatted with ``_fmt`` and escaped. ``headers`` None: no header row."""
    head = (
        ""
        if headers is None
        else "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>"
    )
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def _config_rows(config: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for key, value in config.items():
        if key == "space_spec":
            continue
        if isinstance(value, dict):
            nested = [[f"{key}.{k}", json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in value.items()]
            rows += nested or [[key, "{}"]]
        else:
            rows.append([key, value])
    spec = config.get("space_spec") or {}
    if "max_depth" in spec:
        rows.append(["space max_depth", spec["max_depth"]])
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;\
max-width:1150px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} \
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4} td.num{text-align:right} code,.arch{font-family:ui-monospace,Menlo,monospace}
figure{margin:1em 0} figure img{max-width:100%} figcaption{font-size:.9em;color:#555}
.note{background:#fff8e1;border-left:4px solid #f0c36d;padding:.5em 1em} .muted{color:#777}
"""


def _figure_html(key: str, pngs: dict[str, str], caption: str, missing: str) -> str:
    if key not in pngs:
        return f'<p class="note" id="{key}-missing">{html.escape(missing)}</p>'
    return (
        f'<figure id="{key}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{pngs[key]}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render_html(report: Report, pngs: dict[str, str]) -> str:
    """The page: summary, Fig 3, A2, A3, A4, leaderboard, failures, time per trial, configuration."""
    curve, q, status = report.accuracy, report.q, report.status
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>nasagent report: {html.escape(report.experiment)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Experiment <code>{html.escape(report.experiment)}</code></h1>",
        f'<p class="muted">generated {html.escape(report.generated_at)} '
        "by nasagent from the experiment's database</p>",
        "<h2>Summary</h2>",
        _table(None, [[k, json.dumps(v) if isinstance(v, dict) else v] for k, v in status.items()]),
        "<h2>Q-learning performance (Figure 3)</h2>",
        f"<p>{len(curve.accuracies)} unique models trained, in launch order; {curve.replay_samples} rewarded samples "
        f"in the replay memory, of which {curve.dictionary_hits} replay-dictionary hits (not plotted: no model was "
        f"trained for them). Rolling mean over the last {curve.window} models (the paper's 100, or a fifth of a "
        f"shorter run). Failed trials count with the chance-level reward the agent received.</p>",
        _figure_html(
            "fig3", pngs, "Accuracy per model, rolling mean and mean accuracy per ε", "No trial has finished yet."
        ),
        _table(
            ["ε", "models", "mean accuracy", "first iteration", "last iteration"],
            [
                [_eps_label(g.epsilon), g.count, g.mean_accuracy, g.first_iteration, g.last_iteration]
                for g in curve.groups
            ],
        ),
        "<h2>Accuracy distribution per ε (Figure A2)</h2>",
        _figure_html(
            "figA2", pngs, "Fraction of each ε's models per accuracy bin (shared bins)", "No trial has finished yet."
        ),
        "<h2>Mean Q-value per layer type against depth (Figure A3)</h2>",
        f"<p>Mean over the {q.entries} stored Q(s, u) entries (those the agent updated; unvisited ones keep "
        f"Q₀ = {q.q_init:g}). The depth of an entry is the depth of the layer its action adds. "
        f"Termination = GAP or softmax."
        + (f" {q.skipped} stored entries are not MetaQNN (state, layer) keys and are left out." if q.skipped else "")
        + "</p>",
        _figure_html("figA3", pngs, "Mean Q-value per layer type vs layer depth", q.note or "No Q-values to plot."),
        "<h2>Mean Q-value of convolutions per receptive field size (Figure A4)</h2>",
        _figure_html(
            "figA4",
            pngs,
            "Mean Q-value of convolution actions per receptive field size vs layer depth",
            q.note or "No convolution Q-values to plot.",
        ),
        f"<h2>Leaderboard (top {len(report.leaderboard)})</h2>",
        *_leaderboard_html(report),
        f"<h2>Failures ({len(report.failures)})</h2>",
    ]
    if report.failures:
        parts += [
            _table(["reason", "trials"], [[r["failure"], r["count"]] for r in report.failure_reasons], "reasons"),
            _table(
                ["trial", "ε", "attempts", "reward", "reason", "architecture"],
                [
                    [f["trial_id"], _fmt(f["epsilon"], 2), f["attempts"], f["reward"], f["failure"], f["arch"]]
                    for f in report.failures
                ],
                "failures",
            ),
        ]
    else:
        parts.append("<p>No trial failed.</p>")
    parts += _infra_html(report)
    parts += _stopped_html(report)
    parts += [
        "<h2>Time per trial</h2>",
        _table(None, [[k, v] for k, v in report.timing.items()]),
        _figure_html(
            "timing", pngs, "Training and wall seconds per trial; timeline of trials", "No trial has finished yet."
        ),
        "<h2>Configuration</h2>",
        _table(["setting", "value"], _config_rows(report.config)),
    ]
    if report.config.get("space_spec"):
        spec = yaml.safe_dump(report.config["space_spec"], sort_keys=False)
        parts.append(f"<details><summary>search space</summary><pre>{html.escape(spec)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _leaderboard_html(report: Report) -> list[str]:
    """The leaderboard with parameters, MACs and batch-1 latency, and the reward when the objective is
    not the accuracy itself; preceded by the objective and limits in words when there are any. A
    trial stopped early (``--early-stop``) is ranked by its reward like the others, shows
    ``stopped@t`` in a status column and its accuracy as ``(predicted)`` or ``(partial)``, with a
    note above the table: it was never trained to the end (its details: "Stopped early" below)."""
    rewarded, stops = shows_reward(report.leaderboard), shows_stops(report.leaderboard)
    headers = leaderboard_columns(report.leaderboard)
    rows = [
        [
            r["rank"],
            accuracy_text(r),
            *([r.get("reward")] if rewarded else []),
            *([status_text(r)] if stops else []),
            r["params"],
            r.get("macs"),
            _fmt(r.get("latency_ms"), 3),
            _fmt(r["epsilon"], 2),
            r["trial_id"],
            _fmt(r["train_seconds"], 1),
            r["arch"],
        ]
        for r in report.leaderboard
    ]
    objective = objective_line(report.status)
    intro = [f'<p id="objective">{html.escape(objective[0].upper() + objective[1:])}.</p>'] if objective else []
    if stops:
        intro.append(f'<p class="note" id="stopped-in-leaderboard">{html.escape(STOPPED_NOTE)}</p>')
    return [*intro, _table([*headers, "trial", "train s", "architecture"], rows, "leaderboard")]


def _stopped_html(report: Report) -> list[str]:
    """The trials stopped early (``--early-stop``): the epoch each stopped after, the accuracy it had
    reached, its predicted final accuracy (predict) and its reward; nothing without early stopping."""
    rule = (report.status.get("early_stop") or {}).get("rule", "none")
    if rule == "none" and not report.stopped:
        return []
    parts = [
        f"<h2>Stopped early ({len(report.stopped)})</h2>",
        f"<p>Rule: {html.escape(str(rule))}. A stopped trial counts towards the budget; its reward is its predicted "
        "final accuracy (predict, as Baker et al. reward early-stopped networks) or the best accuracy it "
        "reached (median).</p>",
    ]
    if not report.stopped:
        return [*parts, "<p>No trial was stopped.</p>"]
    rows = [
        [
            s["trial_id"],
            s["stopped_epoch"],
            _fmt(s["observed_accuracy"], 4),
            _fmt(s["predicted_accuracy"], 4),
            _fmt(s["reward"], 4),
            s["stop_reason"],
            s["arch"],
        ]
        for s in report.stopped
    ]
    headers = ["trial", "stopped after epoch", "reached", "predicted", "reward", "why", "architecture"]
    return [*parts, _table(headers, rows, "stopped")]


def _infra_html(report: Report) -> list[str]:
    """The infrastructure failures, apart from the architectures' own: they were never rewarded."""
    parts = [
        f"<h2>Infrastructure failures ({len(report.infra_failures)})</h2>",
        "<p>Trials the machines did not run to their end (never scheduled, preempted, evicted, a node or "
        "worker lost, an image not pulled, API errors, an agent stopped). None of them was rewarded or "
        "entered the replay memory: each trial was trained again.</p>",
    ]
    if not report.infra_failures:
        return parts + ["<p>None.</p>"]
    kinds = sorted(report.infra_by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
    return parts + [
        _table(["kind", "count"], [[kind, n] for kind, n in kinds], "infra-kinds"),
        _table(
            ["when", "trial", "kind", "reason", "where", "architecture"],
            [[f["at"], f["trial_id"], f["fault"], f["reason"], f["worker"], f["arch"]] for f in report.infra_failures],
            "infra-failures",
        ),
    ]


def write_report(report: Report, out_dir: str | Path) -> Path:
    """Write ``index.html``, ``report.json`` and ``leaderboard.md`` into ``out_dir`` (created if
    needed); return the path of ``index.html``. An unwritable directory is a one-line ConfigError."""
    out = Path(out_dir)
    pngs = {key: _png(fig) for key, fig in make_figures(report).items()}
    page = render_html(report, pngs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report.to_json(), indent=2, default=str), encoding="utf-8")
        (out / "leaderboard.md").write_text(
            leaderboard_markdown(report.experiment, report.status, report.leaderboard), encoding="utf-8"
        )
        index = out / "index.html"
        index.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return index
