"""The big comparison of issue 12: every learner against random search over its own space, run for days.

Grid: ``qlearning`` against ``random`` (MetaQNN space ``metaqnn-small``), ``reinforce`` against
``reinforce-no-learning`` (``lr=0 entropy=0``: the untrained controller, i.e. random search over
REINFORCE's own space), ``dqn`` and ``meta-a2c`` against ``random-nsc`` (the NSC space); 200
unique networks per run, seeds 0-4, on ``digits`` and on ``shapes`` (a generated 16×16 set, see
``compare_searchers.make_shapes``), each through the real ``SearchLoop``, ``LocalRunner`` and an
embedded PostgreSQL with the full trainer settings (each strategy's default epochs, 20 or 12, and
the min-steps rule). After each run its top 5 are retrained from scratch with 3 new seeds and
evaluated on the held-out test split; after seed 0 of each baseline its best network is retrained
10 times (the reward's noise floor).

The order makes partial results meaningful and paired: the qlearning/random pair seed by seed on
``digits`` (the two of a seed run side by side, under the same machine load), then on ``shapes``,
then the other learner/baseline pairs the same way. ``--parallel`` jobs run at a time (each job is
one process training one network at a time with one torch thread).

Everything is resumable: the embedded PostgreSQL and the job state live in ``--work`` (default
``.bench-work/searchers``, gitignored); rerunning the same command skips finished jobs, resumes an
interrupted search where it stopped and an interrupted retraining at the next network. After every
job and every ``--export-every`` seconds (5 minutes) the raw records of every run started so far (a running
run's finished trials too, marked ``run_complete: false``) are exported to
``bench/results/searchers/`` as gzipped JSON lines, which ``bench/searchers_report.py`` turns into
``docs/searchers.md`` with no database. Run it in the background, e.g.::

    mkdir -p .bench-work/searchers && nohup nice -n 19 .venv/bin/python bench/searchers_grid.py \
        >> .bench-work/searchers/grid.log 2>&1 &

``--export-only`` writes the raw files from the database and exits; it may run beside a running grid
(it then leaves the grid's database server running).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import gzip
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare_searchers import Run, dataset_spec, run_one  # noqa: E402

WORK = ROOT / ".bench-work" / "searchers"
RESULTS = ROOT / "bench" / "results" / "searchers"
SPACE = "metaqnn-small"
BUDGET = 200
SEEDS = 5
DATASETS = ("digits", "shapes")
TOP = 5
RETRAIN_SEEDS = (10_001, 10_002, 10_003)
"""Training seeds of the retrained top 5 (never a seed the search itself gave a trial: those are hashes)."""
NOISE_SEEDS = tuple(range(20_001, 20_011))
"""Training seeds of the noise-floor network (10 retrainings)."""

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "qlearning": ("qlearning", {}),
    "random": ("random", {}),
    "reinforce": ("reinforce", {}),
    "reinforce-no-learning": ("reinforce", {"lr": 0, "entropy": 0}),
    "dqn": ("dqn", {}),
    "meta-a2c": ("meta-a2c", {}),
    "random-nsc": ("random-nsc", {}),
}
"""Label -> (registered strategy, options)."""
PAIRS: tuple[tuple[str, str], ...] = (
    ("qlearning", "random"),
    ("reinforce", "reinforce-no-learning"),
    ("dqn", "random-nsc"),
    ("meta-a2c", "random-nsc"),
)
"""(learner, its own-space random baseline), in the order the grid runs them."""
BASELINES = ("random", "reinforce-no-learning", "random-nsc")
RESUME = (
    "mkdir -p .bench-work/searchers && nohup nice -n 19 .venv/bin/python bench/searchers_grid.py "
    ">> .bench-work/searchers/grid.log 2>&1 &"
)
"""The command that starts or resumes the grid from the repository root (docs/searchers.md shows it)."""


@dataclass(frozen=True)
class Job:
    """One unit of work: a search, the retraining of a run's top 5, or a noise-floor retraining."""

    kind: str  # "search" | "retrain" | "noise"
    run: Run
    after: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.run.key}"


def make_run(dataset: str, label: str, seed: int) -> Run:
    strategy, options = VARIANTS[label]
    return Run(label, strategy, options, dataset, seed)


def plan() -> list[Job]:
    """Every job in the order they should run (a job starts once the jobs in its ``after`` are done)."""
    seeds, datasets = SEEDS, DATASETS
    jobs: list[Job] = []
    planned: set[str] = set()
    groups: list[tuple[str, ...]] = [PAIRS[0], PAIRS[1], (PAIRS[2][0], PAIRS[3][0], PAIRS[2][1])]
    # Seed by seed, both datasets of a seed before the next seed: every finished seed is a paired
    # comparison on each dataset, and the harder set is not left until the easy one is done.
    for group in groups:
        for seed in range(seeds):
            for dataset in datasets:
                for label in group:
                    run = make_run(dataset, label, seed)
                    if run.key in planned:
                        continue
                    planned.add(run.key)
                    search = Job("search", run)
                    jobs.append(search)
                for label in group:
                    run = make_run(dataset, label, seed)
                    jobs.append(Job("retrain", run, (f"search:{run.key}",)))
                    if seed == 0 and label in BASELINES:
                        jobs.append(Job("noise", run, (f"search:{run.key}",)))
    return jobs


SMOKE_EPOCHS: int | None = None
"""Set by ``--smoke``: epochs of every network in the harness check (None: each strategy's default)."""


def use_smoke_settings(work: Path) -> None:
    """``--smoke``: the whole pipeline in a couple of minutes (3 networks of 1 epoch per run, 1 seed,
    ``digits``, fewer retrainings), results under WORK/results: a check of the harness, not data."""
    global BUDGET, SEEDS, DATASETS, TOP, RETRAIN_SEEDS, NOISE_SEEDS, RESULTS, SMOKE_EPOCHS
    BUDGET, SEEDS, DATASETS, TOP, SMOKE_EPOCHS = 3, 1, ("digits",), 2, 1
    RETRAIN_SEEDS, NOISE_SEEDS, RESULTS = (10_001,), (20_001, 20_002), work / "results"


def epochs_of(strategy: str) -> int:
    """The strategy's default epochs (what ``nasagent search`` uses without ``--epochs``)."""
    if SMOKE_EPOCHS is not None:
        return SMOKE_EPOCHS
    from nasagent.config import METAQNN_EPOCHS, NAS_ENV_EPOCHS
    from nasagent.strategies.registry import ACTS_IN_NAS_ENV

    return NAS_ENV_EPOCHS if strategy in ACTS_IN_NAS_ENV else METAQNN_EPOCHS


def experiment_name(run: Run) -> str:
    """The name ``compare_searchers.run_one`` gives the run's experiment."""
    return f"cmp-{Path(run.dataset).name}-{run.label}-s{run.seed}-b{BUDGET}-e{epochs_of(run.strategy)}-{SPACE}"


# -- state in WORK ---------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a hard kill
            continue
    return out


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")
        out.flush()
        os.fsync(out.fileno())


def finished_searches(work: Path) -> dict[str, dict[str, Any]]:
    """Run key -> ``run_one``'s result, for the searches that ran to their budget."""
    return {r["key"]: r for r in read_jsonl(work / "runs.jsonl") if "accuracies" in r}


def retrain_records(work: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(work / f"{kind}.jsonl") if r.get("kind") == kind]


def job_done(job: Job, work: Path) -> bool:
    if job.kind == "search":
        return job.run.key in finished_searches(work)
    done = {(r["rank"], r["train_seed"]) for r in retrain_records(work, job.kind) if r["run"] == job.run.key}
    wanted = retrain_targets(job.kind)
    return all(item in done for item in wanted) or _retrain_gave_up(job, work)


def retrain_targets(kind: str) -> list[tuple[int, int]]:
    if kind == "retrain":
        return [(rank, s) for rank in range(1, TOP + 1) for s in RETRAIN_SEEDS]
    return [(1, s) for s in NOISE_SEEDS]


def _retrain_gave_up(job: Job, work: Path) -> bool:
    """A run with fewer than TOP finished networks cannot give TOP retrainings (marked by the child)."""
    return any(r.get("job") == job.key for r in read_jsonl(work / "short.jsonl"))


# -- the children ------------------------------------------------------------------------------------
def search_child(run: Run, work: Path, db: str, device: str) -> dict[str, Any]:
    spec = dataset_spec(run.dataset, work)
    return run_one(run, spec, db, BUDGET, epochs_of(run.strategy), 1, SPACE, device)


def claim_device(work: Path, device: str) -> None:
    """Record the device a grid's work directory trains on; refuse another one. A CPU trains in fp32
    and a GPU in bf16, so runs of one comparison trained on both would not be alike."""
    path = work / "device"
    if path.exists() and path.read_text().strip() != device:
        raise SystemExit(
            f"searchers_grid: {work} holds runs trained on {path.read_text().strip()}; "
            f"use another --work for --device {device}"
        )
    path.write_text(device + "\n")


def retrain_child(job: Job, work: Path, db: str, device: str) -> None:
    """Retrain the run's top networks (``retrain``: top 5 × 3 seeds; ``noise``: the best × 10 seeds)
    with the search's own trainer settings, from scratch, and score each on validation and test."""
    import torch

    from nasagent.config import SearchConfig
    from nasagent.core.networks import parse_network
    from nasagent.persistence.postgres import Store
    from nasagent.training.models import held_out_accuracy
    from nasagent.training.trainer import train_architecture

    torch.set_num_threads(1)
    path = work / f"{job.kind}.jsonl"
    with Store.connect(db) as store:
        experiment = store.get_experiment(experiment_name(job.run))
        config = SearchConfig.from_dict(experiment.config)
        top = store.top(experiment.id, TOP if job.kind == "retrain" else 1)
    wanted = retrain_targets(job.kind)
    if len(top) < max(rank for rank, _ in wanted):
        append_jsonl(work / "short.jsonl", {"job": job.key, "finished": len(top)})
    settings = config.trial_settings(device=device)
    data = settings.load_data()
    assert data.test is not None  # digits and npz: always hold a test split out
    done = {(r["rank"], r["train_seed"]) for r in retrain_records(work, job.kind) if r["run"] == job.run.key}
    for rank, seed in wanted:
        if (rank, seed) in done or rank > len(top):
            continue
        trial = top[rank - 1]
        train = dataclasses.replace(settings.train, seed=seed, threads=1)
        started = time.perf_counter()
        result = train_architecture(parse_network(trial.arch), data, train, settings.build, keep_weights=True)
        test_accuracy = None
        if result.status == "done" and result.state_dict is not None:
            test_accuracy = held_out_accuracy(trial.arch, result.state_dict, data, settings.build)
        append_jsonl(
            path,
            {
                "kind": job.kind,
                "run": job.run.key,
                "dataset": job.run.dataset,
                "label": job.run.label,
                "search_seed": job.run.seed,
                "rank": rank,
                "trial_id": trial.id,
                "arch": trial.arch,
                "search_accuracy": trial.accuracy,
                "train_seed": seed,
                "status": str(result.status),
                "val_accuracy": result.accuracy,
                "test_accuracy": test_accuracy,
                "epochs_run": result.epochs_run,
                "restarts": result.restarts,
                "params": result.params,
                "seconds": round(time.perf_counter() - started, 3),
                "test_size": len(data.test),
                "device": device,
            },
        )


# -- export ------------------------------------------------------------------------------------------
def write_gz(path: Path, records: list[dict[str, Any]]) -> bool:
    """Write ``records`` as gzipped JSON lines, byte-identical for identical records (mtime 0, sorted
    keys), atomically; returns whether the file changed."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        for record in records:
            gz.write((json.dumps(record, sort_keys=True) + "\n").encode())
    data = buffer.getvalue()
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def run_file(run: Run) -> str:
    return f"trials-{run.dataset}-{run.label}-s{run.seed}.jsonl.gz"


def export(jobs: list[Job], work: Path, db: str) -> int:
    """Export every planned run's finished trials, the run summaries and the retrainings; returns the
    number of files that changed."""
    results = RESULTS
    from nasagent.persistence.postgres import Store
    from nasagent.search.status import experiment_status

    finished = finished_searches(work)
    changed = 0
    summaries = []
    with Store.connect(db) as store:
        for job in jobs:
            if job.kind != "search":
                continue
            run = job.run
            experiment = store.find_experiment(experiment_name(run))
            if experiment is None:
                continue
            complete = run.key in finished
            trials = [t for t in store.trials(experiment.id) if str(t.status) in ("done", "failed")]
            status = experiment_status(store, experiment.name)
            config = experiment.config
            identity = {
                "run": run.key,
                "dataset": run.dataset,
                "label": run.label,
                "strategy": run.strategy,
                "options": run.options,
                "seed": run.seed,
            }
            records = [
                {
                    **identity,
                    "trial": index,
                    "trial_id": t.id,
                    "arch": t.arch,
                    "status": str(t.status),
                    "accuracy": t.accuracy,
                    "epsilon": t.epsilon,
                    "params": t.params,
                    "epochs_run": t.info.get("epochs_run"),
                    "restarts": t.info.get("restarts"),
                    "history": t.info.get("history"),
                    "train_seconds": t.train_seconds,
                    "failure": t.failure,
                    "finished_at": t.finished_at.isoformat() if t.finished_at else None,
                    "run_complete": complete,
                }
                for index, t in enumerate(trials)
            ]
            changed += write_gz(results / run_file(run), records)
            result = finished.get(run.key, {})
            summaries.append(
                {
                    **identity,
                    "experiment": experiment.name,
                    "budget": BUDGET,
                    "epochs": config.get("epochs"),
                    "space": SPACE,
                    "complete": complete,
                    "unique_finished": len(trials),
                    "rewarded": status["trials_done"],
                    "unique": status["unique_trained"],
                    "wall_s": result.get("wall_s"),
                    "overhead_s": result.get("overhead_s"),
                    "new_trials": result.get("new_trials"),
                    "resumed": result.get("resumed"),
                    "summary": status.get("strategy_summary"),
                    "file": run_file(run),
                }
            )
    changed += write_gz(results / "runs.jsonl.gz", summaries)
    for kind in ("retrain", "noise"):
        records = sorted(retrain_records(work, kind), key=lambda r: (r["run"], r["rank"], r["train_seed"]))
        changed += write_gz(results / f"{kind}.jsonl.gz", records)
    changed += write_gz(results / "grid.jsonl.gz", [grid_meta(jobs, work)])
    return changed


_META: dict[str, Any] = {}


def grid_meta(jobs: list[Job], work: Path) -> dict[str, Any]:
    """The planned grid and the settings every run shares (what the report needs besides the records)."""
    if not _META:
        _META.update(_grid_meta(jobs, work))
    return _META


def _grid_meta(jobs: list[Job], work: Path) -> dict[str, Any]:
    from _report import machine

    from nasagent.training.settings import MIN_STEPS, TrainConfig

    data = {}
    for dataset in sorted({j.run.dataset for j in jobs}):
        from nasagent.training.data import load_dataset

        bundle = load_dataset(dataset_spec(dataset, work), work / "data", seed=0)
        data[dataset] = {
            "train": len(bundle.train),
            "val": len(bundle.val),
            "test": len(bundle.test) if bundle.test is not None else 0,
            "input_shape": list(bundle.input_shape),
            "classes": bundle.num_classes,
        }
    return {
        "planned_runs": [j.run.key for j in jobs if j.kind == "search"],
        "pairs": [list(p) for p in PAIRS],
        "variants": {label: {"strategy": s, "options": o} for label, (s, o) in VARIANTS.items()},
        "budget": BUDGET,
        "space": SPACE,
        "top": TOP,
        "retrain_seeds": list(RETRAIN_SEEDS),
        "noise_seeds": list(NOISE_SEEDS),
        "epochs": {label: epochs_of(s) for label, (s, _) in VARIANTS.items()},
        "seeds": SEEDS,
        "min_steps": MIN_STEPS,
        "batch_size": TrainConfig().batch_size,
        "datasets": data,
        "machine": machine(),
        "command": RESUME,
    }


# -- orchestration -----------------------------------------------------------------------------------
def clear_stale_pid(work: Path) -> None:
    """Remove postmaster.pid left by a server killed with its machine (a new machine may have given its
    pid to another process, and PostgreSQL would then refuse to start)."""
    pid_file = work / "pg" / "pg" / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        cmdline = b""
    if b"postgres" not in cmdline:
        pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(WORK), help="embedded PostgreSQL and job state (kept for resuming)")
    parser.add_argument("--parallel", type=int, default=2, help="jobs at a time (each one training process)")
    parser.add_argument("--export-every", type=float, default=300.0, help="seconds between exports of partial runs")
    parser.add_argument("--export-only", action="store_true", help="export the raw records and exit")
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end check of the harness (see code)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where every network trains")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        use_smoke_settings(work)
    if args.job:
        job_data = json.loads(args.job)
        job = Job(job_data["kind"], Run(**job_data["run"]))
        if job.kind == "search":
            print(json.dumps(search_child(job.run, work, job_data["db"], job_data["device"])), flush=True)
        else:
            retrain_child(job, work, job_data["db"], job_data["device"])
        return 0
    lock = (work / "grid.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        grid_running = False
    except OSError:
        if not args.export_only:
            raise SystemExit(f"searchers_grid: another grid runs in {work} already") from None
        grid_running = True  # export beside it: reading the database is safe; its server is left running
    from nasagent.persistence import embedded_url, stop_embedded

    if not grid_running:
        clear_stale_pid(work)
    if not args.export_only:
        claim_device(work, args.device)
    db = embedded_url(work / "pg")
    jobs = plan()
    try:
        if not args.export_only:
            execute(jobs, work, db, args.parallel, args.export_every, args.device)
        print(f"exported: {export(jobs, work, db)} file(s) changed", flush=True)
    finally:
        if not grid_running:
            stop_embedded(work / "pg")
    return 0


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def execute(jobs: list[Job], work: Path, db: str, parallel: int, export_every: float, device: str) -> None:
    """Run the jobs not done yet, ``parallel`` at a time, first ready first; export as they finish."""
    todo = [j for j in jobs if not job_done(j, work)]
    log(f"{len(jobs) - len(todo)} of {len(jobs)} jobs done; {len(todo)} to go")
    failed: set[str] = set()
    active: list[tuple[Job, subprocess.Popen, Any]] = []
    last_export = time.monotonic()
    (work / "logs").mkdir(exist_ok=True)
    while todo or active:
        running = {j.key for j, _, _ in active}
        for job in list(todo):
            if len(active) >= parallel:
                break
            if any(dep in failed for dep in job.after):
                todo.remove(job)
                failed.add(job.key)
                continue
            if any(dep in running or any(dep == t.key for t in todo) for dep in job.after):
                continue
            todo.remove(job)
            logfile = (work / "logs" / f"{job.kind}-{job.run.slug}.log").open("a")
            payload = json.dumps({"kind": job.kind, "run": job.run.__dict__, "db": db, "device": device})
            command = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--job", payload]
            command += ["--smoke"] if SMOKE_EPOCHS is not None else []
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=logfile, text=True, cwd=ROOT)
            active.append((job, proc, logfile))
            running.add(job.key)
            log(f"started {job.key}")
        time.sleep(2)
        finished_any = False
        for item in list(active):
            job, proc, logfile = item
            if proc.poll() is None:
                continue
            active.remove(item)
            logfile.close()
            out = proc.stdout.read().strip().splitlines() if proc.stdout else []
            if proc.returncode != 0:
                failed.add(job.key)
                log(f"FAILED {job.key} (exit {proc.returncode}); see {work}/logs")
                continue
            if job.kind == "search":
                result = json.loads(out[-1])
                append_jsonl(work / "runs.jsonl", result)
                log(f"finished {job.key}: best {max(result['accuracies']):.4f}, {result['wall_s']:.0f} s")
            else:
                log(f"finished {job.key}")
            finished_any = True
        if finished_any or time.monotonic() - last_export > export_every:
            try:
                log(f"exported ({export(jobs, work, db)} file(s) changed)")
            except Exception as exc:  # an export must never stop the grid; the next one retries
                log(f"export failed: {exc}")
            last_export = time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
