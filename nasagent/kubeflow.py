"""What the Kubeflow Pipelines components (``components/``) call: flag building and output writing.

KFP ships each lightweight component's function source alone into its pod, so a component
cannot share helpers with another; the few things they share live here, in the library the
images hold: where the artifact store is (``artifacts_url``, ``use_s3_endpoint``: by default the
Kubeflow platform's own object store), the ``nasagent search`` command line of the agent step
(``search_argv``, with the admin's trial Job template when the pipeline mounted one:
``mounted_trial_template``, and the early stopping and deployment limits the run set:
``EarlyStopping``, ``DeploymentLimits``), the address of the experiment on the live dashboard
that the agent step prints when it starts (``dashboard_line``), the ranks the finetune step fans out over
(``finetune_ranks``), and the files and metrics the Kubeflow UI shows (``write_search_outputs``,
``ensemble_markdown``).
Nothing here trains or decides anything: the components run the same ``nasagent`` code as the CLI.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from nasagent.errors import ConfigError
from nasagent.execution.cluster import DB_SECRET, LAUNCHERS, TOLERATION_EFFECTS, dns_label
from nasagent.persistence.artifacts import ENV_ENDPOINT, ArtifactStore, experiment_key

log = logging.getLogger(__name__)

NAMESPACE_ENV = "POD_NAMESPACE"
"""The step pod's namespace (``kfp.kubernetes.use_field_path_as_env``, ``metadata.namespace``)."""
KUBEFLOW_BUCKET = "mlpipeline"
"""The bucket of the Kubeflow platform's object store (SeaweedFS from Kubeflow 1.11, MinIO before)."""
TRIAL_TEMPLATE_DIR = "/etc/nasagent/trial-template"
"""Where the pipeline mounts the admin's trial Job template ConfigMap in the agent's pod."""
TRIAL_TEMPLATE_KEY = "job.yaml"
"""The ConfigMap key holding the Job (``manifests/``: ConfigMap ``nasagent-trial-template``)."""
KUBEFLOW_DASHBOARD_PATH = "/nasagent/{namespace}/"
"""The live dashboard's path on Kubeflow's gateway, behind its login
(``manifests/components/dashboard/kubeflow``, routed by ``manifests/overlays/kubeflow``)."""
LOCAL_DASHBOARD = "http://127.0.0.1:8080/"
"""Where ``nasagent dashboard`` serves by default: the address for a run outside a cluster (``kfp.local``)."""
NO_DASHBOARD = "none"
"""The pipeline parameter ``dashboard_url`` that prints no address."""

LogMetric = Callable[[str, float], None]


def artifacts_url(bucket: str) -> str:
    """The artifact store of a pipeline run from its ``bucket`` parameter.

    ``""``: nasagent's folder in the Kubeflow platform's own bucket,
    ``s3://mlpipeline/private/<namespace>/nasagent``, the prefix a profile's object-store
    credentials may write under (Kubeflow >= 1.11 gives each profile access to
    ``mlpipeline/private/<namespace>/`` only); a bare name: that S3 bucket; a URL
    (``s3://BUCKET/PREFIX``, or ``file:///DIR`` for a local run): used as it is. ConfigError if
    ``""`` is given outside a pipeline pod (no ``$POD_NAMESPACE``).
    """
    bucket = bucket.strip()
    if "://" in bucket:
        return bucket
    if bucket:
        return f"s3://{bucket}"
    namespace = os.environ.get(NAMESPACE_ENV, "").strip()
    if not namespace:
        raise ConfigError(
            f"no bucket: set the pipeline parameter bucket (its default, s3://{KUBEFLOW_BUCKET}/private/"
            f"<namespace>/nasagent, needs ${NAMESPACE_ENV})"
        )
    return f"s3://{KUBEFLOW_BUCKET}/private/{namespace}/nasagent"


def use_s3_endpoint(endpoint: str) -> None:
    """Point this process's S3 client at ``endpoint`` (the pipeline parameter ``s3_endpoint``); ""
    leaves ``$NASAGENT_S3_ENDPOINT`` as the pod has it. Called by each step before it opens the store."""
    if endpoint.strip():
        os.environ[ENV_ENDPOINT] = endpoint.strip()


def mounted_trial_template(directory: str = TRIAL_TEMPLATE_DIR) -> str:
    """The admin's trial Job template the pipeline mounted into this pod, or "" when its ConfigMap
    does not exist (the mount is optional: the launcher's built-in Job is used then)."""
    path = Path(directory) / TRIAL_TEMPLATE_KEY
    return str(path) if path.is_file() else ""


def experiment_name(experiment: str, run_name: str, run_id: str) -> str:
    """The nasagent experiment of a run: ``experiment`` if given, else one made from the KFP run's
    display name and id (``cifar-search-3f2a9c1e``): a retried run resumes its own search, a new
    run (even one with the same display name) starts a new one."""
    if experiment.strip():
        return experiment.strip()
    if not run_id.strip():
        raise ConfigError("no experiment name: set the pipeline parameter experiment")
    return f"{dns_label(run_name, 40)}-{dns_label(run_id, 8)}"


def dashboard_address(dashboard_url: str, experiment: str) -> str | None:
    """The address of ``experiment``'s page on the live dashboard, from the pipeline parameter
    ``dashboard_url``; None for ``"none"``.

    ``""``: the dashboard of this pod's namespace through Kubeflow's gateway,
    ``/nasagent/<namespace>/``, a path on the Kubeflow address the user browses (no pod knows
    that address's public name); outside a pipeline pod (no ``$POD_NAMESPACE``: a ``kfp.local``
    run) what ``nasagent dashboard`` serves, ``http://127.0.0.1:8080/``. Else an ``http(s)://``
    URL or an absolute path, e.g. ``https://kubeflow.example.com/nasagent/<namespace>/``: the
    dashboard's root there. The page of one experiment is its ``#/experiment/<name>`` (the route
    of the dashboard's ``app.js``), the name percent-encoded whole, so that no name can break the
    address or the line it is printed on. ConfigError for anything else (no query or fragment,
    no spaces or control characters).
    """
    given = dashboard_url.strip()
    if given.lower() == NO_DASHBOARD:
        return None
    if not given:
        namespace = os.environ.get(NAMESPACE_ENV, "").strip()
        given = KUBEFLOW_DASHBOARD_PATH.format(namespace=quote(namespace, safe="")) if namespace else LOCAL_DASHBOARD
    parts = urlsplit(given)
    url = parts.scheme in ("http", "https") and bool(parts.netloc)
    path = not parts.scheme and not parts.netloc and parts.path.startswith("/")
    printable = given.isprintable() and not any(ch.isspace() for ch in given)
    if not (url or path) or parts.query or parts.fragment or "#" in given or not printable:
        raise ConfigError(
            f"dashboard_url must be an http(s) URL or a path like /nasagent/NAMESPACE/ (or {NO_DASHBOARD}), "
            f"got {dashboard_url!r}"
        )
    root = given if given.endswith("/") else given + "/"
    return f"{root}#/experiment/{quote(experiment, safe='')}"


def dashboard_line(dashboard_url: str, experiment: str) -> str | None:
    """The one line the agent step prints when it starts: where to watch ``experiment`` live
    (``dashboard_address``), or None when ``dashboard_url`` is ``"none"``."""
    address = dashboard_address(dashboard_url, experiment)
    if address is None:
        return None
    if address.startswith("/"):
        return f"live dashboard: {address} on your Kubeflow's address"
    if not dashboard_url.strip():  # a run outside a cluster: the dashboard is the user's to start
        return f"live dashboard: {address} (start it with `nasagent dashboard` on this database)"
    return f"live dashboard: {address}"


def check_trial_secrets(launcher: str, db_secret: str) -> None:
    """ConfigError if a cluster launcher's trial pods would record into another database than the
    pipeline's steps read: the trial pods connect with fixed Secrets made for ``nasagent-db``'s
    database (``nasagent-trial-db``, its role that may only record trial results, for the
    ``kubernetes`` launcher), so the steps must read ``nasagent-db``. (The S3 Secret is handed to
    the ``kubernetes`` launcher with ``--s3-secret``.)
    """
    if launcher != "local" and db_secret != DB_SECRET:
        raise ConfigError(f"with launcher {launcher} the database Secret must be {DB_SECRET}: got {db_secret}")


def node_selector_flags(selector: dict[str, Any]) -> list[str]:
    """``{"k": "v"}`` as ``--node-selector k=v`` flags."""
    flags: list[str] = []
    for key, value in sorted(selector.items()):
        flags += ["--node-selector", f"{key}={value}"]
    return flags


def toleration_flags(tolerations: Sequence[dict[str, Any]]) -> list[str]:
    """Kubernetes tolerations (``key``, ``operator``, ``value``, ``effect``) as
    ``--toleration KEY[=VALUE]:EFFECT`` flags.

    ConfigError for one the flag cannot say: no key, or no effect (the launcher's tolerations
    always name one).
    """
    flags: list[str] = []
    for toleration in tolerations:
        key, effect = toleration.get("key"), toleration.get("effect")
        if not key or effect not in TOLERATION_EFFECTS:
            raise ConfigError(f"toleration {toleration} needs a key and an effect ({', '.join(TOLERATION_EFFECTS)})")
        exists = toleration.get("operator", "Equal") == "Exists" or toleration.get("value") in (None, "")
        flags += ["--toleration", f"{key}:{effect}" if exists else f"{key}={toleration['value']}:{effect}"]
    return flags


@dataclass(frozen=True)
class TrialResources:
    """CPU and memory requests and limits and the ``/dev/shm`` size of each trial pod (Kubernetes
    quantities, e.g. ``"3"``, ``"500m"``, ``"10Gi"``): what a Profile's ResourceQuota needs to admit
    the pod, and what PyTorch's data loader workers need in shared memory."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    shm_size: str

    def flags(self) -> list[str]:
        """As ``nasagent search`` flags (``--trial-cpu-request 3 ...``); ConfigError for an empty value."""
        flags: list[str] = []
        for name, value in dataclasses.asdict(self).items():
            flag = "--trial-" + name.replace("_", "-")
            if not str(value).strip():
                raise ConfigError(f"{flag} needs a Kubernetes quantity, e.g. 2 or 8Gi")
            flags += [flag, str(value).strip()]
        return flags


def given_flags(values: Sequence[tuple[str, str | int | float]]) -> list[str]:
    """``(flag, value)`` pairs as ``nasagent search`` flags, leaving out the ones a pipeline
    parameter sets to "off": ``""`` (or blanks) and ``0``. What is left goes to the CLI as given,
    so a bad value is the CLI's one-line error (exit 2), before anything is created. A value
    starting with ``-`` is written ``--flag=VALUE``: argparse would take ``-1e-05`` for a flag."""
    flags: list[str] = []
    for flag, value in values:
        text = value.strip() if isinstance(value, str) else ("" if value == 0 else str(value))
        if text:
            flags += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return flags


@dataclass(frozen=True)
class EarlyStopping:
    """The pipeline's ``early_stop*`` parameters: ``--early-stop`` and its ``--early-stop-*``
    settings (docs/early-stopping.md). ``""`` and ``0`` mean "not given": the rule's own default,
    and no rule (``none``, every trial trains to the end) when ``rule`` is ``""``; a retried or
    resumed run then keeps what its experiment stored."""

    rule: str = ""
    min_trials: int = 0
    start_epoch: int = 0
    retrain_every: int = 0
    delta: float = 0.0
    wait_seconds: float = 0.0

    def flags(self) -> list[str]:
        """The flags given (``given_flags``)."""
        return given_flags(
            [
                ("--early-stop", self.rule),
                ("--early-stop-min-trials", self.min_trials),
                ("--early-stop-start-epoch", self.start_epoch),
                ("--early-stop-retrain-every", self.retrain_every),
                ("--early-stop-delta", self.delta),
                ("--early-stop-wait", self.wait_seconds),
            ]
        )


@dataclass(frozen=True)
class DeploymentLimits:
    """The pipeline's deployment limits and objective (docs/limits.md): ``--max-params``,
    ``--max-macs``, ``--max-latency-ms``, ``--objective`` and its ``--objective-*`` settings.
    ``""`` and ``0`` mean "not given": no limit, the plain accuracy as the objective, and for
    ``mnas`` the CLI's defaults (metric ``latency``, target the metric's limit, weight -0.07;
    a weight of 0 would make ``mnas`` the accuracy itself: ``objective`` ``accuracy`` says that)."""

    max_params: int = 0
    max_macs: int = 0
    max_latency_ms: float = 0.0
    objective: str = ""
    objective_metric: str = ""
    objective_target: float = 0.0
    objective_weight: float = 0.0

    def flags(self) -> list[str]:
        """The flags given (``given_flags``)."""
        return given_flags(
            [
                ("--max-params", self.max_params),
                ("--max-macs", self.max_macs),
                ("--max-latency-ms", self.max_latency_ms),
                ("--objective", self.objective),
                ("--objective-metric", self.objective_metric),
                ("--objective-target", self.objective_target),
                ("--objective-weight", self.objective_weight),
            ]
        )


def search_argv(
    *,
    experiment: str,
    dataset: str,
    space: str,
    strategy: str,
    trials: int,
    schedule: str,
    epochs: int,
    seed: int,
    parallelism: int,
    launcher: str,
    trial_image: str,
    gpus_per_trial: int,
    node_selector: dict[str, Any],
    tolerations: Sequence[dict[str, Any]],
    pending_timeout: int,
    artifacts: str,
    keep_top: int,
    trial_resources: TrialResources,
    s3_secret: str,
    s3_endpoint: str,
    trial_template: str = "",
    early_stop: EarlyStopping = EarlyStopping(),
    limits: DeploymentLimits = DeploymentLimits(),
) -> list[str]:
    """The ``nasagent search`` command line of the pipeline's agent step.

    ``trials`` 0 means the whole schedule; ``early_stop`` and ``limits`` add only the flags the
    run set (``EarlyStopping``, ``DeploymentLimits``), with every launcher. The launcher's flags
    go in only for ``kubernetes`` and ``kfp``; with ``local`` (a ``kfp.local`` run) the trials
    run as worker processes of the step and the GPU settings are ignored, with a warning. The
    ``kubernetes`` launcher also gets the trial pods' CPU, memory and ``/dev/shm`` sizes, the S3
    Secret and endpoint they read, and the admin's Job template (``trial_template``, a path; ""
    for none); the ``kfp`` launcher builds its own trial pods (``nasagent.execution.kfp``).
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    argv = [
        "search",
        "--experiment",
        experiment,
        "--dataset",
        dataset,
        "--space",
        space,
        "--strategy",
        strategy,
        "--schedule",
        schedule,
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--parallelism",
        str(parallelism),
        "--artifacts",
        artifacts,
        "--keep-top",
        str(keep_top),
        "--launcher",
        launcher,
    ]
    if trials:
        argv += ["--trials", str(trials)]
    argv += [*early_stop.flags(), *limits.flags()]
    if launcher == "local":
        if gpus_per_trial or node_selector or tolerations:
            log.warning(
                "launcher local: trials run as worker processes of this step; "
                "gpus_per_trial, node selector and tolerations are ignored"
            )
        return argv
    argv += [
        "--trial-image",
        trial_image,
        "--gpus-per-trial",
        str(gpus_per_trial),
        "--pending-timeout",
        str(pending_timeout),
        *node_selector_flags(node_selector),
        *toleration_flags(tolerations),
    ]
    if launcher != "kubernetes":
        return argv
    argv += [*trial_resources.flags(), "--s3-secret", s3_secret]
    if s3_endpoint.strip():
        argv += ["--s3-endpoint", s3_endpoint.strip()]
    if trial_template:
        argv += ["--trial-template", trial_template]
    return argv


def run_cli(argv: list[str]) -> None:
    """Run ``nasagent <argv>`` in this process; SystemExit with its exit code if it fails (its
    one-line error is printed already)."""
    from nasagent.cli import main

    code = main(argv)
    if code:
        raise SystemExit(code)


def finetune_ranks(db: Any, name: str, store: ArtifactStore, top: int) -> list[int]:
    """The search ranks to finetune, ``1..min(top, finished trials)``; finetuned models of higher
    ranks, left by an earlier run with a larger ``top``, are deleted (they are no longer the top)."""
    from nasagent.training.models import finetuned_prefix, list_models

    if top < 0:
        raise ConfigError(f"finetune_top must be 0 or more, got {top}")
    experiment = db.get_experiment(name)
    ranks = list(range(1, len(db.top(experiment.id, top)) + 1)) if top else []
    for model in list_models(store, name):
        if model["rank"] > len(ranks):
            store.delete_prefix(finetuned_prefix(name, model["rank"]))
    return ranks


def write_search_outputs(
    db: Any,
    name: str,
    store: ArtifactStore,
    leaderboard: Path,
    report_page: Path,
    plot_page: Path,
    log_metric: LogMetric,
) -> dict[str, Any]:
    """Write what the Kubeflow UI shows after the search, and keep a copy of the report in ``store``.

    ``leaderboard`` gets the Markdown leaderboard, ``report_page`` the self-contained HTML report
    (``nasagent report``), ``plot_page`` Figure 3 alone (accuracy per model, rolling mean, mean
    per ε); the report's three files also go to ``<experiment>/reports/search/``. Logs the
    summary metrics through ``log_metric`` and returns the status (``nasagent status --json``).
    """
    from nasagent.results.report import build_report, figure_accuracy, write_report

    report = build_report(db, name)
    with tempfile.TemporaryDirectory(prefix="nasagent-report-") as tmp:
        index = write_report(report, tmp)
        for path in sorted(Path(tmp).iterdir()):
            store.put_file(experiment_key(name, "reports", "search", path.name), path)
        _copy(Path(tmp) / "leaderboard.md", leaderboard)
        _copy(index, report_page)
    figure = figure_accuracy(report)
    _write(plot_page, _figure_page(f"{name}: accuracy of every model trained (Figure 3)", figure))
    status = report.status
    for key in ("unique_trained", "trials_done", "failed", "budget"):
        log_metric(key, float(status[key] or 0))
    if status.get("best_accuracy") is not None:
        log_metric("best_accuracy", float(status["best_accuracy"]))
    return status


def _copy(source: Path, target: Path) -> None:
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _write(target: Path, text: str) -> None:
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(text, encoding="utf-8")


def _figure_page(title: str, figure: Any | None) -> str:
    """A self-contained HTML page showing one matplotlib figure (or why there is none)."""
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head><body>'
    )
    if figure is None:
        return f"{head}<p>{html.escape(title)}: no finished model yet.</p></body></html>"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # no display, no pyplot state
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    source = f"data:image/png;base64,{image}"
    return f'{head}<img alt="{html.escape(title)}" src="{source}" style="max-width:100%"></body></html>'


def log_trial_metrics(outcome: dict[str, Any], log_metric: LogMetric) -> None:
    """The metrics of one trial (``nasagent trial``'s outcome JSON)."""
    log_metric("accuracy", float(outcome["accuracy"]))
    log_metric("failed", 1.0 if outcome["status"] == "failed" else 0.0)
    log_metric("stopped", 1.0 if outcome["status"] == "stopped" else 0.0)  # early (--early-stop)
    for key in ("params", "train_seconds"):
        if outcome.get(key) is not None:
            log_metric(key, float(outcome[key]))
    if (outcome.get("info") or {}).get("epochs_run") is not None:
        log_metric("epochs_run", float(outcome["info"]["epochs_run"]))


def finetune_line(row: dict[str, Any]) -> str:
    """One log line for a finetuned model (a row of ``finetune_experiment``'s report)."""
    if row["status"] == "done":
        what = f"test {row['test_accuracy']:.4f} (validation {row['val_accuracy']:.4f})"
    else:
        what = f"failed: {row['failure']}"
    return f"rank {row['rank']} {row['arch']}: {what}, {row['train_seconds']:.0f}s"


def export_finetuned(store: ArtifactStore, name: str, row: dict[str, Any], out: Path) -> None:
    """Copy the finetuned model of ``row`` from ``store`` into directory ``out`` (a KFP Model
    artifact); for a model whose training failed, ``out`` holds ``failure.json`` instead."""
    from nasagent.training.models import pull_model

    out.mkdir(parents=True, exist_ok=True)
    if row["status"] == "done":
        pull_model(store, name, int(row["rank"]), out)
    else:
        write_json(out / "failure.json", row)


def log_finetune_metrics(row: dict[str, Any], log_metric: LogMetric) -> None:
    """The metrics of one finetuned model (a row of ``finetune_experiment``'s report)."""
    log_metric("rank", float(row["rank"]))
    log_metric("failed", 0.0 if row["status"] == "done" else 1.0)
    for key in ("test_accuracy", "val_accuracy", "search_accuracy", "params", "epochs_run", "train_seconds"):
        if row.get(key) is not None:
            log_metric(key, float(row[key]))


def ensemble_markdown(report: dict[str, Any]) -> str:
    """``ensemble_experiment``'s report as a Markdown table (Table 3's ensemble row and its members)."""
    lines = [
        f"# {report['experiment']}: ensemble of the top {len(report['members'])} ({report['source']} models)",
        "",
        f"Ensemble test accuracy **{report['ensemble_test_accuracy']:.4f}** "
        f"(error {100 * (1 - report['ensemble_test_accuracy']):.2f}%), best single model "
        f"{report['best_single_test_accuracy']:.4f}, on {report['test_size']} test images.",
        "",
        "| rank | validation | test | architecture |",
        "|---:|---:|---:|---|",
    ]
    for row in report["members"]:
        lines.append(f"| {row['rank']} | {row['val_accuracy']:.4f} | {row['test_accuracy']:.4f} | `{row['arch']}` |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, document: Any) -> None:
    """``document`` as JSON at ``path`` (parents created): the content of a KFP artifact."""
    _write(path, json.dumps(document, indent=2, default=str))
