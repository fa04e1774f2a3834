"""KFP launcher: every trial attempt is its own run of a one-component trial pipeline.

The runs go into a KFP experiment named after the search, so each trial shows in the Kubeflow UI
with its metrics (accuracy, parameters, training time) and its outcome artifact, and runs can be
compared there. The pipeline (``trial_pipeline``) has one lightweight component that does what
``nasagent trial --experiment NAME --trial-id ID`` does: it trains the trial's architecture and
writes its outcome into ``trial_results``. It is a Python component rather than a container
component so that ``kfp.local``'s SubprocessRunner can run it too; the trial image must therefore
hold ``python3`` and nasagent (which brings kfp). Its pod gets the same Secrets as a Kubernetes
trial Job (``nasagent-db`` key ``url``; ``nasagent-s3``, optional), the GPU limit, node selector,
tolerations, ``activeDeadlineSeconds`` = ``--trial-timeout`` and the experiment's labels; in a
multi-user Kubeflow the Secrets must live in the profile's namespace.

The launcher polls each run's state (one ``get_run`` per run every ``poll_seconds``):
SUCCEEDED hands over the reported outcome (the architecture's result). Everything else is an
infrastructure failure (the component records its training's own failures as results, so a run
that fails did not get to train): FAILED, ERROR and SKIPPED are retried up to ``--max-retries``
times; a run still PENDING after ``--pending-timeout`` or RUNNING longer than ``--trial-timeout``
is terminated and retried; a run CANCELED by someone in the UI goes back to the agent at once.
After the retries the agent requeues the trial without learning from it (docs/cluster.md,
"Faults"). (KFP does not expose pod phases: a pod waiting for a GPU inside a RUNNING run is
caught by the trial timeout.)

Runs outlive the agent: an agent that starts on an experiment takes over the runs of its trials
in flight, found in the KFP experiment by their names (``resume``), and terminates the others.
On SIGTERM or SIGINT it terminates its runs (``close``).

The KFP server is reached through ``PipelineClient``, a small interface over ``kfp.Client``;
``KfpClient`` is the real one (``connect_kfp``). In multi-user Kubeflow the agent's pod
authenticates with the token the PodDefault ``access-ml-pipeline`` projects (audience
``pipelines.kubeflow.org``; ``manifests/overlays/kubeflow/poddefault-access-ml-pipeline.yaml``)
into pods labelled ``access-ml-pipeline: "true"``, which the search pipeline's agent step is.
The trial pipeline marks the S3 Secret optional, a field the KFP backend parses from 2.15 on
(Kubeflow 1.11); ``tests/test_support_matrix.py`` shows which backends accept it.

No ``from __future__ import annotations`` here: KFP reads the component's parameter annotations
(``Output[Metrics]``) at decoration time and cannot resolve them from strings.
"""

import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kfp import compiler, dsl
from kfp import kubernetes as kfp_kubernetes
from kfp.dsl import Artifact, Metrics, Output

from nasagent.core.trial import Fault, TrialOutcome, TrialSpec
from nasagent.errors import AttemptError, ClusterError, PipelineApiError
from nasagent.execution.cluster import (
    S3_ENV,
    S3_SECRET,
    TRIAL_DB_SECRET,
    Attempt,
    ClusterRunner,
    LauncherSettings,
    Leftover,
)
from nasagent.execution.kubernetes import GPU_RESOURCE, trial_labels
from nasagent.persistence.postgres import Store

log = logging.getLogger(__name__)

IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
KFP_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
SERVICE_ACCOUNT_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
ACCESS_LABEL = "access-ml-pipeline"
"""The label a pod needs for the PodDefault that projects its KFP API token."""
_PERMANENT = (400, 401, 403, 404)
# Run states after which a run does nothing more.
FINISHED_STATES = ("SUCCEEDED", "FAILED", "ERROR", "SKIPPED", "CANCELING", "CANCELED")


def nasagent_trial(
    experiment: str, trial_id: int, attempt: int, metrics: Output[Metrics], outcome: Output[Artifact]
) -> float:
    """The trial pipeline's component: train trial ``trial_id`` of ``experiment`` (database from
    ``NASAGENT_DB``), report its outcome to ``trial_results`` and to KFP; returns the accuracy.

    KFP ships this function's source alone into the pod, so it imports what it needs itself.
    """
    import json

    from nasagent.core.trial import TrialStatus, outcome_to_json
    from nasagent.execution.worker import record_trial
    from nasagent.persistence.postgres import connect

    with connect(None) as store:
        result = record_trial(store, experiment, trial_id, attempt)
    metrics.log_metric("accuracy", float(result.accuracy))
    metrics.log_metric("failed", 1.0 if result.status == TrialStatus.FAILED else 0.0)
    if result.params is not None:
        metrics.log_metric("params", float(result.params))
    if result.train_seconds is not None:
        metrics.log_metric("train_seconds", float(result.train_seconds))
    outcome.metadata.update(
        {"trial_id": trial_id, "attempt": attempt, "status": result.status, "failure": result.failure or ""}
    )
    with open(outcome.path, "w", encoding="utf-8") as f:
        json.dump(outcome_to_json(result), f)
    return float(result.accuracy)


def trial_pipeline(settings: LauncherSettings) -> Any:
    """The one-component trial pipeline for the experiment's launcher settings (image, GPUs, node
    selector, tolerations, timeout). Parameters: ``experiment``, ``trial_id``, ``attempt``."""
    component = dsl.component(nasagent_trial, base_image=settings.image, install_kfp_package=False)

    @dsl.pipeline(
        name="nasagent-trial", description="Train one architecture of a nasagent search and record its outcome."
    )
    def pipeline(experiment: str, trial_id: int, attempt: int = 1) -> None:
        task = component(experiment=experiment, trial_id=trial_id, attempt=attempt)
        task.set_display_name("trial")
        task.set_caching_options(False)  # an attempt that runs again must train again
        if settings.gpus_per_trial:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(settings.gpus_per_trial)
        kfp_kubernetes.use_secret_as_env(task, secret_name=TRIAL_DB_SECRET, secret_key_to_env={"url": "NASAGENT_DB"})
        kfp_kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=dict(S3_ENV), optional=True)
        if settings.artifacts:
            task.set_env_variable("NASAGENT_ARTIFACTS", settings.artifacts)
        for key, value in settings.node_selector.items():
            kfp_kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in settings.tolerations:
            kfp_kubernetes.add_toleration(
                task,
                key=toleration["key"],
                operator=toleration["operator"],
                value=toleration.get("value"),
                effect=toleration["effect"],
            )
        kfp_kubernetes.set_timeout(task, settings.trial_timeout)
        for key, value in trial_labels(settings.experiment).items():
            kfp_kubernetes.add_pod_label(task, key, value)

    return pipeline


def compile_trial_pipeline(settings: LauncherSettings, path: Path) -> Path:
    """Compile ``trial_pipeline(settings)`` to the YAML package at ``path``."""
    compiler.Compiler().compile(trial_pipeline(settings), str(path))
    return path


class PipelineClient(Protocol):
    """The few KFP calls the launcher makes. Every method raises ``PipelineApiError`` on failure."""

    def ensure_experiment(self, name: str) -> str:
        """The id of the KFP experiment ``name``, created if it does not exist."""

    def start_run(self, experiment_id: str, run_name: str, package_path: str, arguments: dict[str, Any]) -> str:
        """Start a run of the compiled pipeline at ``package_path``; return its id."""

    def run_state(self, run_id: str) -> tuple[str, str | None]:
        """(state, error message): PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, CANCELING, CANCELED, ..."""

    def terminate_run(self, run_id: str) -> None:
        """Stop a run."""

    def list_runs(self, experiment_id: str) -> list[tuple[str, str, str, str]]:
        """(run id, run name, state, created at as ISO text) of every run in the KFP experiment."""


class KfpClient:
    """``PipelineClient`` on ``kfp.Client``; ``namespace`` is the user namespace in multi-user KFP."""

    def __init__(self, client: Any, namespace: str | None = None) -> None:
        self.client = client
        self.namespace = namespace

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        import kfp_server_api
        import urllib3

        try:
            return fn()
        except kfp_server_api.ApiException as exc:
            raise PipelineApiError(exc.status, f"{what}: {exc.status} {exc.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
            raise PipelineApiError(None, f"{what}: {exc}") from None

    def ensure_experiment(self, name: str) -> str:
        return str(
            self._call(
                "creating experiment",
                lambda: self.client.create_experiment(name, namespace=self.namespace).experiment_id,
            )
        )

    def start_run(self, experiment_id: str, run_name: str, package_path: str, arguments: dict[str, Any]) -> str:
        def start() -> str:
            result = self.client.create_run_from_pipeline_package(
                package_path, arguments=arguments, run_name=run_name, experiment_id=experiment_id, enable_caching=False
            )
            return str(result.run_id)

        return str(self._call("starting run", start))

    def run_state(self, run_id: str) -> tuple[str, str | None]:
        run = self._call("reading run", lambda: self.client.get_run(run_id))
        error = getattr(run.error, "message", None) if run.error else None
        return str(run.state or "RUNTIME_STATE_UNSPECIFIED"), error

    def terminate_run(self, run_id: str) -> None:
        self._call("terminating run", lambda: self.client.terminate_run(run_id))

    def list_runs(self, experiment_id: str) -> list[tuple[str, str, str, str]]:
        runs: list[tuple[str, str, str, str]] = []
        token = ""
        while True:
            page = self._call(
                "listing runs",
                lambda token=token: self.client.list_runs(
                    page_token=token, page_size=100, experiment_id=experiment_id, namespace=self.namespace
                ),
            )
            runs += [
                (str(r.run_id), str(r.display_name), str(r.state or ""), _iso(r.created_at)) for r in page.runs or []
            ]
            token = page.next_page_token or ""
            if not token:
                return runs


def _iso(moment: Any) -> str:
    """A run's creation time as sortable text (the client gives a datetime, or nothing)."""
    return moment.isoformat() if hasattr(moment, "isoformat") else str(moment or "")


def kfp_token_path() -> str:
    """Where ``kfp.Client`` reads its KFP API token in a pod: ``$KF_PIPELINES_SA_TOKEN_PATH``, else
    ``/var/run/secrets/kubeflow/pipelines/token`` (kfp 2.17: ``kfp.client.KF_PIPELINES_SA_TOKEN_ENV``
    and ``KF_PIPELINES_SA_TOKEN_PATH``). The PodDefault ``access-ml-pipeline`` projects a service
    account token with the audience ``pipelines.kubeflow.org`` there."""
    return os.environ.get(TOKEN_PATH_ENV) or KFP_TOKEN_PATH


def pod_namespace() -> str | None:
    """This pod's namespace (``$POD_NAMESPACE``, else its service account's namespace file); None outside a pod."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    path = Path(SERVICE_ACCOUNT_NAMESPACE_PATH)
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def connect_kfp(host: str | None, namespace: str | None) -> KfpClient:
    """A ``KfpClient`` for ``host`` (``--kfp-host``), else ``$KF_PIPELINES_ENDPOINT``, else the
    in-cluster service (in a pod), else what kubeconfig reaches; runs go into ``namespace``, else
    this pod's namespace.

    Authenticates the way multi-user Kubeflow supports for pods: with the token the PodDefault
    ``access-ml-pipeline`` projects (``kfp_token_path``), re-read on every request because it
    expires. The pod's own service account token is never sent: its audience is the Kubernetes
    API, which the KFP API server's TokenReview (audience ``pipelines.kubeflow.org``) rejects.
    ClusterError if KFP cannot be reached, or if it is multi-user (its healthz says so) and there
    is no token.
    """
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    host = (
        host
        or os.environ.get("KF_PIPELINES_ENDPOINT")
        or (IN_CLUSTER_HOST if os.environ.get("KUBERNETES_SERVICE_HOST") else None)
    )
    where = host or "the kubeconfig cluster"
    token = kfp_token_path()
    credentials = ServiceAccountTokenVolumeCredentials(token) if Path(token).is_file() else None
    namespace = namespace or pod_namespace()
    try:
        with warnings.catch_warnings():  # "only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
            warnings.filterwarnings("ignore", category=FutureWarning, module="kfp.client")
            client = kfp.Client(host=host, namespace=namespace or "kubeflow", credentials=credentials)
        multi_user = bool(client.get_kfp_healthz().multi_user)
    except Exception as exc:  # kfp.Client raises anything from TimeoutError to urllib3 errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {where}: {first}") from None
    if multi_user and credentials is None:
        raise ClusterError(
            f"Kubeflow Pipelines at {where} is multi-user and this pod has no KFP token at {token}: "
            f"label the pod {ACCESS_LABEL}=true and create the PodDefault {ACCESS_LABEL} in its namespace "
            "(manifests/overlays/kubeflow/poddefault-access-ml-pipeline.yaml)"
        )
    return KfpClient(client, namespace)


class KfpRunner(ClusterRunner):
    """Runs each trial attempt as a KFP run (see the module docstring)."""

    launcher = "kfp"

    def __init__(
        self,
        client: PipelineClient,
        store: Store,
        settings: LauncherSettings,
        num_classes: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = 10.0,
    ) -> None:
        super().__init__(store, settings, num_classes, clock)
        self.client = client
        self.sleep = sleep
        self.poll_seconds = poll_seconds
        self._package_dir = tempfile.TemporaryDirectory(prefix="nasagent-kfp-")
        self.package = compile_trial_pipeline(settings, Path(self._package_dir.name) / "trial-pipeline.yaml")
        try:
            self.experiment_id = client.ensure_experiment(settings.experiment)
        except PipelineApiError as exc:
            raise ClusterError(f"cannot create the KFP experiment {settings.experiment!r}: {exc}") from None

    def _start(self, spec: TrialSpec, number: int) -> str:
        arguments = {"experiment": self.settings.experiment, "trial_id": spec.trial_id, "attempt": number}
        run_name = f"{self.settings.experiment} trial {spec.trial_id} attempt {number}"
        try:
            return self.client.start_run(self.experiment_id, run_name, str(self.package), arguments)
        except PipelineApiError as exc:
            if exc.status in _PERMANENT:
                raise ClusterError(f"KFP refused the trial run: {exc}") from None
            raise AttemptError(str(exc), Fault.API) from None

    def _leftovers(self) -> list[Leftover]:
        try:
            runs = self.client.list_runs(self.experiment_id)
        except PipelineApiError as exc:
            raise ClusterError(
                f"cannot list the runs of the KFP experiment {self.settings.experiment!r}: {exc}"
            ) from None
        named = re.compile(re.escape(self.settings.experiment) + r" trial (\d+) attempt (\d+)")
        leftovers = []
        for run_id, name, state, created in runs:
            match = named.fullmatch(name)
            if match:
                finished, succeeded = state.upper() in FINISHED_STATES, state.upper() == "SUCCEEDED"
                leftovers.append(Leftover(int(match[1]), int(match[2]), run_id, finished, succeeded, created))
        return leftovers

    def _stop(self, attempt: Attempt) -> None:
        try:
            self.client.terminate_run(attempt.name)
        except PipelineApiError as exc:
            log.warning("could not terminate KFP run %s: %s", attempt.name, exc)

    def wait(self, timeout: float) -> list[TrialOutcome]:
        deadline = self.clock() + timeout
        while True:
            next_start = self._start_due()
            now = self.clock()
            for attempt in list(self._active.values()):
                if attempt.next_poll <= now:
                    self._poll(attempt, now)
            if self._done or not (self._active or self._delayed):
                return self._take_done()
            now = self.clock()
            if now >= deadline:
                return []
            wake = min([a.next_poll for a in self._active.values()] + [deadline, next_start or deadline])
            self.sleep(max(0.0, wake - now))

    def _poll(self, attempt: Attempt, now: float) -> None:
        attempt.next_poll = now + self.poll_seconds
        try:
            state, error = self.client.run_state(attempt.name)
        except PipelineApiError as exc:
            log.warning("cannot read KFP run %s (will ask again): %s", attempt.name, exc)
            return
        state = state.upper()
        if state == "SUCCEEDED":
            self._succeeded(attempt)
        elif state in ("FAILED", "ERROR"):
            self._failed(attempt, f"run failed: {error or 'KFP gave no error message'}", fault=Fault.CRASHED)
        elif state == "SKIPPED":
            self._failed(attempt, "run skipped", fault=Fault.CRASHED)
        elif state in ("CANCELING", "CANCELED"):
            self._failed(attempt, "run canceled in KFP", fault=Fault.DELETED, retry=False)
        elif state in ("RUNNING", "PAUSED"):
            if attempt.running_since is None:
                attempt.running_since = now
            elif now - attempt.running_since > self.settings.trial_timeout:
                self._failed(
                    attempt,
                    f"timed out: the run ran longer than --trial-timeout {self.settings.trial_timeout}s",
                    fault=Fault.TIMEOUT,
                    stop=True,
                )
        elif now - attempt.started > self.settings.pending_timeout:
            self._failed(
                attempt,
                f"pending for more than --pending-timeout {self.settings.pending_timeout}s (run state {state})",
                fault=Fault.UNSCHEDULABLE,
                stop=True,
            )

    def close(self) -> None:
        super().close()
        self._package_dir.cleanup()
