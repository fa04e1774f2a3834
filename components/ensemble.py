"""The ``ensemble`` component: Table 3's ensemble of the top finetuned models on the test split.

Runs ``nasagent.results.ensemble.ensemble_experiment``: averages the softmax outputs of the top
``top`` finetuned models (by validation accuracy; the search's checkpoints if nothing was
finetuned) and scores each member and the ensemble on the test split, which none of them saw.
The result is a Markdown table, the report JSON (also in the artifact store,
``<experiment>/reports/ensemble.json``) and metrics.
"""

from kfp import dsl
from kfp.dsl import Artifact, Markdown, Metrics, Output

from components import AGENT_IMAGE


@dsl.component(base_image=AGENT_IMAGE, install_kfp_package=False)
def ensemble(
    experiment: str,
    top: int,
    bucket: str,
    s3_endpoint: str,
    metrics: Output[Metrics],
    table: Output[Markdown],
    report: Output[Artifact],
) -> float:
    """Evaluate the ensemble of the top ``top`` models; returns its test accuracy.

    Args:
        experiment: The searched (and finetuned) experiment.
        top: Ensemble size (5 in the paper).
        bucket: Artifact store: "" for s3://mlpipeline/private/<namespace>/nasagent, a bucket name, or a URL.
        s3_endpoint: S3 endpoint of the artifact store ("" keeps $NASAGENT_S3_ENDPOINT).
        metrics: ensemble_test_accuracy, best_single_test_accuracy, members.
        table: Members and ensemble as a Markdown table.
        report: The full report (JSON).
    """
    from pathlib import Path

    from nasagent import kubeflow
    from nasagent.persistence.artifacts import open_artifacts
    from nasagent.persistence.postgres import connect
    from nasagent.results.ensemble import ensemble_experiment

    kubeflow.use_s3_endpoint(s3_endpoint)
    store = open_artifacts(kubeflow.artifacts_url(bucket))
    with connect(None) as db:
        result = ensemble_experiment(db, experiment, store, top=top)
    print(kubeflow.ensemble_markdown(result), flush=True)
    metrics.log_metric("ensemble_test_accuracy", float(result["ensemble_test_accuracy"]))
    metrics.log_metric("best_single_test_accuracy", float(result["best_single_test_accuracy"]))
    metrics.log_metric("members", float(len(result["members"])))
    Path(table.path).parent.mkdir(parents=True, exist_ok=True)
    Path(table.path).write_text(kubeflow.ensemble_markdown(result), encoding="utf-8")
    kubeflow.write_json(Path(report.path), result)
    return float(result["ensemble_test_accuracy"])
