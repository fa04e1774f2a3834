"""CLI latency: how long ``nasagent --help``, ``<command> --help``, ``status`` and ``top`` take, now and on the
old flat layout (commit 4addcdd, before the package was layered), with the embedded database already running.

Each command is a fresh interpreter (``python -m nasagent.cli ...``), as a user's shell starts it; the
median of ``--repeats`` runs is reported, the two layouts interleaved run by run so that a burst of load
hits both alike. The old layout is checked out into a temporary git worktree and imported through
``PYTHONPATH``, with the same interpreter and packages. Targets (issue 7): ``--help`` within 0.5 s,
``status``/``top`` within 1.5 s.

    python bench/bench_cli.py [--repeats 15] [--old-commit 4addcdd]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _report import machine, write_section  # noqa: E402

from nasagent.config import SearchConfig  # noqa: E402
from nasagent.persistence import Store, embedded_url, stop_embedded  # noqa: E402

EXPERIMENT = "cli-latency"
COMMANDS: dict[str, list[str]] = {
    "nasagent --help": ["--help"],
    "nasagent search --help": ["search", "--help"],
    "nasagent status --json": ["status", "--experiment", EXPERIMENT, "--json"],
    "nasagent top -k 10 --json": ["top", "--experiment", EXPERIMENT, "-k", "10", "--json"],
}
TARGETS = {
    "nasagent --help": 0.5,
    "nasagent search --help": 0.5,
    "nasagent status --json": 1.5,
    "nasagent top -k 10 --json": 1.5,
}


def seed_experiment(url: str) -> None:
    """An experiment with 200 finished trials, so ``status`` and ``top`` read real rows."""
    with Store.connect(url) as store:
        if store.find_experiment(EXPERIMENT) is not None:
            return
        experiment = store.create_experiment(EXPERIMENT, SearchConfig(trials=200).to_dict())
        with store.transaction() as tx:
            for i in range(200):
                trial = tx.insert_trial(experiment.id, f"[FC({i + 1}), SM(10)]", f"{i:016x}", 1.0)
                tx.finish_trial(trial, "done", 0.5 + i / 1000, 1000 + i, None, 1.0)


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nasagent.cli", *argv], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--old-commit", default="4addcdd")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="nasb", dir="/tmp"))
    old = Path(tempfile.mkdtemp(prefix="nasagent-old-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(old), args.old_commit], cwd=ROOT, check=True, capture_output=True
    )
    try:
        url = embedded_url(home)
        seed_experiment(url)
        new_env = {**os.environ, "NASAGENT_HOME": str(home), "NASAGENT_DB": url}
        old_env = {**new_env, "PYTHONPATH": str(old)}
        times: dict[str, dict[str, list[float]]] = {name: {"new": [], "old": []} for name in COMMANDS}
        for argv in COMMANDS.values():  # one warm-up each: the first start pays for the page cache
            timed(argv, new_env)
            timed(argv, old_env)
        for _ in range(args.repeats):
            for name, argv in COMMANDS.items():
                times[name]["new"].append(timed(argv, new_env))
                times[name]["old"].append(timed(argv, old_env))
        load = os.getloadavg()
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
        stop_embedded(home)

    rows = []
    for name in COMMANDS:
        new, before = statistics.median(times[name]["new"]), statistics.median(times[name]["old"])
        verdict = "met" if new <= TARGETS[name] else "MISSED"
        rows.append(f"| `{name}` | {before:.2f} s | {new:.2f} s | {before / new:.1f}x | {TARGETS[name]} s: {verdict} |")
        print(f"{name:>28}: old {before:.3f} s, new {new:.3f} s (target {TARGETS[name]} s: {verdict})")
    body = f"""## CLI latency (`bench/bench_cli.py`)

Machine: {machine()}; load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min).
Each command is a new interpreter (`python -m nasagent.cli`), median of {args.repeats} runs, old and new interleaved;
the embedded PostgreSQL was already running and the experiment has 200 finished trials. "Old" is the flat layout
of commit `{args.old_commit}` (importing the parser loaded every command module, and through them torch, psycopg2 and
kfp); "new" is the layered package, whose CLI imports a command's libraries only when it runs.

| command | old layout | layered | speed-up | target |
|---|---:|---:|---:|---|
{chr(10).join(rows)}
"""
    write_section("cli-latency", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
