"""The PostgreSQL store: experiments, trials, replay memory, Q-values and agent state.

Everything an agent learns is written here, one agent step per transaction, so that a
process killed at any moment (``kill -9`` included) resumes from the last committed step, and a
database that restarts under a running search costs a pause, not the search
(:mod:`nasagent.persistence.session`). A ``Store`` wraps one connection: use one Store per
thread or process.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from nasagent.core.trial import TrialStatus
from nasagent.errors import DuplicateTrialError, StoreError
from nasagent.persistence.embedded import embedded_url, explicit_db_url, nasagent_home, redact_url
from nasagent.persistence.session import Result, Session, first_line

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_FILE = re.compile(r"^(\d{3})_(\w+)\.sql$")
# Arbitrary but fixed key: every nasagent process migrating any database takes this lock.
_MIGRATION_LOCK_KEY = 7_366_583_120_001
# Server-side TCP keepalives of a lock holder's session: the server notices a holder whose machine
# vanished (and frees its lock) in about a minute rather than the kernel's two hours.
_KEEPALIVE_SQL = (
    "SELECT set_config('tcp_keepalives_idle', '30', false), set_config('tcp_keepalives_interval', '10', false),"
    " set_config('tcp_keepalives_count', '3', false)"
)
# Rows per INSERT of ``upsert_q``.
_Q_PAGE = 1000


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays end up in states and configs; store them as plain JSON.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# NaN/Infinity are not JSON and jsonb rejects them with an obscure error: fail in Python instead.
_dumps = functools.partial(json.dumps, allow_nan=False, default=_json_default)


def _json(value: dict[str, Any]) -> psycopg2.extras.Json:
    """Adapt a dict to jsonb. Python ints of any size round-trip exactly (jsonb numbers are numeric)."""
    return psycopg2.extras.Json(value, dumps=_dumps)


@dataclass(frozen=True)
class Experiment:
    """One row of ``experiments``: a named search with its (JSON) configuration."""

    id: int
    name: str
    config: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class TrialRow:
    """One row of ``trials``: an architecture trained (or being trained) in an experiment."""

    id: int
    experiment_id: int
    arch: str
    digest: str
    status: TrialStatus
    accuracy: float | None
    epsilon: float | None
    params: int | None
    worker: str | None
    failure: str | None
    attempts: int
    info: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    train_seconds: float | None
    macs: int | None = None
    """MACs of one image's forward pass (migration 008)."""
    latency_ms: float | None = None
    """Batch-1 inference latency on the trial's device (008); None when not measured."""
    reward: float | None = None
    """What the strategy was given (the objective, 008); None in rows older than it: the accuracy was."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TrialStatus(self.status))  # the column holds the value; frozen

    @property
    def score(self) -> float | None:
        """The trial's reward: the objective's value, or the accuracy where none was recorded."""
        return self.reward if self.reward is not None else self.accuracy


@dataclass(frozen=True)
class InfraFailureRow:
    """One row of ``infra_failures``: a trial the machines did not run to its end (never a reward)."""

    id: int
    trial_id: int | None
    arch: str | None
    fault: str
    reason: str
    worker: str | None
    info: dict[str, Any]
    created_at: datetime


_EXPERIMENT_COLUMNS = "id, name, config, created_at"
_TRIAL_COLUMNS = (
    "id, experiment_id, arch, digest, status, accuracy, epsilon, params, worker, failure, "
    "attempts, info, created_at, started_at, finished_at, train_seconds, macs, latency_ms, reward"
)


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, Path]]:
    """The ``NNN_name.sql`` files in ``directory`` as (version, name, path), by version.

    Called by ``migrate``. Two files with the same version are a packaging bug (RuntimeError).
    """
    found: dict[int, tuple[int, str, Path]] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise RuntimeError(f"migration file {path.name} is not named NNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two migrations with version {version}: {found[version][2].name}, {path.name}")
        found[version] = (version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def migrate(conn: psycopg2.extensions.connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply the migrations not yet recorded in ``schema_migrations``, in order; return their versions.

    Called by ``Store.connect``; idempotent. Runs in one transaction under a transaction-level
    advisory lock, so processes migrating the same database at once apply each file once.
    Assumes ``conn`` is not inside a transaction. Commits on success, rolls back on failure.
    """
    migrations = available_migrations(directory)
    applied_now: list[int] = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            # Only when missing: even CREATE ... IF NOT EXISTS needs the CREATE privilege, which the
            # trial pods' role (migrations/003_trial_role.sql) does not have.
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not cur.fetchone()[0]:
                cur.execute(
                    "CREATE TABLE schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            cur.execute("SELECT version FROM schema_migrations")
            applied = {row[0] for row in cur.fetchall()}
            known = {version for version, _, _ in migrations}
            if applied - known:
                raise StoreError(
                    f"the database schema is at version {max(applied)}, newer than this nasagent "
                    f"knows ({max(known, default=0)}): upgrade nasagent"
                )
            for version, name, path in migrations:
                if version in applied:
                    continue
                cur.execute(path.read_text(encoding="utf-8"))
                cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied_now.append(version)
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    return applied_now


@dataclass(frozen=True)
class _HeldLock:
    """A session advisory lock this Store holds, and the holder details recorded beside it."""

    key: int
    name: str
    purpose: str
    host: str
    pid: int
    since: datetime

    def upsert(self) -> tuple[str, tuple[Any, ...]]:
        """The statement recording this session as the holder (``experiment_locks``)."""
        return (
            "INSERT INTO experiment_locks (name, purpose, host, pid, backend_pid, since)"
            " VALUES (%s, %s, %s, %s, pg_backend_pid(), %s) ON CONFLICT (name) DO UPDATE"
            " SET purpose = EXCLUDED.purpose, host = EXCLUDED.host, pid = EXCLUDED.pid,"
            " backend_pid = EXCLUDED.backend_pid, since = EXCLUDED.since",
            (self.name, self.purpose, self.host, self.pid, self.since),
        )


class Store:
    """A connection to the nasagent database (see module docstring). Create with ``Store.connect``.

    The connection survives the database restarting (``nasagent.persistence.session``): a lost
    connection is re-established with bounded backoff and the interrupted work carried on, so
    callers never see it unless the database stays away past ``NASAGENT_DB_RETRY_SECONDS``.
    """

    def __init__(self, session: Session) -> None:
        """Wrap a connected session (not in a transaction). Prefer ``Store.connect``, which also migrates."""
        self._session = session
        self._tx: StoreTransaction | None = None
        self._locks: dict[int, _HeldLock] = {}  # session advisory locks, taken again after a reconnection
        session.on_reconnect.append(self._relock)

    @classmethod
    def connect(cls, url: str, reopen: Callable[[], str] | None = None, retry_seconds: float | None = None) -> Store:
        """Connect to ``url`` (a libpq URL, see ``resolve_db_url``) and bring its schema up to date.

        Called once per process (or thread). Fails within ~5 s with one StoreError line if the
        database cannot be reached or migrated; the password never appears in the message.
        ``reopen`` (the embedded server's restart) and ``retry_seconds`` are the session's.
        """
        safe = redact_url(url)
        try:
            session = Session(url, reopen=reopen, retry_seconds=retry_seconds)
        except psycopg2.Error as exc:
            raise StoreError(f"cannot reach database at {safe}: {first_line(exc)}") from None
        store = cls(session)
        try:
            store.migrate()
        except psycopg2.Error as exc:
            session.close()
            raise StoreError(f"cannot set up the nasagent schema in {safe}: {first_line(exc)}") from None
        except BaseException:
            session.close()
            raise
        return store

    @property
    def url(self) -> str:
        """The database URL (with its password: never print it; ``safe_url`` is for messages)."""
        return self._session.url

    @property
    def safe_url(self) -> str:
        """The database URL without its password."""
        return self._session.safe_url

    @property
    def reconnects(self) -> int:
        """How many times the connection was lost and re-established."""
        return self._session.reconnects

    def migrate(self) -> list[int]:
        """Apply pending migrations (see ``migrate``); return the versions applied now. Idempotent."""
        if self._tx is not None:
            raise RuntimeError("cannot migrate inside a transaction")
        return migrate(self._session.conn)

    def close(self) -> None:
        """Close the connection (the server rolls back uncommitted work, releases session locks). Idempotent."""
        self._session.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        # A database gone for good, a deadlock: one line for the user, not a traceback.
        try:
            yield
        except psycopg2.errors.ForeignKeyViolation as exc:
            raise StoreError(f"database {self.safe_url}: no such experiment or trial ({first_line(exc)})") from exc
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            raise StoreError(f"database {self.safe_url}: {first_line(exc)}") from exc
        except psycopg2.DatabaseError as exc:
            if type(exc) is not psycopg2.DatabaseError:  # a subclass: a constraint, a bug in our SQL
                raise
            raise StoreError(f"database {self.safe_url}: {first_line(exc)}") from exc  # the connection broke

    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """Everything written through the yielded ``StoreTransaction`` (and through this Store's
        methods) inside the block commits together at its end, or not at all if it raises.

        One agent step is one transaction. Reads on this Store inside the block see its
        uncommitted writes. Transactions do not nest (RuntimeError). A connection lost inside
        the block is re-established and the transaction's writes replayed, exactly once.
        """
        if self._tx is not None:
            raise RuntimeError("Store.transaction() does not nest")
        tx = StoreTransaction(self)
        self._tx = tx
        try:
            with self._errors(), self._session.transaction():
                yield tx
        finally:
            tx._open = False
            self._tx = None

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of a read, in the open transaction or in one of its own."""
        with self._errors():
            return self._session.execute(sql, params).rows

    def _write(self, sql: Any, params: Any = ()) -> Result:
        """Run a statement that changes data, in the open transaction or in one of its own."""
        with self._errors():
            return self._session.execute(sql, params, write=True)

    def _next_id(self, table: str) -> int:
        """A fresh id for ``table`` drawn from its sequence, so that an insert names its id explicitly
        and a replayed insert (after a reconnection) recreates the very row the caller knows."""
        return int(self._fetch("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", (table,))[0][0])

    # -- experiments ------------------------------------------------------------------------

    def create_experiment(self, name: str, config: dict[str, Any]) -> Experiment:
        """Create experiment ``name`` with its config; StoreError if the name is taken."""
        rows = self._write(
            "INSERT INTO experiments (id, name, config) VALUES (%s, %s, %s) "
            f"ON CONFLICT (name) DO NOTHING RETURNING {_EXPERIMENT_COLUMNS}",
            (self._next_id("experiments"), name, _json(config)),
        ).rows
        if not rows:
            raise StoreError(f"experiment '{name}' already exists")
        return Experiment(*rows[0])

    def find_experiment(self, name: str) -> Experiment | None:
        """The experiment called ``name``, or None."""
        rows = self._fetch(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE name = %s", (name,))
        return Experiment(*rows[0]) if rows else None

    def get_experiment(self, name: str) -> Experiment:
        """The experiment called ``name``; StoreError "unknown experiment 'name'" if there is none."""
        experiment = self.find_experiment(name)
        if experiment is None:
            raise StoreError(f"unknown experiment '{name}'")
        return experiment

    def list_experiments(self) -> list[Experiment]:
        """All experiments, oldest first."""
        return [Experiment(*row) for row in self._fetch(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments ORDER BY id")]

    def update_config(self, experiment_id: int, config: dict[str, Any]) -> None:
        """Replace an experiment's stored config (``nasagent extend`` raising its budget)."""
        result = self._write("UPDATE experiments SET config = %s WHERE id = %s", (_json(config), experiment_id))
        if result.rowcount == 0:
            raise StoreError(f"unknown experiment id {experiment_id}")

    def delete_experiment(self, experiment_id: int) -> None:
        """Delete an experiment and everything it owns (trials, replay memory, Q-values, state, results)."""
        self._write("DELETE FROM experiments WHERE id = %s", (experiment_id,))

    def mark_exhausted(self, experiment_id: int, note: str | None) -> None:
        """Record that the experiment's space has no untrained architecture left (``note`` says so),
        or, with None, forget it (its budget was extended and the search may try again)."""
        self._write("UPDATE experiments SET exhausted = %s WHERE id = %s", (note, experiment_id))

    def exhausted(self, experiment_id: int) -> str | None:
        """The note ``mark_exhausted`` left, or None while the space still has untrained architectures."""
        rows = self._fetch("SELECT exhausted FROM experiments WHERE id = %s", (experiment_id,))
        return rows[0][0] if rows else None

    # -- session locks ----------------------------------------------------------------------

    def try_lock(self, key: int, name: str, purpose: str, host: str, pid: int) -> bool:
        """Take the session advisory lock ``key`` (guarding experiment ``name``) unless another
        session holds it; on success record who holds it (``lock_holder``). The lock lives as long
        as this connection; a reconnection takes it again (or stops with a StoreError if meanwhile
        someone else did). Re-entrant locks are refused: taking a held key again returns False."""
        if key in self._locks:
            return False
        if not self._fetch("SELECT pg_try_advisory_lock(%s)", (key,))[0][0]:
            return False
        held = _HeldLock(key, name, purpose, host, pid, self._fetch("SELECT now()")[0][0])
        self._locks[key] = held
        self._write(*held.upsert())
        self._fetch(_KEEPALIVE_SQL)
        return True

    def unlock(self, key: int) -> None:
        """Release lock ``key`` taken with ``try_lock`` (nothing if not held)."""
        held = self._locks.pop(key, None)
        if held is None:
            return
        self._write("DELETE FROM experiment_locks WHERE name = %s AND backend_pid = pg_backend_pid()", (held.name,))
        self._fetch("SELECT pg_advisory_unlock(%s)", (key,))

    def lock_holder(self, key: int, name: str) -> dict[str, Any] | None:
        """Who holds lock ``key`` of experiment ``name`` now: ``purpose``, ``host``, ``pid`` and ``since``
        (None where unknown, e.g. a holder that has not written its details yet); None if nobody."""
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
        rows = self._fetch(
            "SELECT h.purpose, h.host, h.pid, COALESCE(h.since, a.backend_start), l.pid"
            "  FROM pg_locks l"
            "  LEFT JOIN experiment_locks h ON h.name = %s AND h.backend_pid = l.pid"
            "  LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            "   AND l.classid::bigint = %s AND l.objid::bigint = %s"
            "   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (name, unsigned >> 32, unsigned & 0xFFFF_FFFF),
        )
        if not rows:
            return None
        purpose, host, pid, since, backend = rows[0]
        return {"purpose": purpose, "host": host, "pid": pid, "since": since, "backend_pid": backend}

    def _relock(self) -> None:
        """After a reconnection: take this session's locks again (StoreError if another took one)."""
        for held in self._locks.values():
            if not self._session.run_now("SELECT pg_try_advisory_lock(%s)", (held.key,)).rows[0][0]:
                self._locks.clear()
                raise StoreError(
                    f"experiment '{held.name}': while the database was away another process took its lock; "
                    "this one stops (the other carries on)"
                )
            self._session.run_now(*held.upsert())
            self._session.run_now(_KEEPALIVE_SQL)

    # -- reads ------------------------------------------------------------------------------

    def load_q(self, experiment_id: int) -> dict[tuple[str, str], float]:
        """The experiment's Q-table as {(state, action): value}."""
        rows = self._fetch("SELECT state, action, value FROM q_values WHERE experiment_id = %s", (experiment_id,))
        return {(state, action): value for state, action, value in rows}

    def load_replay(self, experiment_id: int) -> list[tuple[str, float]]:
        """The replay memory as (arch string, reward), in the order the samples were appended."""
        rows = self._fetch(
            "SELECT arch, reward FROM replay_memory WHERE experiment_id = %s ORDER BY id", (experiment_id,)
        )
        return [(arch, reward) for arch, reward in rows]

    def load_agent_state(self, experiment_id: int) -> tuple[str, dict[str, Any]] | None:
        """(strategy name, state) as last saved, or None before the first save."""
        rows = self._fetch("SELECT strategy, state FROM agent_state WHERE experiment_id = %s", (experiment_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    def trials(self, experiment_id: int, status: TrialStatus | None = None) -> list[TrialRow]:
        """The experiment's trials ordered by id, optionally only those with ``status``."""
        if status is None:
            rows = self._fetch(
                f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE experiment_id = %s ORDER BY id", (experiment_id,)
            )
        else:
            rows = self._fetch(
                f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE experiment_id = %s AND status = %s ORDER BY id",
                (experiment_id, status),
            )
        return [TrialRow(*row) for row in rows]

    def trial(self, trial_id: int) -> TrialRow | None:
        """The trial with id ``trial_id``, or None (used by ``nasagent trial`` in a pod)."""
        rows = self._fetch(f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE id = %s", (trial_id,))
        return TrialRow(*rows[0]) if rows else None

    def trial_result(self, trial_id: int) -> tuple[int, dict[str, Any]] | None:
        """(attempt, outcome JSON) that a trial run elsewhere wrote to ``trial_results``, or None."""
        rows = self._fetch("SELECT attempt, outcome FROM trial_results WHERE trial_id = %s", (trial_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    def clear_trial_result(self, trial_id: int) -> None:
        """Forget a reported result (a launcher does this before it starts a trial again)."""
        self._write("DELETE FROM trial_results WHERE trial_id = %s", (trial_id,))

    def trial_by_digest(self, experiment_id: int, digest: str) -> TrialRow | None:
        """The experiment's trial of the architecture with ``digest`` (the replay dictionary), or None."""
        rows = self._fetch(
            f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE experiment_id = %s AND digest = %s", (experiment_id, digest)
        )
        return TrialRow(*rows[0]) if rows else None

    def top(self, experiment_id: int, k: int, stopped: bool = False) -> list[TrialRow]:
        """The ``k`` done trials with the best accuracy, best first; ties go to the earlier trial.
        With ``stopped``, early-stopped trials too, ranked by their reward (``top --json``)."""
        statuses = "('done', 'stopped')" if stopped else "('done')"
        rows = self._fetch(
            f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE experiment_id = %s AND status IN {statuses} "
            "ORDER BY COALESCE(reward, accuracy) DESC NULLS LAST, id LIMIT %s",  # by the objective (008)
            (experiment_id, max(int(k), 0)),
        )
        return [TrialRow(*row) for row in rows]

    def counts(self, experiment_id: int) -> dict[str, Any]:
        """Progress: ``unique_trained`` (done + failed + stopped trials), ``running``, ``failed``,
        ``stopped`` (early), ``trials_done`` (rewarded samples, i.e. replay memory rows, dictionary
        hits included) and ``best_accuracy`` (of done trials, None if there are none)."""
        rows = self._fetch(
            "SELECT count(*) FILTER (WHERE status IN ('done', 'failed', 'stopped')),"
            "       count(*) FILTER (WHERE status = 'running'),"
            "       count(*) FILTER (WHERE status = 'failed'),"
            "       max(accuracy) FILTER (WHERE status = 'done'),"
            "       (SELECT count(*) FROM replay_memory WHERE experiment_id = %s),"
            "       count(*) FILTER (WHERE status = 'stopped')"
            "  FROM trials WHERE experiment_id = %s",
            (experiment_id, experiment_id),
        )
        unique_trained, running, failed, best, replayed, stopped = rows[0]
        return {
            "unique_trained": unique_trained,
            "running": running,
            "failed": failed,
            "stopped": stopped,
            "trials_done": replayed,
            "best_accuracy": best,
        }

    def infra_failures(self, experiment_id: int) -> list[InfraFailureRow]:
        """The experiment's infrastructure failures, oldest first, with their trial's architecture."""
        rows = self._fetch(
            "SELECT f.id, f.trial_id, t.arch, f.fault, f.reason, f.worker, f.info, f.created_at"
            "  FROM infra_failures f LEFT JOIN trials t ON t.id = f.trial_id"
            " WHERE f.experiment_id = %s ORDER BY f.id",
            (experiment_id,),
        )
        return [InfraFailureRow(*row) for row in rows]

    def infra_failure_counts(self, experiment_id: int) -> dict[str, int]:
        """How many infrastructure failures of each kind (``Fault`` value) the experiment had."""
        rows = self._fetch(
            "SELECT fault, count(*) FROM infra_failures WHERE experiment_id = %s GROUP BY fault ORDER BY fault",
            (experiment_id,),
        )
        return {fault: int(n) for fault, n in rows}

    # -- per-epoch metrics (trial_epochs, migration 006) ------------------------------------

    def record_epoch(self, row: EpochRow) -> None:
        """Write one epoch of a trial run as soon as it is trained (its own transaction). A row
        already there (a taken-over pod writing the same epoch again) is left as it is.
        Needs only INSERT on ``trial_epochs``: the trial pods' role has nothing more."""
        self._write(
            f"INSERT INTO trial_epochs ({_EPOCH_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "clock_timestamp()) ON CONFLICT DO NOTHING",
            (
                row.experiment_id,
                row.trial_id,
                row.attempt,
                row.run,
                row.epoch,
                row.train_loss,
                row.val_accuracy,
                row.lr,
                row.restarts,
                row.seconds,
            ),
        )

    def may_record_epochs(self) -> bool:
        """Whether this connection's role may insert into ``trial_epochs`` (a trial pod checks
        before it trains, so that a missing grant is one clear error, not curves silently lost)."""
        return bool(self._fetch("SELECT has_table_privilege(current_user, 'trial_epochs', 'INSERT')")[0][0])

    def trial_epochs(self, trial_id: int) -> list[EpochRow]:
        """Every epoch recorded for a trial, of every run, by (attempt, run, epoch)."""
        rows = self._fetch(
            f"SELECT {_EPOCH_COLUMNS} FROM trial_epochs WHERE trial_id = %s ORDER BY attempt, run, epoch",
            (trial_id,),
        )
        return [EpochRow(*row) for row in rows]

    def experiment_curves(self, experiment_id: int, trial_ids: list[int] | None = None) -> dict[int, list[EpochRow]]:
        """The learning curve of each trial (only of ``trial_ids`` when given) that has one: the
        epochs of its latest run (highest attempt, then run), by epoch."""
        only = "" if trial_ids is None else " AND trial_id = ANY(%s)"
        params: tuple[Any, ...] = (experiment_id,) if trial_ids is None else (experiment_id, list(trial_ids))
        rows = self._fetch(
            f"SELECT {', '.join('e.' + c.strip() for c in _EPOCH_COLUMNS.split(','))} FROM trial_epochs e JOIN"
            " (SELECT DISTINCT ON (trial_id) trial_id, attempt, run FROM trial_epochs"
            f"   WHERE experiment_id = %s{only} ORDER BY trial_id, attempt DESC, run DESC) latest"
            " USING (trial_id, attempt, run) ORDER BY e.trial_id, e.epoch",
            params,
        )
        curves: dict[int, list[EpochRow]] = {}
        for row in rows:
            epoch = EpochRow(*row)
            curves.setdefault(epoch.trial_id, []).append(epoch)
        return curves

    def epoch_count(self, experiment_id: int) -> int:
        """How many epochs the experiment's trials have recorded, every run counted."""
        return int(self._fetch("SELECT count(*) FROM trial_epochs WHERE experiment_id = %s", (experiment_id,))[0][0])

    # -- early stopping (trial_decisions, stopping_state: migration 007) ---------------------

    def experiment_config(self, experiment_id: int) -> dict[str, Any]:
        """The stored config of experiment ``experiment_id`` (a trial reads its early-stopping
        settings from it); StoreError if there is no such experiment."""
        rows = self._fetch("SELECT config FROM experiments WHERE id = %s", (experiment_id,))
        if not rows:
            raise StoreError(f"unknown experiment id {experiment_id}")
        return dict(rows[0][0])

    def undecided_epochs(self, experiment_id: int) -> list[EpochRow]:
        """The epochs of the experiment's running trials (their current attempt) that have no stop
        decision yet, by trial, run and epoch: what the agent's judge decides next."""
        columns = ", ".join("e." + c.strip() for c in _EPOCH_COLUMNS.split(","))
        # From the running trials (a few) to their epochs by key: cheap however many epochs the experiment has.
        rows = self._fetch(
            f"SELECT {columns} FROM trials t JOIN trial_epochs e ON e.trial_id = t.id AND e.attempt = t.attempts"
            " WHERE t.experiment_id = %s AND t.status = 'running'"
            "   AND NOT EXISTS (SELECT 1 FROM trial_decisions d WHERE d.trial_id = e.trial_id"
            "                   AND d.attempt = e.attempt AND d.run = e.run AND d.epoch = e.epoch)"
            " ORDER BY e.trial_id, e.attempt, e.run, e.epoch",
            (experiment_id,),
        )
        return [EpochRow(*row) for row in rows]

    def run_epochs(self, trial_id: int, attempt: int, run: int) -> list[EpochRow]:
        """The epochs one run of a trial recorded, by epoch (the judge's view of its learning curve)."""
        rows = self._fetch(
            f"SELECT {_EPOCH_COLUMNS} FROM trial_epochs WHERE trial_id = %s AND attempt = %s AND run = %s"
            " ORDER BY epoch",
            (trial_id, attempt, run),
        )
        return [EpochRow(*row) for row in rows]

    def stop_decision(self, trial_id: int, attempt: int, run: int, epoch: int) -> DecisionRow | None:
        """The agent's decision on one epoch of one run of a trial, or None while there is none.
        A trial polls this after each epoch; it needs only SELECT on ``trial_decisions``."""
        rows = self._fetch(
            f"SELECT {_DECISION_COLUMNS} FROM trial_decisions"
            " WHERE trial_id = %s AND attempt = %s AND run = %s AND epoch = %s",
            (trial_id, attempt, run, epoch),
        )
        return DecisionRow(*rows[0]) if rows else None

    def decisions(self, experiment_id: int, trial_id: int | None = None) -> list[DecisionRow]:
        """The experiment's stop decisions (only ``trial_id``'s when given), by trial, run and epoch."""
        only = "" if trial_id is None else " AND trial_id = %s"
        params: tuple[Any, ...] = (experiment_id,) if trial_id is None else (experiment_id, trial_id)
        rows = self._fetch(
            f"SELECT {_DECISION_COLUMNS} FROM trial_decisions WHERE experiment_id = %s{only}"
            " ORDER BY trial_id, attempt, run, epoch",
            params,
        )
        return [DecisionRow(*row) for row in rows]

    def may_read_decisions(self) -> bool:
        """Whether this connection's role may read ``trial_decisions`` (a trial of an experiment with
        early stopping checks before it trains: a missing grant is one clear error)."""
        return bool(self._fetch("SELECT has_table_privilege(current_user, 'trial_decisions', 'SELECT')")[0][0])

    def load_stopping_state(self, experiment_id: int) -> tuple[str, dict[str, Any]] | None:
        """(rule, state) the judge last saved for the experiment, or None."""
        rows = self._fetch("SELECT rule, state FROM stopping_state WHERE experiment_id = %s", (experiment_id,))
        return (rows[0][0], dict(rows[0][1])) if rows else None


_EPOCH_COLUMNS = (
    "experiment_id, trial_id, attempt, run, epoch, train_loss, val_accuracy, lr, restarts, seconds, created_at"
)


@dataclass(frozen=True)
class EpochRow:
    """One row of ``trial_epochs``: one epoch of one run of a trial (see migrations/006_trial_epochs.sql).

    ``attempt`` is the trial's ``attempts`` when the run started, ``run`` the launcher's attempt
    within it; ``epoch`` counts from 1 over the whole run, the trainer's restarts included.
    ``val_accuracy`` is None for a diverged (unevaluated) epoch; ``created_at`` None until written."""

    experiment_id: int
    trial_id: int
    attempt: int
    run: int
    epoch: int
    train_loss: float | None
    val_accuracy: float | None
    lr: float | None
    restarts: int
    seconds: float | None
    created_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The epoch as JSON-ready values (what ``top --json`` and the dashboard show)."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_accuracy": self.val_accuracy,
            "lr": self.lr,
            "restarts": self.restarts,
            "seconds": self.seconds,
        }


_DECISION_COLUMNS = "experiment_id, trial_id, attempt, run, epoch, stop, rule, predicted, reason, created_at"


@dataclass(frozen=True)
class DecisionRow:
    """One row of ``trial_decisions``: the agent's early-stopping decision on one epoch of one run of
    a trial (see migrations/007_early_stopping.sql). ``predicted``: predict's predicted final
    accuracy (the stopped network's reward), None for median; ``created_at`` None until written."""

    experiment_id: int
    trial_id: int
    attempt: int
    run: int
    epoch: int
    stop: bool
    rule: str
    predicted: float | None
    reason: str
    created_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The decision as JSON-ready values."""
        return {
            "epoch": self.epoch,
            "stop": self.stop,
            "rule": self.rule,
            "predicted": self.predicted,
            "reason": self.reason,
        }


class StoreTransaction:
    """The writes of one ``Store.transaction()`` block; unusable once the block has ended."""

    def __init__(self, store: Store) -> None:
        """Called by ``Store.transaction`` only."""
        self._store = store
        self._open = True

    def _write(self, sql: Any, params: Any = ()) -> Result:
        if not self._open:
            raise RuntimeError("this StoreTransaction has already ended")
        return self._store._write(sql, params)

    def insert_trial(
        self,
        experiment_id: int,
        arch: str,
        digest: str,
        epsilon: float | None,
        worker: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> int:
        """Record that training of ``arch`` starts now (status 'running'); return the trial id.

        Raises DuplicateTrialError if the experiment already has this digest (check
        ``Store.trial_by_digest`` first); nothing is written then and the transaction stays usable.
        """
        if not self._open:
            raise RuntimeError("this StoreTransaction has already ended")
        trial_id = self._store._next_id("trials")
        # ON CONFLICT DO NOTHING rather than catching IntegrityError: a failed statement
        # would abort the whole agent step's transaction.
        rows = self._write(
            "INSERT INTO trials (id, experiment_id, arch, digest, status, epsilon, worker, info, started_at) "
            "VALUES (%s, %s, %s, %s, 'running', %s, %s, %s, clock_timestamp()) "
            "ON CONFLICT (experiment_id, digest) DO NOTHING RETURNING id",
            (
                trial_id,
                experiment_id,
                arch,
                digest,
                None if epsilon is None else float(epsilon),
                worker,
                _json(info or {}),
            ),
        ).rows
        if not rows:
            raise DuplicateTrialError(
                f"architecture {arch} (digest {digest}) is already a trial of experiment {experiment_id}"
            )
        return int(rows[0][0])

    def finish_trial(
        self,
        trial_id: int,
        status: str,
        accuracy: float,
        params: int | None,
        failure: str | None,
        train_seconds: float | None,
        info: dict[str, Any] | None = None,
        worker: str | None = None,
    ) -> None:
        """Record the outcome of a trial: ``status`` is 'done', 'failed' or 'stopped' (early; its
        ``failure`` then says where and why); ``info`` is merged into the trial's existing info
        (new keys win); ``worker``, if given, replaces the trial's worker (it is often known only
        once training ran); finished_at is set to now."""
        if status not in (TrialStatus.DONE, TrialStatus.FAILED, TrialStatus.STOPPED):
            raise ValueError(f"finish_trial status must be 'done', 'failed' or 'stopped', not {status!r}")
        result = self._write(
            "UPDATE trials SET status = %s, accuracy = %s, params = %s, failure = %s, train_seconds = %s,"
            " info = info || %s, worker = COALESCE(%s, worker), finished_at = clock_timestamp()"
            " WHERE id = %s",
            (
                status,
                None if accuracy is None else float(accuracy),
                None if params is None else int(params),
                failure,
                None if train_seconds is None else float(train_seconds),
                _json(info or {}),
                worker,
                trial_id,
            ),
        )
        if result.rowcount == 0:
            raise StoreError(f"unknown trial id {trial_id}")

    def record_measures(self, trial_id: int, macs: int | None, latency_ms: float | None, reward: float | None) -> None:
        """Record a finished trial's MACs, measured latency and reward (the objective's value), in the
        transaction of its ``finish_trial`` (migration 008)."""
        result = self._write(
            "UPDATE trials SET macs = %s, latency_ms = %s, reward = %s WHERE id = %s",
            (
                None if macs is None else int(macs),
                None if latency_ms is None else float(latency_ms),
                None if reward is None or reward != reward else float(reward),  # NaN is no reward
                trial_id,
            ),
        )
        if result.rowcount == 0:
            raise StoreError(f"unknown trial id {trial_id}")

    def restart_trial(self, trial_id: int) -> None:
        """Put a trial back to 'running' (attempts + 1, outcome fields cleared, started_at now).

        Used on resume for trials that were in flight when the previous process died."""
        result = self._write(
            "UPDATE trials SET status = 'running', attempts = attempts + 1, accuracy = NULL, params = NULL,"
            " failure = NULL, train_seconds = NULL, finished_at = NULL, started_at = clock_timestamp(),"
            " macs = NULL, latency_ms = NULL, reward = NULL"
            " WHERE id = %s",
            (trial_id,),
        )
        if result.rowcount == 0:
            raise StoreError(f"unknown trial id {trial_id}")

    def save_trial_result(self, trial_id: int, attempt: int, outcome: dict[str, Any]) -> None:
        """Report a trial's outcome (JSON) from where it ran; replaces an earlier attempt's report.
        Does not touch the trial row: the agent records the outcome when its launcher reads it."""
        self._write(
            "INSERT INTO trial_results (trial_id, attempt, outcome) VALUES (%s, %s, %s) "
            "ON CONFLICT (trial_id) DO UPDATE"
            " SET attempt = EXCLUDED.attempt, outcome = EXCLUDED.outcome, created_at = now()",
            (trial_id, int(attempt), _json(outcome)),
        )

    def record_infra_failure(
        self,
        experiment_id: int,
        trial_id: int | None,
        fault: str,
        reason: str,
        worker: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Record that the machines did not run trial ``trial_id`` to its end (``fault``: a
        ``Fault`` value). Touches neither the trial row nor anything the strategy learns from."""
        self._write(
            "INSERT INTO infra_failures (experiment_id, trial_id, fault, reason, worker, info)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (experiment_id, trial_id, str(fault), reason, worker, _json(info or {})),
        )

    def append_replay(self, experiment_id: int, trial_id: int | None, arch: str, reward: float) -> None:
        """Append one rewarded sample to the replay memory (replay-dictionary hits included)."""
        self._write(
            "INSERT INTO replay_memory (experiment_id, trial_id, arch, reward) VALUES (%s, %s, %s, %s)",
            (experiment_id, trial_id, arch, float(reward)),
        )

    def upsert_q(self, experiment_id: int, values: dict[tuple[str, str], float]) -> None:
        """Insert or overwrite Q-values {(state, action): value}: one statement per 1,000 values."""
        if not values:
            return
        # Sorted so that two agents upserting overlapping keys lock rows in the same order (no deadlock).
        rows = [(experiment_id, state, action, float(value)) for (state, action), value in sorted(values.items())]
        for start in range(0, len(rows), _Q_PAGE):
            page = rows[start : start + _Q_PAGE]
            self._write(
                "INSERT INTO q_values (experiment_id, state, action, value) VALUES "
                + ", ".join(["(%s, %s, %s, %s)"] * len(page))
                + " ON CONFLICT (experiment_id, state, action) DO UPDATE SET value = EXCLUDED.value",
                tuple(v for row in page for v in row),
            )

    def save_agent_state(self, experiment_id: int, strategy: str, state: dict[str, Any]) -> None:
        """Replace the strategy's resumable state (any JSON; ints of any size round-trip exactly)."""
        self._write(
            "INSERT INTO agent_state (experiment_id, strategy, state) VALUES (%s, %s, %s) "
            "ON CONFLICT (experiment_id) DO UPDATE"
            " SET strategy = EXCLUDED.strategy, state = EXCLUDED.state, updated_at = now()",
            (experiment_id, strategy, _json(state)),
        )

    def record_decision(self, row: DecisionRow) -> None:
        """Write the judge's decision on one epoch (a decision already there is kept: decisions are
        final, a trial may have acted on it)."""
        self._write(
            f"INSERT INTO trial_decisions ({_DECISION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " clock_timestamp()) ON CONFLICT DO NOTHING",
            (
                row.experiment_id,
                row.trial_id,
                row.attempt,
                row.run,
                row.epoch,
                bool(row.stop),
                row.rule,
                None if row.predicted is None else float(row.predicted),
                row.reason,
            ),
        )

    def save_stopping_state(self, experiment_id: int, rule: str, state: dict[str, Any]) -> None:
        """Replace the judge's resumable state (predict: its predictor's settings and training set)."""
        self._write(
            "INSERT INTO stopping_state (experiment_id, rule, state) VALUES (%s, %s, %s) "
            "ON CONFLICT (experiment_id) DO UPDATE"
            " SET rule = EXCLUDED.rule, state = EXCLUDED.state, updated_at = now()",
            (experiment_id, rule, _json(state)),
        )


def connect(db: str | None, retry_seconds: float | None = None) -> Store:
    """The store at ``db`` (a ``--db`` URL), else ``$NASAGENT_DB``, else the embedded server.

    With the embedded server, a reconnection first starts the server again if it is down (it is
    ours: nobody else will); a server given by URL is waited for.
    """
    url = explicit_db_url(db)
    if url is not None:
        return Store.connect(url, retry_seconds=retry_seconds)
    home = nasagent_home()
    return Store.connect(embedded_url(home), reopen=lambda: embedded_url(home), retry_seconds=retry_seconds)
