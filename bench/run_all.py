"""Runs every benchmark in turn (``make bench``): CLI latency, trainer, agent, workers, dashboard, local
pipeline, early stopping replayed over recorded curves. The long ones (``bench_early_stop.py``,
``bench_trial_cost.py``, the searchers' grid, the transfer experiment: hours on a CPU) run alone.

Each runs as a subprocess of the same interpreter from the repository root and writes its own
section of docs/benchmarks.md. They run one after another, never at once, because they time the
same cores and all rewrite the same report file. Exits non-zero if any benchmark fails (the
others still run), naming the ones that did.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = (
    "bench_cli.py",
    "bench_trainer.py",
    "bench_agent.py",
    "bench_workers.py",
    "bench_dashboard.py",
    "bench_pipeline_local.py",
    "replay_early_stop.py",
)


def main() -> int:
    failed: list[str] = []
    for name in BENCHMARKS:
        print(f"=== {name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(ROOT / "bench" / name)], cwd=ROOT)
        took = time.monotonic() - started
        print(f"=== {name}: {'ok' if code == 0 else f'FAILED (exit code {code})'} in {took:.0f} s ===", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(BENCHMARKS)} benchmarks passed; results in docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
