"""One live search per experiment: a PostgreSQL advisory lock held for as long as the search runs.

``nasagent search`` (and ``delete``, ``extend``) take the lock of the experiment's *name* before
reading or creating it, so two searches started at the same instant cannot both go ahead: the
second stops at once with one line naming the holder (host, process, since when). The lock is a
session-level advisory lock of the database, so it works the same for agents on a cluster sharing
one PostgreSQL, and it is released by the server when the holder's connection ends, however the
holder died: ``kill -9`` leaves no stale lock behind. (A holder whose machine vanished is noticed
by the server's TCP keepalives, set to about a minute on the holder's connection.)
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from nasagent.errors import StoreError
from nasagent.persistence.postgres import Store


def lock_key(name: str) -> int:
    """The advisory lock key of experiment ``name``: 64 bits of a hash, signed as PostgreSQL's bigint."""
    digest = hashlib.sha256(b"nasagent-experiment\x00" + name.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def describe_holder(holder: dict[str, Any]) -> str:
    """``process 123 on host h (nasagent search) since 2025-01-02 03:04:05 UTC``, from ``Store.lock_holder``."""
    since = holder.get("since")
    when = f" since {since.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC" if isinstance(since, datetime) else ""
    if holder.get("pid") is None:
        return f"another database session (backend pid {holder.get('backend_pid')}){when}"
    purpose = f" (nasagent {holder['purpose']})" if holder.get("purpose") else ""
    return f"process {holder['pid']} on host {holder['host']}{purpose}{when}"


def acquire(store: Store, name: str, purpose: str) -> int:
    """Take experiment ``name``'s lock on ``store``'s connection; return its key for ``release``.

    StoreError, at once, if another session holds it, naming the holder."""
    key = lock_key(name)
    if store.try_lock(key, name, purpose, socket.gethostname(), os.getpid()):
        return key
    holder = store.lock_holder(key, name)
    who = describe_holder(holder) if holder else "another process (it has just finished)"
    raise StoreError(f"experiment '{name}' is in use by {who}; wait for it to end, or stop it first")


def release(store: Store, key: int) -> None:
    """Give back a lock taken with ``acquire`` (closing the connection does too)."""
    store.unlock(key)


@contextmanager
def experiment_lock(store: Store, name: str, purpose: str = "search") -> Iterator[None]:
    """Hold experiment ``name``'s lock for the block (see ``acquire``)."""
    key = acquire(store, name, purpose)
    try:
        yield
    finally:
        try:
            release(store, key)
        except StoreError:
            pass  # the connection is gone, and the lock with it
