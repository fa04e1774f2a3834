"""One live search per experiment: the advisory lock, its holder line, and what it refuses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from nasagent.errors import StoreError
from nasagent.persistence.locks import experiment_lock, lock_key
from nasagent.persistence.postgres import Store

REPO = Path(__file__).resolve().parent.parent


def nasagent(*args: str, db: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "NASAGENT_DB": db}
    return subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_second_holder_is_refused_with_the_first_ones_name(store: Store, db_url: str) -> None:
    with experiment_lock(store, "exp", "search"), Store.connect(db_url) as other:
        with pytest.raises(StoreError) as refused, experiment_lock(other, "exp", "delete"):
            pass
        message = str(refused.value)
        assert message.startswith(f"experiment 'exp' is in use by process {os.getpid()} on host {socket.gethostname()}")
        assert "(nasagent search) since 20" in message and message.endswith("UTC; wait for it to end, or stop it first")
        with experiment_lock(other, "another", "search"):  # other experiments are not affected
            pass
    with Store.connect(db_url) as other, experiment_lock(other, "exp", "search"):
        pass  # released at the end of the block


def test_the_lock_dies_with_its_holders_connection(db_url: str) -> None:
    # A holder that is killed (here: its process exits without releasing) frees the lock at once.
    child = (
        "import os; from nasagent.persistence.postgres import Store; from nasagent.persistence.locks import acquire; "
        f"acquire(Store.connect({db_url!r}), 'gone', 'search'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", child], check=True, cwd=REPO)
    with Store.connect(db_url) as store, experiment_lock(store, "gone"):
        pass


def test_a_lock_is_taken_again_after_a_reconnection_or_the_holder_stops(store: Store, db_url: str) -> None:
    admin = psycopg2.connect(db_url)
    admin.autocommit = True

    def drop_connection(target: Store) -> None:
        pid = target._fetch("SELECT pg_backend_pid()")[0][0]
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))

    with experiment_lock(store, "relock"):
        drop_connection(store)
        assert store.find_experiment("nothing") is None  # reconnects, and takes the lock again
        assert store.reconnects == 1
        with Store.connect(db_url) as other, pytest.raises(StoreError, match="in use by process"):
            experiment_lock(other, "relock").__enter__()
        # Someone else takes the lock while our connection is down: we stop, they carry on.
        drop_connection(store)
        with Store.connect(db_url) as other, experiment_lock(other, "relock"):
            with pytest.raises(StoreError, match="another process took its lock; this one stops"):
                store.find_experiment("nothing")
    admin.close()


def test_a_search_on_a_held_experiment_exits_at_once_and_changes_nothing(store: Store, db_url: str) -> None:
    store.create_experiment("busy", {"dataset": "digits"})
    with experiment_lock(store, "busy", "search"):
        for args in (
            ["search", "--experiment", "busy", "--trials", "2", "--epochs", "1"],
            ["delete", "--experiment", "busy", "--yes"],
            ["extend", "--experiment", "busy", "--trials", "50"],
        ):
            line = one_line(nasagent(*args, db=db_url))
            assert f"experiment 'busy' is in use by process {os.getpid()} on host" in line, line
    assert store.get_experiment("busy").config == {"dataset": "digits"}
    assert store.trials(store.get_experiment("busy").id) == []


def test_two_searches_started_together_train_the_budget_once(db_url: str) -> None:
    env = {**os.environ, "NASAGENT_DB": db_url}
    args = [sys.executable, "-m", "nasagent.cli", "search", "--experiment", "race", "--trials", "3", "--epochs", "1"]
    args += ["--workers", "1"]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # the loser is refused, or resumes the finished search
    for code, stderr in results:
        if code == 2:
            assert "experiment 'race' is in use by process" in stderr and "Traceback" not in stderr
    with Store.connect(db_url) as store:
        experiment = store.get_experiment("race")
        trials = store.trials(experiment.id)
        assert len(trials) == 3 and len({t.digest for t in trials}) == 3
        assert all(t.status in ("done", "failed") and t.attempts == 1 for t in trials)


def test_lock_keys_are_stable_and_distinct() -> None:
    assert lock_key("a") == lock_key("a") != lock_key("b")
    assert -(2**63) <= lock_key("x" * 1000) < 2**63
