"""``nasagent finetune --experiment NAME [--top K] [--epochs E] [--schedule S]``: §5's long training of the top-k.

Each model is trained again, tested on the held-out test split and exported to
``<experiment>/finetuned/rank-<r>/`` of the artifact store (see ``nasagent.results.finetune``). Prints
one line per model as it finishes (stderr) and the table (or ``--json`` report) at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``finetune`` subcommand (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser(
        "finetune", help="train the top-k architectures with the long schedule, test and export them"
    )
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--top", type=int, default=10, help="how many of the best trials (default 10, as in the paper)")
    parser.add_argument(
        "--rank", type=int, help="finetune only the R-th best trial, leaving other ranks' models alone (replaces --top)"
    )
    parser.add_argument(
        "--schedule", help="paper-cifar | paper-svhn | LR:EPOCHS,... (default: the paper-cifar shape, scaled)"
    )
    parser.add_argument(
        "--epochs", type=int, help="total epochs: rescales the schedule (default: from the dataset size)"
    )
    parser.add_argument(
        "--recipe",
        default="paper",
        choices=("paper", "plain"),
        help="paper: §5's per-dataset preprocessing (CIFAR-10: contrast normalisation, mirroring, shifts; "
        "SVHN: extra set if downloaded); plain: as the search (default paper)",
    )
    parser.add_argument(
        "--no-refit",
        action="store_true",
        help="export the model trained on the train split (best validation epoch) instead of retraining on "
        "train + validation",
    )
    parser.add_argument("--onnx", action="store_true", help="also export model.onnx (needs the onnx package)")
    parser.add_argument(
        "--artifacts", help="artifact store URL (default $NASAGENT_ARTIFACTS, else file://$NASAGENT_HOME/artifacts)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    parser.set_defaults(handler=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    """Finetune, printing progress to stderr and the results to stdout."""
    from nasagent.persistence.artifacts import open_artifacts
    from nasagent.persistence.postgres import connect
    from nasagent.results.finetune import finetune_experiment, resolve_schedule

    resolve_schedule(args.schedule, args.epochs, 1)  # bad flags fail before the database is touched
    store = open_artifacts(args.artifacts)

    def progress(row: dict[str, Any]) -> None:
        what = (
            f"test {row['test_accuracy']:.4f} (val {row['val_accuracy']:.4f})"
            if row["status"] == "done"
            else f"failed: {row['failure']}"
        )
        print(f"rank {row['rank']} {row['arch']}: {what}, {row['train_seconds']:.0f}s", file=sys.stderr, flush=True)

    with connect(args.db) as db:
        report = finetune_experiment(
            db,
            args.experiment,
            store,
            top=args.top,
            schedule=args.schedule,
            epochs=args.epochs,
            device=args.device,
            onnx=args.onnx,
            on_model=progress,
            only_rank=args.rank,
            recipe=args.recipe,
            refit=not args.no_refit,
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


def _print(report: dict[str, Any]) -> None:
    from rich.table import Table

    from nasagent.results.finetune import schedule_text
    from nasagent.search.display import print_table

    table = Table(
        title=f"finetuned top {len(report['models'])} of {report['experiment']} "
        f"({report['epochs']} epochs, {schedule_text(report['schedule'])})"
    )
    for column in ("rank", "search val", "val", "test", "params", "architecture"):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for row in report["models"]:
        done = row["status"] == "done"
        table.add_row(
            str(row["rank"]),
            f"{row['search_accuracy']:.4f}",
            f"{row['val_accuracy']:.4f}" if done else "failed",
            f"{row['test_accuracy']:.4f}" if done else "-",
            f"{row['params']:,}",
            row["arch"],
        )
    print_table(table)
    print(f"models in {report['artifacts']}/{report['experiment']}/finetuned/")
