"""The statistics and the raw-record pipeline of the searcher comparison (bench/searchers_*.py), on known inputs.

No training: the records are synthetic, written with the grid's own writer and read back by the
report, so the round trip and the regenerated tables are checked without a database.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from searchers_stats import bootstrap_ci, paired_summary, sign_flip_test, wilcoxon_signed_rank  # noqa: E402


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    trials = 300
    for i in range(trials):
        sample = rng.normal(0.7, 0.05, size=40)
        low, high = bootstrap_ci(sample, resamples=2000, seed=i)
        covered += low <= 0.7 <= high
    assert 0.90 <= covered / trials <= 0.99  # percentile bootstrap at n=40 slightly undercovers


def test_bootstrap_interval_is_reproducible_and_degenerate_cases_are_explicit() -> None:
    sample = [0.1, 0.4, 0.35, 0.8]
    assert bootstrap_ci(sample) == bootstrap_ci(sample)
    low, high = bootstrap_ci(sample)
    assert min(sample) <= low < np.mean(sample) < high <= max(sample)
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    assert all(np.isnan(bootstrap_ci([])))
    median_low, median_high = bootstrap_ci(sample, statistic=np.median)
    assert min(sample) <= median_low <= median_high <= max(sample)


def test_sign_flip_test_on_hand_computed_cases() -> None:
    # Five positive differences: only the all-plus and all-minus assignments are as extreme.
    assert sign_flip_test([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    # |±3 ±1 ±2| over 8 assignments is 6, 2, 4, 0 twice each; observed |3 - 1 + 2| = 4: 4 of 8 reach it.
    assert sign_flip_test([3, -1, 2]) == pytest.approx(0.5)
    assert sign_flip_test([1, -1]) == 1.0
    assert sign_flip_test([]) == 1.0


def test_wilcoxon_exact_matches_hand_and_scipy() -> None:
    assert wilcoxon_signed_rank([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([0.0, 0.0]) == 1.0
    # ranks of |d| = 1..4 with signs + - + +: W+ = 1 + 3 + 4 = 8, centre 5; of the 16 subset sums of
    # {1, 2, 3, 4}, six (0, 1, 2, 8, 9, 10) are at least 3 from the centre.
    assert wilcoxon_signed_rank([0.1, -0.2, 0.3, 0.4]) == pytest.approx(6 / 16)
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for _ in range(5):
        d = rng.normal(0.02, 0.03, size=9)
        expected = scipy_stats.wilcoxon(d, method="exact").pvalue
        assert wilcoxon_signed_rank(d) == pytest.approx(expected)


def test_paired_summary_counts_and_tests_a_clear_difference() -> None:
    learner = [0.95, 0.96, 0.94, 0.97, 0.95, 0.96, 0.93, 0.96, 0.95, 0.97]
    baseline = [0.90, 0.91, 0.92, 0.90, 0.95, 0.89, 0.91, 0.90, 0.93, 0.92]
    s = paired_summary(learner, baseline)
    assert (s["n"], s["wins"], s["ties"], s["losses"]) == (10, 9, 1, 0)
    assert s["ci_low"] > 0 and s["mean_diff"] == pytest.approx(np.mean(np.subtract(learner, baseline)))
    assert s["p_wilcoxon"] < 0.01 and s["p_sign_flip"] < 0.01
    with pytest.raises(ValueError):
        paired_summary([1.0], [1.0, 2.0])


def _trial(run: str, seed: int, index: int, accuracy: float, epsilon: float | None) -> dict:
    dataset, label, _ = run.split("|")
    return {
        "run": run,
        "dataset": dataset,
        "label": label,
        "seed": seed,
        "trial": index,
        "arch": f"[C({8 * (index + 1)},3,1), SM(10)]",
        "status": "done",
        "accuracy": accuracy,
        "epsilon": epsilon,
        "params": 100 + index,
        "train_seconds": 10.0,
        "run_complete": True,
    }


def test_raw_records_round_trip_and_regenerate_the_report(tmp_path: Path) -> None:
    from searchers_grid import write_gz
    from searchers_report import accuracies, generate, load

    results = tmp_path / "results"
    budget, seeds = 4, 5
    runs, retrain = [], []
    for seed in range(seeds):
        for label, accs, eps in (
            ("qlearning", [0.5, 0.6, 0.9, 0.95], [1.0, 1.0, 0.5, 0.5]),
            ("random", [0.5, 0.55, 0.6, 0.7], [None] * 4),
        ):
            key = f"digits|{label}|{seed}"
            name = f"trials-digits-{label}-s{seed}.jsonl.gz"
            records = [_trial(key, seed, i, a + 0.001 * seed, e) for i, (a, e) in enumerate(zip(accs, eps))]
            assert write_gz(results / name, records) is True
            assert write_gz(results / name, records) is False  # byte-identical rewrite: git sees no change
            runs.append({"run": key, "label": label, "seed": seed, "dataset": "digits", "complete": True, "file": name})
            for rank in (1, 2):
                retrain.append(
                    {
                        "run": key,
                        "dataset": "digits",
                        "label": label,
                        "rank": rank,
                        "train_seed": 1,
                        "seconds": 5.0,
                        "search_accuracy": max(accs),
                        "val_accuracy": max(accs) - 0.01,
                        "test_accuracy": max(accs) - 0.02,
                    }
                )
    write_gz(results / "runs.jsonl.gz", runs)
    write_gz(results / "retrain.jsonl.gz", retrain)
    grid = {
        "planned_runs": [r["run"] for r in runs],
        "pairs": [["qlearning", "random"]],
        "budget": budget,
        "top": 2,
        "retrain_seeds": [1],
        "noise_seeds": [],
        "epochs": {"qlearning": 20, "random": 20},
        "datasets": {"digits": {"input_shape": [1, 8, 8], "classes": 10, "train": 1150, "val": 288, "test": 359}},
    }
    write_gz(results / "grid.jsonl.gz", [grid])
    with gzip.open(results / "trials-digits-random-s3.jsonl.gz", "rt") as lines:
        assert json.loads(lines.readline())["accuracy"] == pytest.approx(0.503)

    data = load(results)
    assert data.seeds == [0, 1, 2, 3, 4] and data.datasets == ["digits"]
    assert accuracies(data.trials["digits|qlearning|2"]).tolist() == pytest.approx([0.502, 0.602, 0.902, 0.952])

    docs = tmp_path / "docs"
    text = generate(results, docs)
    assert (docs / "searchers_best_so_far.png").stat().st_size > 0
    assert (docs / "searchers_epsilon.png").stat().st_size > 0
    assert "**5 of 5 complete**" not in text and "**10 of 10 complete**" in text
    # Best validation accuracy: 0.95 against 0.70 in every seed; exact tests at 5 pairs bottom out at 2/32.
    assert "| 0 | 4 | 0.9500 / 0.7000 |" in text
    assert "+0.2500 | [+0.2500, +0.2500] | 0.062 / 0.062 | 5/0/0" in text
    # ε trend: mean of the two ε = 0.5 networks (0.925 in seed 0), next to random's at the same indices (0.65).
    assert "| 0.5 | 0.925 (2) |" in text and "| 0.927 | 0.652 |" in text


def test_grid_plan_is_paired_seed_by_seed_and_complete() -> None:
    from searchers_grid import PAIRS, plan

    jobs = plan()
    searches = [j.run.key for j in jobs if j.kind == "search"]
    assert len(searches) == len(set(searches)) == 70  # 7 labels × 2 datasets × 5 seeds, random-nsc once per seed
    # Seed by seed, both datasets of a seed first: each finished seed is a pair on each dataset.
    assert searches[:4] == ["digits|qlearning|0", "digits|random|0", "shapes|qlearning|0", "shapes|random|0"]
    # The first pair finishes both datasets' five seeds before any other learner starts.
    first_other = next(i for i, key in enumerate(searches) if key.split("|")[1] not in PAIRS[0])
    assert first_other == 20 and searches[18:20] == ["shapes|qlearning|4", "shapes|random|4"]
    # Every run is retrained after its search; each baseline's seed 0 gets a noise floor.
    order = [j.key for j in jobs]
    for job in jobs:
        assert all(order.index(dep) < order.index(job.key) for dep in job.after)
    assert sum(j.kind == "retrain" for j in jobs) == 70
    noise = sorted(j.run.key for j in jobs if j.kind == "noise")
    assert noise == sorted(
        f"{d}|{b}|0" for d in ("digits", "shapes") for b in ("random", "reinforce-no-learning", "random-nsc")
    )


def test_epsilon_steps_split_launch_order_into_runs_of_equal_epsilon() -> None:
    from searchers_report import epsilon_steps

    trials = [{"epsilon": e} for e in (1.0, 1.0, 0.9, 0.9, 0.9, 0.1)]
    assert epsilon_steps(trials) == [(1.0, 0, 2), (0.9, 2, 5), (0.1, 5, 6)]
    assert epsilon_steps([{"epsilon": None}]) == []


def test_a_stale_postmaster_pid_is_removed_before_the_server_starts(tmp_path: Path) -> None:
    import os

    from searchers_grid import clear_stale_pid

    pid_file = tmp_path / "pg" / "pg" / "postmaster.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getpid()}\n/some/dir\n")  # a live pid, but not PostgreSQL's
    clear_stale_pid(tmp_path)
    assert not pid_file.exists()
    clear_stale_pid(tmp_path)  # nothing to remove: no error


def test_a_grid_trains_on_one_kind_of_device(tmp_path: Path) -> None:
    # fp32 on a CPU and bf16 on a GPU are not alike: a work directory keeps the device it started with.
    from searchers_grid import claim_device

    claim_device(tmp_path, "cpu")
    claim_device(tmp_path, "cpu")  # resuming on the same device is fine
    with pytest.raises(SystemExit, match="trained on cpu; use another --work for --device cuda"):
        claim_device(tmp_path, "cuda")
    assert (tmp_path / "device").read_text() == "cpu\n"
