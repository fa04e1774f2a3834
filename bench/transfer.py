"""Seed 003's transfer experiment: meta-train meta-A2C on some datasets, run it fixed on unseen ones.

Gomez Robles & Vanschoren (Experiments 1 and 2) meta-train meta-A2C on three datasets in sequence
(Omniglot, VGG Flower, DTD), fix the policy, and let it design networks for two datasets it never
saw (aircraft, CUB birds). This script does the same on generated datasets of different kinds
(``bench/transfer_data.py``), and adds what the paper's evaluation lacks: DQN and random search over
the same NSC space (``random-nsc``), each trained from scratch on the unseen dataset, at the same
number of evaluated networks, over several seeds.

Phases, each through the real nasagent commands, a local worker and a PostgreSQL kept in WORK:

1. ``nasagent meta-train`` over ``--train`` (``--meta-networks`` unique networks on each, one policy
   carried from one dataset to the next), writing WORK/policies/TAG.pt;
2. for every seed, unseen dataset (``--eval``) and searcher: ``nasagent search`` with a budget of
   ``--budget`` unique networks: ``meta-a2c-fixed`` (``--strategy meta-a2c --policy FILE``; a given
   policy stays fixed, ``learn`` false), ``dqn`` and ``random-nsc`` (from scratch);
3. after each run its per-network records are appended to ``--results`` (``transfer_records``), and
   docs/transfer.md's generated block and plots are rewritten from those records alone
   (``transfer_report``);
4. when every run is recorded, each run's best ``--finetune-top`` networks (by validation accuracy)
   are retrained from scratch with ``--finetune-schedule`` and tested on the held-out test split
   (the analogue of the paper's Table 6).

Resuming: a run whose record is in ``--results`` is skipped; an interrupted run resumes inside its
experiment (PostgreSQL under WORK). Run the same command again. ``--report-only`` rewrites the
report from the committed records without WORK. Example (the first version's scale)::

    nohup nice -n 19 .venv/bin/python bench/transfer.py > .bench-work/transfer/log.txt 2>&1 &
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import transfer_records  # noqa: E402
from transfer_data import dataset_spec  # noqa: E402

NASAGENT = str(Path(sys.executable).with_name("nasagent"))
WORK = ROOT / ".bench-work" / "transfer"
RESULTS = ROOT / "bench" / "results" / "transfer"
FIXED = "meta-a2c-fixed"
DQN_GAMMA_0_9 = {"b20-e3-n1500"}
"""Settings whose first runs were recorded when DQN's default γ was 0.9 (now the authors' 1.0): their
later runs keep 0.9, so that every seed of a setting runs the same DQN."""
LABELS = {FIXED: "meta-a2c", "dqn": "dqn", "random-nsc": "random-nsc", "meta-a2c-scratch": "meta-a2c"}
"""Searchers of the evaluation phase: label -> registered strategy (meta-a2c-scratch: learning from scratch)."""
FINETUNE_SCHEDULE = "0.001:5,0.0002:5,0.00004:2"
"""Retraining of the best networks: §4.1.2's Adam schedule (1e-3, × 0.2 every 5 epochs) over 12 epochs."""
RETRAIN_SEED_OFFSET = 1000
"""Retraining seeds differ from the search's: the test accuracy is not that of the search's lucky start."""


@dataclass(frozen=True)
class Settings:
    """What a run's result depends on besides its searcher, dataset and seed."""

    budget: int
    epochs: int
    images: int

    @property
    def tag(self) -> str:
        return f"b{self.budget}-e{self.epochs}-n{self.images}"


@dataclass(frozen=True)
class Meta:
    """One meta-training: the training datasets in order, networks per dataset, seed."""

    train: tuple[str, ...]
    networks: int
    seed: int
    epochs: int
    images: int

    @property
    def tag(self) -> str:
        return f"meta-{'+'.join(self.train)}-m{self.networks}-e{self.epochs}-n{self.images}-s{self.seed}"

    @property
    def key(self) -> str:
        return f"meta|{self.tag}"


@dataclass(frozen=True)
class EvalRun:
    """One search on an unseen dataset."""

    dataset: str
    label: str
    seed: int
    settings: Settings
    policy: str | None
    """The meta-training tag whose policy a fixed run uses (None for searchers from scratch)."""

    @property
    def key(self) -> str:
        policy = f"|{self.policy}" if self.policy else ""
        return f"eval|{self.dataset}|{self.label}|s{self.seed}|{self.settings.tag}{policy}"


def experiment_name(key: str) -> str:
    """The experiment name of a run key: a readable part and a hash of the whole key, within nasagent's
    63 characters (meta-training appends ``-N-DATASET`` to it)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(key.split("|")[1:4]))[:30].strip("_.-")
    return f"tr-{readable}-{digest}"


def plan(args: argparse.Namespace) -> tuple[Meta, list[EvalRun]]:
    """The meta-training and the evaluation runs: dataset by dataset, seed by seed, the searchers
    interleaved within a seed (machine load drifts over hours; the searchers compared on a dataset
    share it evenly, and a stopped experiment leaves whole datasets with several seeds done)."""
    train = tuple(d for d in args.train.split(",") if d)
    evaluate = [d for d in args.eval.split(",") if d]
    overlap = set(train) & set(evaluate)
    if overlap:
        raise SystemExit(f"transfer: {', '.join(sorted(overlap))} is both a training and an evaluation dataset")
    labels = [s for s in args.strategies.split(",") if s]
    for label in labels:
        if label not in LABELS:
            raise SystemExit(f"transfer: unknown searcher {label!r} (known: {', '.join(LABELS)})")
    meta = Meta(train, args.meta_networks, args.meta_seed, args.epochs, args.images)
    settings = Settings(args.budget, args.epochs, args.images)
    runs = [
        EvalRun(dataset, label, seed, settings, meta.tag if label == FIXED else None)
        for dataset in evaluate
        for seed in range(args.seeds)
        for label in labels
    ]
    return meta, runs


# -- running one phase through the nasagent CLI ----------------------------------------------------
def child_env(work: Path) -> dict[str, str]:
    """One PyTorch/BLAS thread per process; nasagent's home (data, embedded server) under WORK."""
    env = {k: v for k, v in os.environ.items() if k not in ("NASAGENT_ARTIFACTS", "NASAGENT_DB")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NASAGENT_HOME=str(work / "home"))
    return env


def run_cli(command: list[str], work: Path, log: Path) -> float:
    """Run a nasagent command, its output appended to ``log``; its wall seconds; SystemExit if it fails."""
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=child_env(work), cwd=ROOT)
    if code != 0:
        raise SystemExit(f"transfer: {command[1]} failed (exit {code}); see {log}")
    return time.perf_counter() - started


def export(store: Any, name: str, dataset: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An experiment's summary and its networks in evaluation order (trial id = launch order; one
    worker, so also the order the searcher heard the rewards in)."""
    from nasagent.core.networks import parse_network

    experiment = store.get_experiment(name)
    saved = store.load_agent_state(experiment.id)
    rows = []
    for n, trial in enumerate(store.trials(experiment.id), start=1):
        rows.append(
            {
                "n": n,
                "dataset": dataset,
                "arch": trial.arch,
                "accuracy": None if trial.accuracy is None else float(trial.accuracy),
                "status": str(trial.status),
                "action": trial.info.get("action"),
                "kind": trial.info.get("kind"),
                "env_step": trial.info.get("env_step"),
                "layers": len(parse_network(trial.arch)),
                "params": trial.params,
                "train_seconds": trial.train_seconds,
            }
        )
    summary = {
        "experiment": name,
        "rewarded": len(store.load_replay(experiment.id)),
        "unique": len(rows),
        "exhausted": store.exhausted(experiment.id),
        "strategy_summary": saved[1].get("summary", {}) if saved else {},
    }
    return summary, rows


def run_meta(meta: Meta, db: str, work: Path, results: Path) -> Path:
    """Meta-train (or resume it), record its networks, and return the policy file."""
    from nasagent.commands.meta_train import experiment_name as meta_experiment
    from nasagent.persistence.postgres import Store

    policy = work / "policies" / f"{meta.tag}.pt"
    if meta.key in transfer_records.load(results).finished() and policy.exists():
        return policy
    specs = [dataset_spec(d, work / "data", meta.images) for d in meta.train]
    prefix = f"tm-{hashlib.sha256(meta.key.encode()).hexdigest()[:10]}"  # meta-train appends -N-DATASET
    print(f"meta-training {meta.tag} ...", flush=True)
    wall = run_cli(
        [
            NASAGENT,
            "meta-train",
            "--datasets",
            ",".join(specs),
            "--trials-per-dataset",
            str(meta.networks),
            "--out",
            str(policy),
            "--experiment",
            prefix,
            "--epochs",
            str(meta.epochs),
            "--workers",
            "1",
            "--seed",
            str(meta.seed),
            "--device",
            "cpu",
            "--db",
            db,
        ],
        work,
        work / "logs" / f"{meta.tag}.log",
    )
    networks: list[dict[str, Any]] = []
    parts = []
    with Store.connect(db) as store:
        for position, (dataset, spec) in enumerate(zip(meta.train, specs, strict=True), start=1):
            summary, rows = export(store, meta_experiment(prefix, position, spec), dataset)
            offset = len(networks)
            networks += [{**row, "n": row["n"] + offset, "position": position} for row in rows]
            parts.append({"dataset": dataset, **summary})
    run = {
        "key": meta.key,
        "phase": "meta",
        "label": "meta-a2c",
        "strategy": "meta-a2c",
        "meta": asdict(meta),
        "tag": meta.tag,
        "seed": meta.seed,
        "epochs": meta.epochs,
        "images": meta.images,
        "wall_s": wall,
        "parts": parts,
    }
    transfer_records.add_run(results, run, networks)
    print(f"meta-training done in {wall:.0f} s: {len(networks)} networks; policy {policy}", flush=True)
    return policy


def eval_record(run: EvalRun, wall: float, summary: dict[str, Any]) -> dict[str, Any]:
    """The record of a finished evaluation run: its settings, wall time and the experiment's ``summary``."""
    return {
        "key": run.key,
        "phase": "eval",
        "dataset": run.dataset,
        "label": run.label,
        "strategy": LABELS[run.label],
        "seed": run.seed,
        "budget": run.settings.budget,
        "epochs": run.settings.epochs,
        "images": run.settings.images,
        "setting": run.settings.tag,
        "policy": run.policy,
        "wall_s": wall,
        **summary,
    }


def run_eval(run: EvalRun, policy: Path | None, db: str, work: Path, results: Path) -> None:
    """One search on an unseen dataset (or its resumption), then its records."""
    from nasagent.persistence.postgres import Store

    spec = dataset_spec(run.dataset, work / "data", run.settings.images)
    name = experiment_name(run.key)
    command = [
        NASAGENT,
        "search",
        "--experiment",
        name,
        "--dataset",
        spec,
        "--strategy",
        LABELS[run.label],
        "--trials",
        str(run.settings.budget),
        "--epochs",
        str(run.settings.epochs),
        "--seed",
        str(run.seed),
        "--workers",
        "1",
        "--device",
        "cpu",
        "--db",
        db,
    ]
    if run.label == FIXED:
        assert policy is not None
        command += ["--policy", str(policy)]  # a given policy is fixed: meta-a2c's learn defaults to false
    if run.label == "dqn" and run.settings.tag in DQN_GAMMA_0_9:
        command += ["--option", "gamma=0.9"]
    wall = run_cli(command, work, work / "logs" / f"{name}.log")
    with Store.connect(db) as store:
        summary, rows = export(store, name, run.dataset)
    transfer_records.add_run(results, eval_record(run, wall, summary), rows)
    best = max((r["accuracy"] or 0.0) for r in rows) if rows else float("nan")
    print(f"{run.key}: {len(rows)} networks, best {best:.4f}, {wall:.0f} s", flush=True)


def finetune_done(records: transfer_records.Records, run: EvalRun, top: int, schedule: str) -> bool:
    """Whether run's top ``top`` networks are recorded retrained with ``schedule``."""
    rows = records.finetuned.get(run.key, [])
    return len(rows) >= top and all(r["schedule"] == schedule for r in rows[:top])


def run_finetune(run: EvalRun, top: int, schedule: str, db: str, results: Path) -> None:
    """Retrain a finished run's best ``top`` networks (by their search reward) from scratch with
    ``schedule`` and a seed other than the search's, pick the best validation epoch, and test that
    model once on the held-out test split: the analogue of the paper's Table 6 and of ``nasagent
    finetune``'s first phase, scored by the same model code (``held_out_accuracy``); here the records
    go to the experiment's JSON lines rather than to an artifact store."""
    import dataclasses

    from nasagent.config import SearchConfig
    from nasagent.core.networks import parse_network
    from nasagent.core.trial import trial_seed
    from nasagent.persistence.postgres import Store
    from nasagent.results.finetune import resolve_schedule
    from nasagent.training.models import held_out_accuracy
    from nasagent.training.trainer import train_architecture

    name = experiment_name(run.key)
    with Store.connect(db) as store:
        experiment = store.get_experiment(name)
        trials = store.top(experiment.id, top)
    config = SearchConfig.from_dict(experiment.config)
    settings = config.trial_settings("cpu")
    data = settings.load_data()
    assert data.test is not None  # digits and npz: sets always hold out a test split
    phases = resolve_schedule(schedule, None, len(data.train), settings.train.epochs, settings.train.min_steps)
    rows = []
    for rank, trial in enumerate(trials, start=1):
        train = dataclasses.replace(
            settings.train,
            epochs=sum(n for _, n in phases),
            lr=phases[0][0],
            lr_steps=phases,
            seed=trial_seed(config.seed + RETRAIN_SEED_OFFSET, trial.digest),
            score="best",
        )
        started = time.perf_counter()
        result = train_architecture(parse_network(trial.arch), data, train, settings.build, keep_weights=True)
        test = None
        if result.status == "done" and result.state_dict is not None:
            test = held_out_accuracy(trial.arch, result.state_dict, data, settings.build)
        rows.append(
            {
                "rank": rank,
                "arch": trial.arch,
                "search_accuracy": trial.accuracy,
                "val_accuracy": result.accuracy,
                "test_accuracy": test,
                "status": result.status,
                "train_seconds": round(time.perf_counter() - started, 3),
                "schedule": schedule,
                "test_size": len(data.test),
            }
        )
    transfer_records.add_finetuned(results, run.key, rows)
    tests = ", ".join(f"{r['test_accuracy']:.4f}" for r in rows if r["test_accuracy"] is not None)
    print(f"{run.key}: top {top} retrained, test accuracy {tests}", flush=True)


def pending(runs: list[EvalRun], finished: set[str]) -> list[EvalRun]:
    """The runs not recorded yet, in plan order."""
    return [r for r in runs if r.key not in finished]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", default="shapes,gratings,digits", help="meta-training datasets, in order")
    parser.add_argument("--eval", default="glyphs,counts", help="unseen evaluation datasets")
    parser.add_argument("--strategies", default=f"{FIXED},dqn,random-nsc", help=f"of {', '.join(LABELS)}")
    parser.add_argument("--meta-networks", type=int, default=25, help="unique networks per training dataset")
    parser.add_argument("--budget", type=int, default=20, help="unique networks per evaluation run")
    parser.add_argument("--seeds", type=int, default=2, help="evaluation seeds 0..N-1")
    parser.add_argument("--meta-seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=int, default=3, help="training epochs per network (§6.1: 12; 3 fits 2 shared cores)"
    )
    parser.add_argument("--images", type=int, default=1500, help="images per generated dataset")
    parser.add_argument(
        "--finetune-top", type=int, default=1, help="networks of each run retrained and tested (0: none)"
    )
    parser.add_argument(
        "--finetune-schedule",
        default=FINETUNE_SCHEDULE,
        help="LR:EPOCHS,... of the retraining (default: the §4.1.2 schedule over the paper's 12 epochs)",
    )
    parser.add_argument("--work", default=str(WORK), help="PostgreSQL, data, policies, logs (kept for resuming)")
    parser.add_argument("--results", default=str(RESULTS), help="the raw records (committed)")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "transfer.md"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from --results alone")
    args = parser.parse_args(argv)
    if min(args.meta_networks, args.budget, args.seeds, args.epochs, args.images) < 1 or args.finetune_top < 0:
        raise SystemExit(
            "transfer: --meta-networks, --budget, --seeds, --epochs and --images must be at least 1, "
            "--finetune-top at least 0"
        )
    import transfer_report

    results, doc = Path(args.results), Path(args.doc)
    if args.report_only:
        transfer_report.write(transfer_records.load(results), doc)
        print(f"wrote {doc}")
        return 0
    meta, runs = plan(args)
    work = Path(args.work).expanduser().resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    from nasagent.persistence import embedded_url

    db = embedded_url(work / "home")
    todo = pending(runs, transfer_records.load(results).finished())
    print(f"{len(runs) - len(todo)} of {len(runs)} evaluation runs recorded; {len(todo)} to go", flush=True)
    started = time.perf_counter()
    policy = run_meta(meta, db, work, results) if any(r.label == FIXED for r in todo) else None
    transfer_report.write(transfer_records.load(results), doc)
    for run in todo:
        run_eval(run, policy, db, work, results)
        transfer_report.write(transfer_records.load(results), doc)
    # After the comparison itself: each run's best networks retrained and tested (the paper's Table 6).
    for run in runs if args.finetune_top > 0 else []:
        if not finetune_done(transfer_records.load(results), run, args.finetune_top, args.finetune_schedule):
            run_finetune(run, args.finetune_top, args.finetune_schedule, db, results)
            transfer_report.write(transfer_records.load(results), doc)
    print(f"all runs recorded ({time.perf_counter() - started:.0f} s this session); report in {doc}", flush=True)
    print(json.dumps({"meta": meta.tag, "runs": len(runs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
