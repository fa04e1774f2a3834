"""Every searcher side by side: the same trial budget, trainer settings, seeds and datasets.

Each (strategy, seed, dataset) is one experiment run through the real ``SearchLoop`` with a
``LocalRunner`` (real training on CPU) and an embedded PostgreSQL, exactly as ``nasagent search``
runs it. The results go into ``docs/searchers_quick.md`` (between the ``compare_searchers [SECTION]``
markers, so hand-written conclusions around them and other sections survive a rerun) with a plot
of best-so-far accuracy against trials (mean ± std over seeds),
``docs/searchers_quick_best_so_far[_SECTION].png``. This is the quick, ad-hoc comparison (any
budget, epochs, strategies); the full comparison with committed raw data, retraining on the test
split and paired statistics is ``bench/searchers_grid.py`` with ``docs/searchers.md``.

Reported per dataset and strategy (mean ± std over seeds):
- best validation accuracy after the budget, the mean of the top 5 trained networks, and the mean
  of all trained networks (how good the searcher's proposals are on average);
- trials to reach random search's final best: per seed, the first trial (in launch order) whose
  best-so-far is at least the final best of ``random`` with the same seed and dataset;
- wall time of ``SearchLoop.run`` per experiment, and agent overhead per trial: that wall time minus
  the time spent inside ``runner.wait`` (waiting for training), per unique trained network, i.e.
  ask + tell + database transactions + submit;
- rewarded samples per unique network (replay-dictionary hits make it > 1), failed trials, and
  what each strategy reports about itself (``strategy_summary``, e.g. REINFORCE's reward variance).

Datasets: ``digits`` (scikit-learn's 8×8 digits), ``shapes`` (a synthetic 16×16 set of six noisy
shapes generated here deterministically and saved as ``npz``) or any ``npz:PATH``.

Strategies: names from ``nasagent.strategies.registry.STRATEGIES`` (default: all registered), plus
``--variant LABEL='NAME KEY=VALUE ...'`` for a strategy with ``--option`` settings, e.g.
``--variant reinforce-no-baseline='reinforce baseline=false'``.

Run from the repo root, e.g.
    .venv/bin/python bench/compare_searchers.py --budget 25 --epochs 2 --seeds 3 --datasets digits,shapes
Finished runs are kept in ``WORK/runs.jsonl`` and the experiments in WORK's PostgreSQL: rerunning
the same command skips finished runs and resumes an interrupted one (its wall time then covers
only the resumed part and the table marks it). ``--report-only`` rewrites the docs from WORK.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from transfer_data import shape_mask  # noqa: E402

from nasagent.errors import NasagentError  # noqa: E402
from nasagent.strategies.registry import STRATEGIES  # noqa: E402

DOC = ROOT / "docs" / "searchers_quick.md"
HEADER = (
    "# Searchers side by side: quick, ad-hoc comparisons\n\n"
    "Written by `bench/compare_searchers.py` between the markers below; the text outside them is written by hand.\n"
)
# What each registered searcher searches over (they do not all share one space).
SPACES = {
    "qlearning": "MetaQNN chain (`--space`)",
    "random": "MetaQNN chain (`--space`)",
    "reinforce": "fixed-depth conv chain (its options)",
    "dqn": "NSC cells (NAS environment)",
    "meta-a2c": "NSC cells (NAS environment)",
    "random-nsc": "NSC cells (NAS environment)",
}


@dataclass(frozen=True)
class Run:
    """One experiment of the comparison."""

    label: str
    strategy: str
    options: dict[str, Any]
    dataset: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}|{self.label}|{self.seed}"

    @property
    def slug(self) -> str:
        """A file name for this run's log."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.key)


# -- data --------------------------------------------------------------------------------------
def make_shapes(path: Path, n: int = 3000, size: int = 16, seed: int = 0) -> None:
    """Six classes (filled square, hollow square, disc, ring, plus, X) of random position, size and
    brightness under Gaussian noise (σ 0.3), clipped to [0, 1]; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    y = np.arange(n) % 6
    rng.shuffle(y)
    x = np.zeros((n, size, size), np.float32)
    for i in range(n):
        r = rng.uniform(2.5, 5.5)
        cy, cx = rng.uniform(r, size - 1 - r, 2)
        dy, dx = yy - cy, xx - cx
        mask = shape_mask(int(y[i]), dy, dx, r)
        x[i] = np.clip(rng.uniform(0.5, 1.0) * mask + rng.normal(0, 0.3, (size, size)), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)


def dataset_spec(name: str, work: Path) -> str:
    """The ``--dataset`` value for a comparison dataset name."""
    if name == "shapes":
        path = work / "shapes16.npz"
        if not path.exists():
            make_shapes(path)
        return f"npz:{path}"
    return name


# -- one experiment (run in a child process) -----------------------------------------------------
def run_one(
    run: Run, spec: str, db: str, budget: int, epochs: int, workers: int, space: str, device: str = "cpu"
) -> dict[str, Any]:
    """Run (or resume) one experiment through the real agent on ``device`` and measure it."""
    from nasagent.execution.local import LocalRunner
    from nasagent.persistence.postgres import Store
    from nasagent.search.loop import SearchLoop
    from nasagent.search.run import open_experiment
    from nasagent.search.status import experiment_status

    name = f"cmp-{Path(run.dataset).name}-{run.label}-s{run.seed}-b{budget}-e{epochs}-{space}"
    given = {
        "dataset": spec,
        "space": space,
        "strategy": run.strategy,
        "trials": budget,
        "epochs": epochs,
        "seed": run.seed,
        "options": run.options,
    }
    with Store.connect(db) as store:
        experiment, config = open_experiment(store, name, given)
        resumed = bool(store.trials(experiment.id))
        settings = config.trial_settings(device=device)
        data = settings.load_data()
        strategy = config.make_strategy(data.input_shape, data.num_classes)
        with LocalRunner(settings, workers, data.num_classes) as runner:
            waited = [0.0]
            wait = runner.wait

            def timed_wait(timeout: float) -> list:
                started = time.perf_counter()
                try:
                    return wait(timeout)
                finally:
                    waited[0] += time.perf_counter() - started

            runner.wait = timed_wait  # type: ignore[method-assign]
            agent = SearchLoop(store, experiment, strategy, runner, config.budget, config.seed, poll_seconds=1.0)
            started = time.perf_counter()
            progress = agent.run()
            wall = time.perf_counter() - started
        trials = store.trials(experiment.id)
        status = experiment_status(store, name)
    return {
        "key": run.key,
        "label": run.label,
        "strategy": run.strategy,
        "options": run.options,
        "dataset": run.dataset,
        "seed": run.seed,
        "budget": budget,
        "epochs": epochs,
        "workers": workers,
        "space": space,
        "device": device,
        "resumed": resumed,
        "accuracies": [float(t.accuracy) for t in trials],
        "archs": [t.arch for t in trials],
        "failed": sum(t.status == "failed" for t in trials),
        "train_seconds": sum(t.train_seconds or 0.0 for t in trials),
        "rewarded": status["trials_done"],
        "unique": status["unique_trained"],
        "wall_s": wall,
        "overhead_s": wall - waited[0],
        "new_trials": progress.unique_finished,
        "summary": status["strategy_summary"],
    }


# -- orchestration -----------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> list[Run]:
    strategies = [s for s in args.strategies.split(",") if s] if args.strategies else list(STRATEGIES)
    labelled: list[tuple[str, str, dict[str, Any]]] = []
    for name in strategies:
        if name not in STRATEGIES:
            raise SystemExit(f"compare_searchers: unknown strategy {name!r} (registered: {', '.join(STRATEGIES)})")
        labelled.append((name, name, {}))
    for variant in args.variant:
        label, _, rest = variant.partition("=")
        parts = rest.split()
        if not label or not parts or parts[0] not in STRATEGIES:
            raise SystemExit(f"compare_searchers: --variant expects LABEL='NAME KEY=VALUE ...', got {variant!r}")
        options = {}
        for pair in parts[1:]:
            key, sep, value = pair.partition("=")
            if not sep:
                raise SystemExit(f"compare_searchers: --variant option {pair!r} is not KEY=VALUE")
            options[key] = yaml.safe_load(value)  # as `nasagent search --option` reads it
        labelled.append((label, parts[0], options))
    seeds = range(args.seeds)
    # Seed-major, strategies interleaved: machine load drifts over a long run, and this spreads it evenly.
    return [
        Run(label, name, options, dataset, seed)
        for dataset in args.datasets.split(",")
        for seed in seeds
        for label, name, options in labelled
    ]


def database(work: Path, url: str | None) -> tuple[str, bool]:
    """(URL, started here): ``--db`` or an embedded server under WORK (kept, so a rerun resumes)."""
    if url:
        return url, False
    from nasagent.persistence import embedded_url

    return embedded_url(work / "pg"), True


def child_command(run: Run, args: argparse.Namespace, db: str, spec: str) -> list[str]:
    job = {
        "run": run.__dict__,
        "spec": spec,
        "db": db,
        "budget": args.budget,
        "epochs": args.epochs,
        "workers": args.workers,
        "space": args.space,
    }
    return [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(job)]


def execute(runs: list[Run], args: argparse.Namespace, work: Path, db: str) -> None:
    """Run the experiments not yet in runs.jsonl, ``--parallel`` child processes at a time."""
    results_path = work / "runs.jsonl"
    done = {r["key"] for r in load_results(work, args)}
    todo = [r for r in runs if r.key not in done]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to go", flush=True)
    active: list[tuple[Run, subprocess.Popen, float]] = []
    while todo or active:
        while todo and len(active) < args.parallel:
            run = todo.pop(0)
            spec = dataset_spec(run.dataset, work)
            log = open(work / f"{run.slug}.log", "w")
            proc = subprocess.Popen(
                child_command(run, args, db, spec), stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT
            )
            active.append((run, proc, time.perf_counter()))
        time.sleep(0.5)
        for item in list(active):
            run, proc, started = item
            if proc.poll() is None:
                continue
            active.remove(item)
            lines = proc.stdout.read().strip().splitlines() if proc.stdout else []
            if proc.returncode != 0 or not lines:
                print(f"FAILED {run.key} (exit {proc.returncode}); see {work}/{run.slug}.log", flush=True)
                continue
            with results_path.open("a") as out:
                out.write(lines[-1] + "\n")
            result = json.loads(lines[-1])
            if "error" in result:
                print(f"{run.key}: cannot run: {result['error']}", flush=True)
            else:
                print(
                    f"{run.key}: best {max(result['accuracies']):.4f} in {time.perf_counter() - started:.0f} s",
                    flush=True,
                )


def load_results(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Results in WORK/runs.jsonl made with this invocation's settings (later lines win)."""
    path = work / "runs.jsonl"
    results = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    same = {"budget": args.budget, "epochs": args.epochs, "workers": args.workers, "space": args.space}
    return list({r["key"]: r for r in results if all(r.get(k) == v for k, v in same.items())}.values())


# -- the report ----------------------------------------------------------------------------------
def best_so_far(accuracies: list[float], budget: int) -> np.ndarray:
    curve = np.maximum.accumulate(np.array(accuracies[:budget], dtype=float))
    return np.pad(curve, (0, budget - len(curve)), mode="edge") if len(curve) else np.full(budget, np.nan)


def pm(values: list[float], fmt: str = "{:.4f}") -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def plot_path(section: str) -> Path:
    name = f"searchers_quick_best_so_far_{section}.png" if section else "searchers_quick_best_so_far.png"
    return ROOT / "docs" / name


def report(results: list[dict[str, Any]], runs: list[Run], args: argparse.Namespace) -> str:
    """The markdown between the markers, and the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from _report import machine

    by_key = {r["key"]: r for r in results}
    labels = list(dict.fromkeys(r.label for r in runs))
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    seeds = sorted({r.seed for r in runs})
    budget = args.budget
    variants = {r.label: (r.strategy, r.options) for r in runs}
    lines = [
        f"Machine: {machine()}. Run: `{args.command_line}`.",
        "",
        f"Settings: budget {budget} unique trained networks per experiment, {args.epochs} training epochs per network "
        "(the §5 trainer: Adam, batch 128, reward = best validation accuracy), "
        f"{args.workers} local worker(s) per experiment, "
        f"{args.parallel} experiment(s) at a time, seeds {', '.join(map(str, seeds))}, datasets {', '.join(datasets)}, "
        f"MetaQNN space `{args.space}` for the strategies that use one. "
        "Every strategy with its default settings unless its "
        "options are listed. Each cell: mean ± std over seeds.",
        "",
        "| strategy | options | searches |",
        "|---|---|---|",
    ]
    for label in labels:
        strategy, options = variants[label]
        shown = " ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        lines.append(f"| {label} | {shown} | {SPACES.get(strategy, 'its own space')} |")
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for d, dataset in enumerate(datasets):
        lines += ["", f"### {dataset}", ""]
        errors = [
            (label, by_key[f"{dataset}|{label}|{s}"]["error"])
            for label in labels
            for s in seeds
            if "error" in by_key.get(f"{dataset}|{label}|{s}", {})
        ]
        reference = {
            s: max(by_key[f"{dataset}|random|{s}"]["accuracies"])
            for s in seeds
            if "accuracies" in by_key.get(f"{dataset}|random|{s}", {})
        }
        lines += [
            "| strategy | best accuracy | mean of top 5 | mean of all trained "
            "| trials to reach random's final best (median; reached) "
            "| wall s per experiment | agent overhead ms/trial | rewarded per unique | failed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        ax = axes[0][d]
        for label in labels:
            got = [
                by_key[f"{dataset}|{label}|{s}"]
                for s in seeds
                if "accuracies" in by_key.get(f"{dataset}|{label}|{s}", {})
            ]
            if not got:
                continue
            best = [max(r["accuracies"]) for r in got]
            top5 = [statistics.fmean(sorted(r["accuracies"])[-5:]) for r in got]
            reach: list[int] = []
            for r in got:
                if r["seed"] in reference:
                    curve = best_so_far(r["accuracies"], budget)
                    hit = np.flatnonzero(curve >= reference[r["seed"]] - 1e-12)
                    if len(hit):
                        reach.append(int(hit[0]) + 1)
            compared = sum(r["seed"] in reference for r in got)
            reach_text = (
                "—"
                if not compared
                else f"{statistics.median(reach):g} ({len(reach)}/{compared})"
                if reach
                else f"never (0/{compared})"
            )
            resumed = " (resumed)" if any(r["resumed"] for r in got) else ""
            lines.append(
                f"| {label}{resumed} | {pm(best)} | {pm(top5)} "
                f"| {pm([statistics.fmean(r['accuracies']) for r in got])} | {reach_text} "
                f"| {pm([r['wall_s'] for r in got], '{:.0f}')} "
                f"| {pm([1000 * r['overhead_s'] / max(r['new_trials'], 1) for r in got], '{:.0f}')} "
                f"| {pm([r['rewarded'] / max(r['unique'], 1) for r in got], '{:.2f}')} "
                f"| {sum(r['failed'] for r in got)} |"
            )
            curves = np.array([best_so_far(r["accuracies"], budget) for r in got])
            x = np.arange(1, budget + 1)
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(x, mean, label=f"{label} (n={len(got)})")
            ax.fill_between(x, mean - std, mean + std, alpha=0.1)
        for label, error in errors:
            lines.append(f"\n{label} could not run on {dataset}: {error}")
        summaries = [
            (
                label,
                [
                    by_key[f"{dataset}|{label}|{s}"]["summary"]
                    for s in seeds
                    if by_key.get(f"{dataset}|{label}|{s}", {}).get("summary")
                ],
            )
            for label in labels
        ]
        keys = ("reward_mean", "reward_variance", "signal_variance", "signal_mean_square")
        rows = [(label, sums) for label, sums in summaries if sums and all(k in sums[0] for k in keys)]
        if rows:
            lines += [
                "",
                "Reward statistics the controller reports (`nasagent status` → `strategy_summary`; "
                "signal = what multiplies ∇log π):",
                "",
                "| strategy | baseline | reward mean | reward variance | signal variance | signal mean square |",
                "|---|---|---|---|---|---|",
            ]
            for label, sums in rows:
                lines.append(
                    f"| {label} | {sums[0]['baseline']} | "
                    + " | ".join(pm([s[k] for s in sums], "{:.5f}") for k in keys)
                    + " |"
                )
        ax.set_title(f"{dataset}: best-so-far validation accuracy")
        ax.set_xlabel("unique networks trained")
        ax.set_ylabel("best accuracy so far (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    plot = plot_path(args.section)
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    lines += ["", f"![best-so-far accuracy against trials]({plot.name})"]
    return "\n".join(lines)


def write_doc(body: str, section: str) -> None:
    """Replace the generated block ``section`` of docs/searchers_quick.md, keeping everything else."""
    text = DOC.read_text() if DOC.exists() else HEADER
    mark = f"compare_searchers {section}".strip()
    start, end = f"<!-- {mark} -->", f"<!-- /{mark} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", help="comma-separated registered names (default: all registered)")
    parser.add_argument("--variant", action="append", default=[], help="LABEL='NAME KEY=VALUE ...' (repeatable)")
    parser.add_argument("--budget", type=int, default=25, help="unique networks trained per experiment")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--datasets", default="digits,shapes", help="comma-separated: digits, shapes, npz:PATH")
    parser.add_argument("--space", default="metaqnn-small", help="MetaQNN space of qlearning and random")
    parser.add_argument("--workers", type=int, default=1, help="local workers per experiment")
    parser.add_argument("--parallel", type=int, default=1, help="experiments at a time")
    parser.add_argument(
        "--work", default="/tmp/nascmp", help="results, data and the embedded PostgreSQL (kept for resuming)"
    )
    parser.add_argument("--db", help="postgresql:// URL instead of the embedded server")
    parser.add_argument("--section", default="", help="name of this comparison's block in the docs (and of its plot)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the docs from WORK's results")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        run = Run(**job["run"])
        try:
            result = run_one(run, job["spec"], job["db"], job["budget"], job["epochs"], job["workers"], job["space"])
        except NasagentError as exc:  # e.g. a strategy that cannot search this dataset: reported, not fatal
            result = {
                "key": run.key,
                "label": run.label,
                "dataset": run.dataset,
                "seed": run.seed,
                "error": str(exc),
                "budget": job["budget"],
                "epochs": job["epochs"],
                "workers": job["workers"],
                "space": job["space"],
            }
        print(json.dumps(result))
        return 0
    if min(args.budget, args.epochs, args.seeds, args.workers, args.parallel) < 1:
        raise SystemExit("compare_searchers: --budget, --epochs, --seeds, --workers and --parallel must be at least 1")
    args.command_line = " ".join(["bench/compare_searchers.py", *(argv if argv is not None else sys.argv[1:])])
    work = Path(args.work).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = plan(args)
    db, embedded = database(work, args.db)
    try:
        if not args.report_only:
            execute(runs, args, work, db)
    finally:
        if embedded:
            from nasagent.persistence import stop_embedded

            stop_embedded(work / "pg")
    wanted = {r.key for r in runs}
    results = [r for r in load_results(work, args) if r["key"] in wanted]
    write_doc(report(results, runs, args), args.section)
    print(f"wrote {DOC.relative_to(ROOT)} and {plot_path(args.section).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
