"""The ``finetune`` component: one of the top-k architectures, retrained with §5's long schedule.

Runs ``nasagent.results.finetune.finetune_experiment`` for one search rank (the pipeline fans out over
the ranks with ``dsl.ParallelFor``, one GPU pod each): trains from scratch with the long
step schedule (default: the paper's CIFAR-10 shape scaled to the dataset size; ``schedule`` and
``epochs`` change it), tests on the held-out test split and exports the model to
``<experiment>/finetuned/rank-<r>/`` of the artifact store, where ``nasagent models pull`` finds
it. The model directory is also this step's ``model`` artifact, and its accuracies are metrics.
"""

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def finetune(
    experiment: str,
    rank: int,
    bucket: str,
    s3_endpoint: str,
    epochs: int,
    schedule: str,
    gpus: int,
    metrics: Output[Metrics],
    model: Output[Model],
) -> float:
    """Finetune the architecture of search rank ``rank``; returns its test accuracy (0 if training failed).

    Args:
        experiment: The searched experiment.
        rank: Search rank of the architecture (1 = best).
        bucket: Artifact store: "" for s3://mlpipeline/private/<namespace>/nasagent, a bucket name, or a URL.
        s3_endpoint: S3 endpoint of the artifact store ("" keeps $NASAGENT_S3_ENDPOINT).
        epochs: Total epochs, rescaling the schedule; 0 for the default (from the dataset size).
        schedule: paper-cifar | paper-svhn | LR:EPOCHS,...; "" for the paper-cifar shape.
        gpus: GPUs of this step's pod; 0 trains on the CPU.
        metrics: test_accuracy, val_accuracy, search_accuracy, params, epochs_run, train_seconds, failed.
        model: The model directory: model.json, weights.pt, model.ts (load with nasagent.load_model).
    """
    from pathlib import Path

    from nasagent import kubeflow
    from nasagent.persistence.artifacts import open_artifacts
    from nasagent.persistence.postgres import connect
    from nasagent.results.finetune import finetune_experiment

    kubeflow.use_s3_endpoint(s3_endpoint)
    store = open_artifacts(kubeflow.artifacts_url(bucket))
    with connect(None) as db:
        report = finetune_experiment(
            db,
            experiment,
            store,
            only_rank=rank,
            schedule=schedule or None,
            epochs=epochs or None,
            device="auto" if gpus else "cpu",
            on_model=lambda row: print(kubeflow.finetune_line(row), flush=True),
        )
    row = report["models"][0]
    kubeflow.log_finetune_metrics(row, metrics.log_metric)
    kubeflow.export_finetuned(store, experiment, row, Path(model.path))
    model.metadata.update(
        {"rank": rank, "architecture": row["arch"], "status": row["status"], "location": row["location"] or ""}
    )
    return float(row["test_accuracy"] or 0.0)
