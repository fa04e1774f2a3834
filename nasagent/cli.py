"""The ``nasagent`` command: parse, call the library, print. User errors exit 2 with one line."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from nasagent import commands
from nasagent.errors import ConfigError, UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"nasagent: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nasagent", description="Reinforcement-learning neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    search = sub.add_parser("search", help="run (or resume) a search")
    search.add_argument("--experiment", required=True, help="experiment name; an existing one is resumed")
    search.add_argument("--dataset", help="digits | npz:PATH | mnist | fashion_mnist | cifar10 | svhn (default digits)")
    search.add_argument("--space", help="preset (metaqnn, metaqnn-cifar, metaqnn-mnist, metaqnn-small) or FILE.yaml")
    search.add_argument("--strategy", help="qlearning (default) | random | reinforce | dqn | meta-a2c | random-nsc")
    search.add_argument("--policy", help="a trained policy file for strategies that load one (meta-a2c)")
    search.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a setting of the strategy (repeatable)"
    )
    search.add_argument("--trials", type=int, help="unique architectures to train (default: the whole schedule)")
    search.add_argument("--schedule", help="'paper' (Table 2, scaled to --trials) or EPS:COUNT,... (default paper)")
    search.add_argument("--epochs", type=int, help="epochs per architecture (default 20; NAS-env strategies 12)")
    search.add_argument("--workers", type=int, help="parallel trials (default: one per GPU, else one per core)")
    search.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory one local worker may use in all, e.g. 4G (default: an equal share of the available memory)",
    )
    search.add_argument("--seed", type=int, help="seed of the strategy, data split and trials (default 0)")
    search.add_argument("--val-size", type=float, help="validation split: count or fraction")
    search.add_argument("--data-dir", help="where datasets are downloaded (default $NASAGENT_HOME/data)")
    search.add_argument("--q-init", type=float, help="initial Q-value (default 0.5)")
    search.add_argument("--alpha", type=float, help="Q-learning rate (default 0.01)")
    search.add_argument("--replay-k", type=int, help="replay samples per update (default 100)")
    search.add_argument("--device", default="auto", help="auto | cpu | cuda")
    search.add_argument("--db", help="postgresql:// URL (default $NASAGENT_DB, else the embedded server)")
    search.add_argument(
        "--artifacts",
        help="artifact store (file:///DIR or s3://BUCKET/PREFIX, default $NASAGENT_ARTIFACTS) for checkpoints",
    )
    search.add_argument(
        "--keep-top", type=int, default=10, help="checkpoints kept: the current top K trials (default 10, 0: none)"
    )
    search.add_argument(
        "--launcher", default="local", choices=("local", "kfp", "kubernetes"), help="where trials run (default local)"
    )
    search.add_argument("--parallelism", type=int, help="trials in flight (same as --workers; default 1 on a cluster)")
    search.add_argument("--namespace", help="kubernetes/kfp: namespace of the trials (default: the agent's)")
    search.add_argument(
        "--trial-image", help="kubernetes/kfp: image with nasagent for the trials (default $NASAGENT_TRIAL_IMAGE)"
    )
    search.add_argument("--gpus-per-trial", type=int, help="kubernetes/kfp: nvidia.com/gpu limit per trial (default 1)")
    search.add_argument(
        "--node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="kubernetes/kfp: node label (repeatable)",
    )
    search.add_argument(
        "--toleration",
        action="append",
        default=[],
        metavar="KEY[=VALUE]:EFFECT",
        help="kubernetes/kfp: taint tolerated (repeatable)",
    )
    search.add_argument(
        "--trial-timeout", type=int, help="kubernetes/kfp: seconds one attempt may take (default 14400)"
    )
    search.add_argument(
        "--pending-timeout", type=int, help="kubernetes/kfp: seconds a trial may wait for a node (default 900)"
    )
    search.add_argument("--max-retries", type=int, help="kubernetes/kfp: new attempts of a failed trial (default 2)")
    search.add_argument(
        "--max-requeues",
        type=int,
        default=3,
        help="times one trial goes back to the queue after infrastructure failures before the search stops (default 3)",
    )
    search.add_argument(
        "--max-infra-failures",
        type=int,
        default=5,
        help="infrastructure failures in a row (no trial result between them) that stop the search (default 5)",
    )
    search.add_argument("--kfp-host", help="kfp: API URL (default: in-cluster ml-pipeline service)")
    search.add_argument(
        "--trial-template", help="kubernetes: trial Job YAML to build on (default $NASAGENT_TRIAL_TEMPLATE)"
    )
    for flag, what, default in (
        ("--trial-cpu-request", "CPU request", "4"),
        ("--trial-cpu-limit", "CPU limit", "8"),
        ("--trial-memory-request", "memory request", "24Gi"),
        ("--trial-memory-limit", "memory limit", "24Gi"),
        ("--trial-shm-size", "/dev/shm size (in memory)", "8Gi"),
    ):
        search.add_argument(
            flag, metavar="QUANTITY", help=f"kubernetes: {what} of a trial pod (default {default}, or the template's)"
        )
    search.add_argument(
        "--image-pull-timeout",
        type=int,
        help="kubernetes: seconds a trial pod may fail to pull its image before the attempt fails (default 300)",
    )
    search.add_argument(
        "--s3-secret",
        help="kubernetes: Secret with the keys accesskey and secretkey (Kubeflow's mlpipeline-minio-artifact) that "
        "trial pods read instead of nasagent-s3; needs --s3-endpoint (default $NASAGENT_S3_ENDPOINT)",
    )
    search.add_argument(
        "--s3-endpoint", help="kubernetes: S3 endpoint URL of the trial pods (default: nasagent-s3's key endpoint)"
    )
    search.add_argument(
        "--dry-run",
        action="store_true",
        help="kubernetes: print the trial Job as YAML and exit (no cluster, no database is contacted)",
    )
    _limit_flags(search)
    _early_stop_flags(search)

    status = sub.add_parser("status", help="where a search stands")
    status.add_argument("--experiment", required=True)
    status.add_argument("--json", action="store_true")
    status.add_argument("--db")

    top = sub.add_parser("top", help="the best architectures of an experiment")
    top.add_argument("--experiment", required=True)
    top.add_argument("-k", type=int, default=10)
    top.add_argument("--json", action="store_true")
    top.add_argument("--db")
    search.set_defaults(handler=cmd_search)
    status.set_defaults(handler=cmd_status)
    top.set_defaults(handler=cmd_top)
    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(sub)
    return parser


def _limit_flags(search: argparse.ArgumentParser) -> None:
    """``search``'s deployment limits and objective (``nasagent.core.limits``, ``nasagent.core.objective``)."""
    search.add_argument(
        "--max-params", type=int, metavar="N", help="never propose a network with more trainable parameters"
    )
    search.add_argument("--max-macs", type=int, metavar="N", help="never propose a network with more MACs per image")
    search.add_argument(
        "--max-latency-ms",
        type=float,
        metavar="MS",
        help="batch-1 latency on the trial's device; a slower network's reward is x MS / latency (MnasNet's hard form)",
    )
    search.add_argument(
        "--objective", help="accuracy (default) | mnas: accuracy x (metric / target)^weight (MnasNet's soft form)"
    )
    search.add_argument("--objective-metric", help="mnas: latency (default) | params | macs")
    search.add_argument(
        "--objective-target", type=float, help="mnas: the metric's target (default: its --max-... limit)"
    )
    search.add_argument("--objective-weight", type=float, help="mnas: the exponent w (default -0.07, MnasNet's)")


def _early_stop_flags(search: argparse.ArgumentParser) -> None:
    """``search``'s early stopping of hopeless trials (``nasagent.stopping``), stored with the experiment."""
    search.add_argument(
        "--early-stop",
        metavar="RULE",
        help="none (default: every trial trains to the end) | median (Katib's median stopping rule) | predict "
        "(Baker et al. 2018: nu-SVR performance prediction)",
    )
    search.add_argument(
        "--early-stop-min-trials",
        type=int,
        metavar="N",
        help="fully trained trials before the rule is used (default: median 3, predict 100)",
    )
    search.add_argument(
        "--early-stop-start-epoch",
        type=int,
        metavar="T",
        help="first epoch of a trial that is judged (default: median 4, predict 1)",
    )
    search.add_argument(
        "--early-stop-retrain-every",
        type=int,
        metavar="N",
        help="predict: refit the predictor after this many more trained trials (default 10)",
    )
    search.add_argument(
        "--early-stop-delta",
        type=float,
        metavar="DELTA",
        help="predict: stop when P(final accuracy <= best so far) >= DELTA (default 0.99)",
    )
    search.add_argument(
        "--early-stop-wait",
        type=float,
        metavar="SECONDS",
        help="how long a trial waits for the agent's decision after each epoch before training on (default 10)",
    )


def _early_stop_given(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--early-stop*`` flags given, as ``SearchConfig.early_stop`` takes them (None: none given)."""
    given = {
        "rule": args.early_stop,
        "min_trials": args.early_stop_min_trials,
        "start_epoch": args.early_stop_start_epoch,
        "retrain_every": args.early_stop_retrain_every,
        "delta": args.early_stop_delta,
        "wait_seconds": args.early_stop_wait,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UserError as exc:
        print(f"nasagent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasagent: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def cmd_search(args: argparse.Namespace) -> int:
    from nasagent.core.datasets import resolve_dataset
    from nasagent.execution.launchers import launcher_settings
    from nasagent.persistence.postgres import connect
    from nasagent.search.loop import FaultPolicy
    from nasagent.search.run import run_search
    from nasagent.strategies.options import parse_option_pairs

    given: dict[str, Any] = {
        "dataset": args.dataset,
        "space": args.space,
        "strategy": args.strategy,
        "trials": args.trials,
        "schedule": args.schedule,
        "epochs": args.epochs,
        "seed": args.seed,
        "val_size": args.val_size,
        "data_dir": args.data_dir,
        "max_params": args.max_params,
        "max_macs": args.max_macs,
        "max_latency_ms": args.max_latency_ms,
        "objective": args.objective,
        "objective_metric": args.objective_metric,
        "objective_target": args.objective_target,
        "objective_weight": args.objective_weight,
    }
    q = {
        k: v for k, v in (("q_init", args.q_init), ("alpha", args.alpha), ("replay_k", args.replay_k)) if v is not None
    }
    if q:
        given["qlearning"] = q
    given["early_stop"] = _early_stop_given(args)
    if args.option or args.policy:
        given["options"] = parse_option_pairs(args.option)
        if args.policy:
            given["options"]["policy"] = str(Path(args.policy).expanduser().resolve())
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.dataset:
        given["dataset"] = resolve_dataset(args.dataset)
    if args.parallelism is not None and args.workers is not None and args.parallelism != args.workers:
        raise ConfigError(f"--parallelism {args.parallelism} and --workers {args.workers} disagree; give one")
    in_flight = args.parallelism if args.parallelism is not None else args.workers
    if in_flight is not None and in_flight < 1:
        raise ConfigError(f"--parallelism must be at least 1, got {in_flight}")
    cluster = launcher_settings(
        args.launcher,
        args.experiment,
        in_flight,
        {
            "image": args.trial_image,
            "namespace": args.namespace,
            "gpus_per_trial": args.gpus_per_trial,
            "node_selector": args.node_selector,
            "tolerations": args.toleration,
            "trial_timeout": args.trial_timeout,
            "pending_timeout": args.pending_timeout,
            "max_retries": args.max_retries,
            "kfp_host": args.kfp_host,
            "job_template": args.trial_template,
            "cpu_request": args.trial_cpu_request,
            "cpu_limit": args.trial_cpu_limit,
            "memory_request": args.trial_memory_request,
            "memory_limit": args.trial_memory_limit,
            "shm_size": args.trial_shm_size,
            "image_pull_timeout": args.image_pull_timeout,
            "s3_secret": args.s3_secret,
            "s3_endpoint": args.s3_endpoint,
        },
    )
    if args.dry_run:
        if cluster is None or args.launcher != "kubernetes":
            raise ConfigError("--dry-run: only for --launcher kubernetes (it prints the trial Job)")
        from nasagent.execution.kubernetes import default_namespace, render_trial_job

        print(render_trial_job(cluster, namespace=default_namespace()), end="")
        return 0
    faults = FaultPolicy(max_requeues=args.max_requeues, max_infra_failures=args.max_infra_failures)
    with connect(args.db) as store:
        run_search(
            store,
            args.experiment,
            given,
            workers=in_flight,
            device=args.device,
            artifacts=args.artifacts,
            keep_top=args.keep_top,
            launcher=args.launcher,
            cluster=cluster,
            max_memory=_max_memory(args.max_memory),
            faults=faults,
        )
        _print_top(store, args.experiment, 10, as_json=False)
    return 0


def _max_memory(text: str | None) -> int | None:
    """``--max-memory`` in bytes (None when not given)."""
    if text is None:
        return None
    from nasagent.execution.resources import parse_memory

    return parse_memory(text)


def cmd_status(args: argparse.Namespace) -> int:
    from nasagent.persistence.postgres import connect
    from nasagent.search.status import experiment_status

    with connect(args.db) as store:
        status = experiment_status(store, args.experiment)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for key, value in status.items():
            print(f"{key:>16}: {value}")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    from nasagent.persistence.postgres import connect

    with connect(args.db) as store:
        _print_top(store, args.experiment, args.k, as_json=args.json)
    return 0


def _print_top(store: Any, experiment: str, k: int, as_json: bool) -> None:
    from nasagent.search.display import leaderboard, print_table
    from nasagent.search.status import top_trials

    rows = top_trials(store, experiment, k)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(leaderboard(rows, f"top {k} of {experiment}"))


if __name__ == "__main__":
    sys.exit(main())
