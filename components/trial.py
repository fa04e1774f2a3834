"""The ``trial`` component: train one architecture on one GPU and record it; usable on its own.

Runs ``nasagent trial``. Two modes:

* standalone (``experiment`` empty): trains ``arch`` on ``dataset`` for ``epochs`` exactly as a
  search with those settings would, with no database;
* a search's trial (``experiment`` and ``trial_id``): trains the trial's architecture with the
  experiment's stored settings and writes its outcome into the database (``NASAGENT_DB``),
  where the agent's launcher picks it up.

Either way the outcome JSON is the ``outcome`` artifact and its numbers are KFP metrics. Give
the task a GPU with ``task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)``.
"""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from components import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def trial(
    metrics: Output[Metrics],
    outcome: Output[Artifact],
    arch: str = "",
    dataset: str = "digits",
    space: str = "metaqnn-small",
    epochs: int = 20,
    seed: int = 0,
    experiment: str = "",
    trial_id: int = 0,
) -> float:
    """Train one architecture; returns its validation accuracy (the search's reward).

    Args:
        metrics: accuracy, failed (0/1), params, train_seconds, epochs_run.
        outcome: The outcome JSON (status, accuracy, failure, per-epoch history).
        arch: Standalone: the architecture, e.g. "[C(32,3,1), P(2,2), SM(10)]".
        dataset: Standalone: digits | prepared:URL | npz:PATH | mnist | ... .
        space: Standalone: the space whose activation and dropout to build with.
        epochs: Standalone: training epochs.
        seed: Standalone: experiment seed (the trial seed derives from it and the architecture).
        experiment: A search's trial: the experiment (leave arch and the standalone settings at their defaults).
        trial_id: A search's trial: its id.
    """
    import json
    from pathlib import Path

    from nasagent import kubeflow

    argv = ["trial", "--out", outcome.path]
    if experiment:
        argv += ["--experiment", experiment, "--trial-id", str(trial_id)]
    else:
        argv += ["--arch", arch, "--dataset", dataset, "--space", space, "--epochs", str(epochs), "--seed", str(seed)]
    Path(outcome.path).parent.mkdir(parents=True, exist_ok=True)
    kubeflow.run_cli(argv)
    result = json.loads(Path(outcome.path).read_text(encoding="utf-8"))
    kubeflow.log_trial_metrics(result, metrics.log_metric)
    outcome.metadata.update({"status": result["status"], "failure": result.get("failure") or ""})
    return float(result["accuracy"])
