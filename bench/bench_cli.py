"""CLI latency: how long ``nasagent --help``, ``<command> --help``, ``status`` and ``top`` take, now and on the
old flat layout (commit 4addcdd, before the package was layered), with the embedded database already running.

Each command is a fresh interpreter (``python -m nasagent.cli ...``), as a user's shell starts it; the
median of ``--repeats`` runs is reported, the two layouts interleaved run by run so that a burst of load
hits both alike. The old layout is checked out into a temporary git worktree and imported by running
there (``python -m`` puts the working directory first on ``sys.path``), with the same interpreter and
packages; each layout has its own database, migrated to the schema it knows. Targets (issue 7):
``--help`` within 0.5 s, ``status``/``top`` within 1.5 s.

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

from nasagent.persistence import embedded_url, stop_embedded  # noqa: E402
from nasagent.persistence.databases import create_database  # noqa: E402

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


# An experiment with 200 finished trials, so ``status`` and ``top`` read real rows. Run in each layout's own
# directory against its own database: each layout migrates the schema to the version it knows.
SEED = f"""
import sys
from nasagent.config import SearchConfig
try:
    from nasagent.persistence.postgres import Store
except ImportError:  # the flat layout
    from nasagent.store.postgres import Store
with Store.connect(sys.argv[1]) as store:
    experiment = store.create_experiment({EXPERIMENT!r}, SearchConfig(trials=200).to_dict())
    with store.transaction() as tx:
        for i in range(200):
            trial = tx.insert_trial(experiment.id, f"[FC({{i + 1}}), SM(10)]", f"{{i:016x}}", 1.0)
            tx.finish_trial(trial, "done", 0.5 + i / 1000, 1000 + i, None, 1.0)
"""


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds one command takes; ``python -m`` puts ``cwd`` first on sys.path, so ``cwd`` picks the layout."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nasagent.cli", *argv], env=env, cwd=cwd, check=True, capture_output=True)
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
        server = embedded_url(home)
        neutral = home  # no nasagent/ here: the installed (layered) package is imported
        envs: dict[Path, dict[str, str]] = {}
        check = "import nasagent.cli, sys; print(nasagent.cli.__file__)"
        for cwd, root, database in ((neutral, ROOT, "cli_new"), (old, old, "cli_old")):
            url = create_database(server, database)
            env = envs[cwd] = {**os.environ, "NASAGENT_HOME": str(home), "NASAGENT_DB": url}
            where = subprocess.run([sys.executable, "-c", check], env=env, cwd=cwd, capture_output=True, text=True)
            assert where.stdout.strip().startswith(str(root)), where.stdout  # each run imports the layout it names
            subprocess.run([sys.executable, "-c", SEED, url], env=env, cwd=cwd, check=True)
        times: dict[str, dict[str, list[float]]] = {name: {"new": [], "old": []} for name in COMMANDS}
        for argv in COMMANDS.values():  # one warm-up each: the first start pays for the page cache
            timed(argv, envs[neutral], neutral)
            timed(argv, envs[old], old)
        for _ in range(args.repeats):
            for name, argv in COMMANDS.items():
                times[name]["new"].append(timed(argv, envs[neutral], neutral))
                times[name]["old"].append(timed(argv, envs[old], old))
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
    quiet = (
        "a quiet machine"
        if load[1] < 0.5
        else "NOT a quiet machine (other processes were running: absolute times are inflated for both layouts alike)"
    )
    body = f"""## CLI latency (`bench/bench_cli.py`)

Machine: {machine()}; load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min):\n{quiet}.
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
