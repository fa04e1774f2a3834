"""``nasagent report --experiment NAME --out DIR [--db URL] [-k K]``: the HTML report of a search.

Writes ``DIR/index.html`` (self-contained), ``DIR/report.json`` and ``DIR/leaderboard.md`` and
prints the page's path. An unknown experiment or an unwritable DIR exits 2 with one line.
"""

from __future__ import annotations

import argparse
from typing import Any

from nasagent.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser(
        "report", help="write an HTML report of an experiment (figures, leaderboard, failures)"
    )
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", required=True, help="directory for index.html, report.json and leaderboard.md")
    parser.add_argument("-k", type=int, default=25, help="leaderboard size (default 25)")
    parser.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    parser.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Build the report from the store and write it; matplotlib is imported only here."""
    from nasagent.persistence.postgres import connect
    from nasagent.results.report import build_report, write_report

    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    with connect(args.db) as store:
        report = build_report(store, args.experiment, leaderboard_size=args.k)
    print(write_report(report, args.out))
    return 0
