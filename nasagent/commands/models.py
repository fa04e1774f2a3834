"""``nasagent models list|pull``: the finetuned models of an experiment in the artifact store.

``list`` prints rank, architecture, accuracies, parameters and location (``--json`` for scripts);
``pull --rank R --out DIR`` copies a model directory, which ``nasagent.load_model(DIR)`` loads.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``models list`` and ``models pull`` (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser("models", help="list or download the finetuned models of an experiment")
    actions = parser.add_subparsers(dest="models_command", required=True)
    listing = actions.add_parser("list", help="the finetuned models, by search rank")
    listing.add_argument("--json", action="store_true")
    pull = actions.add_parser("pull", help="copy a finetuned model directory to --out")
    pull.add_argument("--rank", type=int, required=True, help="the model's search rank (as listed)")
    pull.add_argument(
        "--out", required=True, help="directory to write model.json, weights.pt, model.ts (, model.onnx) into"
    )
    for sub in (listing, pull):
        sub.add_argument("--experiment", required=True)
        sub.add_argument(
            "--artifacts", help="artifact store URL (default $NASAGENT_ARTIFACTS, else file://$NASAGENT_HOME/artifacts)"
        )
        sub.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    listing.set_defaults(handler=cmd_list)
    pull.set_defaults(handler=cmd_pull)


def _checked_store(args: argparse.Namespace) -> Any:
    """The artifact store, once the experiment is known to exist (StoreError otherwise)."""
    from nasagent.persistence.artifacts import open_artifacts
    from nasagent.persistence.postgres import connect

    store = open_artifacts(args.artifacts)
    with connect(args.db) as db:
        db.get_experiment(args.experiment)
    return store


def model_rows(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary ``models list --json`` prints, one row per model."""
    return [
        {
            "rank": m["rank"],
            "arch": m["architecture"],
            "test_accuracy": m["metrics"].get("test_accuracy"),
            "val_accuracy": m["metrics"].get("val_accuracy"),
            "search_accuracy": m["metrics"].get("search_accuracy"),
            "params": m["metrics"].get("params"),
            "trial_id": m["source"].get("trial_id"),
            "location": m["location"],
            "files": m["files"],
        }
        for m in models
    ]


def cmd_list(args: argparse.Namespace) -> int:
    """Print the experiment's finetuned models."""
    from nasagent.training.models import list_models

    store = _checked_store(args)
    rows = model_rows(list_models(store, args.experiment))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(
            f"no finetuned models of {args.experiment} in {store.url}; "
            f"run nasagent finetune --experiment {args.experiment}"
        )
        return 0
    from rich.table import Table

    from nasagent.search.display import print_table

    table = Table(title=f"finetuned models of {args.experiment}")
    for column in ("rank", "test", "val", "params", "architecture", "location"):
        table.add_column(column, justify="left" if column in ("architecture", "location") else "right")
    for row in rows:
        test = "-" if row["test_accuracy"] is None else f"{row['test_accuracy']:.4f}"
        val = "-" if row["val_accuracy"] is None else f"{row['val_accuracy']:.4f}"
        params = "-" if row["params"] is None else f"{row['params']:,}"
        table.add_row(str(row["rank"]), test, val, params, row["arch"], row["location"])
    print_table(table)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Copy one model directory and print where it went."""
    from nasagent.training.models import pull_model

    store = _checked_store(args)
    print(pull_model(store, args.experiment, args.rank, args.out))
    return 0
