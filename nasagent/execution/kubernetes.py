"""Kubernetes launcher: one Job per trial attempt, watched with the watch API.

Each attempt of a trial is a Job running ``nasagent trial --experiment NAME --trial-id ID`` in the
trial image (``trial_job`` builds it): ``backoffLimit: 0`` (this launcher retries, so that every
failure is seen with its reason), ``activeDeadlineSeconds`` = ``--trial-timeout`` (counted from
the Job's start, time spent pending included), ``ttlSecondsAfterFinished`` so finished Jobs and
their logs stay a while, a GPU limit, node selector and tolerations, the labels
``app.kubernetes.io/part-of=nasagent``, ``nasagent.io/role=trial``, ``nasagent.io/experiment``,
``nasagent.io/trial`` and ``nasagent.io/attempt``, and an owner reference to the agent's pod, so
that deleting the run that holds the agent deletes its trials. The pod gets ``NASAGENT_DB`` from
the Secret ``nasagent-db`` (key ``url``), the S3 settings from the Secret ``nasagent-s3`` (keys
``endpoint``, ``access_key``, ``secret_key``; optional) and ``NASAGENT_ARTIFACTS`` when set. It
needs no service account token (``automountServiceAccountToken: false``). With
``--trial-template FILE`` (default ``$NASAGENT_TRIAL_TEMPLATE``; e.g. the ConfigMap
``nasagent-trial-template`` of ``manifests/`` mounted into the agent pod) every Job is built on the
admin's Job: its security context, volumes, resources and annotations are kept.

The agent's pod needs RBAC to create, delete, list and watch Jobs and to list pods in the trials'
namespace (and to get its own pod unless ``POD_UID`` is set from the downward API).

The launcher keeps at most ``parallelism`` Jobs alive. It watches the experiment's Jobs from the
last resourceVersion it saw, reconnects after a dropped watch and lists them again after
``410 Gone``. An attempt that fails (exit code, ``OOMKilled``, eviction, deadline) or stays
Pending longer than ``--pending-timeout`` (no node with a free GPU came) is retried as a new Job
up to ``--max-retries`` times, then reported failed with the reason (``ClusterRunner``).

All cluster access goes through ``KubernetesApi``, a small interface over ``BatchV1Api``,
``CoreV1Api`` and ``kubernetes.watch.Watch`` on plain dicts; ``ClientApi`` is the real one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import yaml

from nasagent.core.trial import TrialOutcome, TrialSpec
from nasagent.errors import AttemptError, ClusterError, ConfigError, KubeApiError, WatchExpired
from nasagent.execution.cluster import (
    ATTEMPT_ENV,
    DB_SECRET,
    S3_ENV,
    S3_SECRET,
    Attempt,
    ClusterRunner,
    LauncherSettings,
    dns_label,
    label_value,
    trial_command,
)
from nasagent.persistence.postgres import Store

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
GPU_RESOURCE = "nvidia.com/gpu"
# Refusals that no retry fixes: a malformed Job, no permission, no such namespace.
_PERMANENT = (400, 401, 403, 404, 422)


class KubernetesApi(Protocol):
    """The few calls the launcher makes, on plain dicts (what the API's JSON holds).

    Every method raises ``KubeApiError`` when the server refuses or cannot be reached.
    """

    def create_job(self, namespace: str, job: dict[str, Any]) -> None:
        """Create the Job ``job``."""

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and its pods (background propagation); a Job already gone is no error."""

    def list_jobs(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """The Jobs matching ``label_selector`` and the list's resourceVersion."""

    def watch_jobs(
        self, namespace: str, label_selector: str, resource_version: str | None, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        """Events ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": job}`` after
        ``resource_version``, ending after about ``timeout_seconds``; ``WatchExpired`` on 410."""

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The pods matching ``label_selector``."""

    def read_pod_uid(self, namespace: str, name: str) -> str:
        """The uid of pod ``name``."""


class ClientApi:
    """``KubernetesApi`` on the official client (``kubernetes.client``, ``kubernetes.watch``)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def create_job(self, namespace: str, job: dict[str, Any]) -> None:
        with _api_errors(f"creating Job {job['metadata']['name']}"):
            self.batch.create_namespaced_job(namespace, job)

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            with _api_errors(f"deleting Job {name}"):
                self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except KubeApiError as exc:
            if exc.status != 404:
                raise

    def list_jobs(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        with _api_errors("listing Jobs"):
            listed = self.batch.list_namespaced_job(namespace, label_selector=label_selector)
        return [
            self.api_client.sanitize_for_serialization(job) for job in listed.items
        ], listed.metadata.resource_version

    def watch_jobs(
        self, namespace: str, label_selector: str, resource_version: str | None, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        from kubernetes import watch

        stream = watch.Watch().stream(
            self.batch.list_namespaced_job,
            namespace,
            label_selector=label_selector,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            _request_timeout=timeout_seconds + 30,
        )
        try:
            with _api_errors("watching Jobs"):
                for event in stream:
                    yield {"type": event["type"], "object": event["raw_object"]}
        finally:
            stream.close()

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        with _api_errors("listing pods"):
            listed = self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        return [self.api_client.sanitize_for_serialization(pod) for pod in listed.items]

    def read_pod_uid(self, namespace: str, name: str) -> str:
        with _api_errors(f"reading pod {name}"):
            return str(self.core.read_namespaced_pod(name, namespace).metadata.uid)


@contextmanager
def _api_errors(what: str) -> Iterator[None]:
    """The client's exceptions as ``KubeApiError`` with the server's one-line message."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        message = str(exc.reason)
        try:
            message = json.loads(exc.body).get("message") or message
        except (TypeError, ValueError, AttributeError):
            pass
        if exc.status == 410:
            raise WatchExpired(f"{what}: {message}") from None
        raise KubeApiError(exc.status, f"{what}: {exc.status} {message}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise KubeApiError(None, f"{what}: {exc}") from None


def connect_kubernetes() -> ClientApi:
    """The API of the cluster we run in (``KUBERNETES_SERVICE_HOST`` set), else of kubeconfig's
    current context. ClusterError if neither is configured."""
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except (config.ConfigException, OSError) as exc:
        raise ClusterError(f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}") from None
    return ClientApi(client.ApiClient())


def default_namespace() -> str:
    """The agent pod's own namespace in a cluster, else kubeconfig's current one, else 'default'."""
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    try:
        from kubernetes import config

        _, current = config.list_kube_config_contexts()
        return str(current["context"].get("namespace") or "default")
    except (config.ConfigException, OSError, KeyError, TypeError):
        return "default"


def agent_owner(api: KubernetesApi, namespace: str, environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The owner reference that makes the agent's pod own its trial Jobs, or None.

    Only when the agent runs in a cluster (``KUBERNETES_SERVICE_HOST``) and its trials run in its
    own namespace (``POD_NAMESPACE`` or the service account's namespace file): an owner in another
    namespace would make the garbage collector delete the Jobs at once. The pod's name comes from
    ``POD_NAME`` (downward API ``metadata.name``), else ``HOSTNAME``; its uid from ``POD_UID``
    (downward API ``metadata.uid``), else it is looked up (RBAC: get pods).
    """
    if not environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    own_namespace = environ.get("POD_NAMESPACE") or (
        SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.exists() else None
    )
    if own_namespace != namespace:
        log.warning(
            "trials run in namespace %s, not the agent's (%s): their Jobs get no owner reference",
            namespace,
            own_namespace,
        )
        return None
    name = environ.get("POD_NAME") or environ.get("HOSTNAME") or socket.gethostname()
    uid = environ.get("POD_UID")
    if not uid:
        try:
            uid = api.read_pod_uid(namespace, name)
        except KubeApiError as exc:
            log.warning("cannot look up the agent pod %s (set POD_UID from the downward API): %s", name, exc)
            return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}


TRIAL_POD_ANNOTATIONS = {
    "sidecar.istio.io/inject": "false",
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
}


def trial_labels(experiment: str, trial_id: int | None = None) -> dict[str, str]:
    """The labels of an experiment's trial Jobs and pods (without ``trial_id``: the selector's)."""
    labels = {
        "app.kubernetes.io/part-of": "nasagent",
        "nasagent.io/role": "trial",
        "nasagent.io/experiment": label_value(experiment),
    }
    if trial_id is not None:
        labels["nasagent.io/trial"] = str(trial_id)
    return labels


def job_name(experiment: str, trial_id: int, attempt: int, token: str) -> str:
    """``nas-<experiment>-<trial>-<attempt>-<token>``, at most 63 characters (the Job controller
    copies it into the pods' ``job-name`` label)."""
    tail = f"-{trial_id}-{attempt}-{token}"
    return f"nas-{dns_label(experiment, 63 - 4 - len(tail))}{tail}"


def load_job_template(path: str) -> dict[str, Any]:
    """Read a trial Job template (``--trial-template``: YAML of a batch/v1 Job with one container,
    e.g. the ConfigMap ``nasagent-trial-template`` mounted into the agent pod). ConfigError if it
    is unreadable or not such a Job."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --trial-template {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--trial-template {path} is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("apiVersion") != "batch/v1" or data.get("kind") != "Job":
        raise ConfigError(f"--trial-template {path} must be a batch/v1 Job")
    containers = (((data.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    if len(containers) != 1:
        raise ConfigError(f"--trial-template {path} must have exactly one container, has {len(containers)}")
    return data


def trial_job(
    settings: LauncherSettings, trial_id: int, attempt: int, name: str, owner: dict[str, str] | None = None
) -> dict[str, Any]:
    """The Job running attempt ``attempt`` of trial ``trial_id`` (see the module docstring).

    Built on ``settings.job_template`` when there is one: the admin's security context, volumes,
    resources, annotations and environment stay; the launcher sets the name, labels, image,
    command, its environment variables (replacing same-named ones), the GPU count (the flag wins
    over the template), ``backoffLimit`` and ``activeDeadlineSeconds``, and adds its node selector
    and tolerations to the template's.
    """
    job = copy.deepcopy(settings.job_template) if settings.job_template else {"apiVersion": "batch/v1", "kind": "Job"}
    labels = {**trial_labels(settings.experiment, trial_id), "nasagent.io/attempt": str(attempt)}
    metadata = job["metadata"] = {**(job.get("metadata") or {}), "name": name}
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    if settings.namespace:
        metadata["namespace"] = settings.namespace
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    spec = job.setdefault("spec", {})
    spec.update(backoffLimit=0, activeDeadlineSeconds=settings.trial_timeout)
    spec.setdefault("ttlSecondsAfterFinished", settings.ttl_after_finished)
    template = spec.setdefault("template", {})
    pod_metadata = template.setdefault("metadata", {})
    pod_metadata["labels"] = {**(pod_metadata.get("labels") or {}), **labels}
    # An Istio sidecar would keep a finished trial pod running (its Job never completes), and the
    # autoscaler must not evict a pod mid-training; a template may still override either.
    pod_metadata["annotations"] = {**TRIAL_POD_ANNOTATIONS, **(pod_metadata.get("annotations") or {})}
    pod = template.setdefault("spec", {})
    pod["restartPolicy"] = "Never"
    pod.setdefault("automountServiceAccountToken", False)
    if settings.node_selector:
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **settings.node_selector}
    if settings.tolerations:
        existing = list(pod.get("tolerations") or [])
        pod["tolerations"] = existing + [dict(t) for t in settings.tolerations if dict(t) not in existing]
    container = (pod.get("containers") or [{}])[0]
    pod["containers"] = [container]
    container.pop("args", None)
    container.update(
        name="trial",
        image=settings.image,
        command=trial_command(settings.experiment, trial_id),
        # The last log lines become the termination message: a failed trial's reason names its error.
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    ours = _trial_env(settings, attempt)
    names = {variable["name"] for variable in ours}
    container["env"] = [v for v in container.get("env") or [] if v.get("name") not in names] + ours
    resources = container.setdefault("resources", {})
    for kind in ("limits", "requests"):
        quantities = resources.get(kind) or {}
        quantities.pop(GPU_RESOURCE, None)
        if settings.gpus_per_trial and (kind == "limits" or quantities):
            quantities[GPU_RESOURCE] = settings.gpus_per_trial
        if quantities:
            resources[kind] = quantities
        else:
            resources.pop(kind, None)
    if not resources:
        del container["resources"]
    return job


def _trial_env(settings: LauncherSettings, attempt: int) -> list[dict[str, Any]]:
    """The environment every trial pod gets from the launcher (Secrets by reference, never values)."""
    env: list[dict[str, Any]] = [
        {"name": "NASAGENT_DB", "valueFrom": {"secretKeyRef": {"name": DB_SECRET, "key": "url"}}}
    ]
    env += [
        {"name": variable, "valueFrom": {"secretKeyRef": {"name": S3_SECRET, "key": key, "optional": True}}}
        for key, variable in S3_ENV.items()
    ]
    env += [{"name": ATTEMPT_ENV, "value": str(attempt)}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if settings.artifacts:
        env.append({"name": "NASAGENT_ARTIFACTS", "value": settings.artifacts})
    return env


def _finished(job: dict[str, Any]) -> str | None:
    """'Complete' or 'Failed' when the Job has finished, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return None


def _by_age(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""), reverse=True)


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def pod_failure(pods: list[dict[str, Any]]) -> str | None:
    """Why the newest failed pod of a Job failed: eviction, disruption, OOMKilled, exit code and
    last log line. None if no pod says."""
    for pod in _by_age(pods):
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":
            return f"pod evicted: {status.get('message') or 'no message'}"
        for condition in status.get("conditions") or []:
            if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
                return f"pod disrupted ({condition.get('reason')}): {condition.get('message') or 'no message'}"
        limits = {
            c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
            for c in (pod.get("spec") or {}).get("containers") or []
        }
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated")
            if not terminated:
                continue
            if terminated.get("reason") == "OOMKilled":
                limit = limits.get(container.get("name"))
                return f"OOMKilled: container {container.get('name')} ran out of memory" + (
                    f" (limit {limit})" if limit else ""
                )
            if terminated.get("exitCode", 0) != 0:
                last = _last_line(terminated.get("message"))
                return f"exit code {terminated.get('exitCode')}" + (f": {last}" if last else "")
        if status.get("phase") == "Failed" and status.get("reason"):
            return f"pod failed ({status['reason']}): {status.get('message') or 'no message'}"
    return None


def pending_detail(pods: list[dict[str, Any]]) -> str:
    """Why a Job's pod has not started: the scheduler's message, an image pull error, or no pod."""
    if not pods:
        return "no pod was created (see the Job's events: quota, admission)"
    status = _by_age(pods)[0].get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason')}: {condition.get('message') or 'no message'}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            return f"{waiting.get('reason')}: {waiting.get('message') or 'no message'}"
    return "the pod is still Pending"


class KubernetesRunner(ClusterRunner):
    """Runs each trial attempt as a Job (see the module docstring). ``settings.namespace`` must be
    set; ``owner`` comes from ``agent_owner``. Deletes the experiment's unfinished Jobs left by an
    agent that died (their trials are rerun by the resume) when it starts, and its own on ``close``."""

    launcher = "kubernetes"

    def __init__(
        self,
        api: KubernetesApi,
        store: Store,
        settings: LauncherSettings,
        num_classes: int,
        owner: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.namespace:
            raise ValueError("KubernetesRunner needs settings.namespace")
        super().__init__(store, settings, num_classes, clock)
        self.api = api
        self.namespace = settings.namespace
        self.owner = owner
        self.sleep = sleep
        self.selector = ",".join(f"{k}={v}" for k, v in trial_labels(settings.experiment).items())
        # Job names of this runner differ from those of any earlier agent of the same experiment.
        self._token = secrets.token_hex(3)[:5]
        self._resource_version: str | None = None
        self._delete_stale_jobs()

    # -- starting and stopping ---------------------------------------------------------------------
    def _delete_stale_jobs(self) -> None:
        try:
            jobs, _ = self.api.list_jobs(self.namespace, self.selector)
        except KubeApiError as exc:
            raise ClusterError(f"cannot list Jobs in namespace {self.namespace}: {exc}") from None
        for job in jobs:
            if _finished(job) is None:
                log.info("deleting Job %s left by an earlier agent", job["metadata"]["name"])
                self._delete(job["metadata"]["name"])

    def _start(self, spec: TrialSpec, number: int) -> str:
        name = job_name(self.settings.experiment, spec.trial_id, number, self._token)
        try:
            self.api.create_job(self.namespace, trial_job(self.settings, spec.trial_id, number, name, self.owner))
        except KubeApiError as exc:
            if exc.status in _PERMANENT and "exceeded quota" not in str(exc):
                raise ClusterError(f"cannot create trial Jobs in namespace {self.namespace}: {exc}") from None
            raise AttemptError(str(exc)) from None
        return name

    def _stop(self, attempt: Attempt) -> None:
        self._delete(attempt.name)

    def _delete(self, name: str) -> None:
        try:
            self.api.delete_job(self.namespace, name)
        except KubeApiError as exc:
            log.warning("could not delete Job %s: %s", name, exc)

    # -- watching ------------------------------------------------------------------------------------
    def wait(self, timeout: float) -> list[TrialOutcome]:
        deadline = self.clock() + timeout
        while True:
            self._check_pending()
            if self._done or not self._active:
                return self._take_done()
            remaining = deadline - self.clock()
            if remaining <= 0:
                return []
            self._watch(remaining)

    def _watch(self, seconds: float) -> None:
        """Handle Job events for up to ``seconds`` or until an attempt ends."""
        try:
            if self._resource_version is None:
                self._relist()
                if self._done:
                    return
            events = self.api.watch_jobs(
                self.namespace, self.selector, self._resource_version, max(1, math.ceil(seconds))
            )
            try:
                for event in events:
                    self._on_event(event)
                    if self._done:
                        return
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
        except WatchExpired as exc:
            log.info("watch expired (%s): listing the Jobs again", exc)
            self._resource_version = None
        except KubeApiError as exc:
            if exc.status in (401, 403, 404):
                raise ClusterError(f"cannot watch Jobs in namespace {self.namespace}: {exc}") from None
            log.warning("watch of Jobs dropped (%s); reconnecting from resourceVersion %s", exc, self._resource_version)
            self.sleep(min(1.0, seconds))

    def _relist(self) -> None:
        """The state of every Job after a lost watch: catches up on events missed meanwhile."""
        jobs, resource_version = self.api.list_jobs(self.namespace, self.selector)
        seen = set()
        for job in jobs:
            seen.add(job["metadata"]["name"])
            attempt = self._active.get(job["metadata"]["name"])
            if attempt is not None:
                self._on_job(attempt, job)
        for name in [n for n in self._active if n not in seen]:
            self._failed(self._active[name], "the Job disappeared before the trial finished")
        self._resource_version = resource_version

    def _on_event(self, event: dict[str, Any]) -> None:
        job = event.get("object") or {}
        metadata = job.get("metadata") or {}
        if metadata.get("resourceVersion"):
            self._resource_version = str(metadata["resourceVersion"])
        attempt = self._active.get(metadata.get("name", ""))
        if attempt is None or event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
            return
        if not self._on_job(attempt, job) and event["type"] == "DELETED":
            self._failed(attempt, "the Job was deleted before the trial finished")

    def _on_job(self, attempt: Attempt, job: dict[str, Any]) -> bool:
        """Act on a Job's state; True if its attempt ended."""
        status = job.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("status") != "True":
                continue
            if condition.get("type") == "Complete":
                self._succeeded(attempt)
                return True
            if condition.get("type") == "Failed":
                self._failed(attempt, self._failure_reason(attempt, condition))
                return True
        if attempt.running_since is None and (status.get("ready") or status.get("succeeded") or status.get("failed")):
            attempt.running_since = self.clock()
        return False

    def _failure_reason(self, attempt: Attempt, condition: dict[str, Any]) -> str:
        if condition.get("reason") == "DeadlineExceeded":
            return (
                f"timed out: the Job ran longer than --trial-timeout {self.settings.trial_timeout}s (DeadlineExceeded)"
            )
        try:
            pods = self.api.list_pods(self.namespace, f"job-name={attempt.name}")
        except KubeApiError as exc:
            log.warning("cannot list the pods of Job %s: %s", attempt.name, exc)
            pods = []
        return (
            pod_failure(pods) or f"Job failed ({condition.get('reason')}): {condition.get('message') or 'no message'}"
        )

    def _check_pending(self) -> None:
        """Delete and retry attempts whose pod has not started within ``pending_timeout``."""
        now = self.clock()
        for attempt in list(self._active.values()):
            if attempt.running_since is not None or now - attempt.started < self.settings.pending_timeout:
                continue
            try:
                pods = self.api.list_pods(self.namespace, f"job-name={attempt.name}")
            except KubeApiError as exc:
                log.warning("cannot list the pods of Job %s: %s", attempt.name, exc)
                continue
            if any((p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed") for p in pods):
                attempt.running_since = now
                continue
            reason = f"pending for more than --pending-timeout {self.settings.pending_timeout}s: {pending_detail(pods)}"
            self._failed(attempt, reason, stop=True)
