"""Regenerate every number, table and plot of ``docs/searchers.md`` from the committed raw records.

Reads only ``bench/results/searchers/*.jsonl.gz`` (written by ``bench/searchers_grid.py``): no
database, no training. Writes the block between the ``searchers_report`` markers of
``docs/searchers.md`` (the hand-written text around it is kept) and the plots
``docs/searchers_best_so_far.png`` and ``docs/searchers_epsilon.png``::

    .venv/bin/python bench/searchers_report.py

Partial data are reported as what they are: a pair of runs is compared on the networks both have
finished (their common prefix in launch order), and every table says how many that is.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

sys.path.insert(0, str(ROOT))

from searchers_stats import bootstrap_ci, paired_summary  # noqa: E402

from nasagent.strategies.schedule import EpsilonSchedule  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "searchers"
DOC = ROOT / "docs" / "searchers.md"
MARK = "searchers_report"
FAMILY = {
    "qlearning": "MetaQNN chain",
    "random": "MetaQNN chain",
    "reinforce": "REINFORCE chain",
    "reinforce-no-learning": "REINFORCE chain",
    "dqn": "NSC",
    "meta-a2c": "NSC",
    "random-nsc": "NSC",
}
"""Which space each label searches (a learner and its baseline share one)."""


def read_gz(path: Path) -> list[dict[str, Any]]:
    """Records of a gzipped JSON-lines file (empty if it does not exist)."""
    if not path.exists():
        return []
    with gzip.open(path, "rt") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@dataclass
class Data:
    """Everything the raw files hold."""

    grid: dict[str, Any]
    runs: dict[str, dict[str, Any]]
    trials: dict[str, list[dict[str, Any]]]
    retrain: list[dict[str, Any]]
    noise: list[dict[str, Any]]
    seeds: list[int] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)


def load(results: Path) -> Data:
    """The raw records under ``results``, trials of each run in launch order."""
    grid = (read_gz(results / "grid.jsonl.gz") or [{}])[0]
    runs = {r["run"]: r for r in read_gz(results / "runs.jsonl.gz")}
    trials = {key: sorted(read_gz(results / run["file"]), key=lambda t: t["trial"]) for key, run in runs.items()}
    planned = grid.get("planned_runs", list(runs))
    return Data(
        grid=grid,
        runs=runs,
        trials=trials,
        retrain=read_gz(results / "retrain.jsonl.gz"),
        noise=read_gz(results / "noise.jsonl.gz"),
        seeds=sorted({int(k.split("|")[2]) for k in planned}),
        datasets=list(dict.fromkeys(k.split("|")[0] for k in planned)),
    )


def accuracies(trials: list[dict[str, Any]]) -> np.ndarray:
    """The rewards in launch order (a failed network's reward is the paper's 1/K, as the search saw it)."""
    return np.array([t["accuracy"] for t in trials], dtype=float)


def fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def signed(value: float, digits: int = 4) -> str:
    return "—" if not np.isfinite(value) else f"{value:+.{digits}f}"


def pvalue(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# -- progress and cost ---------------------------------------------------------------------------------
def progress_section(data: Data, parallel: int = 2) -> list[str]:
    grid = data.grid
    budget = int(grid.get("budget", 200))
    planned = grid.get("planned_runs", sorted(data.runs))
    complete = [k for k in planned if data.runs.get(k, {}).get("complete")]
    partial = [k for k in planned if k in data.runs and not data.runs[k].get("complete")]
    trained = sum(len(data.trials.get(k, [])) for k in planned)
    search_s = sum(t["train_seconds"] or 0.0 for k in planned for t in data.trials.get(k, []))
    retrain_s = sum(r["seconds"] for r in data.retrain + data.noise)
    top, n_retrain, n_noise = grid.get("top", 5), len(grid.get("retrain_seeds", [])), len(grid.get("noise_seeds", []))
    baselines = {k for k in planned if k.split("|")[1] in ("random", "reinforce-no-learning", "random-nsc")}
    noise_planned = n_noise * len({(k.split("|")[0], k.split("|")[1]) for k in baselines})
    lines = [
        "### Progress",
        "",
        f"- Search runs: **{len(complete)} of {len(planned)} complete** ({budget} networks each), "
        f"{len(partial)} partial ({', '.join(f'`{k}` {len(data.trials[k])}' for k in partial) or 'none'}), "
        f"{len(planned) - len(complete) - len(partial)} not started.",
        f"- Networks trained by the searches: **{trained} of {budget * len(planned)}** planned "
        f"({100 * trained / max(budget * len(planned), 1):.1f}%), {search_s / 3600:.1f} h of training time.",
        f"- Retrainings on the test split: {len(data.retrain)} of {top * n_retrain * len(planned)} "
        f"(top {top} × {n_retrain} seeds per run); noise floor: {len(data.noise)} of {noise_planned}; "
        f"{retrain_s / 3600:.1f} h of training time.",
    ]
    costs = cost_table(data)
    lines += [
        "",
        "Measured training time per network of the searches (seconds, 1 torch thread, "
        f"{parallel} trainings at a time on the shared 2-core machine):",
        "",
        "| dataset | space | networks | mean | median | 90th pct | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for (dataset, family), secs in sorted(costs.items()):
        lines.append(
            f"| {dataset} | {family} | {len(secs)} | {np.mean(secs):.1f} | {np.median(secs):.1f} "
            f"| {np.quantile(secs, 0.9):.1f} | {np.max(secs):.1f} |"
        )
    lines += ["", *eta_section(data, costs, parallel)]
    return lines


def cost_table(data: Data) -> dict[tuple[str, str], list[float]]:
    costs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for key, trials in data.trials.items():
        dataset, label, _ = key.split("|")
        costs[(dataset, FAMILY.get(label, label))] += [t["train_seconds"] for t in trials if t["train_seconds"]]
    return {k: v for k, v in costs.items() if v}


def unit_cost(
    costs: dict[tuple[str, str], list[float]], areas: dict[str, float], dataset: str, family: str
) -> tuple[float, str] | None:
    """Seconds per network of ``family`` on ``dataset`` and where the number comes from: measured, or
    extrapolated from the same space (else the MetaQNN chain) on ``digits`` × the ratio of image areas;
    None while nothing is measured."""
    if (dataset, family) in costs:
        return float(np.mean(costs[(dataset, family)])), "measured"
    for source in (family, "MetaQNN chain"):
        if ("digits", source) in costs:
            scale = areas.get(dataset, 1.0) / areas.get("digits", 1.0)
            return float(np.mean(costs[("digits", source)])) * scale, f"extrapolated: digits/{source} × {scale:g}"
    return None


def eta_section(data: Data, costs: dict[tuple[str, str], list[float]], parallel: int) -> list[str]:
    """What is left, per dataset and space, in networks and in hours at ``parallel`` trainings at a time."""
    grid = data.grid
    budget = int(grid.get("budget", 200))
    per_run_retrain = grid.get("top", 5) * len(grid.get("retrain_seeds", []))
    n_noise = len(grid.get("noise_seeds", []))
    areas = {d: float(np.prod(v["input_shape"][1:])) for d, v in grid.get("datasets", {}).items()}
    left: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for key in grid.get("planned_runs", []):
        dataset, label, seed = key.split("|")
        family = FAMILY[label]
        left[(dataset, family)][0] += budget - len(data.trials.get(key, []))
        retrain = per_run_retrain - sum(r["run"] == key for r in data.retrain)
        if label in ("random", "reinforce-no-learning", "random-nsc") and seed == "0":
            retrain += n_noise - sum(r["run"] == key for r in data.noise)
        left[(dataset, family)][1] += retrain
    lines = [
        "What is left, and how long it takes at the cost per network measured so far:",
        "",
        "| dataset | space | search networks left | retrainings left | s per network | basis | hours |",
        "|---|---|---|---|---|---|---|",
    ]
    total, unknown = 0.0, False
    for (dataset, family), (networks, retrain) in sorted(left.items()):
        cost = unit_cost(costs, areas, dataset, family)
        if cost is None:
            unknown = True
            lines.append(f"| {dataset} | {family} | {networks} | {retrain} | — | nothing measured yet | — |")
            continue
        hours = cost[0] * (networks + retrain) / 3600 / parallel
        total += hours
        lines.append(f"| {dataset} | {family} | {networks} | {retrain} | {cost[0]:.0f} | {cost[1]} | {hours:.0f} |")
    lines += [
        "",
        f"**Estimated wall time to finish the grid: {total:.0f} h**{' and more' if unknown else ''} at {parallel} "
        "trainings at a time (retrainings costed like the space's average network). A session runs under 3 hours "
        "and the next one resumes, so the calendar time is longer.",
    ]
    return lines


# -- comparisons ----------------------------------------------------------------------------------------
def retrained_test(data: Data, key: str) -> tuple[float, float]:
    """(mean test accuracy of the run's pick, the rank-1 network by search validation accuracy;
    mean test accuracy of its top 5), each over the retraining seeds; NaN until retrained. A
    retraining that failed to learn counts at chance, as the search would count it."""
    rows = [r for r in data.retrain if r["run"] == key]
    if not rows:
        return float("nan"), float("nan")

    def test(r: dict[str, Any]) -> float:
        return r["test_accuracy"] if r["test_accuracy"] is not None else r["val_accuracy"]

    pick = [test(r) for r in rows if r["rank"] == 1]
    want = data.grid.get("top", 5) * len(data.grid.get("retrain_seeds", []))
    top = [test(r) for r in rows] if len(rows) >= want else []
    return (float(np.mean(pick)) if pick else float("nan")), (float(np.mean(top)) if top else float("nan"))


METRICS = (
    ("best", "best validation accuracy (the search's reward) after the common number of networks"),
    ("mean", "mean validation accuracy of all networks in the common prefix (quality of the proposals)"),
    ("pick_test", "test accuracy of the search's pick (its best network by validation, retrained 3×)"),
    ("top5_test", "mean test accuracy of its top 5 (each retrained 3×)"),
)


def pair_rows(data: Data, learner: str, baseline: str, dataset: str) -> list[dict[str, Any]]:
    """Per seed with both runs started: the metrics of both at their common prefix."""
    rows = []
    for seed in data.seeds:
        a, b = f"{dataset}|{learner}|{seed}", f"{dataset}|{baseline}|{seed}"
        if not data.trials.get(a) or not data.trials.get(b):
            continue
        n = min(len(data.trials[a]), len(data.trials[b]))
        acc_a, acc_b = accuracies(data.trials[a])[:n], accuracies(data.trials[b])[:n]
        both_done = data.runs[a].get("complete") and data.runs[b].get("complete")
        pick_a, top_a = retrained_test(data, a) if both_done else (float("nan"),) * 2
        pick_b, top_b = retrained_test(data, b) if both_done else (float("nan"),) * 2
        rows.append(
            {
                "seed": seed,
                "n": n,
                "complete": bool(both_done),
                "best": (acc_a.max(), acc_b.max()),
                "mean": (acc_a.mean(), acc_b.mean()),
                "pick_test": (pick_a, pick_b),
                "top5_test": (top_a, top_b),
            }
        )
    return rows


def summarise(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    pairs = [r[metric] for r in rows if all(np.isfinite(v) for v in r[metric])]
    if not pairs:
        return None
    return paired_summary([p[0] for p in pairs], [p[1] for p in pairs])


def summary_cells(s: dict[str, Any] | None) -> str:
    if s is None:
        return "— | — | — | — | —"
    return (
        f"{s['n']} | {signed(s['mean_diff'])} | [{signed(s['ci_low'])}, {signed(s['ci_high'])}] "
        f"| {pvalue(s['p_wilcoxon'])} / {pvalue(s['p_sign_flip'])} | {s['wins']}/{s['ties']}/{s['losses']}"
    )


def comparison_section(data: Data) -> tuple[list[str], list[str]]:
    """The tables of every learner against its baseline, and the findings as sentences."""
    lines = ["### Learner against random search over its own space", ""]
    findings: list[str] = []
    lines += [
        "Per seed: learner / baseline, compared on the networks both runs have finished (n; 200 when both are "
        "complete). Test accuracies appear once both runs of a seed are complete and retrained. "
        "Summary rows: paired over seeds, learner − baseline: mean difference, bootstrap 95% interval, "
        "two-sided p-values (Wilcoxon signed-rank / sign-flip permutation, both exact), learner's wins/ties/losses. "
        "With 5 seeds neither test can go below p = 0.0625 (2/2⁵); the pooled rows pair both datasets' seeds.",
        "",
    ]
    pooled: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for learner, baseline in data.grid.get("pairs", []):
        for dataset in data.datasets:
            rows = pair_rows(data, learner, baseline, dataset)
            if not rows:
                continue
            pooled[(learner, baseline)] += rows
            lines += [
                f"#### {dataset}: `{learner}` against `{baseline}`",
                "",
                "| seed | n | best val | mean val | test of pick | mean test of top 5 |",
                "|---|---|---|---|---|---|",
            ]
            for r in rows:
                cells = " | ".join(f"{fmt(r[m][0])} / {fmt(r[m][1])}" for m, _ in METRICS)
                lines.append(f"| {r['seed']} | {r['n']}{'' if r['complete'] else ' (partial)'} | {cells} |")
            lines += [
                "",
                "| metric | pairs | mean diff | 95% CI | p (Wilcoxon / sign-flip) | W/T/L |",
                "|---|---|---|---|---|---|",
            ]
            for metric, label in METRICS:
                lines.append(f"| {label} | {summary_cells(summarise(rows, metric))} |")
            lines.append("")
            best = summarise(rows, "best")
            if best is not None:
                ns = sorted({r["n"] for r in rows})
                findings.append(
                    f"`{dataset}`, `{learner}` − `{baseline}`: best validation accuracy "
                    f"{signed(best['mean_diff'])} (95% CI [{signed(best['ci_low'])}, {signed(best['ci_high'])}], "
                    f"{best['wins']}/{best['ties']}/{best['losses']} wins/ties/losses over {best['n']} seed(s), "
                    f"at {'/'.join(map(str, ns))} networks)"
                )
                mean = summarise(rows, "mean")
                if mean is not None:
                    findings[-1] += (
                        f"; mean accuracy of its proposals {signed(mean['mean_diff'])} "
                        f"([{signed(mean['ci_low'])}, {signed(mean['ci_high'])}])"
                    )
                test = summarise(rows, "pick_test")
                if test is not None:
                    findings[-1] += (
                        f"; test accuracy of the pick {signed(test['mean_diff'])} "
                        f"([{signed(test['ci_low'])}, {signed(test['ci_high'])}], p = {pvalue(test['p_wilcoxon'])})"
                    )
                if learner == "qlearning":
                    random_part = min(
                        sum(t.get("epsilon") == 1.0 for t in data.trials[f"{dataset}|{learner}|{r['seed']}"][: r["n"]])
                        for r in rows
                    )
                    budget = int(data.grid.get("budget", 200))
                    first = EpsilonSchedule.parse("paper", budget).steps[0][1]
                    findings[-1] += (
                        f"; at least {random_part} of Q-learning's first {min(ns)} networks were drawn at ε = 1, "
                        f"i.e. uniformly at random (the paper's schedule draws the first {first} of {budget} so)"
                    )
                findings[-1] += "."
    if any(len({r["seed"] for r in rows}) < len(rows) for rows in pooled.values()):
        lines += ["#### Pooled over datasets (pairs = dataset × seed)", ""]
        lines += ["| learner − baseline | metric | pairs | mean diff | 95% CI | p (Wilcoxon / sign-flip) | W/T/L |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for (learner, baseline), rows in pooled.items():
            for metric, label in METRICS:
                s = summarise(rows, metric)
                if s is not None:
                    lines.append(f"| `{learner}` − `{baseline}` | {label.split(' (')[0]} | {summary_cells(s)} |")
        lines.append("")
    return lines, findings


# -- retraining: noise floor and selection bias -----------------------------------------------------------
def noise_section(data: Data) -> list[str]:
    lines = ["### The reward's noise floor and the search's optimism", ""]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in data.noise:
        groups[r["run"]].append(r)
    if groups:
        lines += [
            "One network (the best of each baseline's seed-0 run) retrained from scratch with "
            f"{len(data.grid.get('noise_seeds', []))} training seeds and the search's own trainer settings:",
            "",
            "| dataset | space | network | retrainings | its search reward | val mean ± sd (min–max) "
            "| test mean ± sd (min–max) |",
            "|---|---|---|---|---|---|---|",
        ]
        for _run, rows in sorted(groups.items()):
            val = [r["val_accuracy"] for r in rows]
            test = [r["test_accuracy"] for r in rows if r["test_accuracy"] is not None]
            lines.append(
                f"| {rows[0]['dataset']} | {FAMILY[rows[0]['label']]} | `{rows[0]['arch']}` | {len(rows)} "
                f"| {fmt(rows[0]['search_accuracy'])} | {spread(val)} | {spread(test)} |"
            )
        lines.append("")
    else:
        lines += ["No noise-floor retraining finished yet.", ""]
    bias: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in data.retrain:
        bias[(r["dataset"], r["label"])].append(r["search_accuracy"] - r["val_accuracy"])
    if bias:
        lines += [
            "Search reward minus the same network's validation accuracy when retrained from scratch (top 5 of "
            "each run × retraining seeds): how much the search's best numbers are inflated by picking the "
            "luckiest trainings (mean and bootstrap 95% interval).",
            "",
            "| dataset | strategy | retrainings | reward − retrained val |",
            "|---|---|---|---|",
        ]
        for (dataset, label), values in sorted(bias.items()):
            low, high = bootstrap_ci(values)
            lines.append(
                f"| {dataset} | {label} | {len(values)} | {signed(np.mean(values))} [{signed(low)}, {signed(high)}] |"
            )
        lines.append("")
    return lines


def spread(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return fmt(values[0])
    return f"{np.mean(values):.4f} ± {statistics.stdev(values):.4f} ({min(values):.4f}–{max(values):.4f})"


# -- ε trend of Q-learning (Fig 3) ---------------------------------------------------------------------------
def epsilon_steps(trials: list[dict[str, Any]]) -> list[tuple[float, int, int]]:
    """(ε, first index, end index) of each run of equal ε in launch order."""
    steps: list[tuple[float, int, int]] = []
    for i, t in enumerate(trials):
        eps = t.get("epsilon")
        if eps is None:
            continue
        if steps and steps[-1][0] == eps and steps[-1][2] == i:
            steps[-1] = (eps, steps[-1][1], i + 1)
        else:
            steps.append((eps, i, i + 1))
    return steps


def epsilon_section(data: Data) -> tuple[list[str], list[tuple[str, dict[int, list[tuple[float, float, float]]]]]]:
    """Mean accuracy per ε step of every Q-learning run, next to random's over the same trial indices."""
    lines = ["### Q-learning's ε trend (the paper's Fig 3)", ""]
    plots = []
    for dataset in data.datasets:
        per_seed: dict[int, list[tuple[float, float, float]]] = {}
        table: dict[float, dict[int, tuple[float, int, float]]] = defaultdict(dict)
        for seed in data.seeds:
            q = data.trials.get(f"{dataset}|qlearning|{seed}", [])
            r = accuracies(data.trials.get(f"{dataset}|random|{seed}", []))
            if not q:
                continue
            acc = accuracies(q)
            rows = []
            for eps, start, end in epsilon_steps(q):
                other = r[start:end]
                rmean = float(other.mean()) if len(other) else float("nan")
                table[eps][seed] = (float(acc[start:end].mean()), end - start, rmean)
                rows.append((eps, float(acc[start:end].mean()), rmean))
            per_seed[seed] = rows
        if not table:
            continue
        plots.append((dataset, per_seed))
        seeds = sorted(per_seed)
        lines += [
            f"#### {dataset}",
            "",
            "Mean validation accuracy of the networks Q-learning trained at each ε (networks in parentheses); "
            "`random` = the mean of `random`'s networks with the same trial indices in the same seed "
            "(a control for the order effect: random search has no ε).",
            "",
            "| ε | " + " | ".join(f"seed {s}" for s in seeds) + " | mean over seeds | `random`, same indices |",
            "|---|" + "---|" * (len(seeds) + 2),
        ]
        for eps in sorted(table, reverse=True):
            cells = [f"{table[eps][s][0]:.3f} ({table[eps][s][1]})" if s in table[eps] else "—" for s in seeds]
            means = [v[0] for v in table[eps].values()]
            rand = [v[2] for v in table[eps].values() if np.isfinite(v[2])]
            lines.append(
                f"| {eps:g} | "
                + " | ".join(cells)
                + f" | {np.mean(means):.3f} | {fmt(np.mean(rand) if rand else None, 3)} |"
            )
        lines.append("")
    if not plots:
        lines += ["No Q-learning run has started yet.", ""]
    return lines, plots


# -- plots ---------------------------------------------------------------------------------------------------
def plot_best_so_far(data: Data, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [p for p in data.grid.get("pairs", []) if any(f"{d}|{p[0]}|0" in data.trials for d in data.datasets)]
    pairs = pairs or data.grid.get("pairs", [])[:1]
    fig, axes = plt.subplots(
        len(pairs), len(data.datasets), figsize=(6 * len(data.datasets), 3.8 * len(pairs)), squeeze=False
    )
    for i, (learner, baseline) in enumerate(pairs):
        for j, dataset in enumerate(data.datasets):
            ax = axes[i][j]
            for label, colour in ((learner, "C0"), (baseline, "C1")):
                for seed in data.seeds:
                    trials = data.trials.get(f"{dataset}|{label}|{seed}")
                    if not trials:
                        continue
                    curve = np.maximum.accumulate(accuracies(trials))
                    ax.plot(
                        np.arange(1, len(curve) + 1),
                        curve,
                        color=colour,
                        alpha=0.7,
                        lw=1,
                        label=label if seed == min(data.seeds) else None,
                    )
            ax.set_title(f"{dataset}: {learner} vs {baseline} (one line per seed)", fontsize=9)
            ax.set_xlabel("unique networks trained")
            ax.set_ylabel("best validation accuracy so far")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_epsilon(
    data: Data, plots: list[tuple[str, dict[int, list[tuple[float, float, float]]]]], path: Path, window: int = 20
) -> None:
    """Fig 3 of the paper per dataset: top, every network's accuracy in launch order with the rolling mean
    over ``window`` networks (Q-learning and random, seeds pooled by trial index), the ε steps shaded;
    bottom, the mean accuracy per ε step of each seed, next to random's over the same trial indices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(plots), 1)
    fig, axes = plt.subplots(2, columns, figsize=(6 * columns, 7.6), squeeze=False)
    for j, (dataset, per_seed) in enumerate(plots):
        ax = axes[0][j]
        for label, colour in (("qlearning", "C0"), ("random", "C1")):
            runs = [data.trials.get(f"{dataset}|{label}|{seed}", []) for seed in sorted(per_seed)]
            curves = [accuracies(trials) for trials in runs if trials]
            if not curves:
                continue
            for curve in curves:
                ax.plot(np.arange(1, len(curve) + 1), curve, ".", color=colour, alpha=0.25, ms=3)
            length = max(len(c) for c in curves)
            mean = np.array([np.mean([c[i] for c in curves if i < len(c)]) for i in range(length)])
            rolling = np.convolve(mean, np.ones(window), "valid") / window if length >= window else mean
            ax.plot(np.arange(length - len(rolling) + 1, length + 1), rolling, color=colour, lw=2, label=label)
        first = data.trials.get(f"{dataset}|qlearning|{min(per_seed)}", [])
        for k, (eps, start, end) in enumerate(epsilon_steps(first)):
            ax.axvspan(start + 0.5, end + 0.5, color="grey", alpha=0.08 * (k % 2))
            ax.text(
                (start + end) / 2 + 0.5, 0.01, f"{eps:g}", transform=ax.get_xaxis_transform(), fontsize=6, ha="center"
            )
        ax.set_title(f"{dataset}: accuracy per network, rolling mean of {window} (ε steps shaded)", fontsize=9)
        ax.set_xlabel("network (launch order)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1][j]
        for k, (seed, rows) in enumerate(sorted(per_seed.items())):
            eps = [r[0] for r in rows]
            ax.plot(eps, [r[1] for r in rows], "o-", color=f"C{k}", label=f"qlearning seed {seed}")
            ax.plot(eps, [r[2] for r in rows], "x--", color=f"C{k}", alpha=0.5, label=f"random seed {seed}")
        ax.invert_xaxis()
        ax.set_title(f"{dataset}: mean accuracy per ε step")
        ax.set_xlabel("ε")
        ax.set_ylabel("mean validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the document ----------------------------------------------------------------------------------------------
def settings_section(data: Data) -> list[str]:
    grid = data.grid
    lines = [
        "### Settings (every run)",
        "",
        f"- Budget: {grid.get('budget')} unique networks per run; seeds {', '.join(map(str, data.seeds))}; "
        f"one network trained at a time per run, 1 torch thread; MetaQNN space `{grid.get('space')}`.",
        "- Trainer: each strategy's defaults, as `nasagent search` runs it: "
        + ", ".join(f"`{k}` {v} epochs" for k, v in grid.get("epochs", {}).items())
        + f"; batch {grid.get('batch_size')}, min-steps rule {grid.get('min_steps')} optimiser steps per epoch.",
        f"- Retraining: each run's top {grid.get('top')} (by the search's validation accuracy) retrained from scratch "
        f"with training seeds {', '.join(map(str, grid.get('retrain_seeds', [])))} and the search's trainer settings, "
        "scored on the held-out test split with the weights the search's rule scores (the best validation epoch; "
        "the final epoch for the NAS environment's NSC networks); "
        f"noise floor: training seeds {', '.join(map(str, grid.get('noise_seeds', []))) or 'none'}.",
        f"- Machine: {grid.get('machine')}.",
        "",
        "| dataset | image | classes | train | validation | test (held out, fixed) |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in grid.get("datasets", {}).items():
        c, h, w = d["input_shape"]
        lines.append(f"| {name} | {h}×{w}×{c} | {d['classes']} | {d['train']} | {d['val']} | {d['test']} |")
    return lines


def ceiling_findings(data: Data) -> list[str]:
    """How often a run's best validation accuracy is 1.0: then the best-accuracy metric cannot tell searchers apart."""
    lines = []
    for dataset in data.datasets:
        runs = [k for k in data.trials if k.startswith(f"{dataset}|") and data.trials[k]]
        if not runs:
            continue
        at_ceiling = [k for k in runs if accuracies(data.trials[k]).max() >= 1.0 - 1e-12]
        networks = sum(len(data.trials[k]) for k in runs)
        perfect = sum(int((accuracies(data.trials[k]) >= 1.0 - 1e-12).sum()) for k in runs)
        val = data.grid.get("datasets", {}).get(dataset, {}).get("val", "?")
        lines.append(
            f"- `{dataset}`: {len(at_ceiling)} of {len(runs)} started runs have a network at validation accuracy "
            f"1.0 (all {val} validation images right), {perfect} of their {networks} networks in all: "
            "where the best accuracy is at this ceiling it cannot separate searchers; the mean accuracy of the "
            "proposals and the test accuracy of the retrained picks still can."
        )
    return lines


def generate(results: Path, docs: Path, parallel: int = 2) -> str:
    """The markdown block (and the plots, written into ``docs``)."""
    data = load(results)
    comparison, findings = comparison_section(data)
    eps_lines, eps_plots = epsilon_section(data)
    plot_best_so_far(data, docs / "searchers_best_so_far.png")
    plot_epsilon(data, eps_plots, docs / "searchers_epsilon.png")
    lines = [
        "Generated by `bench/searchers_report.py` from `bench/results/searchers/*.jsonl.gz` alone; do not edit.",
        "",
        *progress_section(data, parallel),
        "",
        "### Findings so far (generated from the tables below)",
        "",
        *([f"- {f}" for f in findings] or ["- No pair of runs has started yet."]),
        *ceiling_findings(data),
        "",
        *settings_section(data),
        "",
        *comparison,
        "![best-so-far validation accuracy against networks trained](searchers_best_so_far.png)",
        "",
        *noise_section(data),
        *eps_lines,
        "![mean accuracy per ε step](searchers_epsilon.png)",
    ]
    return "\n".join(lines)


def write_block(doc: Path, body: str) -> None:
    """Replace the generated block of ``doc`` (appended if missing), keeping the hand-written text."""
    text = doc.read_text() if doc.exists() else "# Searchers side by side\n"
    start, end = f"<!-- {MARK} -->", f"<!-- /{MARK} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(RESULTS), help="folder of the raw .jsonl.gz records")
    parser.add_argument("--doc", default=str(DOC), help="markdown file whose generated block is rewritten")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time, for the time estimate")
    args = parser.parse_args(argv)
    doc = Path(args.doc)
    write_block(doc, generate(Path(args.results), doc.parent, args.parallel))
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
