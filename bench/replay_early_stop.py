"""What early stopping would have saved on learning curves already recorded: a replay through the real judge.

Baker et al. (2018) measure their speed-ups by simulating the stopping rule over the learning curves
of networks MetaQNN had trained to the end. This does the same with nasagent's own judge
(``nasagent.search.judge.StopJudge``, the code a search runs) and a real store (an embedded
PostgreSQL under WORK): the networks of a finished or partial search are replayed in the order they
were trained, epoch by epoch, each epoch written to ``trial_epochs`` as a trial writes it, and the
judge decides after each. A network it stops trains no further (the rest of its epochs are saved),
gets the rule's reward and, as in a real search, never joins what the rules learn from; a network it
lets finish is recorded with its real final accuracy. One network at a time, so the predictor has
seen every earlier network (a parallel search's judge sees a few fewer).

Source: the comparison grid's committed records (``bench/results/searchers/trials-*.jsonl.gz``: 20
epochs of at least 100 steps per network, validation accuracy per epoch, restarts included), one
replay per recorded run and rule. No training happens, so this is cheap, and it measures the rule at
the paper's schedule length, where ``bench/bench_early_stop.py`` (which trains) runs 6 epochs.

Reported: networks, epochs trained against ``none`` (every recorded epoch), networks stopped, the
best final accuracy among the networks left to finish, and how many of the run's top 5 by final
accuracy the rule stopped.

    .venv/bin/python bench/replay_early_stop.py [--min-trials 20] [--deltas 0.9,0.95,0.99] [--no-write]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import machine, write_section  # noqa: E402

SECTION = "early-stop-replay"
TOP = 5


@dataclass(frozen=True)
class Replayed:
    """One rule replayed over one recorded run."""

    run: str
    rule: str
    networks: int
    epochs: int
    full_epochs: int
    stopped: int
    best_kept: float
    top_stopped: int
    late_epochs: int
    """Epochs replayed of the networks after the first ``--min-trials`` (where ``predict`` can act)."""
    late_full: int


def read_runs(pattern: str) -> dict[str, list[dict[str, Any]]]:
    """Recorded trials by run, in the order they were trained (trial id), with a learning curve."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(glob.glob(pattern)):
        with gzip.open(path, "rt") as f:
            for line in f:
                record = json.loads(line)
                if record.get("history") and record["status"] in ("done", "failed"):
                    runs.setdefault(record["run"], []).append(record)
    return {run: sorted(trials, key=lambda r: r["trial_id"]) for run, trials in runs.items()}


def replay(
    store: Any, run: str, trials: list[dict[str, Any]], rule: str, args: argparse.Namespace, delta: float | None = None
) -> Replayed:
    """Replay ``trials`` through a judge of ``rule`` (``predict``: with ``delta``, else its default;
    see the module docstring)."""
    from compare_searchers import dataset_spec
    from searchers_grid import SPACE

    from nasagent.config import SearchConfig
    from nasagent.core.networks import parse_network
    from nasagent.core.trial import TrialOutcome, TrialStatus
    from nasagent.persistence.postgres import EpochRow
    from nasagent.search.judge import StopJudge

    epochs = max(len(t["history"]) - int(t["restarts"] or 0) for t in trials if t["status"] == "done")
    early_stop: dict[str, Any] = {"rule": rule}
    if rule == "predict":
        early_stop |= {"min_trials": args.min_trials, "retrain_every": args.retrain_every}
        if delta is not None:
            early_stop["delta"] = delta
    dataset = dataset_spec(trials[0]["dataset"], args.work)
    config = SearchConfig(dataset=dataset, space=SPACE, epochs=epochs, early_stop=early_stop)
    shown = rule if delta is None else f"{rule} Δ={delta:g}"
    name = f"replay-{run}-{rule}-{delta}".replace("|", "-")
    try:
        store.delete_experiment(store.get_experiment(name).id)
    except Exception:  # noqa: BLE001 - no such experiment yet
        pass
    experiment = store.create_experiment(name, config.to_dict())
    config = SearchConfig.from_dict(experiment.config)
    settings = config.trial_settings("cpu")
    shape = settings.load_data().input_shape
    build = settings.build
    judge = StopJudge(
        store, experiment, config.early_stop, epochs, shape, build.pooling, build.conv_padding, int(config.seed or 0)
    )
    trained = stopped = late = 0
    kept: list[float] = []
    stopped_digests: set[str] = set()
    for number, record in enumerate(trials, start=1):
        network = parse_network(record["arch"])
        with store.transaction() as tx:
            trial_id = tx.insert_trial(experiment.id, str(network), network.digest, record.get("epsilon"))
        restarts = int(record["restarts"] or 0)
        stop = None
        for index, accuracy in enumerate(record["history"]):
            epoch = index + 1
            row = EpochRow(experiment.id, trial_id, 1, 1, epoch, None, accuracy, None, min(index, restarts), None)
            store.record_epoch(row)
            trained += 1
            late += number > args.min_trials
            decision = next((d for d in judge.step() if d.trial_id == trial_id and d.epoch == epoch), None)
            if decision is not None and decision.stop:
                stop = decision
                break
        if stop is not None:
            stopped += 1
            stopped_digests.add(network.digest)
            reached = max(a for a in record["history"][min(restarts, index) : index + 1] if a is not None)
            reward = stop.predicted if stop.predicted is not None else reached
            status, info = TrialStatus.STOPPED, {"stopped_epoch": epoch, "predicted_accuracy": stop.predicted}
        else:
            reward, status, info = float(record["accuracy"]), TrialStatus(record["status"]), {}
            kept.append(reward)
        with store.transaction() as tx:
            tx.finish_trial(trial_id, status, reward, record.get("params"), None, None, info)
        # The judge reads a trained network's curve once told it finished (only "done" ones count).
        judge.on_trial_finished(None, TrialOutcome(trial_id, status, reward))  # type: ignore[arg-type]
    best_by_final = sorted(trials, key=lambda r: -float(r["accuracy"]))[:TOP]
    top_stopped = sum(parse_network(r["arch"]).digest in stopped_digests for r in best_by_final)
    full = sum(len(r["history"]) for r in trials)
    late_full = sum(len(r["history"]) for r in trials[args.min_trials :])
    label = run.replace("|", ", ")  # "digits|random|0": Markdown tables split at "|"
    return Replayed(
        label, shown, len(trials), trained, full, stopped, max(kept, default=0.0), top_stopped, late, late_full
    )


def report(results: list[Replayed], args: argparse.Namespace) -> str:
    rows = [
        f"| {r.run} | `{r.rule}` | {r.networks} | {r.epochs} of {r.full_epochs} | {r.epochs / r.full_epochs:.2f} | "
        f"{r.late_epochs / max(r.late_full, 1):.2f} | {r.stopped} | {r.best_kept:.4f} | "
        f"{r.top_stopped} of {min(TOP, r.networks)} |"
        for r in results
    ]
    return f"""## Early stopping replayed over recorded 20-epoch curves (`bench/replay_early_stop.py`)

Machine: {machine()} (no training: the replay writes each recorded epoch to the store and asks the
search's own judge). Curves: the comparison grid's committed records ({args.records}), each run's networks
in the order they were trained, one at a time. Rules with their defaults, except `predict`'s
`--early-stop-min-trials {args.min_trials}` and `--early-stop-retrain-every {args.retrain_every}` (the
paper waits for 100 networks; these runs have fewer) and its Δ where shown (default 0.99: stop when
the network ends below the best so far with probability Δ). Epochs: every epoch replayed (restarts included)
against every recorded epoch (`none`); "after n" counts only the networks after the first
{args.min_trials}, the part where `predict` has a model. Best kept: the best final validation accuracy among the
networks the rule let finish. Top 5 stopped: of the run's five best networks by final accuracy.

| run | rule | networks | epochs | vs none | vs none after n | stopped | best kept | top 5 stopped |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="bench/results/searchers/trials-*.jsonl.gz")
    parser.add_argument("--rules", default="median,predict")
    parser.add_argument("--min-trials", type=int, default=20, help="predict: trained networks before its first fit")
    parser.add_argument("--retrain-every", type=int, default=5, help="predict: refit after this many more")
    parser.add_argument("--deltas", default="0.9,0.95,0.99", help="predict: comma-separated Δ, one replay each")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work" / "early-stop-replay")
    parser.add_argument("--no-write", action="store_true", help="print, leave docs/benchmarks.md alone")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = read_runs(str(ROOT / args.records))
    if not runs:
        raise SystemExit(f"replay_early_stop: no recorded curves match {args.records}")
    from nasagent.persistence import embedded_url, stop_embedded
    from nasagent.persistence.postgres import Store

    results = []
    try:
        with Store.connect(embedded_url(args.work / "pg")) as store:
            for run, trials in runs.items():
                for rule in args.rules.split(","):
                    deltas = [float(d) for d in args.deltas.split(",")] if rule == "predict" else [None]
                    for delta in deltas:
                        result = replay(store, run, trials, rule, args, delta)
                        results.append(result)
                        print(result, flush=True)
    finally:
        stop_embedded(args.work / "pg")
    body = report(results, args)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
