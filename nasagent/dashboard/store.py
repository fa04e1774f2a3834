"""The dashboard's view of the store: read-only connections and the few aggregate reads it needs.

A ``ReadOnlyStore`` is a ``Store`` whose session refuses every write
(``SET default_transaction_read_only = on``, set again after each reconnection), so no request of
the dashboard can change an experiment, whatever its code does. Beside the Store's own reads it
has the ones a page of 10,000 trials needs to stay small and fast: a cheap "what changed" stamp,
light trial rows, one sorted page of trials, failures aggregated by reason. ``StorePool`` hands
one connection to each request thread at a time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

from nasagent.core.trial import TrialStatus
from nasagent.persistence.embedded import embedded_url, explicit_db_url, nasagent_home
from nasagent.persistence.postgres import Store, TrialRow

SORT_COLUMNS = {
    "accuracy": "accuracy",
    "params": "params",
    "epsilon": "epsilon",
    "time": "train_seconds",
    "id": "id",
    "finished": "finished_at",
    "reward": "COALESCE(reward, accuracy)",  # the objective's value; older rows' reward was their accuracy
    "macs": "macs",
    "latency": "latency_ms",
}
"""Leaderboard sort keys (the query string's ``sort``) and their columns."""

TRIAL_FIELDS = (
    "id",
    "arch",
    "status",
    "accuracy",
    "params",
    "epsilon",
    "train_seconds",
    "worker",
    "failure",
    "attempts",
    "started_at",
    "finished_at",
    "macs",
    "latency_ms",
    "reward",
)


STOP_FIELDS = ("stopped_epoch", "predicted_accuracy")
"""Where an early-stopped trial stopped and its predicted final accuracy (``--early-stop``; None
for other trials), read from its ``info`` beside ``TRIAL_FIELDS``."""
_STOP_SQL = "(info->>'stopped_epoch')::int, (info->>'predicted_accuracy')::float8"


class LightTrial(NamedTuple):
    """A trial row with the fields the report's figure functions read (``accuracy_curve``,
    ``trial_times``), built at C speed: the 10,000 rows of a large experiment in milliseconds.
    ``status`` is the column's text, which compares equal to its ``TrialStatus``."""

    id: int
    status: str
    accuracy: float | None
    epsilon: float | None
    params: int | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    train_seconds: float | None


def as_trial_rows(rows: list[LightTrial]) -> list[TrialRow]:
    """Light rows where the report's functions expect ``TrialRow``s: they read only the fields a
    ``LightTrial`` has (``tests/test_dashboard.py`` checks the figures against the report's)."""
    return rows  # type: ignore[return-value]


class ReadOnlyStore(Store):
    """A ``Store`` that cannot write: every transaction of its session is read-only."""

    @classmethod
    def open(cls, url: str, reopen: Callable[[], str] | None = None) -> ReadOnlyStore:
        """Connect (bringing the schema up to date first, if this role may), then refuse writes."""
        store = cls.connect(url, reopen=reopen)
        store._session.on_reconnect.append(store._refuse_writes)
        store._refuse_writes()
        return store  # type: ignore[return-value]

    def _refuse_writes(self) -> None:
        self._session.run_now("SET SESSION default_transaction_read_only = on")

    def experiment_stamp(self, experiment_id: int) -> tuple[Any, ...]:
        """What changes whenever anything shown about the experiment changes, read in one cheap
        statement: trials launched, finished, restarted; the epochs of the running trials (those of
        finished trials no longer change); Q-values and the strategy's state; infrastructure
        failures; the config (``extend``) and the space running out."""
        return self._fetch(
            "SELECT count(*), count(*) FILTER (WHERE status = 'running'), max(finished_at), max(started_at),"
            "  sum(attempts),"
            "  (SELECT count(*) FROM trial_epochs e JOIN trials r ON r.id = e.trial_id"
            "    WHERE r.experiment_id = %(e)s AND r.status = 'running'),"
            "  (SELECT max(e.created_at) FROM trial_epochs e JOIN trials r ON r.id = e.trial_id"
            "    WHERE r.experiment_id = %(e)s AND r.status = 'running'),"
            "  (SELECT updated_at FROM agent_state WHERE experiment_id = %(e)s),"
            "  (SELECT count(*) FROM infra_failures WHERE experiment_id = %(e)s),"
            "  (SELECT count(*) FROM replay_memory WHERE experiment_id = %(e)s),"
            "  (SELECT md5(config::text || coalesce(exhausted, '')) FROM experiments WHERE id = %(e)s)"
            " FROM trials WHERE experiment_id = %(e)s",
            {"e": experiment_id},  # type: ignore[arg-type]
        )[0]

    def light_trials(self, experiment_id: int) -> list[LightTrial]:
        """Every trial of the experiment by id, with only what the figures read: a fraction of the
        bytes and of the time of ``trials`` at 10,000 trials."""
        rows = self._fetch(
            f"SELECT {', '.join(LightTrial._fields)} FROM trials WHERE experiment_id = %s ORDER BY id",
            (experiment_id,),
        )
        return [LightTrial._make(row) for row in rows]

    def trials_page(
        self, experiment_id: int, sort: str, descending: bool, offset: int, limit: int, status: str | None
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many trials match, one page of them) sorted by ``sort`` (a ``SORT_COLUMNS`` key;
        missing values last, ties by id), optionally only those with ``status``."""
        column = SORT_COLUMNS[sort]
        where, params = "experiment_id = %s", [experiment_id]
        if status is not None:
            where += " AND status = %s"
            params.append(str(TrialStatus(status)))
        total = int(self._fetch(f"SELECT count(*) FROM trials WHERE {where}", tuple(params))[0][0])
        direction = "DESC" if descending else "ASC"
        rows = self._fetch(
            f"SELECT {', '.join(TRIAL_FIELDS)}, {_STOP_SQL} FROM trials WHERE {where}"
            f" ORDER BY {column} {direction} NULLS LAST, id LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return total, [dict(zip((*TRIAL_FIELDS, *STOP_FIELDS), row)) for row in rows]

    def running_trials(self, experiment_id: int) -> list[dict[str, Any]]:
        """The trials training now, oldest first."""
        rows = self._fetch(
            f"SELECT {', '.join(TRIAL_FIELDS)}, {_STOP_SQL} FROM trials"
            " WHERE experiment_id = %s AND status = 'running' ORDER BY id",
            (experiment_id,),
        )
        return [dict(zip((*TRIAL_FIELDS, *STOP_FIELDS), row)) for row in rows]

    def failure_reasons(self, experiment_id: int, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most frequent reasons of failed trials, with their counts."""
        rows = self._fetch(
            "SELECT coalesce(failure, '(no reason recorded)') AS reason, count(*) FROM trials"
            " WHERE experiment_id = %s AND status = 'failed' GROUP BY reason ORDER BY count(*) DESC, reason LIMIT %s",
            (experiment_id, limit),
        )
        return [{"failure": reason, "count": int(n)} for reason, n in rows]

    def recent_infra_failures(self, experiment_id: int, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` latest infrastructure failures, newest first."""
        rows = self._fetch(
            "SELECT f.trial_id, t.arch, f.fault, f.reason, f.worker, f.created_at"
            "  FROM infra_failures f LEFT JOIN trials t ON t.id = f.trial_id"
            " WHERE f.experiment_id = %s ORDER BY f.id DESC LIMIT %s",
            (experiment_id, limit),
        )
        keys = ("trial_id", "arch", "fault", "reason", "worker", "at")
        return [dict(zip(keys, row)) for row in rows]

    def trial_infra_failures(self, trial_id: int) -> list[dict[str, Any]]:
        """The infrastructure failures of one trial, oldest first."""
        rows = self._fetch(
            "SELECT fault, reason, worker, created_at FROM infra_failures WHERE trial_id = %s ORDER BY id",
            (trial_id,),
        )
        return [dict(zip(("fault", "reason", "worker", "at"), row)) for row in rows]

    def overview(self) -> list[dict[str, Any]]:
        """Every experiment with its trial counts and best accuracy, in one statement, oldest first."""
        rows = self._fetch(
            "SELECT e.id, e.name, e.config, e.created_at, e.exhausted,"
            "  count(t.id) FILTER (WHERE t.status IN ('done', 'failed', 'stopped')),"
            "  count(t.id) FILTER (WHERE t.status = 'running'),"
            "  count(t.id) FILTER (WHERE t.status = 'failed'),"
            "  max(t.accuracy) FILTER (WHERE t.status = 'done'),"
            "  max(coalesce(t.finished_at, t.started_at))"
            " FROM experiments e LEFT JOIN trials t ON t.experiment_id = e.id GROUP BY e.id ORDER BY e.id"
        )
        keys = ("id", "name", "config", "created_at", "exhausted", "finished", "running", "failed", "best", "last")
        return [dict(zip(keys, row)) for row in rows]


class StorePool:
    """Up to ``size`` read-only connections shared by the request threads, opened as needed."""

    def __init__(self, url: str, reopen: Callable[[], str] | None = None, size: int = 4) -> None:
        """Open the first connection now, so that a bad URL fails at start (StoreError)."""
        self._url, self._reopen, self._size = url, reopen, size
        self._idle: queue.LifoQueue[ReadOnlyStore] = queue.LifoQueue()
        self._opened = 1
        self._lock = threading.Lock()
        self._all = [ReadOnlyStore.open(url, reopen)]
        self._idle.put(self._all[0])

    @contextmanager
    def store(self) -> Iterator[ReadOnlyStore]:
        """A connection for this thread alone until the block ends."""
        with self._lock:
            grow = self._idle.empty() and self._opened < self._size
            if grow:
                self._opened += 1
        if grow:
            try:
                store = ReadOnlyStore.open(self._url, self._reopen)
            except BaseException:
                with self._lock:
                    self._opened -= 1
                raise
            with self._lock:
                self._all.append(store)
        else:
            store = self._idle.get()
        try:
            yield store
        finally:
            self._idle.put(store)

    def close(self) -> None:
        """Close every connection."""
        for store in self._all:
            store.close()


def open_pool(db: str | None) -> StorePool:
    """The pool for ``--db`` (else ``$NASAGENT_DB``, else the embedded server); StoreError if unreachable."""
    url = explicit_db_url(db)
    if url is not None:
        return StorePool(url)
    home = nasagent_home()
    return StorePool(embedded_url(home), reopen=lambda: embedded_url(home))
