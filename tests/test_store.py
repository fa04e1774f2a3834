"""The PostgreSQL store, against a real embedded PostgreSQL (see conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from nasagent.errors import DuplicateTrialError, InternalError, StoreError, UserError
from nasagent.persistence import Store, embedded_url, redact_url, resolve_db_url, stop_embedded
from nasagent.persistence.postgres import available_migrations

REPO = Path(__file__).resolve().parents[1]


def _schema_migrations(url: str) -> list[tuple[int, str]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
            return cur.fetchall()
    finally:
        conn.close()


def _experiment(store: Store, name: str = "exp") -> int:
    return store.create_experiment(name, {"space": "metaqnn-small", "seed": 0}).id


# -- migrations ---------------------------------------------------------------------------


def test_migration_files_are_versioned() -> None:
    migrations = available_migrations()
    assert [(version, name) for version, name, _ in migrations][:1] == [(1, "initial")]
    assert [m[0] for m in migrations] == sorted({m[0] for m in migrations})


def test_migrations_are_idempotent_and_recorded(db_url: str) -> None:
    with Store.connect(db_url) as first:
        assert _schema_migrations(db_url) == [(v, n) for v, n, _ in available_migrations()]
        assert first.migrate() == []
    with Store.connect(db_url) as second:
        assert second.migrate() == []
        assert second.list_experiments() == []
    assert _schema_migrations(db_url) == [(v, n) for v, n, _ in available_migrations()]


def test_concurrent_migrations_apply_once(db_url: str) -> None:
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            Store.connect(db_url).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _schema_migrations(db_url) == [(v, n) for v, n, _ in available_migrations()]


def test_newer_schema_than_code_is_a_store_error(store: Store, db_url: str) -> None:
    conn = psycopg2.connect(db_url)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
    conn.close()
    with pytest.raises(StoreError, match="newer than this nasagent"):
        Store.connect(db_url)


# -- experiments --------------------------------------------------------------------------


def test_experiment_create_get_list(store: Store) -> None:
    created = store.create_experiment("digits", {"trials": 24, "nested": {"a": [1, 2.5]}})
    assert created.name == "digits" and created.config == {"trials": 24, "nested": {"a": [1, 2.5]}}
    assert store.get_experiment("digits") == created
    assert store.find_experiment("nope") is None
    other = store.create_experiment("other", {})
    assert [e.name for e in store.list_experiments()] == ["digits", "other"]

    assert store.get_experiment("other") == other

    with pytest.raises(StoreError, match="experiment 'digits' already exists"):
        store.create_experiment("digits", {})
    with pytest.raises(StoreError, match="^unknown experiment 'nope'$"):
        store.get_experiment("nope")


def test_deleting_an_experiment_cascades(store: Store, db_url: str) -> None:
    exp = _experiment(store)
    with store.transaction() as tx:
        trial = tx.insert_trial(exp, "[SM(10)]", "d1", 1.0)
        tx.append_replay(exp, trial, "[SM(10)]", 0.5)
        tx.upsert_q(exp, {("s", "a"): 0.5})
        tx.save_agent_state(exp, "qlearning", {"step": 1})
    conn = psycopg2.connect(db_url)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM experiments WHERE id = %s", (exp,))
        cur.execute(
            "SELECT (SELECT count(*) FROM trials) + (SELECT count(*) FROM replay_memory)"
            " + (SELECT count(*) FROM q_values) + (SELECT count(*) FROM agent_state)"
        )
        assert cur.fetchone() == (0,)
    conn.close()


# -- trials ------------------------------------------------------------------------------


def test_trial_lifecycle(store: Store) -> None:
    exp = _experiment(store)
    with store.transaction() as tx:
        trial_id = tx.insert_trial(exp, "[C(64,3,1), SM(10)]", "abc", 0.9, worker="w1", info={"a": 1})
    row = store.trials(exp)[0]
    assert (row.id, row.status, row.arch, row.digest, row.epsilon, row.worker) == (
        trial_id,
        "running",
        "[C(64,3,1), SM(10)]",
        "abc",
        0.9,
        "w1",
    )
    assert row.attempts == 1 and row.info == {"a": 1}
    assert row.started_at is not None and row.finished_at is None and row.accuracy is None

    with store.transaction() as tx:
        tx.finish_trial(trial_id, "failed", 0.0, None, "CUDA out of memory", 1.5, info={"b": 2})
    row = store.trial_by_digest(exp, "abc")
    assert row is not None
    assert (row.status, row.failure, row.train_seconds, row.info) == (
        "failed",
        "CUDA out of memory",
        1.5,
        {"a": 1, "b": 2},
    )
    assert row.finished_at is not None and row.finished_at >= row.started_at

    with store.transaction() as tx:
        tx.restart_trial(trial_id)
    row = store.trial_by_digest(exp, "abc")
    assert row is not None
    assert (row.status, row.attempts, row.accuracy, row.failure, row.finished_at, row.train_seconds) == (
        "running",
        2,
        None,
        None,
        None,
        None,
    )

    with store.transaction() as tx:
        tx.finish_trial(trial_id, "done", 0.87, 12345, None, 3.0, info={"a": 9}, worker="w2")
    row = store.trial_by_digest(exp, "abc")
    assert row is not None
    assert (row.status, row.accuracy, row.params, row.info) == ("done", 0.87, 12345, {"a": 9, "b": 2})
    assert row.worker == "w2"
    assert store.trials(exp, status="done") == [row]
    assert store.trials(exp, status="running") == []
    assert store.trial_by_digest(exp, "other") is None

    with store.transaction() as tx, pytest.raises(ValueError):
        tx.finish_trial(trial_id, "running", 0.5, None, None, None)
    with store.transaction() as tx, pytest.raises(StoreError):
        tx.finish_trial(10_000, "done", 0.5, None, None, None)


def test_numpy_values_are_accepted(store: Store) -> None:
    exp = _experiment(store)
    with store.transaction() as tx:
        trial = tx.insert_trial(exp, "[SM(10)]", "d", np.float64(0.5))
        tx.finish_trial(trial, "done", np.float32(0.75), np.int64(42), None, np.float64(1.0), {"x": np.int64(3)})
        tx.append_replay(exp, trial, "[SM(10)]", np.float32(0.75))
        tx.upsert_q(exp, {("s", "a"): np.float32(0.25)})
        tx.save_agent_state(exp, "qlearning", {"counts": np.arange(3), "eps": np.float64(0.1)})
    row = store.trials(exp)[0]
    assert (row.accuracy, row.params, row.info) == (0.75, 42, {"x": 3})
    assert store.load_agent_state(exp) == ("qlearning", {"counts": [0, 1, 2], "eps": 0.1})


def test_digest_is_unique_per_experiment(store: Store) -> None:
    exp = _experiment(store, "a")
    other = _experiment(store, "b")
    with store.transaction() as tx:
        first = tx.insert_trial(exp, "[SM(10)]", "same", 1.0)
        with pytest.raises(DuplicateTrialError, match="already a trial"):
            tx.insert_trial(exp, "[SM(10)]", "same", 0.5)
        # Nothing was written and the transaction is still usable.
        tx.append_replay(exp, first, "[SM(10)]", 0.1)
        tx.insert_trial(other, "[SM(10)]", "same", 1.0)  # another experiment may train it
    assert [t.id for t in store.trials(exp)] == [first]
    assert len(store.trials(other)) == 1
    assert store.load_replay(exp) == [("[SM(10)]", 0.1)]
    assert issubclass(DuplicateTrialError, InternalError) and not issubclass(
        DuplicateTrialError, UserError
    )  # a bug, not bad input


# -- transactions -------------------------------------------------------------------------


def test_exception_in_transaction_writes_nothing(store: Store) -> None:
    exp = _experiment(store)
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            trial = tx.insert_trial(exp, "[SM(10)]", "d", 1.0)
            tx.append_replay(exp, trial, "[SM(10)]", 0.3)
            tx.upsert_q(exp, {("s", "a"): 1.0})
            tx.save_agent_state(exp, "qlearning", {"step": 1})
            assert store.trial_by_digest(exp, "d") is not None  # reads see the transaction's writes
            raise RuntimeError("boom")
    assert store.trials(exp) == []
    assert store.load_replay(exp) == []
    assert store.load_q(exp) == {}
    assert store.load_agent_state(exp) is None
    # The Store is still usable afterwards.
    with store.transaction() as tx:
        tx.insert_trial(exp, "[SM(10)]", "d", 1.0)
    assert len(store.trials(exp)) == 1


def test_transactions_do_not_nest_and_end(store: Store) -> None:
    exp = _experiment(store)
    with store.transaction() as tx:
        with pytest.raises(RuntimeError, match="nest"):
            with store.transaction():
                pass
        tx.upsert_q(exp, {("s", "a"): 1.0})
    with pytest.raises(RuntimeError, match="ended"):
        tx.upsert_q(exp, {("s", "a"): 2.0})
    assert store.load_q(exp) == {("s", "a"): 1.0}


def test_uncommitted_work_is_invisible_to_other_connections(store: Store, db_url: str) -> None:
    exp = _experiment(store)
    with Store.connect(db_url) as other:
        with store.transaction() as tx:
            tx.insert_trial(exp, "[SM(10)]", "d", 1.0)
            assert other.trials(exp) == []
        assert len(other.trials(exp)) == 1


# -- Q-values, replay memory, agent state --------------------------------------------------


def test_q_upsert_round_trip_and_updates(store: Store) -> None:
    exp = _experiment(store, "a")
    other = _experiment(store, "b")
    values = {(f"state{i}", f"action{i % 7}"): i / 1000 for i in range(1000)}
    with store.transaction() as tx:
        tx.upsert_q(exp, values)
        tx.upsert_q(other, {("state1", "action1"): -1.0})
        tx.upsert_q(exp, {})
    assert store.load_q(exp) == values

    update = {("state1", "action1"): 0.5, ("state2", "action2"): -0.25, ("new", "x"): 1.0}
    with store.transaction() as tx:
        tx.upsert_q(exp, update)
    assert store.load_q(exp) == {**values, **update}
    assert store.load_q(other) == {("state1", "action1"): -1.0}


def test_replay_memory_keeps_order(store: Store) -> None:
    exp = _experiment(store)
    samples = [
        ("[C(64,3,1), SM(10)]", 0.9),
        ("[SM(10)]", 0.1),
        ("[C(64,3,1), SM(10)]", 0.9),
        ("[FC(128), SM(10)]", 0.5),
    ]
    with store.transaction() as tx:
        trial = tx.insert_trial(exp, samples[0][0], "d0", 1.0)
    for arch, reward in samples:
        with store.transaction() as tx:
            tx.append_replay(exp, trial if arch == samples[0][0] else None, arch, reward)
    assert store.load_replay(exp) == samples


def test_agent_state_round_trips_big_ints(store: Store) -> None:
    exp = _experiment(store)
    rng = np.random.default_rng(12345)
    rng.random(10)
    state = {
        "rng": rng.bit_generator.state,  # PCG64: 128-bit ints
        "epsilon_index": 3,
        "big": 2**127 + 1,
        "negative": -(2**100),
        "floats": [0.1, 1e-300, 2.0],
        "text": "é ✓",
    }
    with store.transaction() as tx:
        tx.save_agent_state(exp, "qlearning", state)
    strategy, loaded = store.load_agent_state(exp)  # type: ignore[misc]
    assert strategy == "qlearning" and loaded == state
    assert isinstance(loaded["big"], int)
    restored = np.random.default_rng()
    restored.bit_generator.state = loaded["rng"]
    assert restored.random(5).tolist() == rng.random(5).tolist()

    with store.transaction() as tx:
        tx.save_agent_state(exp, "random", {"step": 2})
    assert store.load_agent_state(exp) == ("random", {"step": 2})


def test_non_json_state_fails_in_python(store: Store) -> None:
    exp = _experiment(store)
    with pytest.raises(ValueError):
        with store.transaction() as tx:
            tx.save_agent_state(exp, "qlearning", {"x": float("nan")})
    assert store.load_agent_state(exp) is None


# -- progress ----------------------------------------------------------------------------


def test_counts_and_top(store: Store) -> None:
    exp = _experiment(store)
    assert store.counts(exp) == {
        "unique_trained": 0,
        "running": 0,
        "failed": 0,
        "stopped": 0,
        "trials_done": 0,
        "best_accuracy": None,
    }
    assert store.top(exp, 5) == []
    outcomes = [
        ("a", "done", 0.5),
        ("b", "done", 0.9),
        ("c", "failed", 0.0),
        ("d", "done", 0.9),
        ("e", "running", None),
        ("f", "stopped", 0.95),  # early (--early-stop): its reward is a prediction, not a trained accuracy
    ]
    ids = {}
    with store.transaction() as tx:
        for digest, status, accuracy in outcomes:
            ids[digest] = tx.insert_trial(exp, f"[{digest}]", digest, 1.0)
            if status != "running":
                tx.finish_trial(ids[digest], status, accuracy, 10, "boom" if status == "failed" else None, 1.0)
                tx.append_replay(exp, ids[digest], f"[{digest}]", accuracy)
        tx.append_replay(exp, ids["b"], "[b]", 0.9)  # a replay-dictionary hit
    assert store.counts(exp) == {
        "unique_trained": 5,
        "running": 1,
        "failed": 1,
        "stopped": 1,
        "trials_done": 6,
        "best_accuracy": 0.9,
    }
    assert [t.digest for t in store.top(exp, 3)] == ["b", "d", "a"]
    assert [t.digest for t in store.top(exp, 3, stopped=True)] == ["f", "b", "d"]
    assert [t.digest for t in store.top(exp, 10)] == ["b", "d", "a"]
    assert store.top(exp, 0) == []


# -- connecting --------------------------------------------------------------------------


def test_unreachable_database_is_one_line_store_error() -> None:
    with pytest.raises(StoreError) as caught:
        Store.connect("postgresql://x:secret@127.0.0.1:1/db")
    message = str(caught.value)
    assert message.startswith("cannot reach database at postgresql://x@127.0.0.1:1/db: ")
    assert "secret" not in message and "\n" not in message


def test_lost_connection_is_a_store_error(store: Store, db_url: str) -> None:
    # With reconnecting turned off (NASAGENT_DB_RETRY_SECONDS=0); tests/test_reconnect.py covers the default.
    exp = _experiment(store)
    store._session.retry_seconds = 0
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'nasagent' "
            "AND datname = current_database()"
        )
    conn.close()
    with pytest.raises(StoreError):
        store.trials(exp)


def test_committed_data_survives_kill_9_and_another_process_reattaches(store: Store, db_url: str, embedded_pg) -> None:
    exp = _experiment(store)
    child = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from nasagent.persistence import Store, embedded_url
        assert embedded_url(Path({str(embedded_pg.home)!r})) == {embedded_pg.url!r}  # reattach, no new server
        store = Store.connect({db_url!r})
        with store.transaction() as tx:
            tx.insert_trial({exp}, "[SM(10)]", "committed", 1.0)
        with store.transaction() as tx:
            tx.insert_trial({exp}, "[FC(8), SM(10)]", "in-flight", 1.0)
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=REPO, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    # The embedded server outlived the killed process, and a fresh process sees exactly what was committed.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import json; from nasagent.persistence import Store; s = Store.connect({db_url!r}); "
            f"print(json.dumps([t.digest for t in s.trials({exp})]))",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert json.loads(probe.stdout) == ["committed"]


# -- resolving the URL ---------------------------------------------------------------------


def test_resolve_db_url_precedence(monkeypatch: pytest.MonkeyPatch, embedded_pg) -> None:
    flag, env = "postgresql://flag@h/db", "postgres://env@h/db"
    monkeypatch.setenv("NASAGENT_DB", env)
    monkeypatch.setenv("NASAGENT_HOME", str(embedded_pg.home))
    assert resolve_db_url(flag) == flag
    assert resolve_db_url(None) == env
    monkeypatch.setenv("NASAGENT_DB", "")
    assert resolve_db_url(None) == embedded_pg.url  # reattaches to the running server
    monkeypatch.delenv("NASAGENT_DB")
    assert resolve_db_url("") == embedded_pg.url
    assert embedded_url(embedded_pg.home) == embedded_pg.url


def test_resolve_db_url_rejects_other_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError, match="--db must be a postgresql:// URL"):
        resolve_db_url("mysql://u:pw@h/db")
    monkeypatch.setenv("NASAGENT_DB", "sqlite:///x.db")
    with pytest.raises(StoreError, match="NASAGENT_DB must be a postgresql:// URL"):
        resolve_db_url(None)


def test_embedded_url_reports_unusable_home(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="NASAGENT_HOME"):
        embedded_url(blocker / "home")


def test_embedded_server_under_a_long_home_still_works() -> None:
    # The unix socket cannot live in a pgdata this long (~107 bytes max); pgserver then puts
    # it in its runtime directory instead, so a long NASAGENT_HOME needs no special handling.
    home = Path(tempfile.mkdtemp(prefix="nas", dir="/tmp")) / ("h" * 100)
    try:
        url = embedded_url(home)
        assert str(home) not in url
        with Store.connect(url) as store:
            assert store.list_experiments() == []
    finally:
        stop_embedded(home)
        shutil.rmtree(home.parent, ignore_errors=True)


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h:5/db?sslmode=require") == "postgresql://u@h:5/db?sslmode=require"
    assert redact_url("postgresql://postgres:@/postgres?host=/tmp/x") == "postgresql://postgres@/postgres?host=/tmp/x"
    assert redact_url("postgresql://h/db?user=u&password=pw") == "postgresql://h/db?user=u&password=***"
    assert redact_url("host=h password=pw") == "host=h password=***"
    assert redact_url("postgresql://h/db") == "postgresql://h/db"
