"""``nasagent ensemble --experiment NAME [--top K]``: Table 3's ensemble of the top models on the test split.

Averages the softmax outputs of the top K (default 5) finetuned models (or, if none were
finetuned, the search's checkpoints) and prints each member's and the ensemble's test accuracy.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``ensemble`` subcommand (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser("ensemble", help="test accuracy of the top models and of their softmax average")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--top", type=int, default=5, help="ensemble size (default 5, as in the paper)")
    parser.add_argument(
        "--artifacts", help="artifact store URL (default $NASAGENT_ARTIFACTS, else file://$NASAGENT_HOME/artifacts)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    parser.set_defaults(handler=cmd_ensemble)


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Evaluate the ensemble and print the Table 3-style result."""
    from nasagent.errors import ConfigError
    from nasagent.persistence.artifacts import open_artifacts
    from nasagent.persistence.postgres import connect
    from nasagent.results.ensemble import ensemble_experiment

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    store = open_artifacts(args.artifacts)
    with connect(args.db) as db:
        report = ensemble_experiment(db, args.experiment, store, top=args.top, device=args.device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.table import Table

    from nasagent.search.display import print_table

    table = Table(
        title=f"ensemble of {report['experiment']}: top {len(report['members'])} {report['source']} models, "
        f"{report['test_size']} test images"
    )
    for column in ("rank", "val", "test", "architecture"):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for row in report["members"]:
        table.add_row(str(row["rank"]), f"{row['val_accuracy']:.4f}", f"{row['test_accuracy']:.4f}", row["arch"])
    print_table(table)
    print(
        f"ensemble test accuracy {report['ensemble_test_accuracy']:.4f} "
        f"(error {100 * (1 - report['ensemble_test_accuracy']):.2f}%; "
        f"best single model {report['best_single_test_accuracy']:.4f})"
    )
    return 0
