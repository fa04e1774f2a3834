"""Choosing where trials run: ``--launcher local|kubernetes|kfp`` and its flags, turned into a runner.

The cluster launchers are imported only when chosen: the Kubernetes and KFP clients are heavy.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from nasagent.errors import ConfigError
from nasagent.execution.cluster import (
    LAUNCHERS,
    RESOURCE_FLAGS,
    ClusterRunner,
    LauncherSettings,
    parse_node_selector,
    parse_toleration,
)
from nasagent.execution.kubernetes import load_job_template, trial_job
from nasagent.persistence.postgres import Store

# Field names whose flag is not just --FIELD-NAME.
_FLAG_NAMES = {
    "image": "--trial-image",
    "tolerations": "--toleration",
    "job_template": "--trial-template",
    **RESOURCE_FLAGS,
}
# What only the kubernetes launcher applies (KFP builds its own pods and hides their state).
_KUBERNETES_ONLY = ("job_template", "image_pull_timeout", "s3_secret", "s3_endpoint", *RESOURCE_FLAGS)


def _flag(field_name: str) -> str:
    return _FLAG_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def launcher_settings(
    launcher: str, experiment: str, parallelism: int | None, flags: dict[str, Any]
) -> LauncherSettings | None:
    """The ``LauncherSettings`` of ``nasagent search --launcher kfp|kubernetes`` from its flags
    (``flags`` maps LauncherSettings field names to flag values, None when not given;
    ``node_selector`` and ``tolerations`` are the raw repeated flags). None for ``local``, where a
    cluster-only flag is a ConfigError. The image defaults to ``$NASAGENT_TRIAL_IMAGE``, the
    kubernetes launcher's Job template (``job_template``: a path) to ``$NASAGENT_TRIAL_TEMPLATE``.

    For ``kubernetes`` a trial Job is built once here, so that a template and ``--trial-*``
    resources that cannot work together (a request above its limit) fail before anything starts.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    given = {key: value for key, value in flags.items() if value not in (None, [], ())}
    if launcher == "local":
        if given:
            names = ", ".join(_flag(key) for key in given)
            raise ConfigError(f"{names}: only for --launcher kubernetes or kfp")
        return None
    if launcher != "kubernetes":
        names = ", ".join(_flag(key) for key in given if key in _KUBERNETES_ONLY)
        if names:
            raise ConfigError(f"{names}: only for --launcher kubernetes (KFP builds its own pods)")
    given["image"] = given.get("image") or os.environ.get("NASAGENT_TRIAL_IMAGE", "")
    template = given.pop("job_template", None)
    template = template or (os.environ.get("NASAGENT_TRIAL_TEMPLATE") if launcher == "kubernetes" else None)
    if template:
        given["job_template"] = load_job_template(template)
    if given.get("s3_secret") and not given.get("s3_endpoint"):
        # The agent's own store is the trials' store.
        given["s3_endpoint"] = os.environ.get("NASAGENT_S3_ENDPOINT") or None
    given["node_selector"] = parse_node_selector(list(given.get("node_selector", [])))
    given["tolerations"] = tuple(parse_toleration(text) for text in given.get("tolerations", []))
    settings = LauncherSettings(experiment=experiment, parallelism=parallelism or 1, **given)
    if launcher == "kubernetes":
        trial_job(settings, 1, 1, "nas-check-1-1-check")
    return settings


def open_cluster_runner(kind: str, store: Store, settings: LauncherSettings, num_classes: int) -> ClusterRunner:
    """The launcher ``kind`` ('kubernetes' or 'kfp') connected to its cluster (ClusterError if it
    cannot be reached). Called by ``nasagent.search.run_search``."""
    if kind == "kubernetes":
        from nasagent.execution.kubernetes import (
            KubernetesRunner,
            agent_owner,
            agent_pod,
            connect_kubernetes,
            default_namespace,
        )

        api = connect_kubernetes()
        namespace = settings.namespace or default_namespace()
        settings = dataclasses.replace(settings, namespace=namespace)
        owner = agent_owner(api, namespace)
        return KubernetesRunner(api, store, settings, num_classes, owner=owner, agent_pod=agent_pod())
    if kind == "kfp":
        from nasagent.execution.kfp import KfpRunner, connect_kfp

        return KfpRunner(connect_kfp(settings.kfp_host, settings.namespace), store, settings, num_classes)
    raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {kind!r}")
