"""Kubernetes launcher: one Job per trial attempt, watched with the watch API.

Each attempt of a trial is a Job running ``nasagent trial --experiment NAME --trial-id ID`` in the
trial image (``trial_job`` builds it): ``backoffLimit: 0`` (this launcher retries, so that every
failure is seen with its reason), ``activeDeadlineSeconds`` = ``--trial-timeout`` (counted from
the Job's start, time spent pending included), ``ttlSecondsAfterFinished`` so finished Jobs and
their logs stay a while, a GPU limit, node selector and tolerations, the labels
``app.kubernetes.io/part-of=nasagent``, ``nasagent.io/role=trial``, ``nasagent.io/experiment``,
``nasagent.io/trial`` and ``nasagent.io/attempt``, and an owner reference to the agent's pod, so
that deleting the run that holds the agent deletes its trials. The pod gets ``NASAGENT_DB`` from
the Secret ``nasagent-trial-db`` (key ``url``: the database role that may only record trial
results), the S3 settings from the Secret ``nasagent-s3`` (keys ``endpoint``, ``access_key``,
``secret_key``; optional) or, with ``--s3-secret``, from a Secret in Kubeflow's convention (keys
``accesskey``, ``secretkey``) and ``--s3-endpoint``, and ``NASAGENT_ARTIFACTS`` when set.

With no template at all the Job already meets the Pod Security "restricted" profile and carries
requests and limits (``default_trial_job``): non-root user and group 10001 (the images' user),
seccomp ``RuntimeDefault``, every capability dropped, no privilege escalation, a read-only root
filesystem with emptyDirs for ``HOME``/``NASAGENT_HOME`` (datasets are downloaded there) and
``/tmp``, ``/dev/shm`` in memory (``--trial-shm-size``), CPU and memory from ``--trial-*`` (or
``DEFAULT_TRIAL_RESOURCES``), the ServiceAccount ``nasagent-trial`` (no rights) and no token.
With ``--trial-template FILE`` (default ``$NASAGENT_TRIAL_TEMPLATE``; e.g. the ConfigMap
``nasagent-trial-template`` of ``manifests/`` mounted into the agent pod) the admin's Job is laid
over those defaults: where the template sets something it wins, the defaults fill the rest
(``merge_template`` says exactly how), then ``--trial-*`` flags given on the command line and the
launcher's own fields (above) win. ``nasagent search --dry-run`` prints the result
(``render_trial_job``).

The agent's pod needs RBAC to create, delete, list and watch Jobs and to list pods in the trials'
namespace (and to get its own pod: its owner, and whether it is being disrupted): exactly the
Role ``nasagent-agent`` of ``manifests/base/rbac.yaml``.

The launcher keeps at most ``parallelism`` Jobs alive. It watches the experiment's Jobs from the
last resourceVersion it saw, reconnects after a dropped watch and lists them again after
``410 Gone``. Faults (docs/cluster.md, "Faults"): a trial Job's ``podFailurePolicy`` lets
Kubernetes replace a pod that was preempted, evicted or lost with its node (``DisruptionTarget``:
Ignore, not counted), and fails the Job at once when the trial exits with ``CONFIG_ERROR_EXIT``
(the agent then stops the search with the trial's message). Any other end of an attempt without
a reported result (exit code, ``OOMKilled``, deadline, a deleted Job), or an attempt Pending
longer than ``--pending-timeout`` (no node with a free GPU came), is an infrastructure failure:
retried as a new Job up to ``--max-retries`` times, then handed to the agent, which requeues the
trial without learning from it (``ClusterRunner``). A pod that cannot pull its image for
``--image-pull-timeout`` seconds stops the search.

Jobs outlive the agent. An agent starting on an experiment takes over the Jobs of its trials in
flight, found by label (``resume``), and deletes the experiment's other unfinished Jobs. On
SIGTERM or SIGINT it deletes its Jobs, unless its own pod is being disrupted (a drain, a
preemption: the ``DisruptionTarget`` condition), when it leaves them for the agent that replaces
it. A Job is owned by the controller of the agent's pod (the KFP run's Argo Workflow, the agent's
own Job), else by the pod: a retried pipeline step or a rescheduled agent keeps its trials, and
deleting the run deletes them.

All cluster access goes through ``KubernetesApi``, a small interface over ``BatchV1Api``,
``CoreV1Api`` and ``kubernetes.watch.Watch`` on plain dicts; ``ClientApi`` is the real one.
"""

from __future__ import annotations

import copy
import dataclasses
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

from nasagent.core.trial import CONFIG_ERROR_EXIT, Fault, TrialOutcome, TrialSpec
from nasagent.errors import AttemptError, ClusterError, ConfigError, InfrastructureError, KubeApiError, WatchExpired
from nasagent.execution.cluster import (
    ATTEMPT_ENV,
    KUBEFLOW_S3_ENV,
    RESOURCE_FLAGS,
    S3_ENV,
    S3_SECRET,
    TRIAL_DB_SECRET,
    Attempt,
    ClusterRunner,
    LauncherSettings,
    Leftover,
    check_trial_resources,
    dns_label,
    label_value,
    trial_command,
)
from nasagent.persistence.postgres import Store

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
GPU_RESOURCE = "nvidia.com/gpu"
TRIAL_SERVICE_ACCOUNT = "nasagent-trial"
"""The trial pods' ServiceAccount: no RoleBinding, no token (manifests/base/rbac.yaml)."""
TRIAL_USER = 10001
"""The images' user and group (images/*/Dockerfile)."""
TRIAL_HOME = "/var/lib/nasagent"
"""HOME and NASAGENT_HOME of a trial pod: a writable emptyDir; datasets are downloaded below it."""
SHM_PATH = "/dev/shm"
# A pod that shows one of these waiting reasons cannot start until its image can be pulled.
IMAGE_PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
POD_POLL_SECONDS = 15.0
"""How often the pods of an attempt that is not running yet are looked at (pull errors, start)."""
# Why the trial container reads its Secrets from the environment, for scanners that flag it
# (checkov CKV_K8S_35). A suppression reason must not contain "=": checkov splits on it.
TRIAL_JOB_ANNOTATIONS = {
    "checkov.io/skip1": (
        "CKV_K8S_35=nasagent reads NASAGENT_DB and NASAGENT_S3_* from its environment only; "
        "the Job names the Secrets and never holds their values"
    ),
}
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

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """Pod ``name`` (the agent's own: its uid, owner and conditions)."""


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

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        with _api_errors(f"reading pod {name}"):
            return dict(self.api_client.sanitize_for_serialization(self.core.read_namespaced_pod(name, namespace)))


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


def agent_pod(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(namespace, name) of the agent's own pod when it runs in a cluster (``KUBERNETES_SERVICE_HOST``):
    ``POD_NAMESPACE`` (downward API) or the service account's namespace file, and ``POD_NAME``
    (downward API ``metadata.name``), else ``HOSTNAME``. None outside a cluster."""
    if not environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    namespace = environ.get("POD_NAMESPACE") or (
        SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.exists() else None
    )
    if not namespace:
        return None
    return namespace, environ.get("POD_NAME") or environ.get("HOSTNAME") or socket.gethostname()


def agent_owner(api: KubernetesApi, namespace: str, environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The owner reference of the trial Jobs, or None: the controller of the agent's pod (the KFP
    run's Argo Workflow, the Job running the agent), else the pod itself.

    Owned by the controller, the Jobs outlive the agent's pod (a retried pipeline step, a pod
    rescheduled after a drain takes them over) and are deleted with the run. Only when the agent
    runs in a cluster and its trials in its own namespace (``agent_pod``): an owner in another
    namespace would make the garbage collector delete the Jobs at once. The pod is read from the
    API (RBAC: get pods); if it cannot be, the pod owns the Jobs when ``POD_UID`` (downward API
    ``metadata.uid``) says its uid.
    """
    own = agent_pod(environ)
    if own is None:
        return None
    own_namespace, name = own
    if own_namespace != namespace:
        log.warning(
            "trials run in namespace %s, not the agent's (%s): their Jobs get no owner reference",
            namespace,
            own_namespace,
        )
        return None
    uid = environ.get("POD_UID")
    try:
        metadata = api.read_pod(namespace, name).get("metadata") or {}
    except KubeApiError as exc:
        log.warning("cannot read the agent pod %s: %s", name, exc)
        return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid} if uid else None
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("controller"):
            return {key: str(owner[key]) for key in ("apiVersion", "kind", "name", "uid")}
    uid = uid or metadata.get("uid")
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": str(uid)} if uid else None


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


def default_trial_job(settings: LauncherSettings) -> dict[str, Any]:
    """The trial Job before any template: what a locked-down cluster admits with no admin input.

    Pod Security "restricted" (non-root user and group ``TRIAL_USER``, ``RuntimeDefault`` seccomp,
    ALL capabilities dropped, no privilege escalation, read-only root filesystem), writable
    emptyDirs where nasagent writes (``TRIAL_HOME`` as HOME and NASAGENT_HOME, ``/tmp``) and
    ``/dev/shm`` in memory, CPU and memory requests and limits from ``settings.trial_resources()``,
    the ServiceAccount ``nasagent-trial`` without its token, no service links.
    """
    resources = settings.trial_resources()
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"annotations": dict(TRIAL_JOB_ANNOTATIONS)},
        "spec": {
            "ttlSecondsAfterFinished": settings.ttl_after_finished,
            "template": {
                "metadata": {"annotations": dict(TRIAL_POD_ANNOTATIONS)},
                "spec": {
                    "serviceAccountName": TRIAL_SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": TRIAL_USER,
                        "runAsGroup": TRIAL_USER,
                        "fsGroup": TRIAL_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "trial",
                            "env": [
                                {"name": "HOME", "value": TRIAL_HOME},
                                {"name": "NASAGENT_HOME", "value": TRIAL_HOME},
                            ],
                            "resources": {
                                "requests": {"cpu": resources["cpu_request"], "memory": resources["memory_request"]},
                                "limits": {"cpu": resources["cpu_limit"], "memory": resources["memory_limit"]},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "home", "mountPath": TRIAL_HOME},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "shm", "mountPath": SHM_PATH},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "home", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": resources["shm_size"]}},
                    ],
                },
            },
        },
    }


# Lists whose items are matched by a key when a template is laid over the defaults; every other
# list (tolerations, capabilities.drop, ...) is taken from the template whole.
_LIST_KEYS = {"env": "name", "volumes": "name", "volumeMounts": "mountPath"}


def merge_template(defaults: Any, template: Any, key: str = "") -> Any:
    """``template`` laid over ``defaults``: the template wins wherever it sets something.

    Mappings merge key by key, recursively. ``containers`` merge item by item (a trial Job has
    one). ``env`` and ``volumes`` merge by ``name``, ``volumeMounts`` by ``mountPath``: a
    template's item replaces the default item it matches whole, the defaults' other items stay
    (after the template's). Any other value, lists included, is the template's when it has one.
    """
    if isinstance(defaults, dict) and isinstance(template, dict):
        merged = dict(defaults)
        for name, value in template.items():
            merged[name] = merge_template(defaults[name], value, name) if name in defaults else copy.deepcopy(value)
        return merged
    if key == "containers" and isinstance(defaults, list) and isinstance(template, list):
        return [merge_template(d, t) for d, t in zip(defaults, template)] + copy.deepcopy(template[len(defaults) :])
    if key in _LIST_KEYS and isinstance(defaults, list) and isinstance(template, list):
        field_name = _LIST_KEYS[key]
        taken = {item.get(field_name) for item in template if isinstance(item, dict)}
        return copy.deepcopy(template) + [copy.deepcopy(d) for d in defaults if d.get(field_name) not in taken]
    return copy.deepcopy(template)


def _drop_unmounted_defaults(pod: dict[str, Any], template_pod: dict[str, Any]) -> None:
    """Remove the default volumes that no container mounts any more (a template mounted its own
    volume at that path); the template's own volumes stay whatever they are."""
    mounted = {m.get("name") for c in pod.get("containers") or [] for m in c.get("volumeMounts") or []}
    mounted |= {m.get("name") for c in pod.get("initContainers") or [] for m in c.get("volumeMounts") or []}
    own = {v.get("name") for v in template_pod.get("volumes") or []}
    pod["volumes"] = [v for v in pod.get("volumes") or [] if v.get("name") in mounted or v.get("name") in own]
    if not pod["volumes"]:
        del pod["volumes"]


def pod_failure_policy() -> dict[str, Any]:
    """The trial Job's ``podFailurePolicy``: a trial that exits with ``CONFIG_ERROR_EXIT`` fails the
    Job at once (no retry fixes a configuration error); a pod ended by a disruption (preempted,
    evicted, its node lost or drained: the ``DisruptionTarget`` condition) is replaced without
    counting against ``backoffLimit``. Anything else counts (``backoffLimit: 0``: the launcher
    sees the failure and retries with a new Job)."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "trial", "operator": "In", "values": [CONFIG_ERROR_EXIT]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def trial_job(
    settings: LauncherSettings, trial_id: int, attempt: int, name: str, owner: dict[str, str] | None = None
) -> dict[str, Any]:
    """The Job running attempt ``attempt`` of trial ``trial_id`` (see the module docstring).

    Precedence, lowest first: ``default_trial_job``; the admin's ``settings.job_template`` laid
    over it (``merge_template``); the ``--trial-*`` resource flags given on the command line; and
    the launcher's own fields, which always win: name, namespace, labels (added), owner,
    ``backoffLimit: 0``, ``activeDeadlineSeconds``, ``podFailurePolicy``, ``restartPolicy: Never``, the container's
    name, image and command (no ``args``), its environment variables (replacing same-named ones),
    the GPU count, and node selector and tolerations (added to the template's). ConfigError if
    the resulting resources cannot be admitted (a request above its limit, ``/dev/shm`` above the
    memory limit).
    """
    job = default_trial_job(settings)
    template_pod: dict[str, Any] = {}
    if settings.job_template:
        job = merge_template(job, settings.job_template)
        template_pod = ((settings.job_template.get("spec") or {}).get("template") or {}).get("spec") or {}
    labels = {**trial_labels(settings.experiment, trial_id), "nasagent.io/attempt": str(attempt)}
    # Built in reading order (name, namespace, labels first) for the admin who reviews --dry-run.
    given_metadata = {k: v for k, v in (job.get("metadata") or {}).items() if k not in ("name", "namespace")}
    metadata = {"name": name, **({"namespace": settings.namespace} if settings.namespace else {})}
    metadata["labels"] = {**(given_metadata.pop("labels", None) or {}), **labels}
    metadata.update(given_metadata)
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    spec = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": settings.trial_timeout,
        "podFailurePolicy": pod_failure_policy(),  # the launcher's: its fault handling relies on it
    }
    spec.update({k: v for k, v in job["spec"].items() if k not in spec})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}
    template = spec["template"]
    pod_metadata = template.setdefault("metadata", {})
    pod_metadata["labels"] = {**(pod_metadata.get("labels") or {}), **labels}
    pod = template["spec"] = {"restartPolicy": "Never", **template["spec"]}
    pod["restartPolicy"] = "Never"
    _drop_unmounted_defaults(pod, template_pod)
    if settings.node_selector:
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **settings.node_selector}
    if settings.tolerations:
        existing = list(pod.get("tolerations") or [])
        pod["tolerations"] = existing + [dict(t) for t in settings.tolerations if dict(t) not in existing]
    container = {
        "name": "trial",
        "image": settings.image,
        "command": trial_command(settings.experiment, trial_id),
        **{k: v for k, v in pod["containers"][0].items() if k not in ("name", "image", "command", "args")},
        # The last log lines become the termination message: a failed trial's reason names its error.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod["containers"] = [container]
    ours = _trial_env(settings, attempt)
    names = {variable["name"] for variable in ours}
    container["env"] = [v for v in container.get("env") or [] if v.get("name") not in names] + ours
    _apply_resource_flags(settings, pod, container)
    return job


def _apply_resource_flags(settings: LauncherSettings, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """Set the ``--trial-*`` flags given (they win over a template), the GPU count, and check the result."""
    given = settings.given_resources()
    resources = container.setdefault("resources", {})
    requests, limits = resources.setdefault("requests", {}), resources.setdefault("limits", {})
    for name, value in given.items():
        if name != "shm_size":
            kind, which = name.split("_")  # cpu_request -> ("cpu", "request")
            (requests if which == "request" else limits)[kind] = value
    shm = _shm_volume(pod, container)
    if shm is not None and "shm_size" in given:
        shm["emptyDir"]["sizeLimit"] = given["shm_size"]
    for quantities in (requests, limits):
        quantities.pop(GPU_RESOURCE, None)
        if settings.gpus_per_trial:
            quantities[GPU_RESOURCE] = settings.gpus_per_trial
    flags = "/".join(RESOURCE_FLAGS[n] for n in ("cpu_request", "memory_request"))
    where = f"trial Job (--trial-template, or {flags} and the other --trial-* flags)"
    check_trial_resources(resources, None if shm is None else shm["emptyDir"].get("sizeLimit"), where)


def _shm_volume(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any] | None:
    """The emptyDir volume the container mounts at /dev/shm, or None."""
    names = [m.get("name") for m in container.get("volumeMounts") or [] if m.get("mountPath") == SHM_PATH]
    for volume in pod.get("volumes") or []:
        if volume.get("name") in names and isinstance(volume.get("emptyDir"), dict):
            return volume
    return None


def render_trial_job(settings: LauncherSettings, namespace: str | None = None) -> str:
    """The trial Job ``nasagent search --dry-run`` prints: trial 1, attempt 1, as YAML that
    ``kubectl apply --dry-run=server -f -`` accepts. Contacts no cluster and no database;
    ``namespace`` (the one the search would use) fills in a missing ``settings.namespace``."""
    if namespace and not settings.namespace:
        settings = dataclasses.replace(settings, namespace=namespace)
    job = trial_job(settings, 1, 1, job_name(settings.experiment, 1, 1, "dryrn"))
    header = (
        f"# The Job nasagent search would create for attempt 1 of a trial of experiment {settings.experiment!r}\n"
        "# (--dry-run: nothing was created; the trial id and the name's tail differ per attempt).\n"
    )
    return header + yaml.safe_dump(job, sort_keys=False)


def _trial_env(settings: LauncherSettings, attempt: int) -> list[dict[str, Any]]:
    """The environment every trial pod gets from the launcher (Secrets by reference, never values)."""
    env: list[dict[str, Any]] = [
        {"name": "NASAGENT_DB", "valueFrom": {"secretKeyRef": {"name": TRIAL_DB_SECRET, "key": "url"}}}
    ]
    if settings.s3_secret:  # named on purpose (--s3-secret): not optional
        env += [
            {"name": variable, "valueFrom": {"secretKeyRef": {"name": settings.s3_secret, "key": key}}}
            for key, variable in KUBEFLOW_S3_ENV.items()
        ]
    else:
        env += [
            {"name": variable, "valueFrom": {"secretKeyRef": {"name": S3_SECRET, "key": key, "optional": True}}}
            for key, variable in S3_ENV.items()
            if not (key == "endpoint" and settings.s3_endpoint)
        ]
    if settings.s3_endpoint:
        env.append({"name": S3_ENV["endpoint"], "value": settings.s3_endpoint})
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


# DisruptionTarget reasons (Kubernetes 1.26+) and the fault each one stands for.
_DISRUPTIONS = {
    "PreemptionByScheduler": Fault.PREEMPTED,
    "PreemptionByKubeScheduler": Fault.PREEMPTED,
    "DeletionByTaintManager": Fault.NODE_LOST,
    "DeletionByPodGC": Fault.NODE_LOST,
    "EvictionByEvictionAPI": Fault.EVICTED,
    "TerminationByKubelet": Fault.EVICTED,
}
# Pod status reasons the kubelet or the node controller set on a pod it ended.
_POD_REASONS = {"Evicted": Fault.EVICTED, "Shutdown": Fault.EVICTED, "NodeLost": Fault.NODE_LOST}


def pod_fault(pods: list[dict[str, Any]]) -> tuple[Fault, str] | None:
    """Why the newest failed pod of a Job failed, and what kind of fault that is: eviction,
    disruption, OOMKilled, a signal, an exit code with the last log line. None if no pod says."""
    for pod in _by_age(pods):
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":
            return Fault.EVICTED, f"pod evicted: {status.get('message') or 'no message'}"
        for condition in status.get("conditions") or []:
            if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
                reason = condition.get("reason")
                fault = _DISRUPTIONS.get(str(reason), Fault.EVICTED)
                return fault, f"pod disrupted ({reason}): {condition.get('message') or 'no message'}"
        limits = {
            c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
            for c in (pod.get("spec") or {}).get("containers") or []
        }
        for container in status.get("containerStatuses") or []:
            terminated = _terminated(container)
            if not terminated:
                continue
            if terminated.get("reason") == "OOMKilled":
                limit = limits.get(container.get("name"))
                return Fault.KILLED, f"OOMKilled: container {container.get('name')} ran out of memory" + (
                    f" (limit {limit})" if limit else ""
                )
            code = int(terminated.get("exitCode") or 0)
            if code != 0:
                last = _last_line(terminated.get("message"))
                # 128 + N: the process was killed by signal N (SIGKILL 137, SIGTERM 143).
                fault = Fault.KILLED if code > 128 else Fault.CRASHED
                return fault, f"exit code {code}" + (f": {last}" if last else "")
        if status.get("phase") == "Failed" and status.get("reason"):
            fault = _POD_REASONS.get(str(status["reason"]), Fault.CRASHED)
            return fault, f"pod failed ({status['reason']}): {status.get('message') or 'no message'}"
    return None


def config_error(pods: list[dict[str, Any]]) -> str | None:
    """The message of a trial container that exited with ``CONFIG_ERROR_EXIT`` (its last log line),
    or None: a configuration error, which no new attempt fixes."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = _terminated(container)
            if terminated and terminated.get("exitCode") == CONFIG_ERROR_EXIT:
                return _last_line(terminated.get("message")) or "no message"
    return None


def _terminated(container: dict[str, Any]) -> dict[str, Any] | None:
    state = container.get("state") or {}
    return state.get("terminated") or (container.get("lastState") or {}).get("terminated")


def image_pull_failure(pods: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    """(image, reason, message) of a container of the newest pod that waits because its image
    cannot be pulled (``IMAGE_PULL_ERRORS``), or None."""
    if not pods:
        return None
    pod = _by_age(pods)[0]
    images = {c.get("name"): c.get("image") for c in ((pod.get("spec") or {}).get("containers") or [])}
    status = pod.get("status") or {}
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_ERRORS:
            image = images.get(container.get("name")) or container.get("image") or "?"
            return str(image), str(waiting["reason"]), _last_line(waiting.get("message")) or "no message"
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
    set; ``owner`` comes from ``agent_owner``, ``agent_pod`` (the agent's own pod, whose
    ``DisruptionTarget`` condition decides what ``interrupt`` does) from ``agent_pod``. Takes over
    the Jobs of the trials an earlier agent left in flight (``resume``); deletes its own on
    ``close``."""

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
        agent_pod: tuple[str, str] | None = None,
    ) -> None:
        if not settings.namespace:
            raise ValueError("KubernetesRunner needs settings.namespace")
        super().__init__(store, settings, num_classes, clock)
        self.api = api
        self.namespace = settings.namespace
        self.owner = owner
        self.agent_pod = agent_pod
        self.sleep = sleep
        self.selector = ",".join(f"{k}={v}" for k, v in trial_labels(settings.experiment).items())
        self._resource_version: str | None = None
        self._undeleted: set[str] = set()  # Jobs to delete that the API refused to delete so far
        self._found = self._list_jobs_at_start()

    # -- starting, taking over and stopping --------------------------------------------------------
    def _list_jobs_at_start(self) -> list[dict[str, Any]]:
        """The experiment's Jobs, listed with a few retries (an API server restarting is no reason
        to fail a search's start); ClusterError if the API refuses or stays away."""
        for delay in (1.0, 2.0, 4.0, 8.0, None):
            try:
                return self.api.list_jobs(self.namespace, self.selector)[0]
            except KubeApiError as exc:
                if exc.status in _PERMANENT or delay is None:
                    raise ClusterError(f"cannot list Jobs in namespace {self.namespace}: {exc}") from None
                log.warning("cannot list Jobs yet (%s); trying again in %.0fs", exc, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _leftovers(self) -> list[Leftover]:
        leftovers = []
        for job in self._found:
            labels = (job.get("metadata") or {}).get("labels") or {}
            trial, attempt = labels.get("nasagent.io/trial", ""), labels.get("nasagent.io/attempt", "")
            if trial.isdigit() and attempt.isdigit():
                ended = _finished(job)
                created = str(job["metadata"].get("creationTimestamp") or "")
                name = job["metadata"]["name"]
                leftovers.append(
                    Leftover(int(trial), int(attempt), name, ended is not None, ended == "Complete", created)
                )
        self._found = []
        return leftovers

    def _start(self, spec: TrialSpec, number: int) -> str:
        # A new name for every Job, also for a trial the agent requeued (its attempts count from 1
        # again): an event of an earlier Job of the same trial can never be taken for this one's.
        name = job_name(self.settings.experiment, spec.trial_id, number, secrets.token_hex(3)[:5])
        try:
            self.api.create_job(self.namespace, trial_job(self.settings, spec.trial_id, number, name, self.owner))
        except KubeApiError as exc:
            if "exceeded quota" in str(exc):  # a ResourceQuota: room comes back as other Jobs go
                raise AttemptError(str(exc), Fault.ADMISSION) from None
            if exc.status in _PERMANENT:
                raise ClusterError(f"cannot create trial Jobs in namespace {self.namespace}: {exc}") from None
            raise AttemptError(str(exc), Fault.API) from None
        return name

    def interrupt(self) -> int:
        """SIGTERM or SIGINT: leave the Jobs in flight for the agent that replaces this one when
        this agent's pod is being disrupted (drained, preempted, evicted: its ``DisruptionTarget``
        condition); otherwise (KFP's Terminate, Ctrl-C, ``kubectl delete pod``) delete them."""
        if self._active and self._agent_disrupted():
            return self._leave_running()
        self.close()
        return 0

    def _agent_disrupted(self) -> bool:
        if self.agent_pod is None:
            return False
        namespace, name = self.agent_pod
        try:
            pod = self.api.read_pod(namespace, name)
        except KubeApiError as exc:
            log.warning("cannot read the agent pod %s (deleting its trial Jobs): %s", name, exc)
            return False
        conditions = (pod.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions)

    def _stop(self, attempt: Attempt) -> None:
        self._delete(attempt.name)

    def _delete(self, name: str) -> None:
        """Delete a Job; one the API would not delete now is deleted again at the next ``wait`` (a
        pending Job left behind would train its trial a second time once it got a node)."""
        try:
            self.api.delete_job(self.namespace, name)
            self._undeleted.discard(name)
        except KubeApiError as exc:
            log.warning("could not delete Job %s (will try again): %s", name, exc)
            self._undeleted.add(name)

    def close(self) -> None:
        super().close()
        for name in list(self._undeleted):
            self._delete(name)

    # -- watching ------------------------------------------------------------------------------------
    def wait(self, timeout: float) -> list[TrialOutcome]:
        deadline = self.clock() + timeout
        for name in list(self._undeleted):
            self._delete(name)
        while True:
            next_start = self._start_due()
            self._check_pending()
            if self._done or not (self._active or self._delayed):
                return self._take_done()
            remaining = min(deadline, next_start or deadline) - self.clock()
            if self.clock() >= deadline:
                return []
            if not self._active:  # only attempts waiting for their backoff: nothing to watch
                self.sleep(max(0.0, remaining))
                continue
            self._watch(max(remaining, 0.001))

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
        # Only the attempts listed for: handling the list starts new attempts, which it cannot show.
        listed_for = set(self._active)
        seen = {job["metadata"]["name"] for job in jobs}
        for job in jobs:
            attempt = self._active.get(job["metadata"]["name"])
            if attempt is not None and attempt.name in listed_for:
                self._on_job(attempt, job)
        for name in [n for n in listed_for - seen if n in self._active]:
            # stop: should it exist after all, it must not train the trial beside the next attempt.
            reason = "the Job disappeared before the trial finished"
            self._failed(self._active[name], reason, fault=Fault.DELETED, stop=True)
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
            self._failed(attempt, "the Job was deleted before the trial finished", fault=Fault.DELETED)

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
                fault, reason = self._failure(attempt, condition)
                self._failed(attempt, reason, fault=fault)
                return True
        if attempt.running_since is None and (status.get("ready") or status.get("succeeded") or status.get("failed")):
            attempt.running_since = self.clock()
        elif attempt.running_since is not None and status.get("active") and not status.get("ready"):
            # Its pod was disrupted and replaced (podFailurePolicy Ignore): the new one waits for a
            # node again, under --pending-timeout again.
            attempt.running_since, attempt.started = None, self.clock()
        return False

    def _failure(self, attempt: Attempt, condition: dict[str, Any]) -> tuple[Fault, str]:
        """The fault and reason of a failed Job; InfrastructureError (the search stops) if its
        trial exited with a configuration error, which every trial of the experiment would hit."""
        if condition.get("reason") == "DeadlineExceeded":
            return Fault.TIMEOUT, (
                f"timed out: the Job ran longer than --trial-timeout {self.settings.trial_timeout}s (DeadlineExceeded)"
            )
        try:
            pods = self.api.list_pods(self.namespace, f"job-name={attempt.name}")
        except KubeApiError as exc:
            log.warning("cannot list the pods of Job %s: %s", attempt.name, exc)
            pods = []
        message = config_error(pods)
        if message is None and condition.get("reason") == "PodFailurePolicy":
            message = str(condition.get("message") or "no message")  # the pods are gone; FailJob only matches it
        if message is not None:
            raise InfrastructureError(
                f"trial {attempt.spec.trial_id} (Job {attempt.name}) exited with a configuration error "
                f"(exit code {CONFIG_ERROR_EXIT}): {message}"
            )
        found = pod_fault(pods)
        if found is not None:
            return found
        return Fault.CRASHED, f"Job failed ({condition.get('reason')}): {condition.get('message') or 'no message'}"

    def _check_pending(self) -> None:
        """Look at the pods of attempts not running yet (every ``POD_POLL_SECONDS``): delete and
        retry an attempt whose pod could not pull its image for ``image_pull_timeout`` (at once
        for an invalid image name), or that has not started within ``pending_timeout``."""
        now = self.clock()
        for attempt in list(self._active.values()):
            if attempt.running_since is not None:
                continue
            overdue = now - attempt.started >= self.settings.pending_timeout
            if not overdue and now < attempt.next_poll:
                continue
            attempt.next_poll = now + POD_POLL_SECONDS
            try:
                pods = self.api.list_pods(self.namespace, f"job-name={attempt.name}")
            except KubeApiError as exc:
                log.warning("cannot list the pods of Job %s: %s", attempt.name, exc)
                continue
            # The newest pod only: a disrupted one (Failed) may lie beside its pending replacement.
            if pods and (_by_age(pods)[0].get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
                attempt.running_since = now
                continue
            if self._image_pull_failed(attempt, pods, now):
                continue
            if overdue:
                reason = (
                    f"pending for more than --pending-timeout {self.settings.pending_timeout}s: {pending_detail(pods)}"
                )
                self._failed(attempt, reason, fault=Fault.UNSCHEDULABLE, stop=True)

    def _image_pull_failed(self, attempt: Attempt, pods: list[dict[str, Any]], now: float) -> bool:
        """Fail ``attempt`` if its pod has been unable to pull its image for too long; True if so."""
        failure = image_pull_failure(pods)
        if failure is None:
            attempt.image_pull_failing_since = None  # a transient registry error that went away
            return False
        if attempt.image_pull_failing_since is None:
            attempt.image_pull_failing_since = now
        image, reason, message = failure
        waited = now - attempt.image_pull_failing_since
        if reason == "InvalidImageName":
            self._failed(attempt, f"cannot pull image {image}: {reason}: {message}", fault=Fault.IMAGE_PULL, stop=True)
        elif waited >= self.settings.image_pull_timeout:
            timeout = self.settings.image_pull_timeout
            self._failed(
                attempt,
                f"cannot pull image {image}: {reason} for {waited:.0f}s (--image-pull-timeout {timeout}s): {message}",
                fault=Fault.IMAGE_PULL,
                stop=True,
            )
        else:
            return False
        return True
