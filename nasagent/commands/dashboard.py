"""``nasagent dashboard [--db URL] [--host 127.0.0.1] [--port 8080] [--artifacts URL]``: watch searches live.

Serves a read-only web app over the store (``nasagent.dashboard``) until Ctrl-C: every experiment,
one experiment as it learns (progress, ETA, ε, Fig 3 growing, the leaderboard, running trials'
learning curves, failures, Q-values), several side by side, and one trial. It prints its address.
A bad ``--db``, a port in use or an unknown host is one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nasagent.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``dashboard`` subcommand (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser("dashboard", help="a live web dashboard of the searches in a database")
    parser.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    parser.add_argument(
        "--db-file", help="read the database URL from this file (a mounted Secret); instead of --db", metavar="PATH"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port)")
    parser.add_argument(
        "--artifacts", help="artifact store of the searches (default $NASAGENT_ARTIFACTS): shows kept checkpoints"
    )
    parser.set_defaults(handler=cmd_dashboard)


def database_url(db: str | None, db_file: str | None) -> str | None:
    """The URL of ``--db``, or the first line of ``--db-file``; ConfigError for both or an unreadable file."""
    if db_file is None:
        return db
    if db:
        raise ConfigError("--db and --db-file: give one")
    try:
        lines = Path(db_file).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --db-file {db_file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not lines:
        raise ConfigError(f"--db-file {db_file} is empty")
    return lines[0].strip()


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Connect, bind, print the address and serve until interrupted."""
    import os

    from nasagent.dashboard.server import serve
    from nasagent.dashboard.store import open_pool
    from nasagent.persistence.artifacts import ENV_URL, open_artifacts

    url = database_url(args.db, args.db_file)
    artifacts_url = args.artifacts or os.environ.get(ENV_URL)
    artifacts = open_artifacts(artifacts_url) if artifacts_url else None
    pool = open_pool(url)
    try:
        server = serve(pool, args.host, args.port, artifacts)
        print(f"nasagent dashboard at {server.url} (read-only; Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            print("nasagent dashboard stopped", file=sys.stderr)
        finally:
            server.server_close()
    finally:
        pool.close()
    return 0
