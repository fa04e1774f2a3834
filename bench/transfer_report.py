"""docs/transfer.md's generated block and plots, computed from the raw records alone (``transfer_records``).

What it reports, after the paper (Figure 9 for meta-training, Figure 12, Figure 13 and the
Wilcoxon test of §7 for the fixed policy on unseen datasets), and what the paper's evaluation
lacks (the same budget for DQN and random search from scratch, several seeds):

* meta-training: per training dataset, the accuracy of the networks in order (mean per window of
  networks) and the best one;
* per unseen dataset and searcher, over seeds (mean and Student-t 95% interval): the best accuracy
  after N/4, N/2 and N evaluated networks, the mean accuracy of all evaluated networks, the mean depth,
  and how many networks were at chance or below; a plot of best-so-far accuracy against evaluated
  networks (mean ± 95% interval) and one of the accuracy of each evaluated network (window mean);
* paired differences per seed (fixed policy − each baseline) of the best and of the mean accuracy,
  and a Mann-Whitney test on the accuracies of all networks the two searchers evaluated;
* each run's best network retrained from scratch and tested on the held-out test split (Table 6);
* the fixed policy's action proportions per unseen dataset (over the actions that produced a trained
  network) and the paper's Wilcoxon signed-rank test of whether they differ between datasets.

The reward everywhere is the paper's: the final-epoch validation accuracy after 12 epochs (§4.1.2).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from transfer_records import Records

START, END = "<!-- transfer:generated -->", "<!-- /transfer:generated -->"
FIXED = "meta-a2c-fixed"
ACTIONS = ("conv1", "conv3", "conv5", "maxpool2", "maxpool3", "avgpool2", "avgpool3", "terminal")
WINDOW = 5


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the Student-t 95% interval); half-width nan with fewer than two values."""
    mean = float(np.mean(values)) if values else float("nan")
    if len(values) < 2:
        return mean, float("nan")
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def fmt(values: list[float], digits: int = 3) -> str:
    """``mean ± half-width`` of a 95% interval over seeds (``—`` for none)."""
    if not values:
        return "—"
    mean, half = interval(values)
    return f"{mean:.{digits}f}" if np.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def accuracies(networks: list[dict[str, Any]]) -> np.ndarray:
    """Rewards in evaluation order; a network without one (never finished) counts 0."""
    return np.array([r["accuracy"] if r["accuracy"] is not None else 0.0 for r in networks], dtype=float)


def best_so_far(networks: list[dict[str, Any]], budget: int) -> np.ndarray:
    """Best accuracy after each of ``budget`` networks (a run that stopped early keeps its last best)."""
    acc = accuracies(networks)[:budget]
    if not len(acc):
        return np.full(budget, np.nan)
    curve = np.maximum.accumulate(acc)
    return np.pad(curve, (0, budget - len(curve)), mode="edge")


def window_means(values: np.ndarray, width: int = WINDOW) -> np.ndarray:
    """Mean of each consecutive window of ``width`` values (the last one may be shorter)."""
    return np.array([values[i : i + width].mean() for i in range(0, len(values), width)])


def chance(dataset_classes: int) -> float:
    return 1.0 / dataset_classes


def classes_of(networks: list[dict[str, Any]]) -> int:
    """The class count, read from the architectures' prediction head ``HEAD(K)``."""
    arch = networks[0]["arch"]
    return int(arch[arch.rindex("HEAD(") + 5 : arch.rindex(")")])


def action_counts(networks: list[dict[str, Any]]) -> np.ndarray:
    counts = np.zeros(len(ACTIONS))
    for r in networks:
        if r.get("action") is not None and r["action"] < len(ACTIONS):
            counts[r["action"]] += 1
    return counts


def eval_groups(records: Records) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    """Finished evaluation runs grouped by (setting, dataset), then by searcher label."""
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in records.runs.values():
        if run["phase"] == "eval":
            groups[(run["setting"], run["dataset"])][run["label"]].append(run)
    for by_label in groups.values():
        for runs in by_label.values():
            runs.sort(key=lambda r: r["seed"])
    return groups


def meta_section(records: Records) -> list[str]:
    lines = []
    for run in sorted((r for r in records.runs.values() if r["phase"] == "meta"), key=lambda r: r["key"]):
        networks = records.networks.get(run["key"], [])
        lines += [
            f"### Meta-training `{run['tag']}`",
            "",
            f"{len(networks)} networks, {sum(r['train_seconds'] or 0 for r in networks) / 60:.0f} min of training "
            f"({run['meta']['networks']} unique networks per dataset, {run['epochs']} epochs each, "
            "one policy carried from one dataset to the next, learning throughout; the paper's Figure 9). "
            f"Accuracy of the networks in order, mean per window of {WINDOW}:",
            "",
            "| position | dataset | networks | environment steps | A2C updates | best | mean of all | window means |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for part in run["parts"]:
            rows = [r for r in networks if r["dataset"] == part["dataset"]]
            acc = accuracies(rows)
            windows = " ".join(f"{m:.2f}" for m in window_means(acc))
            updates = part["strategy_summary"].get("updates", "—")
            steps = part["strategy_summary"].get("env_steps", "—")
            best = f"{acc.max():.3f}" if len(acc) else "—"
            mean = f"{acc.mean():.3f}" if len(acc) else "—"
            position = rows[0]["position"] if rows else "?"
            lines.append(
                f"| {position} | {part['dataset']} | {len(rows)} | {steps} | {updates} | {best} | {mean} | {windows} |"
            )
        lines.append("")
    return lines


def eval_section(records: Records, doc: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = eval_groups(records)
    lines: list[str] = []
    settings = sorted({setting for setting, _ in groups})
    for setting in settings:
        datasets = sorted(d for s, d in groups if s == setting)
        fig, axes = plt.subplots(2, len(datasets), figsize=(6 * len(datasets), 8), squeeze=False)
        lines += [f"### Unseen datasets, setting `{setting}`", ""]
        for column, dataset in enumerate(datasets):
            by_label = groups[(setting, dataset)]
            budget = next(iter(by_label.values()))[0]["budget"]
            quarter, half = max(1, budget // 4), max(1, budget // 2)
            any_networks = next(records.networks[r["key"]] for runs in by_label.values() for r in runs)
            k = classes_of(any_networks)
            first = next(iter(by_label.values()))[0]
            policies = sorted({r["policy"] for r in by_label.get(FIXED, [])})
            lines += [
                f"**{dataset}** ({k} classes, chance {chance(k):.3f}): {budget} evaluated networks per run, "
                f"{first['epochs']} epochs each, {first['images']} images; fixed policy from "
                f"{', '.join(f'`{p}`' for p in policies) or '—'}. Mean ± 95% interval over seeds "
                "(rewards per network: rewarded steps per unique network, > 1 when the searcher proposes a "
                "network it already evaluated):",
                "",
                f"| searcher | seeds | best after {quarter} | best after {half} | best after {budget} "
                "| mean of all evaluated | mean depth (layers) | at chance or below | rewards per network "
                "| runs exhausted |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            curves_axis, window_axis = axes[0][column], axes[1][column]
            for label in sorted(by_label, key=lambda s: (s != FIXED, s)):
                runs = by_label[label]
                nets = [records.networks[r["key"]] for r in runs]
                curves = np.array([best_so_far(n, budget) for n in nets])
                means = [float(accuracies(n).mean()) for n in nets]
                depth = [float(np.mean([r["layers"] for r in n])) for n in nets]
                low = sum(int((accuracies(n) <= chance(k) + 1e-9).sum()) for n in nets)
                total = sum(len(n) for n in nets)
                exhausted = sum(bool(r.get("exhausted")) for r in runs)
                repeats = [r["rewarded"] / max(r["unique"], 1) for r in runs]
                lines.append(
                    f"| {label} | {len(runs)} | {fmt(list(curves[:, quarter - 1]))} | {fmt(list(curves[:, half - 1]))} "
                    f"| {fmt(list(curves[:, budget - 1]))} | {fmt(means)} | {fmt(depth, 1)} | {low}/{total} "
                    f"| {fmt(repeats, 1)} | {exhausted} |"
                )
                x = np.arange(1, budget + 1)
                mean = curves.mean(0)
                half_width = np.array([interval(list(curves[:, i]))[1] for i in range(budget)])
                curves_axis.plot(x, mean, label=f"{label} (n={len(runs)})")
                if len(runs) > 1:
                    curves_axis.fill_between(x, mean - half_width, mean + half_width, alpha=0.15)
                windows = np.array(
                    [window_means(np.pad(accuracies(n), (0, budget - len(n)), mode="edge")) for n in nets]
                )
                centres = np.arange(len(windows[0])) * WINDOW + WINDOW / 2
                window_axis.errorbar(centres, windows.mean(0), yerr=windows.std(0), capsize=3, label=label)
            lines += [""] + paired_lines(records, by_label) + [""] + finetune_lines(records, by_label)
            curves_axis.set_title(f"{dataset} (unseen): best-so-far accuracy")
            curves_axis.set_xlabel("networks evaluated")
            curves_axis.set_ylabel("best final-epoch validation accuracy (mean ± 95% CI)")
            curves_axis.grid(alpha=0.3)
            curves_axis.legend(fontsize=8, loc="lower right")
            window_axis.set_title(f"{dataset}: accuracy per window of {WINDOW} networks")
            window_axis.set_xlabel("networks evaluated")
            window_axis.set_ylabel("mean accuracy in the window (mean ± 1 std over seeds)")
            window_axis.grid(alpha=0.3)
            window_axis.legend(fontsize=8)
        fig.tight_layout()
        plot = doc.parent / f"transfer_{setting}.png"
        fig.savefig(plot, dpi=100)
        plt.close(fig)
        lines += [f"![best-so-far and per-window accuracy on the unseen datasets]({plot.name})", ""]
        lines += action_lines(records, {d: groups[(setting, d)].get(FIXED, []) for d in datasets})
    return lines


def paired_lines(records: Records, by_label: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Fixed policy − each baseline, paired by seed, and a rank test over all their networks."""
    fixed = {r["seed"]: records.networks[r["key"]] for r in by_label.get(FIXED, [])}
    if not fixed:
        return []
    lines = [
        "| fixed meta-A2C − … | seeds paired | Δ best (mean ± 95%; per seed) | Δ mean of all (mean ± 95%) "
        "| fixed better in | Mann-Whitney p, all networks (fixed vs baseline) |",
        "|---|---|---|---|---|---|",
    ]
    for label in sorted(by_label):
        if label == FIXED:
            continue
        other = {r["seed"]: records.networks[r["key"]] for r in by_label[label]}
        seeds = sorted(set(fixed) & set(other))
        if not seeds:
            continue
        d_best = [float(accuracies(fixed[s]).max() - accuracies(other[s]).max()) for s in seeds]
        d_mean = [float(accuracies(fixed[s]).mean() - accuracies(other[s]).mean()) for s in seeds]
        a = np.concatenate([accuracies(fixed[s]) for s in seeds])
        b = np.concatenate([accuracies(other[s]) for s in seeds])
        p = stats.mannwhitneyu(a, b, alternative="two-sided").pvalue
        per_seed = ", ".join(f"{d:+.3f}" for d in d_best)
        wins = sum(d > 0 for d in d_best)
        lines.append(
            f"| {label} | {len(seeds)} | {fmt(d_best)} ({per_seed}) | {fmt(d_mean)} "
            f"| {wins}/{len(seeds)} seeds (best) | {p:.3g} |"
        )
    return lines


def finetune_lines(records: Records, by_label: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Held-out test accuracy of each run's best network, retrained from scratch (the paper's Table 6)."""
    rows = {label: [(r["seed"], records.finetuned.get(r["key"], [])) for r in runs] for label, runs in by_label.items()}
    if not any(f for runs in rows.values() for _, f in runs):
        return []
    schedules = sorted({m["schedule"] for runs in rows.values() for _, f in runs for m in f})
    lines = [
        "Each run's best network by its search reward, retrained from scratch (schedule "
        f"{', '.join(f'`{s}`' for s in schedules)}, best validation epoch) and tested once on the held-out "
        "test split (the paper's Table 6 retrains its best two networks and compares them with a VGG19-like "
        "network; here the comparison is between searchers). Mean ± 95% interval over seeds:",
        "",
        "| searcher | runs retrained | search reward | validation accuracy after retraining | test accuracy |",
        "|---|---|---|---|---|",
    ]
    for label in sorted(rows, key=lambda s: (s != FIXED, s)):
        best = [f[0] for _, f in rows[label] if f and f[0]["test_accuracy"] is not None]
        if not best:
            continue
        lines.append(
            f"| {label} | {len(best)} | {fmt([m['search_accuracy'] for m in best])} "
            f"| {fmt([m['val_accuracy'] for m in best])} | {fmt([m['test_accuracy'] for m in best])} |"
        )
    return lines + [""]


def action_lines(records: Records, fixed_runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The fixed policy's action proportions per unseen dataset (Figure 13) and the paper's Wilcoxon test."""
    proportions = {}
    for dataset, runs in fixed_runs.items():
        counts = sum((action_counts(records.networks[r["key"]]) for r in runs), np.zeros(len(ACTIONS)))
        if counts.sum():
            proportions[dataset] = counts / counts.sum()
    if not proportions:
        return []
    lines = [
        "Fixed policy: proportion of each action among the actions that produced a trained network "
        "(the paper's Figure 13; terminals and steps that needed no new training are not in the records):",
        "",
        "| dataset | " + " | ".join(ACTIONS) + " |",
        "|---|" + "---|" * len(ACTIONS),
    ]
    for dataset, p in proportions.items():
        lines.append(f"| {dataset} | " + " | ".join(f"{v:.2f}" for v in p) + " |")
    if len(proportions) == 2:
        first, second = proportions.values()
        differ = first - second
        if np.any(np.abs(differ) > 1e-12):
            p = stats.wilcoxon(first, second).pvalue
            lines += [
                "",
                f"Wilcoxon signed-rank test of the two datasets' proportions (as the paper, which found p = 0.48): "
                f"p = {p:.2f}.",
            ]
    return lines + [""]


def render(records: Records, doc: Path) -> str:
    """The generated block's markdown (and its plots, written next to ``doc``)."""
    if not records.runs:
        return "No runs recorded yet."
    lines = ["## Results (generated from bench/results/transfer/ by `bench/transfer.py --report-only`)", ""]
    lines += meta_section(records)
    lines += eval_section(records, doc)
    seconds = [r["train_seconds"] for rows in records.networks.values() for r in rows if r.get("train_seconds")]
    if seconds:
        lines += [
            f"Training time per network over all {len(seconds)} records: median {statistics.median(seconds):.1f} s, "
            f"mean {statistics.fmean(seconds):.1f} s (one worker, one PyTorch thread, `nice -n 19`, "
            "sharing 2 cores with other work).",
        ]
    return "\n".join(lines)


def write(records: Records, doc: Path) -> None:
    """Replace the generated block of ``doc`` (created if missing), keeping the hand-written text."""
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    body = render(records, doc)
    text = doc.read_text() if doc.exists() else "# Transfer experiment\n"
    block = f"{START}\n{body.strip()}\n{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
