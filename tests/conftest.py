"""Shared fixtures: one real embedded PostgreSQL per test session, a fresh database per test.

``db_url``  -> URL of an empty database of its own (schema not yet migrated), dropped afterwards.
``store``   -> a connected, migrated ``Store`` on ``db_url``, closed afterwards.
``embedded_pg`` -> the session's server: its NASAGENT_HOME and the URL of its ``postgres`` database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nasagent.persistence import Store, embedded_url, stop_embedded
from nasagent.persistence.databases import create_database, drop_database


@dataclass(frozen=True)
class EmbeddedPostgres:
    """The session's server. ``home`` is usable as NASAGENT_HOME (``embedded_url(home) == url``)."""

    home: Path
    url: str


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator[EmbeddedPostgres]:
    """Start one embedded PostgreSQL for the whole session, exactly as nasagent would (``embedded_url``).

    Its home is a short path under /tmp because the unix socket lives in it. Stopped and
    deleted at the end of the session.
    """
    home = Path(tempfile.mkdtemp(prefix="nas", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        url = embedded_url(home)
        yield EmbeddedPostgres(home=home, url=url)
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def db_url(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    """A new, empty database for this test only; dropped (connections and all) afterwards."""
    name = f"nastest_{uuid.uuid4().hex[:16]}"
    url = create_database(embedded_pg.url, name)
    try:
        yield url
    finally:
        drop_database(embedded_pg.url, name)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A connected Store on this test's own database, schema migrated."""
    connected = Store.connect(db_url)
    try:
        yield connected
    finally:
        connected.close()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test, restored after: training in-process as a worker does (two
    threads on a busy 2-core machine are many times slower), tiny policies without contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
