"""The ``nasagent`` command as users' scripts call it: real processes, real PostgreSQL, real training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nasagent.persistence.postgres import Store


def nasagent(*args: str, db: str, env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "NASAGENT_DB": db, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def search_args(name: str, trials: int = 4, workers: int = 2, *extra: str) -> list[str]:
    return [
        "search",
        "--experiment",
        name,
        "--dataset",
        "digits",
        "--space",
        "metaqnn-small",
        "--trials",
        str(trials),
        "--epochs",
        "1",
        "--workers",
        str(workers),
        "--seed",
        "0",
        *extra,
    ]


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasagent: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_search_status_and_top_end_to_end(db_url: str) -> None:
    result = nasagent(*search_args("e2e"), db=db_url)
    assert result.returncode == 0, result.stderr
    assert "top 10 of e2e" in result.stdout  # the leaderboard at the end
    status = json.loads(nasagent("status", "--experiment", "e2e", "--json", db=db_url).stdout)
    assert status["experiment"] == "e2e" and status["unique_trained"] == 4
    assert status["trials_done"] >= 4 and status["epsilon"] in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    assert 0.0 < status["best_accuracy"] <= 1.0
    top = json.loads(nasagent("top", "--experiment", "e2e", "-k", "3", "--json", db=db_url).stdout)
    assert [row["rank"] for row in top] == [1, 2, 3]
    assert top[0]["accuracy"] == status["best_accuracy"]
    assert all(a["accuracy"] >= b["accuracy"] for a, b in zip(top, top[1:]))
    assert all(row["arch"].startswith("[") and row["params"] > 0 for row in top)
    # Running the finished search again changes nothing and trains nothing.
    again = nasagent(*search_args("e2e"), db=db_url)
    assert again.returncode == 0
    assert json.loads(nasagent("status", "--experiment", "e2e", "--json", db=db_url).stdout)["unique_trained"] == 4


def test_kill_9_loses_nothing_and_trains_nothing_twice(db_url: str) -> None:
    env = {**os.environ, "NASAGENT_DB": db_url}
    args = search_args("killed", 8, 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasagent.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with Store.connect(db_url) as store:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            exp = store.find_experiment("killed")
            if exp is not None and store.counts(exp.id)["unique_trained"] >= 2:
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # only the agent: its workers must notice and leave
        proc.wait()
        exp = store.get_experiment("killed")
        before = {t.digest: t for t in store.trials(exp.id)}
        recorded = {d for d, t in before.items() if t.status != "running"}
        in_flight = {d for d, t in before.items() if t.status == "running"}
        assert len(recorded) >= 2
        replay_before = store.load_replay(exp.id)
    resumed = nasagent(*args, db=db_url)
    assert resumed.returncode == 0, resumed.stderr
    with Store.connect(db_url) as store:
        trials = store.trials(exp.id)
        after = {t.digest: t for t in trials}
        assert len(trials) == len(after) == 8  # each architecture once
        assert all(t.status in ("done", "failed") for t in trials)
        for digest in recorded:  # nothing recorded was lost or retrained
            assert after[digest].accuracy == before[digest].accuracy
            assert after[digest].attempts == 1
        for digest in in_flight:  # trials in flight at the kill were run again
            assert after[digest].attempts == 2
        assert store.load_replay(exp.id)[: len(replay_before)] == replay_before


def test_resume_with_different_flags_is_refused(db_url: str) -> None:
    assert nasagent(*search_args("flags", 2, 1), db=db_url).returncode == 0
    assert_one_line_error(nasagent(*search_args("flags", 3, 1), db=db_url), "--trials", "flags")


@pytest.mark.parametrize(
    "args,words",
    [
        (["status", "--experiment", "ghost", "--json"], ["ghost"]),
        (["top", "--experiment", "ghost", "-k", "3"], ["ghost"]),
        (["top", "--experiment", "ghost", "-k", "0"], ["-k"]),
        (["search", "--experiment", "x", "--trials", "abc"], ["--trials"]),
        (["search", "--experiment", "x", "--trials", "0"], ["--trials"]),
        (["search", "--experiment", "x", "--epochs", "0"], ["--epochs"]),
        (["search", "--experiment", "x", "--workers", "0"], ["--workers"]),
        (["search", "--experiment", "x", "--dataset", "imagenet"], ["imagenet"]),
        (["search", "--experiment", "x", "--dataset", "npz:/nonexistent/data.npz"], ["nonexistent"]),
        (["search", "--experiment", "x", "--space", "nope"], ["nope"]),
        (["search", "--experiment", "x", "--strategy", "genetic"], ["--strategy"]),
        (["search", "--experiment", "x", "--schedule", "1.0:x"], ["--schedule"]),
        (["bogus"], []),
    ],
)
def test_bad_input_is_one_line_and_exit_2(db_url: str, args: list[str], words: list[str]) -> None:
    assert_one_line_error(nasagent(*args, db=db_url), *words)


def test_bad_data_file_is_one_line_and_exit_2(db_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "nan.npz"
    x = np.random.rand(40, 8, 8).astype(np.float32)
    x[3, 2, 1] = np.nan
    np.savez(bad, x=x, y=np.arange(40) % 2)
    assert_one_line_error(nasagent("search", "--experiment", "nan", "--dataset", f"npz:{bad}", db=db_url), "NaN")


def test_unreachable_or_malformed_database_is_one_line_and_exit_2(db_url: str) -> None:
    assert_one_line_error(
        nasagent("status", "--experiment", "x", "--db", "postgresql://nobody@127.0.0.1:1/db", db=db_url), "cannot reach"
    )
    assert_one_line_error(nasagent("status", "--experiment", "x", "--db", "mysql://h/db", db=db_url), "postgresql://")


def test_rejected_input_leaves_no_experiment_behind(db_url: str, tmp_path: Path) -> None:
    bad = nasagent(
        "search", "--experiment", "oops", "--strategy", "reinforce", "--option", "depht=3", "--trials", "2", db=db_url
    )
    assert_one_line_error(bad, "depht")
    missing = nasagent("search", "--experiment", "oops", "--dataset", f"npz:{tmp_path / 'none.npz'}", db=db_url)
    assert_one_line_error(missing, "none.npz")
    with Store.connect(db_url) as store:
        assert store.find_experiment("oops") is None
