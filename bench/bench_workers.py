"""Local runner throughput: 2 worker processes against 1, training the same architectures for real.

What is measured: trials per hour of ``LocalRunner`` with W = 1 and W = 2 on the same fixed set of
architectures, and the speed-up (target ≥ 1.8×). The set: the first N distinct architectures of a
seeded random walk over ``metaqnn-small`` on ``digits`` (8×8, 10 classes) whose estimated cost
(multiply-accumulates per image, computed from the layer list) lies in a fixed band, so each trial
trains for a few seconds at the chosen epochs. Every trial gets the seed the agent would give it
(``trial_seed``), so W = 1 and W = 2 train identical networks and must report identical accuracies.

Worker start-up is excluded: each runner first trains one tiny warm-up trial on every worker
(spawn, ``import torch``, data loading and a first training all happen there), and the clock
starts at the first measured submit, after every warm-up has come back. It stops when the last
outcome is returned by ``runner.wait``. The loop mimics the agent's: refill free workers, then
``wait(1.0)`` (the agent's default poll). Runs alternate W = 1, W = 2 for ``--repeats`` rounds
and the medians are reported. For each run the CPU time the benchmark's own processes used is
compared with the whole machine's busy time (/proc/stat), so that load from other processes during
the measured window shows up in the report rather than silently in the numbers.

Run: ``.venv/bin/python bench/bench_workers.py [--trials 8] [--epochs 3] [--repeats 3]`` from the repo root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write_section  # noqa: E402

from nasagent.config import SearchConfig  # noqa: E402
from nasagent.core.arch import (  # noqa: E402
    FC,
    GAP,
    Architecture,
    Conv,
    output_size,  # noqa: E402
)
from nasagent.core.trial import TrialOutcome, TrialSpec, trial_seed
from nasagent.execution.local import LocalRunner  # noqa: E402
from nasagent.execution.worker import TrialSettings  # noqa: E402
from nasagent.spaces.metaqnn import MetaQNNSpace  # noqa: E402
from nasagent.strategies.random_search import RandomStrategy  # noqa: E402

TARGET_SPEEDUP = 1.8
SEED = 0
MACS_BAND = (5e6, 12e6)  # per image; about 1.5-2.5 s per trial at 3 epochs on one core here (longer if it restarts)
WARMUP_ARCH = "[C(8,3,1), SM(10)]"
POLL_SECONDS = 1.0  # SearchLoop's default poll_seconds
CLK_TCK = os.sysconf("SC_CLK_TCK")


def macs(arch: Architecture, size: int, channels: int) -> int:
    """Multiply-accumulates of one forward pass for one image (convolutions, FC, terminal)."""
    total, features, flat = 0, channels, False
    for layer in arch.hidden:
        if isinstance(layer, Conv):
            out = output_size(size, layer)
            total += out * out * layer.kernel**2 * features * layer.filters
            features = layer.filters
        elif isinstance(layer, FC):
            if not flat:
                features, flat = features * size * size, True
            total += features * layer.units
            features = layer.units
        size = output_size(size, layer)
    classes = arch.terminal.classes
    if isinstance(arch.terminal, GAP):
        total += size * size * features * classes
    else:
        total += (features if flat else features * size * size) * classes
    return total


def choose_architectures(config: SearchConfig, n: int, size: int, channels: int, classes: int) -> list[Architecture]:
    """The first ``n`` distinct architectures of a seeded random walk whose cost is in MACS_BAND."""
    space = MetaQNNSpace(config.space_config(), size, classes)
    walker = RandomStrategy(space, seed=SEED)
    chosen: list[Architecture] = []
    for _ in range(100_000):
        arch = walker.ask(0).arch
        if MACS_BAND[0] <= macs(arch, size, channels) <= MACS_BAND[1] and arch not in chosen:
            chosen.append(arch)
            if len(chosen) == n:
                return chosen
    raise RuntimeError(f"only {len(chosen)} architectures in the cost band after 100,000 walks")


def machine_busy_ticks() -> int:
    fields_ = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields_[3] + (fields_[4] if len(fields_) > 4 else 0)  # idle + iowait
    return sum(fields_[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is in user)


def process_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    after_name = stat.rsplit(")", 1)[1].split()
    return int(after_name[11]) + int(after_name[12])  # utime, stime (fields 14 and 15)


@dataclass
class Run:
    workers: int
    elapsed: float
    outcomes: dict[str, TrialOutcome]
    held: list[float] = field(default_factory=list)  # result arrival -> runner.wait returning it
    own_cores: float = 0.0  # CPU used by the benchmark's processes during the window, in cores
    other_cores: float = 0.0  # CPU used by everything else on the machine during the window, in cores
    load_before: float = 0.0
    label: str = ""  # round number, and whether it was discarded

    @property
    def per_hour(self) -> float:
        return len(self.outcomes) / self.elapsed * 3600

    @property
    def train_seconds(self) -> float:
        return sum(o.train_seconds or 0.0 for o in self.outcomes.values())


def run_once(settings: TrialSettings, archs: list[Architecture], workers: int, classes: int) -> Run:
    load_before = os.getloadavg()[0]
    runner = LocalRunner(settings, workers, classes)
    try:
        # Warm-up: one tiny trial per worker (submit fills idle workers in order, so each gets one).
        for i in range(workers):
            runner.submit(TrialSpec(1_000_000 + i, WARMUP_ARCH, SEED))
        warm: list[TrialOutcome] = []
        deadline = time.monotonic() + 300
        while len(warm) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("warm-up trials did not come back within 300 s")
            warm += runner.wait(POLL_SECONDS)
        bad = [o for o in warm if o.status != "done"]
        if bad:
            raise RuntimeError(f"warm-up trial failed: {bad[0].failure}")
        if len({o.worker for o in warm}) != workers:
            raise RuntimeError(f"warm-up did not reach every worker: {[o.worker for o in warm]}")

        # Timestamp each result as the runner takes it off the queue (to see how long wait holds it).
        arrivals: dict[int, float] = {}
        queue_get = runner._results.get

        def timed_get(*args, **kwargs):
            item = queue_get(*args, **kwargs)
            arrivals[item.trial_id] = time.perf_counter()
            return item

        runner._results.get = timed_get  # type: ignore[method-assign]

        pids = [w.process.pid for w in runner._workers]
        specs = [TrialSpec(i, str(a), trial_seed(SEED, a.digest)) for i, a in enumerate(archs)]
        pending = list(specs)
        by_id = {s.trial_id: s.arch for s in specs}
        outcomes: dict[str, TrialOutcome] = {}
        held: list[float] = []
        busy0, own0 = machine_busy_ticks(), sum(process_ticks(p) for p in pids) + process_ticks(os.getpid())
        start = time.perf_counter()
        while len(outcomes) < len(specs):
            while pending and runner.in_flight < runner.capacity:
                runner.submit(pending.pop(0))
            returned = runner.wait(POLL_SECONDS)
            now = time.perf_counter()
            for outcome in returned:
                outcomes[by_id[outcome.trial_id]] = outcome
                if outcome.trial_id in arrivals:
                    held.append(now - arrivals[outcome.trial_id])
        elapsed = time.perf_counter() - start
        busy1, own1 = machine_busy_ticks(), sum(process_ticks(p) for p in pids) + process_ticks(os.getpid())
        if [w.process.pid for w in runner._workers] != pids:
            print("  note: a worker was replaced during the run (its CPU time is not counted as own)")
    finally:
        runner.close()
    own = (own1 - own0) / CLK_TCK / elapsed
    total = (busy1 - busy0) / CLK_TCK / elapsed
    return Run(workers, elapsed, outcomes, held, own, max(0.0, total - own), load_before)


def busy_cores(seconds: float = 5.0) -> float:
    """Cores the whole machine kept busy over the next ``seconds`` (call while this process idles)."""
    before = machine_busy_ticks()
    time.sleep(seconds)
    return (machine_busy_ticks() - before) / CLK_TCK / seconds


def wait_for_quiet(max_busy: float, patience_s: float) -> tuple[float, float]:
    """Wait (up to ``patience_s``) until other processes keep less than ``max_busy`` cores busy
    (sampled over 5 s: the load average lags by minutes and counts our own previous run).
    Returns (last busy sample, seconds waited)."""
    started = time.monotonic()
    busy = busy_cores()
    while busy > max_busy and time.monotonic() - started < patience_s:
        print(f"  other processes use {busy:.2f} cores: waiting for the machine to quiet down ...", flush=True)
        time.sleep(10)
        busy = busy_cores()
    return busy, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="architectures trained per run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (W=1, W=2)")
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.25,
        help="a round in which other processes used more cores than this is discarded and rerun",
    )
    parser.add_argument("--retries", type=int, default=4, help="discarded rounds to rerun at most")
    parser.add_argument(
        "--patience", type=float, default=300.0, help="seconds to wait for a quiet machine before a round, at most"
    )
    args = parser.parse_args()

    initial_load = os.getloadavg()
    print(f"load average before start: {initial_load[0]:.2f} / {initial_load[1]:.2f} / {initial_load[2]:.2f}")
    busy, waited = wait_for_quiet(args.max_other, args.patience)
    print(
        f"  machine busy (5 s sample, before any run): {busy:.2f} cores"
        + (f", after waiting {waited:.0f} s" if waited >= 1 else "")
    )

    config = SearchConfig(dataset="digits", space="metaqnn-small", epochs=args.epochs, seed=SEED)
    settings = config.trial_settings(device="cpu")
    data = settings.load_data()
    channels, size = data.input_shape[0], min(data.input_shape[1:])
    archs = choose_architectures(config, args.trials, size, channels, data.num_classes)
    print(
        f"{len(archs)} architectures, {args.epochs} epochs each, "
        f"{len(data.train)} training / {len(data.val)} validation images:"
    )
    for arch in archs:
        print(f"  {macs(arch, size, channels) / 1e6:5.1f} M MACs  {arch}")

    runs: list[Run] = []  # accepted rounds
    discarded: list[Run] = []  # rounds disturbed by other processes
    waited_total = waited
    round_ = 0
    while round_ < args.repeats:
        pair = []
        for workers in (1, 2):
            if pair or runs or discarded:
                busy, w = wait_for_quiet(args.max_other, args.patience)
                waited_total += w
            run = run_once(settings, archs, workers, data.num_classes)
            run.label = str(round_ + 1)
            pair.append(run)
            print(
                f"round {round_ + 1} W={workers}: {run.elapsed:6.1f} s, {run.per_hour:6.0f} trials/h; "
                f"training {run.train_seconds:5.1f} s summed; "
                f"wait held results {1000 * statistics.median(run.held):.1f} ms (median); "
                f"CPU: own {run.own_cores:.2f} cores, other processes {run.other_cores:.2f} cores; "
                f"load before {run.load_before:.2f}",
                flush=True,
            )
        if max(r.other_cores for r in pair) > args.max_other and len(discarded) < 2 * args.retries:
            print(f"  round discarded: other processes used more than {args.max_other} cores; rerunning it", flush=True)
            for run in pair:
                run.label += " (discarded)"
            discarded += pair
            continue
        runs += pair
        round_ += 1

    # Same seeds, same networks, CPU: every run must report the same accuracy for each architecture.
    reference = runs[0].outcomes
    mismatches = sorted(
        {
            a
            for run in discarded + runs
            for a, o in run.outcomes.items()
            if (o.status, o.accuracy) != (reference[a].status, reference[a].accuracy)
        }
    )
    failed = sorted({a for run in runs for a, o in run.outcomes.items() if o.status != "done"})

    by_w = {w: [r for r in runs if r.workers == w] for w in (1, 2)}
    med_elapsed = {w: statistics.median(r.elapsed for r in rs) for w, rs in by_w.items()}
    med_per_hour = {w: statistics.median(r.per_hour for r in rs) for w, rs in by_w.items()}
    speedup = med_elapsed[1] / med_elapsed[2]
    pair_speedups = [a.elapsed / b.elapsed for a, b in zip(by_w[1], by_w[2])]
    mean_trial = {w: statistics.median(r.train_seconds for r in rs) / len(archs) for w, rs in by_w.items()}
    # Best possible W=2 time for this list, in this order, with W=2's own trial durations: greedy list
    # scheduling as the runner does it, no latency. Shows how much is lost to the uneven tail alone.
    durations = [statistics.median(r.outcomes[str(a)].train_seconds or 0.0 for r in by_w[2]) for a in archs]
    free = [0.0, 0.0]
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    schedule_bound = sum(durations) / max(free)  # speed-up over running the same durations one by one
    held_all = [h for r in runs for h in r.held]
    other_max = max(r.other_cores for r in runs)
    noisy = other_max > args.max_other
    met = speedup >= TARGET_SPEEDUP
    final_load = os.getloadavg()

    print(
        f"W=1: {med_per_hour[1]:.0f} trials/h ({med_elapsed[1]:.1f} s), W=2: {med_per_hour[2]:.0f} trials/h "
        f"({med_elapsed[2]:.1f} s); speed-up {speedup:.2f}x "
        f"(per round: {', '.join(f'{s:.2f}' for s in pair_speedups)}); "
        f"target >= {TARGET_SPEEDUP}x: {'met' if met else 'MISSED'}"
    )
    print(
        f"  mean training time per trial: W=1 {mean_trial[1]:.2f} s, W=2 {mean_trial[2]:.2f} s "
        f"(contention x{mean_trial[2] / mean_trial[1]:.2f}); "
        f"list-scheduling bound for W=2 with these durations {schedule_bound:.2f}x; "
        f"runner.wait held each result {1000 * statistics.median(held_all):.1f} ms (median) before returning it"
    )
    if mismatches:
        print(f"  WARNING: accuracies differ between runs for {len(mismatches)} architecture(s): {mismatches}")
    if noisy:
        print(
            f"  WARNING: other processes used up to {other_max:.2f} cores during a measured window: numbers are noisy"
        )

    rows = "\n".join(
        f"| {r.label} | {r.workers} | {r.elapsed:.1f} | {r.per_hour:.0f} | {r.train_seconds:.1f} | "
        f"{1000 * statistics.median(r.held):.1f} | {r.own_cores:.2f} | {r.other_cores:.2f} | {r.load_before:.2f} |"
        for r in sorted(discarded + runs, key=lambda r: (int(r.label.split()[0]), "discarded" not in r.label))
    )
    arch_rows = "\n".join(
        f"| `{a}` | {macs(a, size, channels) / 1e6:.1f} | {reference[str(a)].accuracy:.3f} | "
        f"{statistics.median(r.outcomes[str(a)].train_seconds or 0.0 for r in by_w[1]):.2f} |"
        for a in archs
    )
    body = f"""## Local runner: 2 workers against 1 (`bench/bench_workers.py`)

Machine: {machine()}; Python {sys.version.split()[0]}.
Load average (1/5/15 min) before the benchmark: {initial_load[0]:.2f} / {initial_load[1]:.2f} / {initial_load[2]:.2f}; \
at the end: {final_load[0]:.2f} (the benchmark's own runs raise it).
Other engineers share this machine, so before each run the benchmark waits (up to {args.patience:.0f} s) \
until other processes
keep less than {args.max_other} cores busy (5 s sample of /proc/stat), \
and it measures what other processes used during every
measured window (machine busy time less its own processes' CPU time); \
a round where that exceeded {args.max_other} cores is
discarded and rerun (at most {args.retries} times). Waited {waited_total:.0f} s in all; \
{len(discarded) // 2} round(s) discarded;
other processes used at most {other_max:.2f} cores during the accepted windows{" — **still noisy**" if noisy else ""}.

Setup: `LocalRunner(settings, W, 10)` with `trial_settings` of \
`--dataset digits --space metaqnn-small --epochs {args.epochs} --seed {SEED}`
on CPU (each worker `torch.set_num_threads(1)`); {len(archs)} architectures, the first of a seeded random walk
whose cost is {MACS_BAND[0] / 1e6:.0f}–{MACS_BAND[1] / 1e6:.0f} M multiply-accumulates per image; \
each trial seeded with `trial_seed`
as the agent does. Start-up excluded: every worker first trains a warm-up trial (`{WARMUP_ARCH}`), and the clock
runs from the first measured submit to the last outcome. The driver loop refills free workers and calls
`runner.wait({POLL_SECONDS})`, as the agent does. {args.repeats} rounds of (W = 1, W = 2), medians reported.

| | W = 1 | W = 2 |
|---|---|---|
| **trials per hour (median)** | **{med_per_hour[1]:.0f}** | **{med_per_hour[2]:.0f}** |
| time for the {len(archs)} trials (median) | {med_elapsed[1]:.1f} s | {med_elapsed[2]:.1f} s |
| mean training time per trial (inside the worker) | {mean_trial[1]:.2f} s | {mean_trial[2]:.2f} s |

**Speed-up W = 2 over W = 1: {speedup:.2f}×** (target ≥ {TARGET_SPEEDUP}×: {"met" if met else "**missed**"}); \
per round: {", ".join(f"{s:.2f}×" for s in pair_speedups)}.
With these trial durations in this order, greedy assignment to 2 workers could at best reach \
{schedule_bound:.2f}× (uneven tail);
a trial's training time with two trainings at once, relative to one at a time: \
×{mean_trial[2] / mean_trial[1]:.2f} (contention).
`LocalRunner.wait` returned each result a median {1000 * statistics.median(held_all):.1f} ms \
after taking it off the result queue
(time in which the freed worker idles before the driver can hand it the next trial).
Accuracies identical across all runs: {"yes" if not mismatches else f"**no**, {len(mismatches)} differ"}; \
failed trials: {len(failed)}.

| round | W | seconds | trials/h | training s (sum) | wait held (ms, median) | own CPU (cores) | other CPU (cores) \
| load before |
|---|---|---|---|---|---|---|---|---|
{rows}

| architecture | M MACs | accuracy | seconds (W = 1) |
|---|---|---|---|
{arch_rows}
"""
    write_section("workers", body)
    print("wrote section 'workers' of docs/benchmarks.md")
    return 0 if not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
