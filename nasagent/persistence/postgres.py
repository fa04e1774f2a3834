"""The PostgreSQL store: experiments, trials, replay memory, Q-values and agent state.

Everything an agent learns is written here, one agent step per transaction, so that a
process killed at any moment (``kill -9`` included) resumes from the last committed step.
A ``Store`` wraps one psycopg2 connection: use one Store per thread or process.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
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
from nasagent.persistence.embedded import redact_url, resolve_db_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_FILE = re.compile(r"^(\d{3})_(\w+)\.sql$")
# Arbitrary but fixed key: every nasagent process migrating any database takes this lock.
_MIGRATION_LOCK_KEY = 7_366_583_120_001
CONNECT_TIMEOUT_S = 5


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TrialStatus(self.status))  # the column holds the value; frozen


_EXPERIMENT_COLUMNS = "id, name, config, created_at"
_TRIAL_COLUMNS = (
    "id, experiment_id, arch, digest, status, accuracy, epsilon, params, worker, failure, "
    "attempts, info, created_at, started_at, finished_at, train_seconds"
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
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
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


class Store:
    """A connection to the nasagent database (see module docstring). Create with ``Store.connect``."""

    def __init__(self, conn: psycopg2.extensions.connection, url: str) -> None:
        """Wrap an open connection (not in a transaction). Prefer ``Store.connect``, which also migrates."""
        self._conn = conn
        self.url = url
        self.safe_url = redact_url(url)
        self._tx: StoreTransaction | None = None

    @classmethod
    def connect(cls, url: str) -> Store:
        """Connect to ``url`` (a libpq URL, see ``resolve_db_url``) and bring its schema up to date.

        Called once per process (or thread). Fails within ~5 s with one StoreError line if the
        database cannot be reached or migrated; the password never appears in the message.
        """
        safe = redact_url(url)
        try:
            conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name="nasagent")
        except psycopg2.Error as exc:
            raise StoreError(f"cannot reach database at {safe}: {_first_line(exc)}") from None
        store = cls(conn, url)
        try:
            store.migrate()
        except psycopg2.Error as exc:
            conn.close()
            raise StoreError(f"cannot set up the nasagent schema in {safe}: {_first_line(exc)}") from None
        except BaseException:
            conn.close()
            raise
        return store

    def migrate(self) -> list[int]:
        """Apply pending migrations (see ``migrate``); return the versions applied now. Idempotent."""
        if self._tx is not None:
            raise RuntimeError("cannot migrate inside a transaction")
        return migrate(self._conn)

    def close(self) -> None:
        """Close the connection; uncommitted work is rolled back by the server. Idempotent."""
        if not self._conn.closed:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        # A dropped connection, a killed server, a deadlock: one line for the user, not a traceback.
        try:
            yield
        except psycopg2.errors.ForeignKeyViolation as exc:
            raise StoreError(f"database {self.safe_url}: no such experiment or trial ({_first_line(exc)})") from exc
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            raise StoreError(f"database {self.safe_url}: {_first_line(exc)}") from exc

    @contextmanager
    def _cursor(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor that joins the open ``transaction()``, or else commits (or rolls back) at once,
        so that a Store never sits idle inside a transaction holding a snapshot or locks."""
        with self._errors():
            if self._tx is not None:
                with self._conn.cursor() as cur:
                    yield cur
                return
            try:
                with self._conn.cursor() as cur:
                    yield cur
                self._conn.commit()
            except BaseException:
                self._rollback_quietly()
                raise

    def _rollback_quietly(self) -> None:
        if self._conn.closed:
            return
        try:
            self._conn.rollback()
        except psycopg2.Error:
            pass  # the connection is gone; the server discards the transaction anyway

    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """Everything written through the yielded ``StoreTransaction`` (and through this Store's
        methods) inside the block commits together at its end, or not at all if it raises.

        One agent step is one transaction. Reads on this Store inside the block see its
        uncommitted writes. Transactions do not nest (RuntimeError).
        """
        if self._tx is not None:
            raise RuntimeError("Store.transaction() does not nest")
        tx = StoreTransaction(self)
        self._tx = tx
        try:
            with self._errors():
                yield tx
                self._conn.commit()
        except BaseException:
            self._rollback_quietly()
            raise
        finally:
            tx._open = False
            self._tx = None

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    # -- experiments ------------------------------------------------------------------------

    def create_experiment(self, name: str, config: dict[str, Any]) -> Experiment:
        """Create experiment ``name`` with its config; StoreError if the name is taken."""
        rows = self._fetch(
            "INSERT INTO experiments (name, config) VALUES (%s, %s) "
            f"ON CONFLICT (name) DO NOTHING RETURNING {_EXPERIMENT_COLUMNS}",
            (name, _json(config)),
        )
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
        self._fetch("DELETE FROM trial_results WHERE trial_id = %s RETURNING trial_id", (trial_id,))

    def trial_by_digest(self, experiment_id: int, digest: str) -> TrialRow | None:
        """The experiment's trial of the architecture with ``digest`` (the replay dictionary), or None."""
        rows = self._fetch(
            f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE experiment_id = %s AND digest = %s", (experiment_id, digest)
        )
        return TrialRow(*rows[0]) if rows else None

    def top(self, experiment_id: int, k: int) -> list[TrialRow]:
        """The ``k`` done trials with the best accuracy, best first; ties go to the earlier trial."""
        rows = self._fetch(
            f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE experiment_id = %s AND status = 'done' "
            "ORDER BY accuracy DESC NULLS LAST, id LIMIT %s",
            (experiment_id, max(int(k), 0)),
        )
        return [TrialRow(*row) for row in rows]

    def counts(self, experiment_id: int) -> dict[str, Any]:
        """Progress: ``unique_trained`` (done + failed trials), ``running``, ``failed``,
        ``trials_done`` (rewarded samples, i.e. replay memory rows, dictionary hits included)
        and ``best_accuracy`` (of done trials, None if there are none)."""
        rows = self._fetch(
            "SELECT count(*) FILTER (WHERE status IN ('done', 'failed')),"
            "       count(*) FILTER (WHERE status = 'running'),"
            "       count(*) FILTER (WHERE status = 'failed'),"
            "       max(accuracy) FILTER (WHERE status = 'done'),"
            "       (SELECT count(*) FROM replay_memory WHERE experiment_id = %s)"
            "  FROM trials WHERE experiment_id = %s",
            (experiment_id, experiment_id),
        )
        unique_trained, running, failed, best, replayed = rows[0]
        return {
            "unique_trained": unique_trained,
            "running": running,
            "failed": failed,
            "trials_done": replayed,
            "best_accuracy": best,
        }


class StoreTransaction:
    """The writes of one ``Store.transaction()`` block; unusable once the block has ended."""

    def __init__(self, store: Store) -> None:
        """Called by ``Store.transaction`` only."""
        self._store = store
        self._open = True

    @contextmanager
    def _cursor(self) -> Iterator[psycopg2.extensions.cursor]:
        if not self._open:
            raise RuntimeError("this StoreTransaction has already ended")
        with self._store._cursor() as cur:
            yield cur

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
        with self._cursor() as cur:
            # ON CONFLICT DO NOTHING rather than catching IntegrityError: a failed statement
            # would abort the whole agent step's transaction.
            cur.execute(
                "INSERT INTO trials (experiment_id, arch, digest, status, epsilon, worker, info, started_at) "
                "VALUES (%s, %s, %s, 'running', %s, %s, %s, clock_timestamp()) "
                "ON CONFLICT (experiment_id, digest) DO NOTHING RETURNING id",
                (
                    experiment_id,
                    arch,
                    digest,
                    None if epsilon is None else float(epsilon),
                    worker,
                    _json(info or {}),
                ),
            )
            row = cur.fetchone()
        if row is None:
            raise DuplicateTrialError(
                f"architecture {arch} (digest {digest}) is already a trial of experiment {experiment_id}"
            )
        return int(row[0])

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
        """Record the outcome of a trial: ``status`` is 'done' or 'failed'; ``info`` is merged
        into the trial's existing info (new keys win); ``worker``, if given, replaces the
        trial's worker (it is often known only once training ran); finished_at is set to now."""
        if status not in (TrialStatus.DONE, TrialStatus.FAILED):
            raise ValueError(f"finish_trial status must be 'done' or 'failed', not {status!r}")
        with self._cursor() as cur:
            cur.execute(
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
            if cur.rowcount == 0:
                raise StoreError(f"unknown trial id {trial_id}")

    def restart_trial(self, trial_id: int) -> None:
        """Put a trial back to 'running' (attempts + 1, outcome fields cleared, started_at now).

        Used on resume for trials that were in flight when the previous process died."""
        with self._cursor() as cur:
            cur.execute(
                "UPDATE trials SET status = 'running', attempts = attempts + 1, accuracy = NULL, params = NULL,"
                " failure = NULL, train_seconds = NULL, finished_at = NULL, started_at = clock_timestamp()"
                " WHERE id = %s",
                (trial_id,),
            )
            if cur.rowcount == 0:
                raise StoreError(f"unknown trial id {trial_id}")

    def save_trial_result(self, trial_id: int, attempt: int, outcome: dict[str, Any]) -> None:
        """Report a trial's outcome (JSON) from where it ran; replaces an earlier attempt's report.
        Does not touch the trial row: the agent records the outcome when its launcher reads it."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO trial_results (trial_id, attempt, outcome) VALUES (%s, %s, %s) "
                "ON CONFLICT (trial_id) DO UPDATE"
                " SET attempt = EXCLUDED.attempt, outcome = EXCLUDED.outcome, created_at = now()",
                (trial_id, int(attempt), _json(outcome)),
            )

    def append_replay(self, experiment_id: int, trial_id: int | None, arch: str, reward: float) -> None:
        """Append one rewarded sample to the replay memory (replay-dictionary hits included)."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO replay_memory (experiment_id, trial_id, arch, reward) VALUES (%s, %s, %s, %s)",
                (experiment_id, trial_id, arch, float(reward)),
            )

    def upsert_q(self, experiment_id: int, values: dict[tuple[str, str], float]) -> None:
        """Insert or overwrite Q-values {(state, action): value}: one statement per 1,000 values."""
        if not values:
            return
        # Sorted so that two agents upserting overlapping keys lock rows in the same order (no deadlock).
        rows = [(experiment_id, state, action, float(value)) for (state, action), value in sorted(values.items())]
        with self._cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO q_values (experiment_id, state, action, value) VALUES %s "
                "ON CONFLICT (experiment_id, state, action) DO UPDATE SET value = EXCLUDED.value",
                rows,
                page_size=1000,
            )

    def save_agent_state(self, experiment_id: int, strategy: str, state: dict[str, Any]) -> None:
        """Replace the strategy's resumable state (any JSON; ints of any size round-trip exactly)."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO agent_state (experiment_id, strategy, state) VALUES (%s, %s, %s) "
                "ON CONFLICT (experiment_id) DO UPDATE"
                " SET strategy = EXCLUDED.strategy, state = EXCLUDED.state, updated_at = now()",
                (experiment_id, strategy, _json(state)),
            )


def connect(db: str | None) -> Store:
    """The store at ``db`` (a ``--db`` URL), else ``$NASAGENT_DB``, else the embedded server."""
    return Store.connect(resolve_db_url(db))
