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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.sql
import pytest

from nasagent.store import Store, embedded_url, stop_embedded


@dataclass(frozen=True)
class EmbeddedPostgres:
    """The session's server. ``home`` is usable as NASAGENT_HOME (``embedded_url(home) == url``)."""

    home: Path
    url: str


def url_with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` on the same server (same socket host, user)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _admin(url: str, statement: psycopg2.sql.Composable) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


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
    _admin(embedded_pg.url, psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(name)))
    try:
        yield url_with_dbname(embedded_pg.url, name)
    finally:
        # FORCE: a test may leave connections open (a crashed child process, an unclosed Store).
        _admin(
            embedded_pg.url,
            psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg2.sql.Identifier(name)),
        )


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A connected Store on this test's own database, schema migrated."""
    connected = Store.connect(db_url)
    try:
        yield connected
    finally:
        connected.close()
