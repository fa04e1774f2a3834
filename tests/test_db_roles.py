"""The trial pods' database role, ``nasagent_trial``, against a real PostgreSQL (the embedded one).

Schema migration 003 (nasagent/persistence/migrations/003_trial_role.sql) grants it exactly what
``nasagent trial --experiment NAME --trial-id ID`` (``record_trial``) needs, and the manifests'
PostgreSQL init script (manifests/base/postgres-init.sh) gives it LOGIN and its password. Proven
here from both sides: a connection as that role runs the real trial command, records its result
and overwrites it on a later attempt; every privilege it holds is needed (the command fails
without it); and everything else is refused: changing trials or Q-values, deleting anything,
reading the agent's other tables, DDL. The agent keeps the owner role (the ``store`` fixture).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg2
import psycopg2.errors
import pytest
from launcher_helpers import trial_role_url

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.persistence.postgres import Store

ARCH = "[SM(10)]"  # quick to train: the point is the database, not the network
EXPERIMENT = "roles"
INIT_SCRIPT = Path(__file__).resolve().parent.parent / "manifests" / "base" / "postgres-init.sh"
# What record_trial uses: everything the role may touch (trial_decisions: the agent's early-stopping
# decisions, read after each epoch; migration 007).
TRIAL_TABLES = {"schema_migrations", "experiments", "trials", "trial_results", "trial_decisions"}


@pytest.fixture
def trial_id(store: Store) -> int:
    """One trial of a new experiment on digits, recorded as running (as the agent submits it). The
    experiment stops trials early (no agent answers here: the trial waits a moment and trains on),
    so that the trial reads decisions too."""
    early_stop = {"rule": "median", "start_epoch": 1, "wait_seconds": 0.2}
    config = SearchConfig(dataset="digits", epochs=2, early_stop=early_stop)
    experiment = store.create_experiment(EXPERIMENT, config.to_dict())
    arch = Architecture.parse(ARCH)
    with store.transaction() as tx:
        return tx.insert_trial(experiment.id, str(arch), arch.digest, 1.0)


def run_trial(url: str, trial: int, attempt: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``nasagent trial --experiment --trial-id`` as a trial pod runs it, connected to ``url``;
    raises what the command raised, or AssertionError if it exited non-zero."""
    monkeypatch.setenv("NASAGENT_ATTEMPT", str(attempt))
    code = main(["trial", "--experiment", EXPERIMENT, "--trial-id", str(trial), "--db", url])
    assert code == 0


def privileges(cur: psycopg2.extensions.cursor) -> set[tuple[str, str | None, str]]:
    """(table, column or None for the whole table, privilege) that nasagent_trial holds here."""
    cur.execute(
        "SELECT c.relname, NULL, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE a.grantee = 'nasagent_trial'::regrole AND c.relnamespace = current_schema()::regnamespace"
        " UNION ALL"
        " SELECT c.relname, att.attname, a.privilege_type"
        " FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid, aclexplode(att.attacl) a"
        " WHERE a.grantee = 'nasagent_trial'::regrole AND c.relnamespace = current_schema()::regnamespace"
    )
    return {(table, column, privilege) for table, column, privilege in cur.fetchall()}


def test_the_trial_role_records_results_and_overwrites_them_on_a_later_attempt(
    store: Store, db_url: str, trial_id: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = trial_role_url(db_url)
    run_trial(url, trial_id, 1, monkeypatch)
    attempt, outcome = store.trial_result(trial_id)
    assert attempt == 1 and outcome["status"] == "done" and outcome["trial_id"] == trial_id
    run_trial(url, trial_id, 2, monkeypatch)  # a retried attempt replaces the report (ON CONFLICT DO UPDATE)
    assert store.trial_result(trial_id)[0] == 2
    assert store.trial(trial_id).status == "running", "the trial row stays the agent's"
    capsys.readouterr()


def test_every_privilege_of_the_trial_role_is_needed(
    store: Store, db_url: str, trial_id: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Revoke one privilege at a time: the trial command fails without each."""
    url = trial_role_url(db_url)
    owner = psycopg2.connect(db_url)
    owner.autocommit = True
    try:
        with owner.cursor() as cur:
            held = privileges(cur)
        assert held == {
            ("schema_migrations", "version", "SELECT"),
            ("experiments", None, "SELECT"),
            ("trials", None, "SELECT"),
            ("trial_results", "trial_id", "SELECT"),
            ("trial_results", "attempt", "SELECT"),
            ("trial_results", "outcome", "SELECT"),
            ("trial_results", "trial_id", "INSERT"),
            ("trial_results", "attempt", "INSERT"),
            ("trial_results", "outcome", "INSERT"),
            ("trial_results", "attempt", "UPDATE"),
            ("trial_results", "outcome", "UPDATE"),
            ("trial_results", "created_at", "UPDATE"),
            ("trial_epochs", None, "INSERT"),  # its learning curve, epoch by epoch (migration 006)
            ("trial_decisions", None, "SELECT"),  # the agent's early-stopping decisions (migration 007)
        }
        for table, column, privilege in sorted(held, key=str):
            what = f"{privilege} ({column})" if column else privilege
            with owner.cursor() as cur:
                cur.execute(f"REVOKE {what} ON {table} FROM nasagent_trial")
            try:
                try:
                    run_trial(url, trial_id, 1, monkeypatch)
                except psycopg2.Error as exc:  # refused inside a Store call
                    message = str(exc)
                except AssertionError:  # exit 2 with one line (Store.connect)
                    message = capsys.readouterr().err
                else:
                    pytest.fail(f"the trial ran without {what} on {table}")
                assert "permission denied" in message, (table, column, privilege, message)
            finally:
                with owner.cursor() as cur:
                    cur.execute(f"GRANT {what} ON {table} TO nasagent_trial")
        run_trial(url, trial_id, 3, monkeypatch)  # all granted again: it works
        assert store.trial_result(trial_id)[0] == 3
    finally:
        owner.close()
    capsys.readouterr()


def test_the_trial_role_is_refused_everything_else(store: Store, db_url: str, trial_id: int) -> None:
    experiment = store.get_experiment(EXPERIMENT).id
    with store.transaction() as tx:
        tx.upsert_q(experiment, {("s", "a"): 0.5})
        tx.save_trial_result(trial_id, 1, {"status": "done"})
    refused = [
        f"UPDATE trials SET status = 'done', accuracy = 1 WHERE id = {trial_id}",
        f"INSERT INTO trials (experiment_id, arch, digest, status) VALUES ({experiment}, 'a', 'd', 'done')",
        f"DELETE FROM trials WHERE id = {trial_id}",
        "UPDATE q_values SET value = 1",
        f"INSERT INTO q_values VALUES ({experiment}, 's', 'b', 1)",
        "DELETE FROM q_values",
        f"DELETE FROM trial_results WHERE trial_id = {trial_id}",
        "TRUNCATE trial_results",
        f"UPDATE trial_results SET trial_id = trial_id + 1 WHERE trial_id = {trial_id}",
        "UPDATE experiments SET config = '{}'",
        "DELETE FROM experiments",
        "INSERT INTO schema_migrations (version, name) VALUES (999, 'evil')",
        "DELETE FROM schema_migrations",
        "CREATE TABLE evil (x int)",
        "ALTER TABLE trials ADD COLUMN evil int",
        "DROP TABLE trial_results",
        "CREATE ROLE evil",
    ]
    owner = psycopg2.connect(db_url)
    try:
        with owner.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            others = sorted({row[0] for row in cur.fetchall()} - TRIAL_TABLES)
    finally:
        owner.close()
    assert {"q_values", "replay_memory", "agent_state"} <= set(others)
    refused += [f"SELECT * FROM {table}" for table in others]  # the agent's own state: not a trial's business
    conn = psycopg2.connect(trial_role_url(db_url))
    try:
        for statement in refused:
            with conn.cursor() as cur:
                with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="permission denied|must be owner"):
                    cur.execute(statement)
            conn.rollback()
    finally:
        conn.close()
    assert store.load_q(experiment) == {("s", "a"): 0.5} and store.trial_result(trial_id) is not None


def test_the_init_script_gives_the_role_login_and_its_password(
    store: Store, db_url: str, tmp_path: Path, embedded_pg: object
) -> None:
    """manifests/base/postgres-init.sh, run as the PostgreSQL image runs it (the owner, over the
    unix socket), with the real psql: the role can log in, with a SCRAM password; a missing or
    short password is one line and a failure."""
    import pgserver

    psql_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    url = urlsplit(db_url)
    env = {
        "PATH": f"{psql_dir}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": parse_qs(url.query)["host"][0],
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": url.path.lstrip("/"),
        "NASAGENT_TRIAL_PASSWORD_FILE": str(tmp_path / "TRIAL_PASSWORD"),
    }
    owner = psycopg2.connect(db_url)
    owner.autocommit = True
    try:
        with owner.cursor() as cur:
            cur.execute("ALTER ROLE nasagent_trial NOLOGIN PASSWORD NULL")
        (tmp_path / "TRIAL_PASSWORD").write_text("a-long-trial-password-'; DROP TABLE trials; --")
        done = subprocess.run(["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "a-long-trial-password" not in done.stdout + done.stderr
        with owner.cursor() as cur:
            cur.execute("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = 'nasagent_trial'")
            can_login, password = cur.fetchone()
            cur.execute("SELECT to_regclass('trials') IS NOT NULL")
            assert cur.fetchone()[0], "the password is a value, never SQL"
        assert can_login and password.startswith("SCRAM-SHA-256$")

        (tmp_path / "TRIAL_PASSWORD").write_text("short")
        done = subprocess.run(["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1
        assert "TRIAL_PASSWORD" in done.stderr and "shorter than 8 characters" in done.stderr
    finally:
        owner.close()
