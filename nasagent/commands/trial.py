"""``nasagent trial``: train one architecture and record it.

Cluster mode, what a trial Job or KFP run executes::

    nasagent trial --experiment NAME --trial-id ID [--db URL]

reads the trial's architecture (its ``trials`` row) and the experiment's stored config (dataset,
epochs, seed, validation split, the space's activation and dropout), trains it on this machine's
GPU if it has one, and writes the ``TrialOutcome`` as JSON into ``trial_results``. It leaves the
trial row alone: the agent records the outcome in its own transaction when its launcher reads it.
The attempt number comes from ``NASAGENT_ATTEMPT`` (set by the launchers; default 1); with
``NASAGENT_ARTIFACTS`` set (by the launcher, when the search keeps checkpoints) the trial saves its
weights there.

Standalone mode, no database::

    nasagent trial --arch "[C(32,3,1), SM(10)]" --dataset digits --epochs 2 [--seed S] [--out result.json]

trains the architecture exactly as a search with those settings would (same trial seed) and
prints the outcome JSON. Bad input exits 2 with one line; in cluster mode a configuration error
(the trial's experiment config, its flags, ``NASAGENT_ATTEMPT``) exits ``CONFIG_ERROR_EXIT`` (3)
instead, with the same one line: the trial Job's ``podFailurePolicy`` fails the Job on it at once,
and the agent stops the search rather than retrying what no retry fixes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasagent.core.datasets import resolve_dataset
from nasagent.errors import ConfigError

if TYPE_CHECKING:
    from nasagent.core.trial import TrialOutcome

# Flags that describe a standalone trial; in cluster mode they come from the experiment.
_STANDALONE = ("arch", "dataset", "space", "epochs", "seed", "val_size")


def register(subparsers: Any) -> None:
    """Add ``nasagent trial`` (called by ``nasagent.cli``)."""
    parser = subparsers.add_parser("trial", help="train one architecture: a trial of an experiment, or standalone")
    parser.add_argument("--experiment", help="cluster mode: the experiment whose trial this is")
    parser.add_argument("--trial-id", type=int, help="cluster mode: the trial's id (its row in trials)")
    parser.add_argument("--db", help="cluster mode: postgresql:// URL (default $NASAGENT_DB)")
    parser.add_argument("--arch", help='standalone: the architecture, e.g. "[C(32,3,1), SM(10)]"')
    parser.add_argument("--dataset", help="standalone: digits | npz:PATH | mnist | ... (default digits)")
    parser.add_argument(
        "--space", help="standalone: space preset or YAML whose activation/dropout to use (default metaqnn-small)"
    )
    parser.add_argument("--epochs", type=int, help="standalone: training epochs (default 20)")
    parser.add_argument("--seed", type=int, help="standalone: experiment seed (default 0)")
    parser.add_argument("--val-size", type=float, help="standalone: validation split, count or fraction")
    parser.add_argument(
        "--data-dir",
        help="where datasets are downloaded (default: the experiment's if it exists here, else $NASAGENT_HOME/data)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", help="also write the outcome JSON to this file")
    parser.set_defaults(handler=cmd_trial)


def cmd_trial(args: argparse.Namespace) -> int:
    """Run ``nasagent trial`` in the mode its flags select; print (and write) the outcome JSON."""
    cluster = args.experiment is not None or args.trial_id is not None
    if cluster:
        try:
            outcome = cluster_trial(args)
        except ConfigError as exc:
            from nasagent.core.trial import CONFIG_ERROR_EXIT

            print(f"nasagent: error: {exc}", file=sys.stderr)
            return CONFIG_ERROR_EXIT
    elif args.arch is not None:
        if args.db is not None:
            raise ConfigError(
                "--db is for cluster mode (--experiment, --trial-id); a standalone trial uses no database"
            )
        outcome = standalone_trial(args)
    else:
        raise ConfigError(
            "give --experiment NAME --trial-id ID (a trial of a search) or --arch ARCH (a standalone trial)"
        )
    from nasagent.core.trial import outcome_to_json

    text = json.dumps(outcome_to_json(outcome), indent=2)
    print(text)
    if args.out:
        try:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write --out {args.out}: {exc.strerror or exc}") from None
    return 0


def cluster_trial(args: argparse.Namespace) -> TrialOutcome:
    """Train trial ``--trial-id`` of ``--experiment`` and record it in ``trial_results``."""
    given = [f"--{name.replace('_', '-')}" for name in _STANDALONE if getattr(args, name) is not None]
    if given:
        raise ConfigError(
            f"--experiment/--trial-id train the trial as its experiment says; leave out {', '.join(given)}"
        )
    if args.experiment is None or args.trial_id is None:
        raise ConfigError("cluster mode needs both --experiment and --trial-id")
    from nasagent.execution.worker import attempt_from_env, record_trial
    from nasagent.persistence.postgres import connect

    with connect(args.db) as store:
        return record_trial(store, args.experiment, args.trial_id, attempt_from_env(), args.device, args.data_dir)


def standalone_trial(args: argparse.Namespace) -> TrialOutcome:
    """Train ``--arch`` with the standalone flags, no database; return the outcome (trial id 0)."""
    from nasagent.config import SearchConfig
    from nasagent.execution.worker import standalone_trial as train_standalone

    given = {
        "dataset": resolve_dataset(args.dataset or "digits"),
        "space": args.space,
        "epochs": args.epochs,
        "seed": args.seed,
        "val_size": args.val_size,
        "data_dir": args.data_dir,
    }
    config = SearchConfig(**{k: v for k, v in given.items() if v is not None})
    return train_standalone(config, args.arch, args.device)
