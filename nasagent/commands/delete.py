"""``nasagent delete --experiment NAME [--yes] [--artifacts URL] [--db URL]``: remove an experiment.

Removes its rows (trials, replay memory, Q-values, agent state, trial results) and its artifacts
(checkpoints, finetuned models, reports under ``NAME/`` in the artifact store), so the name can be
used again. Asks first unless ``--yes``; without a terminal to ask on, ``--yes`` is required.
Refused, changing nothing, while a search (or another command) holds the experiment.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nasagent.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``delete`` subcommand (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser("delete", help="delete an experiment: its rows, checkpoints, models and reports")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--artifacts",
        help="artifact store of its checkpoints and models (default $NASAGENT_ARTIFACTS, else NASAGENT_HOME's)",
    )
    parser.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    parser.set_defaults(handler=cmd_delete)


def cmd_delete(args: argparse.Namespace) -> int:
    """Show what goes, ask, delete; exit 1 if the user says no."""
    from nasagent.persistence.locks import experiment_lock
    from nasagent.persistence.postgres import connect
    from nasagent.search.lifecycle import delete_planned, plan_deletion

    with connect(args.db) as store, experiment_lock(store, args.experiment, "delete"):
        deletion = plan_deletion(store, args.experiment, args.artifacts)
        if not args.yes and not _confirmed(deletion.describe()):
            print("nothing deleted", file=sys.stderr)
            return 1
        delete_planned(store, deletion)
    print(f"deleted {deletion.describe()}")
    return 0


def _confirmed(what: str) -> bool:
    """Ask on the terminal; ConfigError when there is none (a script must say --yes)."""
    if not sys.stdin.isatty():
        raise ConfigError(f"delete {what}? No terminal to ask on: pass --yes to delete without asking")
    try:
        answer = input(f"delete {what}? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
