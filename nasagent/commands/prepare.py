"""``nasagent prepare --dataset SPEC [--val-size V] [--seed S] [--artifacts URL]``: split a dataset once, store it.

Loads the dataset, makes the stratified validation split (and the fixed test split), stores all
three in the artifact store under ``datasets/<name>/`` (``nasagent.training.prepared``) and prints the
spec to search with, ``prepared:URL``, on stdout (``--json``: the sizes and location too). Running it again
with the same settings finds the data there and uploads nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``prepare`` subcommand (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser(
        "prepare", help="split a dataset once and store it for a search's pods (prints prepared:URL)"
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="digits | npz:PATH | npz:s3://BUCKET/KEY.npz | mnist | fashion_mnist | cifar10 | svhn",
    )
    parser.add_argument("--val-size", type=float, help="validation split: count or fraction (default min(5000, 20%%))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument("--data-dir", help="where datasets are downloaded (default $NASAGENT_HOME/data)")
    parser.add_argument(
        "--artifacts", help="artifact store URL (default $NASAGENT_ARTIFACTS, else file://$NASAGENT_HOME/artifacts)"
    )
    parser.add_argument("--json", action="store_true", help="print the spec, location and split sizes as JSON")
    parser.set_defaults(handler=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare the dataset and print its ``prepared:`` spec."""
    from nasagent.core.datasets import resolve_dataset
    from nasagent.errors import ConfigError
    from nasagent.persistence.artifacts import open_artifacts
    from nasagent.persistence.embedded import nasagent_home
    from nasagent.training.prepared import prepare_dataset, val_size_value

    if args.val_size is not None and args.val_size <= 0:
        raise ConfigError(f"--val-size must be a fraction in (0, 1) or a whole count, got {args.val_size}")
    val_size = val_size_value(args.val_size)
    dataset = resolve_dataset(args.dataset)
    store = open_artifacts(args.artifacts)
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else nasagent_home() / "data"
    prepared = prepare_dataset(dataset, store, data_dir, val_size=val_size, seed=args.seed)
    if args.json:
        print(json.dumps(prepared.to_json(), indent=2))
    else:
        sizes = ", ".join(f"{split} {n}" for split, n in prepared.sizes.items())
        what = "stored" if prepared.uploaded else "already stored"
        print(f"{prepared.name}: {sizes}; {what} at {prepared.url}", file=sys.stderr, flush=True)
        print(prepared.spec)
    return 0
