"""Where the database lives: an explicit URL, or a PostgreSQL server embedded under NASAGENT_HOME.

The embedded server is a real PostgreSQL (the ``pgserver`` wheel) whose data directory is
``$NASAGENT_HOME/pg``. It is started on first use and deliberately left running when the
Python process exits, so that an agent killed with ``kill -9`` loses nothing and the next
process simply reattaches to the same server.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import signal
import stat
import struct
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nasagent.errors import StoreError

DEFAULT_HOME = "~/.nasagent"
_SCHEMES = ("postgresql://", "postgres://")


def nasagent_home() -> Path:
    """The directory from env ``NASAGENT_HOME`` (default ``~/.nasagent``), user-expanded, not created."""
    return Path(os.environ.get("NASAGENT_HOME") or DEFAULT_HOME).expanduser()


def embedded_url(home: Path) -> str:
    """Start (or reattach to) the embedded PostgreSQL with pgdata in ``home / "pg"``; return its URI.

    Called by ``resolve_db_url`` when no URL was given, and again by a store whose connection was
    lost (it starts the server anew if it stopped). Creates ``home`` (private: 0700) if needed.
    Safe to call from several processes at once (pgserver serialises start-up with a file lock).
    Any failure to start becomes one StoreError line naming NASAGENT_HOME and the server log.
    The permissions of ``home`` and its parent folders are left as they were (see ``_keep_parent_modes``).
    """
    home = Path(home).expanduser().absolute()
    pgdata = home / "pg"
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            with _keep_parent_modes(pgdata):
                # cleanup_mode=None: the server must outlive this process (crash safety, reattach).
                server = pgserver.get_server(pgdata, cleanup_mode=None)
                # get_server hands back this process's cached handle without looking at the server;
                # one stopped since (a restart, a crash) is started again here.
                with type(server)._lock:
                    server.ensure_postgres_running()
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


SERVER_USER = "pgserver"
"""The user pgserver runs PostgreSQL as when started by root (PostgreSQL refuses to run as root)."""
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF


@contextmanager
def _keep_parent_modes(pgdata: Path) -> Iterator[None]:
    """Leave the parent folders of ``pgdata`` as they were, although pgserver opens them up.

    Run as root, pgserver starts PostgreSQL as its own user and, so that this user can reach the
    data directory, makes every parent folder readable and traversable by everyone (``chmod go+rx``
    up to ``/``: ``/root`` included). After the block every parent gets its old mode back. Where the
    old mode did not let the server's user pass through (``_passable``), that one user alone is
    then let through by a POSIX ACL entry (``u:pgserver:--x``, see ``_grant_passage``): nobody else
    gains anything (``ls -l`` shows a ``+``, and the group bits show the ACL's mask). On a file
    system without ACLs pgserver's change stays there, since the server cannot run without it.
    Does nothing unless run as root.
    """
    if os.geteuid() != 0:
        yield
        return
    modes = {}
    for parent in pgdata.parents:
        try:
            modes[parent] = (stat.S_IMODE(parent.stat().st_mode), _passable(parent))
        except OSError:
            continue
    try:
        yield
    finally:
        for parent, (mode, passable) in modes.items():
            try:
                if stat.S_IMODE(parent.stat().st_mode) == mode:
                    continue
                if passable:
                    parent.chmod(mode)
                elif not _has_acl(parent):
                    parent.chmod(mode)
                    _grant_passage(parent, pwd.getpwnam(SERVER_USER).pw_uid)
            except (OSError, KeyError):
                pass  # no ACLs here (the mode from pgserver stays), or no server user (no server)


def _passable(folder: Path) -> bool:
    """Whether the server's user may pass through ``folder`` by its mode: pgserver runs it with its
    own uid but root's group (gid 0), so a folder of group root needs ``g+x``, any other ``o+x``."""
    info = folder.stat()
    return bool(info.st_mode & (stat.S_IXGRP if info.st_gid == 0 else stat.S_IXOTH))


def _has_acl(folder: Path) -> bool:
    try:
        os.getxattr(folder, _ACL_XATTR)
    except OSError:
        return False
    return True


def _grant_passage(folder: Path, uid: int) -> None:
    """Let user ``uid``, and nobody else, pass through ``folder`` (search, not list), with a POSIX ACL:
    the owner, group and others keep exactly the permissions of the folder's mode. OSError where
    the file system has no ACLs."""
    mode = stat.S_IMODE(folder.stat().st_mode)
    group = (mode >> 3) & 7
    entries = [
        (_ACL_USER_OBJ, (mode >> 6) & 7, _ACL_UNDEFINED_ID),
        (_ACL_USER, 1, uid),
        (_ACL_GROUP_OBJ, group, _ACL_UNDEFINED_ID),
        (_ACL_MASK, group | 1, _ACL_UNDEFINED_ID),
        (_ACL_OTHER, mode & 7, _ACL_UNDEFINED_ID),
    ]
    os.setxattr(folder, _ACL_XATTR, struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))


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


def explicit_db_url(db: str | None) -> str | None:
    """The database URL the user named: ``db`` (the ``--db`` flag), else env ``NASAGENT_DB``;
    None when neither is set (the embedded server is meant). Empty strings count as unset.
    A given URL must start with ``postgresql://`` or ``postgres://``, else StoreError."""
    if db:
        url, source = db, "--db"
    elif os.environ.get("NASAGENT_DB"):
        url, source = os.environ["NASAGENT_DB"], "NASAGENT_DB"
    else:
        return None
    if not url.startswith(_SCHEMES):
        raise StoreError(f"{source} must be a postgresql:// URL, got {redact_url(url)!r}")
    return url


def resolve_db_url(db: str | None) -> str:
    """The database URL to use: ``db`` (the ``--db`` flag) wins, then env ``NASAGENT_DB``,
    else the embedded server under ``NASAGENT_HOME`` (started if needed).

    Called once per CLI command before ``Store.connect`` (``nasagent.persistence.postgres.connect``
    does both). Empty strings count as unset. A given URL must start with ``postgresql://`` or
    ``postgres://``, else StoreError.
    """
    url = explicit_db_url(db)
    return embedded_url(nasagent_home()) if url is None else url


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
