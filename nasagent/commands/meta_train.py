"""``nasagent meta-train``: train the meta-A2C policy across datasets in sequence (§6.1, Experiment 1).

Each dataset is one trial of the meta-learner and one ordinary experiment of the agent
(``PREFIX-1-digits``, ``PREFIX-2-foo``, ...), searched through the real agent, runner and store
with ``--strategy meta-a2c`` in learning mode. The first starts from fresh weights (or
``--init-policy``), each next one from the policy the previous one ended with, and after every
dataset the policy is written to ``--out``. Every experiment resumes like any search, so running the
same command again after a crash picks up where it stopped. The trained policy is then used with
``nasagent search --strategy meta-a2c --policy FILE`` on a dataset it has not seen, weights fixed.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from nasagent.core.datasets import resolve_dataset
from nasagent.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add ``meta-train`` to the ``nasagent`` command."""
    p = subparsers.add_parser("meta-train", help="train the meta-A2C policy across datasets in sequence")
    p.add_argument("--datasets", required=True, help="comma-separated training datasets, e.g. digits,npz:PATH")
    p.add_argument("--trials-per-dataset", type=int, required=True, help="unique architectures trained on each dataset")
    p.add_argument("--out", required=True, help="the policy file to write (after every dataset)")
    p.add_argument("--experiment", default="meta", help="prefix of the experiments, one per dataset (default meta)")
    p.add_argument("--init-policy", help="start from this policy file instead of fresh weights")
    p.add_argument("--epochs", type=int, help="training epochs per architecture (default 12, as §6.1)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a meta-a2c setting (repeatable)")
    p.add_argument("--workers", type=int, help="parallel trials (default: one per GPU, else one per core)")
    p.add_argument("--seed", type=int, help="seed of the policy, data splits and trials (default 0)")
    p.add_argument("--val-size", type=float, help="validation split: count or fraction")
    p.add_argument("--data-dir", help="where datasets are downloaded (default $NASAGENT_HOME/data)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    p.set_defaults(handler=cmd_meta_train)


def experiment_name(prefix: str, position: int, dataset: str) -> str:
    """``PREFIX-N-NAME`` with NAME the dataset's name or the npz file's stem."""
    stem = Path(dataset[4:]).stem if dataset.startswith("npz:") else dataset
    return f"{prefix}-{position}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}"


def cmd_meta_train(args: argparse.Namespace) -> int:
    from nasagent.persistence.postgres import connect
    from nasagent.search.run import run_search
    from nasagent.strategies.meta_a2c import load_policy, save_policy_from_state
    from nasagent.strategies.options import parse_option_pairs

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not datasets:
        raise ConfigError("--datasets needs at least one dataset")
    if args.trials_per_dataset < 1:
        raise ConfigError(f"--trials-per-dataset must be at least 1, got {args.trials_per_dataset}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    options = parse_option_pairs(args.option)
    for key in ("policy", "learn"):
        if key in options:
            raise ConfigError(f"--option {key} is set by meta-train itself (use --init-policy to start from a policy)")
    datasets = [resolve_dataset(d) for d in datasets]
    out = Path(args.out).expanduser().resolve()
    policy: Path | None = None
    if args.init_policy:
        policy = Path(args.init_policy).expanduser().resolve()
        load_policy(policy)  # fail now, in one line, rather than after the first dataset's set-up

    with connect(args.db) as store:
        for position, dataset in enumerate(datasets, start=1):
            name = experiment_name(args.experiment, position, dataset)
            trial_options: dict[str, Any] = {**options, "learn": True}
            if policy is not None:
                trial_options["policy"] = str(policy)
            given = {
                "dataset": dataset,
                "strategy": "meta-a2c",
                "trials": args.trials_per_dataset,
                "epochs": args.epochs,
                "seed": args.seed,
                "val_size": args.val_size,
                "data_dir": args.data_dir,
                "options": trial_options,
            }
            progress = run_search(store, name, given, workers=args.workers, device=args.device)
            saved = store.load_agent_state(store.get_experiment(name).id)
            if saved is None:
                raise ConfigError(f"experiment {name!r} recorded no meta-a2c state")
            save_policy_from_state(saved[1], out)
            policy = out
            summary = saved[1].get("summary", {})
            print(
                f"{name}: {progress.unique_finished} networks, {summary.get('env_steps', 0)} steps, "
                f"{summary.get('updates', 0)} updates, best accuracy {progress.best_accuracy}; policy -> {out}"
            )
    return 0
