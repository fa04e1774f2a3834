"""What one trial costs: seconds per network of a real ``nasagent search`` at the comparison grid's settings.

Each measurement is one ``nasagent search`` process (``python -m nasagent.cli search``, as a user
runs it) in a fresh embedded database under a temporary ``NASAGENT_HOME``: strategy ``random``
(its proposals do not depend on rewards, so every worker count trains the same networks), the
space of ``bench/searchers_grid.py`` (``metaqnn-small``) and the trainer's defaults (20 epochs of at
least 100 optimiser steps, Adam, restarts: what the grid trains), ``--trials N`` networks on
``--device``, for each dataset and each worker count in ``--workers``. Reported: the search's wall
time (start-up, data loading and the agent included) and networks per hour from it, each
network's own training seconds (``top --json``: median, mean, p90), and on a GPU the mean
utilisation and peak memory that ``nvidia-smi`` saw while the search ran (sampled every 0.5 s).

From the best measured rate per dataset it projects what ``bench/searchers_grid.py`` needs on this
machine: its searches' networks plus its retrainings (each run's top 5 x 3 seeds, the noise-floor
networks x 10), each costed at that dataset's wall seconds per network. The NAS-environment runs
train 12 epochs instead of 20; the projection charges them 20 (an upper bound, stated).

    python bench/bench_trial_cost.py [--device auto] [--datasets digits,shapes] [--trials 16] [--workers 1,4]
        [--json FILE]                 # also keep the measurements (with the machine) in FILE
    python bench/bench_trial_cost.py --report-from FILE[,FILE...]   # the section from kept measurements

``--report-from`` exists because a GPU is lent for minutes at a time: measurements taken there in
several calls are kept as JSON (bench/results/trial_cost/) and the section is written here from them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write_section  # noqa: E402

SECTION = "bench_trial_cost"


@dataclass
class GpuSampler:
    """Samples ``nvidia-smi`` (utilisation %, memory used MiB of GPU 0) every ``period`` seconds
    in a thread until stopped; does nothing where there is no ``nvidia-smi``."""

    period: float = 0.5
    utilisation: list[float] = field(default_factory=list)
    memory_mib: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.wait(self.period):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
            except (OSError, subprocess.SubprocessError):
                return
            util, memory = (float(v) for v in out.strip().split(","))
            self.utilisation.append(util)
            self.memory_mib.append(memory)


@dataclass(frozen=True)
class Measurement:
    dataset: str
    workers: int
    networks: int
    wall_s: float
    train_s: list[float]
    gpu_util: float | None
    gpu_peak_mib: float | None

    @property
    def per_network_s(self) -> float:
        return self.wall_s / self.networks

    @property
    def per_hour(self) -> float:
        return 3600.0 / self.per_network_s


def nasagent(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *argv], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"nasagent {' '.join(argv[:1])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def measure(dataset: str, spec: str, workers: int, args: argparse.Namespace) -> Measurement:
    """One fresh search of ``args.trials`` networks with ``workers`` workers; its cost."""
    with tempfile.TemporaryDirectory(prefix="nasagent-cost-") as home:
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "NASAGENT_HOME": home, "PYTHONPATH": path}
        env.pop("NASAGENT_DB", None)
        name = f"cost-{dataset}-w{workers}"
        search = ["search", "--experiment", name, "--dataset", spec, "--space", args.space, "--strategy", "random"]
        search += ["--trials", str(args.trials), "--workers", str(workers), "--device", args.device]
        search += ["--seed", str(args.seed)]
        if args.epochs:
            search += ["--epochs", str(args.epochs)]
        with GpuSampler() as gpu:
            started = time.perf_counter()
            nasagent(search, env)
            wall = time.perf_counter() - started
        rows = json.loads(nasagent(["top", "--experiment", name, "-k", str(args.trials), "--json"], env))
        train = [float(row["train_seconds"]) for row in rows if row.get("train_seconds") is not None]
    return Measurement(
        dataset,
        workers,
        args.trials,
        wall,
        train,
        statistics.fmean(gpu.utilisation) if gpu.utilisation else None,
        max(gpu.memory_mib) if gpu.memory_mib else None,
    )


def grid_networks() -> dict[str, int]:
    """Networks the comparison grid trains per dataset: searches, retrainings and noise floors."""
    import searchers_grid as grid

    count: dict[str, int] = {}
    for job in grid.plan():
        n = {"search": grid.BUDGET, "retrain": grid.TOP * len(grid.RETRAIN_SEEDS), "noise": len(grid.NOISE_SEEDS)}
        count[job.run.dataset] = count.get(job.run.dataset, 0) + n[job.kind]
    return count


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: list[Measurement], setup: dict) -> str:
    """The section's Markdown from ``results`` and ``setup`` (machine, device, load, space, trials, epochs, seed)."""
    rows = []
    for m in results:
        t = m.train_s
        train = f"{statistics.median(t):.1f} / {statistics.fmean(t):.1f} / {percentile(t, 0.9):.1f}"
        gpu = f"{m.gpu_util:.0f} % / {m.gpu_peak_mib / 1024:.1f} GiB" if m.gpu_util is not None else "—"
        rows.append(
            f"| {m.dataset} | {m.workers} | {m.networks} | {m.wall_s:.0f} | {m.per_network_s:.1f} | {m.per_hour:.0f} "
            f"| {train} | {gpu} |"
        )
    datasets = list(dict.fromkeys(m.dataset for m in results))
    best = {d: min((m for m in results if m.dataset == d), key=lambda m: m.per_network_s) for d in datasets}
    networks = grid_networks()
    hours = {d: networks.get(d, 0) * best[d].per_network_s / 3600 for d in best}
    projection = "; ".join(
        f"{d}: {networks.get(d, 0):,} networks × {best[d].per_network_s:.1f} s ({best[d].workers} workers) "
        f"= {hours[d]:.1f} h"
        for d in best
    )
    trials = "/".join(str(n) for n in sorted({m.networks for m in results}))
    epochs = setup.get("epochs")
    return f"""## Trial cost (`bench/bench_trial_cost.py`)

Machine: {setup["machine"]}; device {setup["device"]}; load average (1/5/15 min) at the end: {setup["load"]}.
`nasagent search --strategy random --space {setup["space"]} --trials {trials}` with the trainer's defaults
(the comparison grid's settings{f", --epochs {epochs}" if epochs else ""}), seed {setup["seed"]}, a fresh embedded
database per row; wall = the whole `nasagent search` process. Train s = each network's own training
time from `top --json` (median / mean / p90). GPU = mean utilisation / peak memory seen by `nvidia-smi`.

| dataset | workers | networks | wall s | wall s / network | networks / h | train s (median / mean / p90) | GPU |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |
{chr(10).join(rows)}

Projected cost of `bench/searchers_grid.py` here (searches + retrainings + noise floors, every
network charged the best measured wall s / network of its dataset; the 12-epoch NAS-environment
runs charged as 20-epoch ones): {projection}; total {sum(hours.values()):.1f} h.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (passed to nasagent search)")
    parser.add_argument("--datasets", default="digits,shapes")
    parser.add_argument("--trials", type=int, default=16, help="networks per search")
    parser.add_argument("--workers", default="1", help="comma-separated worker counts, one search each")
    parser.add_argument("--space", default="metaqnn-small")
    parser.add_argument("--epochs", type=int, help="epochs per network (default: the search's default, 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--no-write", action="store_true", help="print, leave docs/benchmarks.md alone")
    parser.add_argument("--report-from", help="comma-separated JSON files of --json: write the section from them")
    args = parser.parse_args()
    if args.report_from:
        kept = [json.loads(Path(f).read_text()) for f in args.report_from.split(",")]
        results = [Measurement(**m) for k in kept for m in k["measurements"]]
        setup = {**kept[-1]["setup"], "load": "; ".join(k["setup"]["load"] for k in kept)}
        publish(report(results, setup), args.no_write)
        return
    args.datasets = [d for d in args.datasets.split(",") if d]
    from compare_searchers import dataset_spec

    from nasagent.training.trainer import resolve_device

    setup = {"device": resolve_device(args.device).type, "machine": machine(), "space": args.space}
    setup |= {"epochs": args.epochs, "seed": args.seed}
    work = Path(tempfile.mkdtemp(prefix="nasagent-cost-data-"))
    results = []
    for dataset in args.datasets:
        spec = dataset_spec(dataset, work)
        for workers in (int(w) for w in args.workers.split(",")):
            m = measure(dataset, spec, workers, args)
            results.append(m)
            print(
                f"{dataset} W={workers}: {m.wall_s:.0f} s for {m.networks} networks, {m.per_network_s:.1f} s each, "
                f"train median {statistics.median(m.train_s):.1f} s, gpu {m.gpu_util} % {m.gpu_peak_mib} MiB",
                flush=True,
            )
            if args.json:
                setup["load"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
                kept = {"setup": setup, "measurements": [vars(r) for r in results]}
                args.json.write_text(json.dumps(kept, indent=1))
    setup["load"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    publish(report(results, setup), args.no_write)


def publish(body: str, no_write: bool) -> None:
    print(body)
    if not no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
