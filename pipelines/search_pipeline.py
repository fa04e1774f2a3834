"""The nasagent search pipeline: prepare -> search agent -> finetune the top-k in parallel -> ensemble.

``make pipelines`` compiles it to ``pipelines/search_pipeline.yaml`` (committed; a test fails
when that file no longer matches this code), which ``kfp run create -f`` submits. ``make
pipeline-local`` runs that compiled file end to end with ``kfp.local`` on this machine
(``run_local``): the same components, with trials as worker processes of the agent step, the
embedded PostgreSQL and file artifacts.

Steps (pods), in order:

1. ``prepare`` (trainer image, CPU): split the dataset once into the artifact store.
2. ``search-agent`` (agent image, CPU, long-lived): ``nasagent search`` with the Kubernetes
   launcher: ``parallelism`` trial pods at a time, ``gpus_per_trial`` GPUs each, on the nodes
   ``gpu_node_selector``/``gpu_tolerations`` select. Retried up to 3 times: a retry resumes the
   search from PostgreSQL.
3. ``finetune`` (trainer image, GPU), one pod per rank 1..``finetune_top``, in parallel
   (``dsl.ParallelFor`` inside ``dsl.If(finetune_top > 0)``).
4. ``ensemble`` (agent image, CPU): the top ``ensemble_top`` finetuned models on the test split.

Every step carries the labels ``app.kubernetes.io/part-of=nasagent`` and ``nasagent.io/role``
(``agent``; ``trial`` for finetuning), which the NetworkPolicies of ``manifests/`` require to
reach PostgreSQL and MinIO, gets ``NASAGENT_DB`` from ``db_secret`` and the S3 settings from
``s3_secret`` (``kfp.kubernetes.use_secret_as_env``), is never cached (a cached search would
skip the search) and is annotated ``safe-to-evict: "false"`` so that cluster-autoscaler
scale-down never kills it mid-work. GPU, image and scheduling settings are pipeline
parameters, which needs a KFP backend of 2.4 or newer.

No ``from __future__ import annotations`` here: KFP reads the pipeline's parameter annotations
when the decorator runs and cannot resolve them from strings.
"""

import argparse
import ast
import json
import sys
import warnings
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

PACKAGE = Path(__file__).with_name("search_pipeline.yaml")
GPU_RESOURCE = "nvidia.com/gpu"
S3_KEYS = {
    "endpoint": "NASAGENT_S3_ENDPOINT",
    "access_key": "NASAGENT_S3_ACCESS_KEY",
    "secret_key": "NASAGENT_S3_SECRET_KEY",
    "bucket": "NASAGENT_S3_BUCKET",
}
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

# What `make pipeline-local` runs: digits, the embedded PostgreSQL, file artifacts, 2 cores.
LOCAL_ARGUMENTS: dict[str, Any] = {
    "dataset": "digits",
    "space": "metaqnn-small",
    "trials": 20,
    "epochs": 6,
    "parallelism": 2,
    "launcher": "local",
    "keep_top": 5,
    "finetune_top": 5,
    "finetune_epochs": 15,
    "ensemble_top": 5,
}


def _common(
    task: dsl.PipelineTask, role: str, db_secret: Any, s3_secret: Any, database: bool = True
) -> dsl.PipelineTask:
    """Labels, Secrets, no caching and no autoscaler eviction: what every nasagent step needs."""
    k8s.add_pod_label(task, "app.kubernetes.io/part-of", "nasagent")
    k8s.add_pod_label(task, "nasagent.io/role", role)
    k8s.add_pod_annotation(task, "cluster-autoscaler.kubernetes.io/safe-to-evict", "false")
    if database:
        k8s.use_secret_as_env(task, secret_name=db_secret, secret_key_to_env={"url": "NASAGENT_DB"})
    # Optional: a store given as file:// or a bucket name with its endpoint elsewhere needs none of it.
    k8s.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=dict(S3_KEYS), optional=True)
    task.set_caching_options(False)
    return task


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
    gpus_per_trial: int = 1,
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_tolerations: list = GPU_TOLERATIONS,
    pending_timeout: int = 900,
    launcher: str = "kubernetes",
    agent_image: str = AGENT_IMAGE,
    trainer_image: str = TRAINER_IMAGE,
    db_secret: str = "nasagent-db",
    s3_secret: str = "nasagent-s3",
    bucket: str = "",
    keep_top: int = 10,
    finetune_top: int = 10,
    finetune_epochs: int = 0,
    finetune_schedule: str = "",
    ensemble_top: int = 5,
) -> NamedTuple("SearchPipelineOutputs", [("experiment", str), ("leaderboard", Markdown), ("search_metrics", Metrics)]):
    """The pipeline; every argument is a run parameter (``kfp run create ... key=value``).

    Args:
        experiment: nasagent experiment name; "" makes one from the run's name and id. Submitting again with the same name resumes it.
        dataset: digits | cifar10 | svhn | mnist | fashion_mnist | npz:s3://BUCKET/KEY.npz.
        val_size: Validation split (count or fraction); 0 for min(5000, 20% of the training data).
        space: Search-space preset: metaqnn-cifar, metaqnn-mnist, metaqnn or metaqnn-small.
        strategy: qlearning (MetaQNN) or random (baseline).
        trials: Unique architectures to train; 0 runs the whole schedule (2,700 for paper).
        schedule: paper (Table 2, scaled to trials) or EPS:COUNT,...
        epochs: Training epochs per trial (20 in the paper).
        seed: Seed of the split, the agent and every trial.
        parallelism: Trial pods at once.
        gpus_per_trial: GPUs per trial pod and per finetune pod (0: CPU).
        gpu_node_selector: Node labels of the GPU pool ({} for none).
        gpu_tolerations: Tolerations of the GPU pool's taint ([] for none).
        pending_timeout: Seconds a trial pod may wait for a GPU node (autoscaler scale-up) before it is retried.
        launcher: kubernetes (Jobs), kfp (a run per trial) or local (worker processes of the agent step).
        agent_image: Image of the CPU steps (images/agent).
        trainer_image: Image of the trials, prepare and finetune (images/trainer).
        db_secret: Secret with the PostgreSQL URL (key url).
        s3_secret: Secret with endpoint, access_key, secret_key and bucket.
        bucket: Artifact store: "" for the Secret's bucket, a bucket name, or s3://BUCKET/PREFIX (file:///DIR locally).
        keep_top: Checkpoints kept during the search (the current top K).
        finetune_top: Architectures finetuned (10 in the paper); 0 skips finetuning and the ensemble.
        finetune_epochs: Finetuning epochs; 0 derives them from the dataset size.
        finetune_schedule: paper-cifar | paper-svhn | LR:EPOCHS,...; "" for the paper-cifar shape.
        ensemble_top: Models in the ensemble (5 in the paper).
    """
    prepared = prepare(dataset=dataset, val_size=val_size, seed=seed, bucket=bucket)
    prepared.set_display_name("prepare dataset").set_container_image(trainer_image).set_retry(2, backoff_duration="30s")
    prepared.set_cpu_request("1").set_memory_request("4Gi").set_memory_limit("16Gi")
    _common(prepared, "agent", db_secret, s3_secret, database=False)

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
        launcher=launcher,
        trial_image=trainer_image,
        gpus_per_trial=gpus_per_trial,
        node_selector=gpu_node_selector,
        tolerations=gpu_tolerations,
        pending_timeout=pending_timeout,
        bucket=bucket,
        keep_top=keep_top,
        finetune_top=finetune_top,
        db_secret=db_secret,
        s3_secret=s3_secret,
    )
    search.set_display_name("search agent").set_container_image(agent_image).set_retry(3, backoff_duration="60s")
    search.set_cpu_request("1").set_memory_request("4Gi").set_memory_limit("16Gi")
    _common(search, "agent", db_secret, s3_secret)
    # The launcher names the agent's pod as its trial Jobs' owner: deleting the run deletes them.
    k8s.use_field_path_as_env(search, "POD_NAME", "metadata.name")
    k8s.use_field_path_as_env(search, "POD_UID", "metadata.uid")
    k8s.use_field_path_as_env(search, "POD_NAMESPACE", "metadata.namespace")

    with dsl.If(finetune_top > 0, name="finetune-and-ensemble"):
        with dsl.ParallelFor(search.outputs["ranks"], name="top-k") as rank:
            tuned = finetune(
                experiment=search.outputs["experiment"],
                rank=rank,
                bucket=bucket,
                epochs=finetune_epochs,
                schedule=finetune_schedule,
                gpus=gpus_per_trial,
            )
            tuned.set_display_name("finetune").set_container_image(trainer_image).set_retry(2, backoff_duration="60s")
            tuned.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus_per_trial)
            tuned.set_cpu_request("2").set_memory_request("8Gi").set_memory_limit("24Gi")
            k8s.add_node_selector_json(tuned, gpu_node_selector)
            k8s.add_toleration_json(tuned, gpu_tolerations)
            _common(tuned, "trial", db_secret, s3_secret)
        scored = ensemble(experiment=search.outputs["experiment"], top=ensemble_top, bucket=bucket).after(tuned)
        scored.set_display_name("ensemble").set_container_image(agent_image).set_retry(1)
        scored.set_cpu_request("1").set_memory_request("4Gi").set_memory_limit("16Gi")
        _common(scored, "agent", db_secret, s3_secret)

    outputs = NamedTuple(
        "SearchPipelineOutputs", [("experiment", str), ("leaderboard", Markdown), ("search_metrics", Metrics)]
    )
    return outputs(search.outputs["experiment"], search.outputs["leaderboard"], search.outputs["metrics"])


def compile_pipeline(path: Path = PACKAGE) -> Path:
    """Compile ``search_pipeline`` to the YAML package at ``path``; return it.

    The compiler prints dictionary defaults in the file's header comment in protobuf map order,
    which changes from run to run; their keys are sorted here so the same code always gives the
    same file (the committed one is compared byte for byte by the tests).
    """
    compiler.Compiler().compile(search_pipeline, str(path))
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
    (Secrets, labels, node selectors) are ignored, and GPU limits with a warning. Returns the
    pipeline's outputs; raises RuntimeError if a step fails. Configures ``kfp.local`` (its
    settings are process-wide).
    """
    from kfp import components, local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    pipeline = components.load_component_from_file(str(package))
    with warnings.catch_warnings():
        # Every step would warn that its image is not a Python image: here it runs in this Python.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        task = pipeline(**arguments)
    return dict(task.outputs)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.search_pipeline compile [--out PATH]`` or ``local [--root DIR] [KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.search_pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    compile_cmd = sub.add_parser("compile", help="write the compiled pipeline YAML")
    compile_cmd.add_argument("--out", type=Path, default=PACKAGE)
    local_cmd = sub.add_parser("local", help="run the compiled pipeline with kfp.local (digits, local launcher)")
    local_cmd.add_argument("--root", type=Path, required=True, help="kfp.local pipeline root (step outputs)")
    local_cmd.add_argument("--bucket", required=True, help="artifact store URL, e.g. file:///abs/dir")
    local_cmd.add_argument(
        "arguments", nargs="*", metavar="KEY=VALUE", help="pipeline arguments overriding LOCAL_ARGUMENTS"
    )
    args = parser.parse_args(argv)
    if args.command == "compile":
        print(compile_pipeline(args.out))
        return 0
    arguments = {**LOCAL_ARGUMENTS, "bucket": args.bucket}
    for pair in args.arguments:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"expected KEY=VALUE, got {pair!r}")
        arguments[key] = _parameter_value(value)
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
