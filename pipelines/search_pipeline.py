"""The nasagent search pipeline: prepare -> search agent -> finetune the top-k in parallel -> ensemble.

``make pipelines`` compiles it once per supported Kubeflow Pipelines backend (``TARGETS``), each
to its own committed file, because the backends parse the Kubernetes settings with different
protos (``docs/kubeflow.md``, "Support matrix"):

=====================================  ===============  ======================================
file                                   KFP backend      Kubeflow release
=====================================  ===============  ======================================
``search_pipeline.yaml``               2.16             26.03
``search_pipeline.kfp-2.15.yaml``      2.15             1.11
``search_pipeline.kfp-2.5.yaml``       2.5              1.10 (1.10.1 and later patch releases)
=====================================  ===============  ======================================

``tests/test_pipeline.py`` fails when a committed file no longer matches this code, and
``tests/test_support_matrix.py`` parses each file strictly with the protos of its backend.
``python -m pipelines.search_pipeline submit`` starts a run of one of them under a service
account (``nasagent-agent``), which the kfp CLI cannot do (``submit``). ``make pipeline-local``
runs ``search_pipeline.yaml`` end to end with ``kfp.local`` on this machine (``run_local``): the
same components, with trials as worker processes of the agent step, the embedded PostgreSQL and
file artifacts.

Steps (pods), in order:

1. ``prepare`` (trainer image, CPU): split the dataset once into the artifact store.
2. ``search-agent`` (agent image, CPU, long-lived): prints the experiment's address on the live
   dashboard (``dashboard_url``), then ``nasagent search`` with the Kubernetes
   launcher, the run's early stopping (``early_stop*``) and deployment limits and objective
   (``max_*``, ``objective*``; "" and 0 are off): ``parallelism`` trial pods at a time,
   ``gpus_per_trial`` GPUs and the ``trial_*`` CPU, memory and ``/dev/shm`` sizes each, built on
   the admin's Job template (the ConfigMap ``trial_template``, mounted when it exists), on the
   nodes ``gpu_node_selector`` / ``gpu_tolerations`` select. Retried up to 3 times: a retry
   resumes the search from PostgreSQL.
3. ``finetune`` (trainer image, GPU), one pod per rank 1..``finetune_top``, in parallel
   (``dsl.ParallelFor`` inside ``dsl.If(finetune_top > 0)``), sized like a default trial pod.
4. ``ensemble`` (agent image, CPU): the top ``ensemble_top`` finetuned models on the test split.

Every step carries the labels ``app.kubernetes.io/part-of=nasagent`` and ``nasagent.io/role``
(``agent``; ``trial`` for finetuning), which the NetworkPolicies of ``manifests/`` require to
reach PostgreSQL, gets ``NASAGENT_DB`` from ``db_secret`` and the object-store keys from
``s3_secret`` (by default the platform's own ``mlpipeline-minio-artifact``, keys ``accesskey`` and
``secretkey``; ``kfp.kubernetes.use_secret_as_env``), its namespace as ``POD_NAMESPACE``, CPU and
memory requests and limits, a deadline (``kfp.kubernetes.set_timeout``: the pod's
``activeDeadlineSeconds``, which also bounds a pod stuck pulling its image), is never cached (a
cached search would skip the search) and is annotated ``safe-to-evict: "false"`` so that
cluster-autoscaler scale-down never kills it mid-work. For KFP 2.16 the steps also run as the
images' non-root user (``kfp.kubernetes.set_security_context``; older backends have no such
setting). No step sets a display name: before KFP 2.14 a renamed task's outputs cannot be found
by the tasks that consume them (kubeflow/pipelines#11173, #10371).

No ``from __future__ import annotations`` here: KFP reads the pipeline's parameter annotations
when the decorator runs and cannot resolve them from strings.
"""

import argparse
import ast
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl
from kfp import kubernetes as k8s
from kfp.dsl import Markdown, Metrics

from components import AGENT_IMAGE, TRAINER_IMAGE
from components.ensemble import ensemble
from components.finetune import finetune
from components.prepare import prepare
from components.search import search_agent
from nasagent.kubeflow import TRIAL_TEMPLATE_DIR

HERE = Path(__file__).resolve().parent
GPU_RESOURCE = "nvidia.com/gpu"
# The Kubeflow object-store convention: the profile's Secret mlpipeline-minio-artifact.
S3_KEYS = {"accesskey": "NASAGENT_S3_ACCESS_KEY", "secretkey": "NASAGENT_S3_SECRET_KEY"}
PLATFORM_S3_SECRET = "mlpipeline-minio-artifact"
SEAWEEDFS_ENDPOINT = "http://seaweedfs.kubeflow.svc.cluster.local:8333"
MINIO_ENDPOINT = "http://minio-service.kubeflow.svc.cluster.local:9000"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
IMAGE_USER = 10001
"""The numeric user and group the images run as (``USER 10001:10001`` in ``images/*/Dockerfile``)."""
SHM_SIZE = "2Gi"
"""``/dev/shm`` of a finetune pod (an emptyDir's size is a constant in the platform spec)."""
HOUR = 3600
STEP_DEADLINES = {"prepare": 4 * HOUR, "search-agent": 14 * 24 * HOUR, "finetune": 48 * HOUR, "ensemble": 2 * HOUR}
"""Seconds each step's pod may live (``activeDeadlineSeconds``): the kubelet fails it after that,
also when it never started because its image cannot be pulled. The agent's is long because it
runs the whole search (and a retried agent resumes it)."""
TRIAL_RESOURCES = ("3", "4", "10Gi", "10Gi")
"""CPU request, CPU limit, memory request, memory limit of a trial pod by default: a one-GPU node
has 4 vCPUs and 16 GB (g4dn.xlarge, n1-standard-4 with a T4), less what the kubelet and the
DaemonSets keep."""
STEP_RESOURCES = {
    "prepare": ("1", "2", "4Gi", "8Gi"),
    "search-agent": ("1", "2", "4Gi", "8Gi"),
    "finetune": TRIAL_RESOURCES,
    "ensemble": ("1", "2", "4Gi", "8Gi"),
}
"""CPU request, CPU limit, memory request, memory limit of each step. Constants: kfp 2.17 does not
pass a pipeline parameter used only in a resource setting into a ParallelFor's DAG, so the
finetune pods could not be sized by the ``trial_*`` parameters (their driver would not find them;
``gpus_per_trial`` reaches the loop because ``finetune`` also takes it as an input)."""


@dataclass(frozen=True)
class Target:
    """A Kubeflow Pipelines backend release the pipeline is compiled for, and what its protos allow.

    ``secret_optional``: ``SecretAsEnv`` has the field ``optional`` (backend 2.15 and later);
    ``security_context``: ``KubernetesExecutorConfig`` has ``security_context`` (2.16 and later).
    ``s3_endpoint`` is the platform's object store in that Kubeflow release.
    """

    name: str
    backend: str
    kubeflow: str
    package: Path
    s3_endpoint: str
    secret_optional: bool
    security_context: bool


TARGETS = (
    Target("kfp-2.16", "2.16.0", "26.03", HERE / "search_pipeline.yaml", SEAWEEDFS_ENDPOINT, True, True),
    Target("kfp-2.15", "2.15.0", "1.11", HERE / "search_pipeline.kfp-2.15.yaml", SEAWEEDFS_ENDPOINT, True, False),
    Target("kfp-2.5", "2.5.0", "1.10", HERE / "search_pipeline.kfp-2.5.yaml", MINIO_ENDPOINT, False, False),
)
DEFAULT_TARGET = TARGETS[0]
PACKAGE = DEFAULT_TARGET.package

# What `make pipeline-local` runs: digits, the embedded PostgreSQL, file artifacts, well within 10
# minutes on 2 cores. An epoch is at least 100 optimiser steps (TrainConfig.min_steps), about 11
# passes over digits' 1,150 training images. Finetuning trains twice (train split, then train +
# validation) with the paper's four learning rates, one epoch each.
LOCAL_ARGUMENTS: dict[str, Any] = {
    "dataset": "digits",
    "space": "metaqnn-small",
    "trials": 20,
    "epochs": 4,
    "parallelism": 2,
    "launcher": "local",
    "s3_endpoint": "",
    "keep_top": 3,
    "finetune_top": 3,
    "finetune_epochs": 4,
    "ensemble_top": 3,
}


def _step(
    task: dsl.PipelineTask,
    target: Target,
    role: str,
    db_secret: Any,
    s3_secret: Any,
    database: bool = True,
) -> dsl.PipelineTask:
    """Labels, Secrets, namespace, resources, deadline, user, no caching, no autoscaler eviction:
    what every nasagent step needs (see the module docstring)."""
    k8s.add_pod_label(task, "app.kubernetes.io/part-of", "nasagent")
    k8s.add_pod_label(task, "nasagent.io/role", role)
    k8s.add_pod_annotation(task, "cluster-autoscaler.kubernetes.io/safe-to-evict", "false")
    if database:
        k8s.use_secret_as_env(task, secret_name=db_secret, secret_key_to_env={"url": "NASAGENT_DB"})
    k8s.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=dict(S3_KEYS))
    k8s.use_field_path_as_env(task, "POD_NAMESPACE", "metadata.namespace")
    cpu_request, cpu_limit, memory_request, memory_limit = STEP_RESOURCES[task.name]
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    k8s.set_timeout(task, STEP_DEADLINES[task.name])
    if target.security_context:
        k8s.set_security_context(task, run_as_user=IMAGE_USER, run_as_group=IMAGE_USER, run_as_non_root=True)
    task.set_caching_options(False)
    _fit_to_target(task, target)
    return task


def _fit_to_target(task: dsl.PipelineTask, target: Target) -> None:
    """Drop what kfp-kubernetes 2.17 writes but ``target``'s backend cannot parse, where dropping
    it changes nothing: ``optional: false`` of a Secret (absent means required). A Secret that
    really is optional cannot be expressed there: ValueError."""
    config = task.platform_config.get("kubernetes", {})
    for secret in config.get("secretAsEnv", []):
        if not target.secret_optional and "optional" in secret:
            if secret["optional"]:
                raise ValueError(f"{target.name}: task {task.name} cannot have an optional Secret")
            del secret["optional"]


def search_pipeline_for(target: Target) -> Callable[..., Any]:
    """The pipeline function for ``target`` (its defaults and Kubernetes settings differ; its
    parameters do not)."""

    @dsl.pipeline(
        name="nasagent-search",
        description="MetaQNN architecture search: prepare the data, search with parallel GPU trial pods, "
        "finetune the top-k in parallel, evaluate the top-5 ensemble (Baker et al. 2017).",
    )
    def search_pipeline(
        experiment: str = "",
        dataset: str = "cifar10",
        val_size: float = 0.0,
        space: str = "metaqnn-cifar",
        strategy: str = "qlearning",
        trials: int = 0,
        schedule: str = "paper",
        epochs: int = 20,
        seed: int = 0,
        parallelism: int = 4,
        early_stop: str = "",
        early_stop_min_trials: int = 0,
        early_stop_start_epoch: int = 0,
        early_stop_retrain_every: int = 0,
        early_stop_delta: float = 0.0,
        early_stop_wait: float = 0.0,
        max_params: int = 0,
        max_macs: int = 0,
        max_latency_ms: float = 0.0,
        objective: str = "",
        objective_metric: str = "",
        objective_target: float = 0.0,
        objective_weight: float = 0.0,
        gpus_per_trial: int = 1,
        gpu_node_selector: dict = GPU_NODE_SELECTOR,
        gpu_tolerations: list = GPU_TOLERATIONS,
        pending_timeout: int = 900,
        trial_cpu_request: str = TRIAL_RESOURCES[0],
        trial_cpu_limit: str = TRIAL_RESOURCES[1],
        trial_memory_request: str = TRIAL_RESOURCES[2],
        trial_memory_limit: str = TRIAL_RESOURCES[3],
        trial_shm_size: str = SHM_SIZE,
        trial_template: str = "nasagent-trial-template",
        launcher: str = "kubernetes",
        agent_image: str = AGENT_IMAGE,
        trainer_image: str = TRAINER_IMAGE,
        db_secret: str = "nasagent-db",
        s3_secret: str = PLATFORM_S3_SECRET,
        s3_endpoint: str = target.s3_endpoint,
        bucket: str = "",
        dashboard_url: str = "",
        keep_top: int = 10,
        finetune_top: int = 10,
        finetune_epochs: int = 0,
        finetune_schedule: str = "",
        ensemble_top: int = 5,
    ) -> NamedTuple(
        "SearchPipelineOutputs", [("experiment", str), ("leaderboard", Markdown), ("search_metrics", Metrics)]
    ):
        """The pipeline; every argument is a run parameter (``kfp run create ... key=value``).

        Args:
            experiment: nasagent experiment name; "" makes one from the run's name and id.
                Submitting again with the same name resumes it.
            dataset: digits | cifar10 | svhn | mnist | fashion_mnist | npz:s3://BUCKET/KEY.npz.
            val_size: Validation split (count or fraction); 0 for min(5000, 20% of the training data).
            space: Search-space preset: metaqnn-cifar, metaqnn-mnist, metaqnn or metaqnn-small.
            strategy: qlearning (MetaQNN) or random (baseline).
            trials: Unique architectures to train; 0 runs the whole schedule (2,700 for paper).
            schedule: paper (Table 2, scaled to trials) or EPS:COUNT,...
            epochs: Training epochs per trial (20 in the paper).
            seed: Seed of the split, the agent and every trial.
            parallelism: Trial pods at once.
            early_stop: Early stopping of hopeless trials: none, median (Katib's median stopping rule) or
                predict (Baker et al. 2018); "" for none (docs/early-stopping.md).
            early_stop_min_trials: Fully trained trials before the rule is used; 0 for the rule's default
                (median 3, predict 100).
            early_stop_start_epoch: First epoch of a trial that is judged; 0 for the rule's default (median 4,
                predict 1).
            early_stop_retrain_every: predict: refit the predictor after this many more trained trials; 0 for 10.
            early_stop_delta: predict: stop when P(final accuracy <= best so far) >= delta; 0 for 0.99.
            early_stop_wait: Seconds a trial waits for the agent's decision after each epoch; 0 for 10.
            max_params: Never propose a network with more trainable parameters; 0 for no limit (docs/limits.md).
            max_macs: Never propose a network with more MACs per image; 0 for no limit.
            max_latency_ms: Batch-1 latency limit on the trial's device (slower networks' reward is penalised);
                0 for none.
            objective: accuracy or mnas (accuracy x (metric / target)^weight); "" for accuracy.
            objective_metric: mnas: latency, params or macs; "" for latency.
            objective_target: mnas: the metric's target; 0 for the metric's max_* limit.
            objective_weight: mnas: the exponent (0 or negative); 0 for MnasNet's -0.07.
            gpus_per_trial: GPUs per trial pod and per finetune pod (0: CPU).
            gpu_node_selector: Node labels of the GPU pool ({} for none).
            gpu_tolerations: Tolerations of the GPU pool's taint ([] for none).
            pending_timeout: Seconds a trial pod may wait for a GPU node (autoscaler scale-up) before it is retried.
            trial_cpu_request: CPU request of each trial pod (fits a 4-vCPU one-GPU node; finetune pods: 3).
            trial_cpu_limit: CPU limit of each trial pod (finetune pods: 4).
            trial_memory_request: Memory request of each trial pod (fits a 16 GB one-GPU node; finetune pods: 10Gi).
            trial_memory_limit: Memory limit of each trial pod (finetune pods: 10Gi).
            trial_shm_size: /dev/shm (memory-backed) of each trial pod; finetune pods get 2Gi.
            trial_template: ConfigMap (key job.yaml) with the admin's trial Job template;
                ignored when it does not exist.
            launcher: kubernetes (Jobs), kfp (a run per trial) or local (worker processes of the agent step).
            agent_image: Image of the CPU steps (images/agent).
            trainer_image: Image of the trials, prepare and finetune (images/trainer).
            db_secret: Secret with the PostgreSQL URL (key url).
            s3_secret: Secret with the object-store keys accesskey and secretkey (the profile's own by default).
            s3_endpoint: S3 endpoint of the artifact store (the platform's object store by default).
            bucket: Artifact store: "" for s3://mlpipeline/private/<namespace>/nasagent, a bucket name,
                or s3://BUCKET/PREFIX (file:///DIR locally).
            dashboard_url: The live dashboard, where the agent step's log first points for this experiment:
                "" for /nasagent/<namespace>/ on Kubeflow's address (manifests/overlays/kubeflow), a URL
                such as https://kubeflow.example.com/nasagent/<namespace>/, or none.
            keep_top: Checkpoints kept during the search (the current top K).
            finetune_top: Architectures finetuned (10 in the paper); 0 skips finetuning and the ensemble.
            finetune_epochs: Finetuning epochs; 0 derives them from the dataset size.
            finetune_schedule: paper-cifar | paper-svhn | LR:EPOCHS,...; "" for the paper-cifar shape.
            ensemble_top: Models in the ensemble (5 in the paper).
        """
        prepared = prepare(dataset=dataset, val_size=val_size, seed=seed, bucket=bucket, s3_endpoint=s3_endpoint)
        prepared.set_container_image(trainer_image).set_retry(2, backoff_duration="30s")
        _step(prepared, target, "agent", db_secret, s3_secret, database=False)

        search = search_agent(
            experiment=experiment,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            dataset=prepared.outputs["Output"],
            space=space,
            strategy=strategy,
            trials=trials,
            schedule=schedule,
            epochs=epochs,
            seed=seed,
            parallelism=parallelism,
            early_stop=early_stop,
            early_stop_min_trials=early_stop_min_trials,
            early_stop_start_epoch=early_stop_start_epoch,
            early_stop_retrain_every=early_stop_retrain_every,
            early_stop_delta=early_stop_delta,
            early_stop_wait=early_stop_wait,
            max_params=max_params,
            max_macs=max_macs,
            max_latency_ms=max_latency_ms,
            objective=objective,
            objective_metric=objective_metric,
            objective_target=objective_target,
            objective_weight=objective_weight,
            launcher=launcher,
            trial_image=trainer_image,
            gpus_per_trial=gpus_per_trial,
            node_selector=gpu_node_selector,
            tolerations=gpu_tolerations,
            pending_timeout=pending_timeout,
            trial_cpu_request=trial_cpu_request,
            trial_cpu_limit=trial_cpu_limit,
            trial_memory_request=trial_memory_request,
            trial_memory_limit=trial_memory_limit,
            trial_shm_size=trial_shm_size,
            bucket=bucket,
            s3_endpoint=s3_endpoint,
            keep_top=keep_top,
            finetune_top=finetune_top,
            db_secret=db_secret,
            s3_secret=s3_secret,
            dashboard_url=dashboard_url,
        )
        search.set_container_image(agent_image).set_retry(3, backoff_duration="60s")
        # The launcher names the agent's pod as its trial Jobs' owner: deleting the run deletes them.
        k8s.use_field_path_as_env(search, "POD_NAME", "metadata.name")
        k8s.use_field_path_as_env(search, "POD_UID", "metadata.uid")
        k8s.use_config_map_as_volume(
            search, config_map_name=trial_template, mount_path=TRIAL_TEMPLATE_DIR, optional=True
        )
        # The PodDefault access-ml-pipeline projects a token for the KFP API (launcher kfp) into pods with this label.
        k8s.add_pod_label(search, "access-ml-pipeline", "true")
        _step(search, target, "agent", db_secret, s3_secret)

        with dsl.If(finetune_top > 0):
            with dsl.ParallelFor(search.outputs["ranks"]) as rank:
                tuned = finetune(
                    experiment=search.outputs["experiment"],
                    rank=rank,
                    bucket=bucket,
                    s3_endpoint=s3_endpoint,
                    epochs=finetune_epochs,
                    schedule=finetune_schedule,
                    gpus=gpus_per_trial,
                )
                tuned.set_container_image(trainer_image).set_retry(2, backoff_duration="60s")
                tuned.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus_per_trial)
                k8s.add_node_selector_json(tuned, gpu_node_selector)
                k8s.add_toleration_json(tuned, gpu_tolerations)
                k8s.empty_dir_mount(
                    tuned, volume_name="shm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
                )
                _step(tuned, target, "trial", db_secret, s3_secret)
            scored = ensemble(
                experiment=search.outputs["experiment"], top=ensemble_top, bucket=bucket, s3_endpoint=s3_endpoint
            ).after(tuned)
            scored.set_container_image(agent_image).set_retry(1)
            _step(scored, target, "agent", db_secret, s3_secret)

        class SearchPipelineOutputs(NamedTuple):
            experiment: str
            leaderboard: Markdown
            search_metrics: Metrics

        return SearchPipelineOutputs(
            search.outputs["experiment"], search.outputs["leaderboard"], search.outputs["metrics"]
        )

    return search_pipeline


def compile_pipeline(path: Path | None = None, target: Target = DEFAULT_TARGET) -> Path:
    """Compile the pipeline for ``target`` to the YAML package at ``path`` (default: the target's
    committed file); return the path.

    The compiler prints dictionary defaults in the file's header comment in protobuf map order,
    which changes from run to run; their keys are sorted here so the same code always gives the
    same file (the committed ones are compared byte for byte by the tests).
    """
    path = path or target.package
    compiler.Compiler().compile(search_pipeline_for(target), str(path))
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break  # the header comment is over
        head, sep, default = line.rstrip("\n").partition(" [Default: ")
        if sep and default.endswith("]"):
            lines[i] = f"{head}{sep}{_sorted(ast.literal_eval(default[:-1]))!r}]\n"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _sorted(value: Any) -> Any:
    """``value`` with the keys of every dictionary in it sorted."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def run_local(arguments: dict[str, Any], pipeline_root: Path, package: Path = PACKAGE) -> dict[str, Any]:
    """Run the compiled ``package`` end to end with ``kfp.local``'s SubprocessRunner in this environment.

    Every component runs as a subprocess of this Python (``use_venv=False``: nasagent must be
    installed here); the database is ``NASAGENT_DB`` or the embedded server under
    ``NASAGENT_HOME``; pass ``launcher="local"`` and a ``file://`` ``bucket``. Kubernetes settings
    (Secrets, labels, node selectors, deadlines) are ignored, and GPU limits with a warning.
    Returns the pipeline's outputs; raises RuntimeError if a step fails. Configures ``kfp.local``
    (its settings are process-wide).
    """
    from kfp import components, local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    pipeline = components.load_component_from_file(str(package))
    # kfp.local runs the loop's iterations side by side, each a subprocess, next to the agent's
    # workers: with PyTorch's default of one thread per core each, they fight over the cores (two
    # finetunes on 2 cores ran 20 times slower). One thread per step unless the caller chose.
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads or "1"
    try:
        with warnings.catch_warnings():
            # Every step would warn that its image is not a Python image: here it runs in this Python.
            warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
            task = pipeline(**arguments)
    finally:
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
    return dict(task.outputs)


def submit(
    target: Target,
    arguments: dict[str, Any],
    experiment: str,
    run_name: str | None,
    service_account: str,
    host: str | None,
    namespace: str | None,
    token: str | None,
) -> str:
    """Start a run of ``target``'s committed pipeline under ``service_account``; return its run id.

    What ``kfp run create`` does, plus the run's service account, which the kfp 2.17 CLI cannot
    set (its ``run create`` has no such option) and the SDK can
    (``Client.create_run_from_pipeline_package(service_account=...)``). Every pod of the run,
    the agent's included, runs as that account: ``nasagent-agent`` holds exactly what the agent
    and KFP's own containers need (docs/kubeflow.md). ``token``: a KFP API token (``kubectl
    create token ... --audience pipelines.kubeflow.org``) when ``host`` is a port-forward.
    """
    import kfp

    with warnings.catch_warnings():  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        warnings.filterwarnings("ignore", category=FutureWarning, module="kfp.client")
        client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
    result = client.create_run_from_pipeline_package(
        str(target.package),
        arguments=arguments,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        service_account=service_account,
        enable_caching=False,
    )
    return str(result.run_id)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.search_pipeline compile [--target NAME --out PATH]``,
    ``submit --experiment NAME [...] [KEY=VALUE ...]`` or ``local --root DIR --bucket URL [KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.search_pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    compile_cmd = sub.add_parser("compile", help="write the compiled pipeline YAML of every target (or of one)")
    compile_cmd.add_argument("--target", choices=[t.name for t in TARGETS], help="only this backend's file")
    compile_cmd.add_argument("--out", type=Path, help="write that one file there (default: its committed file)")
    submit_cmd = sub.add_parser("submit", help="start a run on Kubeflow Pipelines as a service account")
    submit_cmd.add_argument("--target", choices=[t.name for t in TARGETS], default=DEFAULT_TARGET.name)
    submit_cmd.add_argument("--endpoint", help="KFP API URL (default: $KF_PIPELINES_ENDPOINT, in-cluster, kubeconfig)")
    submit_cmd.add_argument("-n", "--namespace", help="the profile namespace (multi-user Kubeflow)")
    submit_cmd.add_argument("--existing-token", help="KFP API token (audience pipelines.kubeflow.org)")
    submit_cmd.add_argument("-e", "--experiment", required=True, help="KFP experiment of the run")
    submit_cmd.add_argument("-r", "--run-name", help="the run's display name (default: the experiment's)")
    submit_cmd.add_argument("--service-account", default="nasagent-agent", help="the run's pods' service account")
    submit_cmd.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="pipeline arguments (JSON values)")
    local_cmd = sub.add_parser("local", help="run the compiled pipeline with kfp.local (digits, local launcher)")
    local_cmd.add_argument("--root", type=Path, required=True, help="kfp.local pipeline root (step outputs)")
    local_cmd.add_argument("--bucket", required=True, help="artifact store URL, e.g. file:///abs/dir")
    local_cmd.add_argument(
        "arguments", nargs="*", metavar="KEY=VALUE", help="pipeline arguments overriding LOCAL_ARGUMENTS"
    )
    args = parser.parse_args(argv)
    if args.command == "compile":
        # --out alone writes the default target's pipeline there (one file, one target).
        chosen = next(t for t in TARGETS if t.name == args.target) if args.target else None
        for target in [chosen] if chosen else ([DEFAULT_TARGET] if args.out else TARGETS):
            print(compile_pipeline(args.out, target))
        return 0
    given = {}
    for pair in args.arguments:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"expected KEY=VALUE, got {pair!r}")
        given[key] = _parameter_value(value)
    if args.command == "submit":
        target = next(t for t in TARGETS if t.name == args.target)
        try:
            run_id = submit(
                target,
                given,
                args.experiment,
                args.run_name,
                args.service_account,
                args.endpoint,
                args.namespace,
                args.existing_token,
            )
        except Exception as exc:  # kfp.Client raises anything from ValueError to urllib3 errors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"submit: error: {first}", file=sys.stderr)
            return 2
        print(f"run {run_id}: {target.package.name} as service account {args.service_account}")
        return 0
    arguments = {**LOCAL_ARGUMENTS, "bucket": args.bucket, **given}
    outputs = run_local(arguments, args.root.absolute())
    print(local_summary(outputs, arguments))
    return 0


def _parameter_value(text: str) -> Any:
    """A ``KEY=VALUE`` value read as ``kfp run create`` reads it: JSON if it parses, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def local_summary(outputs: dict[str, Any], arguments: dict[str, Any]) -> str:
    """What a local run produced and where: leaderboard, best accuracy, ensemble, models."""
    from nasagent.persistence.artifacts import experiment_key, open_artifacts

    name, bucket = outputs["experiment"], arguments["bucket"]
    lines = [
        f"experiment {name}: best search accuracy {outputs['search_metrics'].metadata.get('best_accuracy', 0):.4f}",
        f"  leaderboard  {outputs['leaderboard'].path}",
    ]
    store = open_artifacts(bucket)
    key = experiment_key(name, "reports", "ensemble.json")
    if store.exists(key):
        report = json.loads(store.get_bytes(key))
        lines.append(
            f"  ensemble     test accuracy {report['ensemble_test_accuracy']:.4f} of the top {len(report['members'])} "
            f"(best single model {report['best_single_test_accuracy']:.4f})"
        )
    lines.append(f"  models       nasagent models list --experiment {name} --artifacts {bucket}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
