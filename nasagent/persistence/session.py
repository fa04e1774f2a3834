"""A database connection that outlives the database going away: bounded reconnects, replayed transactions.

A PostgreSQL restart (a rolling update of its pod, a node drain, the embedded server stopped or
killed) closes every connection. A search that runs for days must not die of it, so a ``Session``
notices a lost connection, reconnects with exponential backoff (0.2 s doubling up to 5 s) for
at most ``retry_seconds`` (env ``NASAGENT_DB_RETRY_SECONDS``, default 600), first restarting the
embedded server when the URL is ours (``reopen``), and carries on where it was:

* outside a transaction, the interrupted statement simply runs again;
* inside one, the server has rolled the transaction back: the writes it had made (recorded as they
  ran) run again on the new connection, then the interrupted statement;
* at ``COMMIT`` a dropped connection leaves the outcome unknown. The session asked the server for
  the transaction's id just before committing; once reconnected it asks ``txid_status`` whether
  that transaction committed, and replays it only if it did not.

So nothing is lost and nothing is written twice. Replaying is exact because every write the store
makes is fixed by its parameters (ids are drawn with ``nextval`` first and inserted explicitly, so a
replayed insert gets the id the caller already holds).

A connection can also break without the server restarting (a network cut); its old backend may
then still hold the transaction and its locks. After reconnecting, the session ends that backend
(matched by pid *and* start time, so never another process's) before it replays anything.

When the database stays away past ``retry_seconds`` a StoreError says so in one line.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extensions

from nasagent.errors import StoreError
from nasagent.persistence.embedded import redact_url

RETRY_ENV = "NASAGENT_DB_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 600.0
CONNECT_TIMEOUT_S = 5
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0
APPLICATION_NAME = "nasagent"
# TCP keepalives, so that a server that vanished without closing the socket (a node lost) is
# noticed within about a minute rather than after the kernel's two hours. Unix sockets ignore them.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
# Connection failures that waiting will not cure: report them at once.
_PERMANENT = re.compile(r"does not exist|authentication failed|no pg_hba\.conf entry|permission denied", re.IGNORECASE)
# SQLSTATE classes of a connection that is gone: 08 connection exception, 57P01-03 the server
# shutting down, crashed, or not accepting connections yet.
_LOST_CODES = ("57P01", "57P02", "57P03")

log = logging.getLogger(__name__)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg2 messages span several)."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def retry_seconds_from_env() -> float:
    """``$NASAGENT_DB_RETRY_SECONDS``: how long a lost database is waited for (default 600; 0: not at all)."""
    raw = os.environ.get(RETRY_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise StoreError(f"{RETRY_ENV} must be a number of seconds (0 or more), got {raw!r}")
    return value


@dataclass(frozen=True)
class Result:
    """What one statement returned: its rows (empty when it returns none) and its row count."""

    rows: list[tuple[Any, ...]]
    rowcount: int


class _Unavailable(Exception):
    """The database cannot be reached yet (the embedded server did not start): worth another try."""


class Session:
    """One connection to ``url`` that comes back after the database restarts (see the module docstring).

    ``reopen``, when given, is called before each reconnection attempt and returns the URL to use;
    for the embedded server it starts the server again if it is down. ``retry_seconds`` (default
    from the environment) bounds the wait; 0 reports a lost connection at once. Used by one thread.
    """

    def __init__(self, url: str, reopen: Callable[[], str] | None = None, retry_seconds: float | None = None) -> None:
        """Connect to ``url``; raises psycopg2.Error if that fails (``Store.connect`` words it)."""
        self.url = url
        self.safe_url = redact_url(url)
        self.retry_seconds = retry_seconds_from_env() if retry_seconds is None else float(retry_seconds)
        self.reconnects = 0
        self.on_reconnect: list[Callable[[], None]] = []
        """Run after every reconnection, before a transaction is replayed (re-taking session locks)."""
        self._reopen = reopen
        self._writes: list[tuple[Any, Any]] | None = None  # the open transaction's writes; None outside one
        self.conn = self._connect(url)
        self._identity = self._backend_identity()

    # -- statements ---------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._writes is not None

    def execute(self, sql: Any, params: Any = (), *, write: bool = False) -> Result:
        """Run one statement in the open ``transaction()``, or in a transaction of its own.

        ``write`` marks statements that change data: they are replayed after a reconnection, and
        their transaction's commit is verified. Reads are simply run again.
        """
        if self._writes is None:
            with self.transaction():
                return self.execute(sql, params, write=write)
        while True:
            try:
                with self.conn.cursor() as cur:
                    cur.execute(sql, params)
                    result = Result(cur.fetchall() if cur.description is not None else [], cur.rowcount)
                break
            except psycopg2.Error as exc:
                if not self._lost(exc):
                    raise
                self._recover(exc)
        if write:
            self._writes.append((sql, params))
        return result

    def run_now(self, sql: str, params: Any = ()) -> Result:
        """Run one statement and commit it on the current connection, without any retry.

        For ``on_reconnect`` hooks, which run on a fresh connection outside any transaction."""
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            result = Result(cur.fetchall() if cur.description is not None else [], cur.rowcount)
        self.conn.commit()
        return result

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Statements run inside the block commit together at its end, or not at all if it raises."""
        if self._writes is not None:
            raise RuntimeError("transactions do not nest")
        self._writes = []
        try:
            yield
            self._commit()
        except BaseException:
            self._rollback_quietly()
            raise
        finally:
            self._writes = None

    def close(self) -> None:
        """Close the connection (uncommitted work is rolled back by the server). Idempotent."""
        if not self.conn.closed:
            self.conn.close()

    # -- commit and recovery ------------------------------------------------------------------

    def _commit(self) -> None:
        assert self._writes is not None
        while True:
            xid = None
            try:
                if self._writes:
                    # The id of this transaction, asked before COMMIT: if the connection drops while
                    # committing, it tells whether the commit happened (None: nothing was written).
                    with self.conn.cursor() as cur:
                        cur.execute("SELECT txid_current_if_assigned()")
                        xid = cur.fetchone()[0]  # type: ignore[index]
                self.conn.commit()
                return
            except psycopg2.Error as exc:
                if not self._lost(exc):
                    raise
                if self._recover(exc, xid):
                    return

    def _recover(self, exc: psycopg2.Error, xid: int | None = None) -> bool:
        """Reconnect with backoff, then replay the open transaction's writes unless transaction
        ``xid`` turns out to have committed; return whether it had. StoreError past the deadline."""
        started = time.monotonic()
        deadline = started + self.retry_seconds
        delay = FIRST_DELAY_S
        reason = first_line(exc)
        log.warning("database %s: connection lost (%s); reconnecting", self.safe_url, reason)
        while True:
            try:
                self._reconnect()
                if xid is not None and self._committed(xid):
                    committed = True
                else:
                    self._replay()
                    committed = False
                self.reconnects += 1
                log.warning("database %s: reconnected after %.1f s", self.safe_url, time.monotonic() - started)
                return committed
            except psycopg2.Error as err:
                if isinstance(err, psycopg2.OperationalError) and _PERMANENT.search(str(err)):
                    raise StoreError(f"database {self.safe_url}: {first_line(err)}") from None
                if not self._lost(err):
                    raise
                reason = first_line(err)
            except _Unavailable as err:
                reason = str(err)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(
                    f"database {self.safe_url} unreachable for {time.monotonic() - started:.0f} s ({reason}); "
                    f"gave up after {RETRY_ENV}={self.retry_seconds:g}"
                ) from None
            time.sleep(min(delay, remaining))  # the last attempt comes at the deadline
            delay = min(2 * delay, MAX_DELAY_S)

    def _reconnect(self) -> None:
        """A new connection in place of the lost one; the old backend, if it survived, is ended."""
        old_identity = self._identity
        if not self.conn.closed:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        url = self.url
        if self._reopen is not None:
            try:
                url = self._reopen()
            except StoreError as exc:  # the embedded server would not start (yet)
                raise _Unavailable(str(exc)) from None
        self.conn = self._connect(url)
        self._identity = self._backend_identity()
        # Our old backend still exists only if the server did not restart (a network cut); it may
        # hold the interrupted transaction's row locks and our session locks: end it first.
        self.run_now(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s",
            old_identity,
        )
        for hook in self.on_reconnect:
            hook()

    def _committed(self, xid: int) -> bool:
        """Whether transaction ``xid`` committed (asked on the new connection)."""
        for _ in range(50):
            status = self.run_now("SELECT txid_status(%s)", (xid,)).rows[0][0]
            if status != "in progress":
                return status == "committed"
            time.sleep(0.1)  # its backend is being terminated: its fate is sealed within moments
        raise StoreError(f"database {self.safe_url}: transaction {xid} is still in progress after a reconnection")

    def _replay(self) -> None:
        """Run the open transaction's writes again on the new connection (nothing if outside one)."""
        if not self._writes:
            return
        with self.conn.cursor() as cur:
            for sql, params in self._writes:
                cur.execute(sql, params)

    def _lost(self, exc: psycopg2.Error) -> bool:
        """Whether ``exc`` means the connection is gone (and reconnecting is allowed)."""
        if self.retry_seconds <= 0:
            return False
        if self.conn.closed:
            return True
        code = getattr(exc, "pgcode", None)
        if code is not None:
            return code.startswith("08") or code in _LOST_CODES
        # No SQLSTATE: the error comes from the client library, not the server. "server closed the
        # connection unexpectedly" arrives so, as a bare DatabaseError, while psycopg2 still calls
        # the connection open and idle.
        return (
            isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) or type(exc) is psycopg2.DatabaseError
        )

    def _rollback_quietly(self) -> None:
        if self.conn.closed:
            return
        try:
            self.conn.rollback()
        except psycopg2.Error:
            pass  # the connection is gone; the server discards the transaction anyway

    # -- connecting ----------------------------------------------------------------------------

    def _connect(self, url: str) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            url, connect_timeout=CONNECT_TIMEOUT_S, application_name=APPLICATION_NAME, **_KEEPALIVES
        )

    def _backend_identity(self) -> tuple[int, datetime]:
        """(pid, start time) of this connection's server process: unique even if pids are reused."""
        return self.run_now(  # type: ignore[return-value]
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).rows[0]
