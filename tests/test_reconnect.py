"""A database that may restart: reconnection with bounded backoff, replayed transactions, exactly once,
the embedded server restarted when it is ours, and a search that finishes through restarts.

The restart tests use an embedded server of their own (stopping the session's would break the
other tests' databases).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from nasagent.errors import StoreError
from nasagent.persistence import embedded
from nasagent.persistence.embedded import embedded_url, stop_embedded
from nasagent.persistence.postgres import Store, connect

REPO = Path(__file__).resolve().parent.parent


def drop_connection(admin_url: str, store: Store) -> None:
    """End ``store``'s server process, as a restart would."""
    pid = store._fetch("SELECT pg_backend_pid()")[0][0]
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    admin.close()


def experiment(store: Store) -> int:
    return store.create_experiment(f"e{time.monotonic_ns()}", {}).id


def test_a_transaction_cut_in_the_middle_commits_exactly_once(store: Store, db_url: str) -> None:
    exp = experiment(store)
    with store.transaction() as tx:
        trial = tx.insert_trial(exp, "[SM(10)]", "d1", 1.0)
        tx.append_replay(exp, trial, "[SM(10)]", 0.5)
        drop_connection(db_url, store)
        tx.upsert_q(exp, {("s", "a"): 0.25})  # reconnects, replays the two writes above, then runs
        tx.save_agent_state(exp, "qlearning", {"step": 1})
    assert store.reconnects == 1
    assert [(t.id, t.digest) for t in store.trials(exp)] == [(trial, "d1")]  # the id the caller holds
    assert store.load_replay(exp) == [("[SM(10)]", 0.5)]
    assert store.load_q(exp) == {("s", "a"): 0.25}
    assert store.load_agent_state(exp) == ("qlearning", {"step": 1})


def test_a_lost_reply_to_commit_is_neither_lost_nor_repeated(store: Store, db_url: str) -> None:
    """The commit's fate is unknown when the connection drops while committing: the session asks the
    server (``txid_status``) and replays only what did not commit. Driven step by step here, since
    the moment between COMMIT and its reply cannot be hit from outside."""
    exp = experiment(store)
    session = store._session
    insert = ("INSERT INTO replay_memory (experiment_id, arch, reward) VALUES (%s, %s, %s)", (exp, "[SM(10)]", 0.5))
    for commit_reached_the_server in (True, False):
        session._writes = []  # inside a transaction, as Session.transaction() sets it up
        session.execute(*insert, write=True)
        xid = session.execute("SELECT txid_current_if_assigned()").rows[0][0]
        if commit_reached_the_server:
            session.conn.commit()
        drop_connection(db_url, store)
        committed = session._recover(psycopg2.OperationalError("server closed the connection unexpectedly"), xid)
        assert committed is commit_reached_the_server
        if not committed:
            session.conn.commit()  # the replayed transaction, committed as _commit would
        session._writes = None
    assert len(store.load_replay(exp)) == 2  # one row per transaction: none lost, none twice


def test_reads_run_again_and_reconnecting_can_be_turned_off(store: Store, db_url: str) -> None:
    exp = experiment(store)
    drop_connection(db_url, store)
    assert store.trials(exp) == [] and store.reconnects == 1
    store._session.retry_seconds = 0
    drop_connection(db_url, store)
    with pytest.raises(StoreError, match="^database .*: (server closed|terminating)"):
        store.trials(exp)


# -- an embedded server of our own ---------------------------------------------------------


@pytest.fixture(scope="module")
def own_home() -> Iterator[Path]:
    """NASAGENT_HOME of a private embedded server (short path: the socket lives in it)."""
    home = Path(tempfile.mkdtemp(prefix="nasr", dir="/tmp"))
    try:
        embedded_url(home)
        yield home
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


def test_a_database_gone_past_the_limit_is_one_line(own_home: Path) -> None:
    store = Store.connect(embedded_url(own_home), retry_seconds=2)  # by URL: nobody restarts it
    try:
        stop_embedded(own_home)
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            store.list_experiments()
        waited = time.monotonic() - started
        assert 1.5 <= waited < 10, waited
        message = str(caught.value)
        assert "unreachable for 2 s" in message and "NASAGENT_DB_RETRY_SECONDS=2" in message
        assert "\n" not in message
    finally:
        store.close()
        embedded_url(own_home)


def test_our_embedded_server_is_started_again_by_the_store(own_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NASAGENT_DB", raising=False)
    monkeypatch.setenv("NASAGENT_HOME", str(own_home))
    with connect(None) as store:
        store.list_experiments()
        stop_embedded(own_home)
        started = time.monotonic()
        assert store.list_experiments() is not None
        print(f"embedded server restarted and reconnected in {time.monotonic() - started:.2f} s")
        assert store.reconnects == 1
    assert (own_home / "pg" / "postmaster.pid").exists()


def test_a_search_finishes_through_database_restarts(own_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NASAGENT_DB"}
    env["NASAGENT_HOME"] = str(own_home)
    args = ["search", "--experiment", "restarts", "--trials", "6", "--epochs", "1", "--workers", "1", "--seed", "3"]
    args += ["--data-dir", str(own_home / "data")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasagent.cli", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher = Store.connect(embedded_url(own_home), reopen=lambda: embedded_url(own_home))

    def finished() -> int:
        found = watcher.find_experiment("restarts")
        return 0 if found is None else watcher.counts(found.id)["unique_trained"]

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 300
        while finished() < n and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)

    try:
        wait_for(1)
        stop_embedded(own_home)  # a clean restart; the agent starts our server again itself
        wait_for(3)
        pid = int((own_home / "pg" / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)  # an immediate shutdown, as a crash: recovery from the WAL
        while (own_home / "pg" / "postmaster.pid").exists():
            time.sleep(0.05)
        embedded_url(own_home)  # restarted from outside this time
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "reconnected" in stderr and "Traceback" not in stderr
    experiment_id = watcher.get_experiment("restarts").id
    trials = watcher.trials(experiment_id)
    assert len(trials) == 6 and len({t.digest for t in trials}) == 6
    assert all(t.status in ("done", "failed") for t in trials)
    replay = watcher._fetch(
        "SELECT trial_id, count(*) FROM replay_memory WHERE experiment_id = %s GROUP BY trial_id", (experiment_id,)
    )
    assert {trial_id for trial_id, _ in replay} == {t.id for t in trials}  # every trained trial rewarded
    assert watcher.counts(experiment_id)["trials_done"] == sum(n for _, n in replay)
    watcher.close()


# -- the embedded server's folders ---------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's server runs as another user")
def test_starting_the_server_as_root_leaves_parent_folders_as_they_were() -> None:
    base = Path(tempfile.mkdtemp(prefix="nasm", dir="/tmp"))
    base.chmod(0o711)  # others may pass through: its mode must come back exactly
    private = base / "private"
    private.mkdir()
    private.chmod(0o700)  # nobody but root may enter
    home = private / "home"
    try:
        with Store.connect(embedded_url(home)) as store:
            store.list_experiments()
        server_uid = pwd.getpwnam(embedded.SERVER_USER).pw_uid
        assert stat.S_IMODE(base.stat().st_mode) == 0o711
        for folder in (private, home):  # created 0700: only the server's own user may now pass through
            mode = stat.S_IMODE(folder.stat().st_mode)
            assert mode & 0o707 == 0o700 and mode & 0o070 == 0o010, oct(mode)  # group bits: the ACL's mask
            acl = os.getxattr(folder, "system.posix_acl_access")
            entries = [struct.unpack_from("<HHI", acl, 4 + 8 * i) for i in range((len(acl) - 4) // 8)]
            assert (0x02, 1, server_uid) in entries and (0x04, 0, 0xFFFFFFFF) in entries  # group: nothing
            assert (0x20, 0, 0xFFFFFFFF) in entries  # others: nothing
        stop_embedded(home)
        with Store.connect(embedded_url(home)) as store:  # a second start (another process's) works the same
            store.list_experiments()
        assert stat.S_IMODE(base.stat().st_mode) == 0o711 and stat.S_IMODE(private.stat().st_mode) == 0o710
    finally:
        stop_embedded(home)
        shutil.rmtree(base, ignore_errors=True)
