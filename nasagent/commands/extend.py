"""``nasagent extend --experiment NAME --trials TOTAL [--epsilon E] [--db URL]``: a larger budget.

Raises a (finished or running-out) experiment's budget to TOTAL unique architectures; the next
``nasagent search --experiment NAME`` trains the new ones. The ε schedule keeps the steps already
trained and continues with one more step at its last ε (``--epsilon`` to choose another): see the
README, "Extending a search". Refused while the experiment is being searched.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``extend`` subcommand (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser("extend", help="raise an experiment's budget so a search can train more")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--trials", type=int, required=True, help="the new total of unique architectures")
    parser.add_argument("--epsilon", type=float, help="ε of the new trials (default: the schedule's last ε)")
    parser.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    parser.set_defaults(handler=cmd_extend)


def cmd_extend(args: argparse.Namespace) -> int:
    """Update the stored config and say what the next search will do."""
    from nasagent.persistence.postgres import connect
    from nasagent.search.lifecycle import extend_experiment

    with connect(args.db) as store:
        print(extend_experiment(store, args.experiment, args.trials, args.epsilon).describe())
    return 0
