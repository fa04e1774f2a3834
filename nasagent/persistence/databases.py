"""Create and drop whole databases on a PostgreSQL server: isolated databases for tests and benchmarks."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.sql


def database_url(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` on the same server (same socket host, user)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _admin(url: str, statement: psycopg2.sql.Composable) -> None:
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction block
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def create_database(server_url: str, dbname: str) -> str:
    """Create an empty database ``dbname`` on the server of ``server_url``; return its URL."""
    _admin(server_url, psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(dbname)))
    return database_url(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    """Drop ``dbname`` if it exists, closing its connections (FORCE: a crashed child may hold one)."""
    _admin(
        server_url, psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg2.sql.Identifier(dbname))
    )
