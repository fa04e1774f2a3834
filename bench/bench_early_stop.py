"""Early stopping side by side: the same searches with ``--early-stop none``, ``median`` and ``predict``.

Each (dataset, seed, rule) is one real ``nasagent search`` (a subprocess: local worker process,
real training on ``--device``, CPU by default, the embedded PostgreSQL under WORK), with the same
strategy, space, budget, epochs and seed; only the rule differs. The default strategy is
``random``: its proposals do not depend on rewards, so with one seed every rule trains the *same*
networks in the same order and the difference between runs is the rule alone (with ``qlearning``
the rewards of stopped networks steer the search elsewhere, and "was the full search's best
stopped?" has no answer).

Measured per run, from the store:
- training epochs spent: rows of ``trial_epochs`` (every epoch trained, restarts included);
- wall time of the search (``nasagent search`` from start to exit);
- best and top-5 accuracy: the run ranks its trials by reward (a stopped network's reward is its
  predicted final accuracy for ``predict``, the accuracy it reached for ``median``); the stopped
  networks among those five are then retrained here to the end (the trial worker's ``run_trial``
  with the trial's own seed: on CPU the same training the full search gives it) and the top 5 is
  reported with those full accuracies;
- how many of the full search's (``none``, same dataset and seed) top-5 networks the rule stopped.

Results go into ``docs/benchmarks.md`` between the ``early-stop`` markers. Finished runs are kept in
``WORK/runs.jsonl`` and the experiments in WORK's PostgreSQL: rerunning the same command skips them
and resumes an interrupted search (its wall time then covers only the resumed part; marked).

    .venv/bin/python bench/bench_early_stop.py --seeds 3 --datasets digits,shapes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import machine, write_section  # noqa: E402
from compare_searchers import database, dataset_spec  # noqa: E402

RULES = ("none", "median", "predict")
TOP = 5


@dataclass(frozen=True)
class Run:
    """One search of the benchmark."""

    dataset: str
    seed: int
    rule: str

    @property
    def experiment(self) -> str:
        return f"es-{self.dataset}-s{self.seed}-{self.rule}"


def search_command(run: Run, args: argparse.Namespace, db: str, spec: str) -> list[str]:
    """The ``nasagent search`` command line of ``run``: the same for every rule but the rule."""
    command = [
        sys.executable,
        "-m",
        "nasagent.cli",
        "search",
        "--experiment",
        run.experiment,
        "--db",
        db,
        "--dataset",
        spec,
        "--space",
        args.space,
        "--strategy",
        args.strategy,
        "--trials",
        str(args.budget),
        "--epochs",
        str(args.epochs),
        "--workers",
        "1",
        "--device",
        args.device,
        "--seed",
        str(run.seed),
        "--early-stop",
        run.rule,
    ]
    if run.rule == "predict":
        command += ["--early-stop-min-trials", str(args.predict_min_trials)]
    return command


def run_search(run: Run, args: argparse.Namespace, db: str, spec: str, work: Path) -> tuple[float, bool]:
    """Run (or resume) one search: (its wall time in seconds, whether an earlier attempt had started
    it, i.e. it was resumed). RuntimeError if it fails."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, NASAGENT_HOME=str(work / "home"), OMP_NUM_THREADS="1", PYTHONPATH=path)
    log = work / "logs" / f"{run.experiment}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    resumed = log.exists()
    started = time.perf_counter()
    with log.open("a") as out:
        code = subprocess.call(search_command(run, args, db, spec), stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise RuntimeError(f"{run.experiment} exited {code}: see {log}")
    return time.perf_counter() - started, resumed


def trials_of(db: str, experiment: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """(experiment config, its finished trials, training epochs spent) from the store."""
    import psycopg2

    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, config FROM experiments WHERE name = %s", (experiment,))
        experiment_id, config = cur.fetchone()
        cur.execute(
            "SELECT id, arch, digest, status, accuracy, info FROM trials "
            "WHERE experiment_id = %s AND status <> 'running' ORDER BY id",
            (experiment_id,),
        )
        names = ("id", "arch", "digest", "status", "accuracy", "info")
        trials = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        cur.execute("SELECT count(*) FROM trial_epochs WHERE experiment_id = %s", (experiment_id,))
        epochs = int(cur.fetchone()[0])
    return config, trials, epochs


def retrain_to_the_end(config: dict[str, Any], trials: list[dict[str, Any]], device: str) -> dict[str, float]:
    """Full-schedule validation accuracy of each stopped trial in ``trials``, by digest: trained by
    the trial worker's own code with the trial's own seed, as the full search trains it (on a CPU
    exactly; a GPU's bf16 kernels may differ in the last bits)."""
    from nasagent.config import SearchConfig
    from nasagent.core.trial import TrialSpec, trial_seed
    from nasagent.execution.worker import run_trial

    search = SearchConfig.from_dict(config)
    settings = search.trial_settings(device)
    data = settings.load_data()
    full: dict[str, float] = {}
    for trial in trials:
        spec = TrialSpec(trial["id"], trial["arch"], trial_seed(int(search.seed or 0), trial["digest"]))
        full[trial["digest"]] = float(run_trial(spec, data, settings).accuracy)
    return full


def measure(run: Run, db: str, wall: tuple[float, bool], full_top: list[str] | None, device: str) -> dict[str, Any]:
    """One run's numbers (see the module docstring); ``full_top``: the ``none`` run's top-5 digests."""
    config, trials, epochs = trials_of(db, run.experiment)
    seconds, resumed = wall
    ranked = sorted(trials, key=lambda t: -(t["accuracy"] or 0.0))
    top = ranked[:TOP]
    stopped_top = [t for t in top if t["status"] == "stopped"]
    full = retrain_to_the_end(config, stopped_top, device)
    top_accuracies = sorted(
        (full.get(t["digest"], float(t["accuracy"] or 0.0)) for t in top),
        reverse=True,
    )
    stopped = {t["digest"] for t in trials if t["status"] == "stopped"}
    return {
        "key": run.experiment,
        "dataset": run.dataset,
        "seed": run.seed,
        "rule": run.rule,
        "trials": len(trials),
        "stopped": len(stopped),
        "epochs": epochs,
        "wall_s": round(seconds, 1),
        "resumed": resumed,
        "best": top_accuracies[0] if top_accuracies else None,
        "top5": statistics.fmean(top_accuracies) if top_accuracies else None,
        "stopped_in_top5_retrained": len(stopped_top),
        "full_top5": full_top or [t["digest"] for t in top],
        "full_top5_stopped": None if full_top is None else sum(d in stopped for d in full_top),
    }


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """Finished runs by key (the last line of a key wins)."""
    if not path.exists():
        return {}
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def mean_std(values: list[float], digits: int = 3) -> str:
    """``mean ± std`` (std over seeds; just the mean for one value)."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def machines(results: dict[str, dict[str, Any]]) -> str:
    """The machine(s) the runs were measured on (recorded with each run; older runs: this one)."""
    return "; ".join(sorted({r.get("machine") or machine() for r in results.values()}))


def load_text(results: dict[str, dict[str, Any]]) -> str:
    """The machine's load when the runs started: wall times depend on it, epochs trained do not."""
    loads = [r["load"] for r in results.values() if r.get("load") is not None]
    text = f"1-minute load average {min(loads):.1f}-{max(loads):.1f} when the runs started" if loads else ""
    unknown = sum(r.get("load") is None for r in results.values())
    if unknown:
        text += ("; " if text else "") + f"load not recorded for {unknown} runs (the first ones; the machine was busy)"
    return text + " (wall times depend on the load; epochs trained do not)"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown section of ``docs/benchmarks.md``."""
    lines = [
        "## Early stopping side by side (`bench/bench_early_stop.py`)",
        "",
        f"Machine: {machines(results)}; {load_text(results)}. The same `nasagent search` runs "
        f"(strategy `{args.strategy}`, space "
        f"`{args.space}`, {args.budget} networks, {args.epochs} epochs each with the min-steps rule, 1 worker, "
        f"device {args.device}) with `--early-stop none`, `median` (defaults) and `predict` (`--early-stop-min-trials "
        f"{args.predict_min_trials}`: the paper waits for 100 finished networks, a budget of {args.budget} "
        "cannot), seeds "
        + ", ".join(str(s) for s in range(args.seeds))
        + ". `random`'s proposals do not depend on rewards, so with one seed every rule trains the same networks. "
        "Epochs: every epoch trained (the `trial_epochs` rows). Top 5: the run's five best by its own ranking, "
        "the stopped ones among them retrained to the end. mean ± std over seeds. Runs marked * were resumed "
        "(their wall time covers the resumed part only).",
        "",
        "| dataset | rule | runs | epochs trained | vs none | wall time (s) | best | top-5 | stopped | "
        "none's top 5 stopped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in args.datasets.split(","):
        none_epochs = {
            r["seed"]: r["epochs"] for r in results.values() if r["dataset"] == dataset and r["rule"] == "none"
        }
        for rule in RULES:
            runs = sorted(
                (r for r in results.values() if r["dataset"] == dataset and r["rule"] == rule),
                key=lambda r: r["seed"],
            )
            if not runs:
                continue
            ratios = [r["epochs"] / none_epochs[r["seed"]] for r in runs if none_epochs.get(r["seed"])]
            lost = [r["full_top5_stopped"] for r in runs if r["full_top5_stopped"] is not None]
            mark = "*" if any(r["resumed"] for r in runs) else ""
            lines.append(
                f"| {dataset} | `{rule}` | {len(runs)}{mark} | {mean_std([r['epochs'] for r in runs], 0)} | "
                f"{mean_std(ratios, 2)} | {mean_std([r['wall_s'] for r in runs], 0)} | "
                f"{mean_std([r['best'] for r in runs])} | {mean_std([r['top5'] for r in runs])} | "
                f"{mean_std([r['stopped'] for r in runs], 1)} | "
                f"{'–' if rule == 'none' else f'{sum(lost)} of {TOP * len(lost)}'} |"
            )
    return "\n".join(lines) + "\n"


def run_dataset(
    dataset: str,
    seeds: range,
    rules: list[str],
    args: argparse.Namespace,
    db: str,
    work: Path,
    results: dict[str, dict[str, Any]],
    results_path: Path,
) -> None:
    """Run the dataset's searches not done yet, ``args.parallel`` at a time in seed order, and record
    each seed's runs as soon as all its rules are done (the other rules are measured against the
    top 5 of ``none``, the full search)."""
    spec = dataset_spec(dataset, work)
    todo = {
        seed: [r for r in (Run(dataset, seed, rule) for rule in rules) if r.experiment not in results] for seed in seeds
    }
    load = os.getloadavg()[0]
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        futures = {
            run.experiment: pool.submit(run_search, run, args, db, spec, work) for runs in todo.values() for run in runs
        }
        for seed, runs in todo.items():
            if not runs:
                continue
            walls = {run.experiment: futures[run.experiment].result() for run in runs}
            none = Run(dataset, seed, "none")
            if none.experiment in walls:
                results[none.experiment] = measure(none, db, walls[none.experiment], None, args.device)
            full_top = results.get(none.experiment, {}).get("full_top5")
            for run in runs:
                if run.rule != "none":
                    results[run.experiment] = measure(run, db, walls[run.experiment], full_top, args.device)
            with results_path.open("a") as out:
                for run in runs:
                    results[run.experiment]["load"] = load
                    results[run.experiment]["machine"] = machine()
                    out.write(json.dumps(results[run.experiment]) + "\n")
            print(f"{dataset} seed {seed}: done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,shapes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--space", default="metaqnn-small")
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--predict-min-trials", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=2, help="searches at a time (each one worker)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where every network trains")
    parser.add_argument("--work", default=str(ROOT / ".bench-work" / "early-stop"))
    parser.add_argument("--db", help="postgresql:// URL instead of the embedded server under WORK")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave docs/benchmarks.md")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "runs.jsonl"
    results = load_results(results_path)
    rules = args.rules.split(",")
    if not args.report_only:
        db, started = database(work, args.db)
        try:
            for dataset in args.datasets.split(","):
                run_dataset(dataset, range(args.seeds), rules, args, db, work, results, results_path)
        finally:
            if started:  # the embedded server this run started (it would outlive the benchmark)
                from nasagent.persistence import stop_embedded

                stop_embedded(work / "pg")
    section = report(results, args)
    print(section)
    if not args.no_write:
        write_section("early-stop" if args.device == "cpu" else f"early-stop-{args.device}", section)


if __name__ == "__main__":
    main()
