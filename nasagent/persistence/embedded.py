"""Where the database lives: an explicit URL, or a PostgreSQL server embedded under NASAGENT_HOME.

The embedded server is a real PostgreSQL (the ``pgserver`` wheel) whose data directory is
``$NASAGENT_HOME/pg``. It is started on first use and deliberately left running when the
Python process exits, so that an agent killed with ``kill -9`` loses nothing and the next
process simply reattaches to the same server.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
import warnings
from pathlib import Path

from nasagent.errors import StoreError

DEFAULT_HOME = "~/.nasagent"
_SCHEMES = ("postgresql://", "postgres://")


def nasagent_home() -> Path:
    """The directory from env ``NASAGENT_HOME`` (default ``~/.nasagent``), user-expanded, not created."""
    return Path(os.environ.get("NASAGENT_HOME") or DEFAULT_HOME).expanduser()


def embedded_url(home: Path) -> str:
    """Start (or reattach to) the embedded PostgreSQL with pgdata in ``home / "pg"``; return its URI.

    Called by ``resolve_db_url`` when no URL was given. Creates ``home`` if needed. Safe to
    call from several processes at once (pgserver serialises start-up with a file lock).
    Any failure to start becomes one StoreError line naming NASAGENT_HOME and the server log.
    """
    home = Path(home).expanduser().absolute()
    pgdata = home / "pg"
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create NASAGENT_HOME {home}: {exc.strerror or exc}") from None

    # pgserver warns about XDG_RUNTIME_DIR at import and logs multi-line errors through
    # logging's last-resort handler; we report failures ourselves, in one line.
    logger = logging.getLogger("pgserver")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        try:
            # cleanup_mode=None: the server must outlive this process (crash safety, reattach).
            server = pgserver.get_server(pgdata, cleanup_mode=None)
            return server.get_uri()
        except Exception as exc:  # pgserver raises CalledProcessError, RuntimeError, OSError...
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            hint = ""
            # The server's unix socket lives in pgdata when the path is short enough;
            # pgserver falls back to a runtime dir otherwise, but say so if that failed too.
            if len(str(pgdata / ".s.PGSQL.5432")) > 107:
                hint = " (the path is longer than a unix socket path may be: use a shorter NASAGENT_HOME)"
            raise StoreError(
                f"cannot start the embedded PostgreSQL in {pgdata} (NASAGENT_HOME={home}): {reason}{hint}; "
                f"see {pgdata / 'log'}, or pass --db / NASAGENT_DB to use another server"
            ) from None


def stop_embedded(home: Path, timeout_s: float = 15.0) -> bool:
    """Fast-shutdown the embedded server of ``home`` if it runs; return whether one was running.

    Nothing in nasagent calls this on exit (the server is meant to outlive its processes);
    it is for tests and for users cleaning up. Waits until the server has removed its pid file.
    """
    pid_file = Path(home).expanduser() / "pg" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, signal.SIGINT)  # SIGINT = PostgreSQL's "fast" shutdown
    except (OSError, ValueError, IndexError):
        return False
    deadline = time.monotonic() + timeout_s
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def resolve_db_url(db: str | None) -> str:
    """The database URL to use: ``db`` (the ``--db`` flag) wins, then env ``NASAGENT_DB``,
    else the embedded server under ``NASAGENT_HOME`` (started if needed).

    Called once per CLI command before ``Store.connect``. Empty strings count as unset.
    A given URL must start with ``postgresql://`` or ``postgres://``, else StoreError.
    """
    if db:
        url, source = db, "--db"
    elif os.environ.get("NASAGENT_DB"):
        url, source = os.environ["NASAGENT_DB"], "NASAGENT_DB"
    else:
        return embedded_url(nasagent_home())
    if not url.startswith(_SCHEMES):
        raise StoreError(f"{source} must be a postgresql:// URL, got {redact_url(url)!r}")
    return url


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://user:secret@h/db`` -> ``postgresql://user@h/db``),
    for error messages. Assumes nothing about the URL's validity."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # a libpq "key=value" string
        return re.sub(r"(?i)\bpassword\s*=\s*\S*", "password=***", url)
    netloc_end = len(rest)
    for stop in "/?":
        index = rest.find(stop)
        if index != -1:
            netloc_end = min(netloc_end, index)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    tail = re.sub(r"(?i)\bpassword=[^&]*", "password=***", tail)
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        netloc = f"{userinfo.split(':', 1)[0]}@{hostport}"
    return f"{scheme}://{netloc}{tail}"
