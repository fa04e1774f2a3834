"""The ``search_agent`` component: the long-lived agent of a search, and what the UI shows of it.

Runs ``nasagent search`` in the step's pod: the Q-learning agent (state in PostgreSQL, so a
retried step resumes where it stopped) with a cluster launcher that starts one pod per trial
(``kubernetes``: Jobs; ``kfp``: runs) up to ``parallelism`` at a time, or worker processes of
the step (``local``, for ``kfp.local`` runs). With ``kubernetes`` the trial pods are built on
the admin's Job template when the pipeline mounted one (ConfigMap ``nasagent-trial-template``)
and get the CPU, memory and ``/dev/shm`` sizes given here. The run's early stopping
(``early_stop*``) and deployment limits and objective (``max_*``, ``objective*``) become the
search's flags when set ("" and 0 leave a flag out; a bad value is the CLI's one-line error,
before anything is created). The step's log starts with the address of
the experiment on the live dashboard (``dashboard_url``), then shows one line per finished trial,
and the artifact store holds a leaderboard refreshed as trials finish
(``<experiment>/reports/leaderboard.md``, ``.json``). At the end it writes the Markdown
leaderboard, the HTML report (``nasagent report``) and Figure 3 as KFP artifacts, logs the
search's metrics, and returns the ranks the pipeline finetunes.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from components import AGENT_IMAGE


@dsl.component(base_image=AGENT_IMAGE, install_kfp_package=False)
def search_agent(
    experiment: str,
    run_name: str,
    run_id: str,
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
    node_selector: dict,
    tolerations: list,
    pending_timeout: int,
    trial_cpu_request: str,
    trial_cpu_limit: str,
    trial_memory_request: str,
    trial_memory_limit: str,
    trial_shm_size: str,
    bucket: str,
    s3_endpoint: str,
    keep_top: int,
    finetune_top: int,
    db_secret: str,
    s3_secret: str,
    dashboard_url: str,
    early_stop: str,
    early_stop_min_trials: int,
    early_stop_start_epoch: int,
    early_stop_retrain_every: int,
    early_stop_delta: float,
    early_stop_wait: float,
    max_params: int,
    max_macs: int,
    max_latency_ms: float,
    objective: str,
    objective_metric: str,
    objective_target: float,
    objective_weight: float,
    leaderboard: Output[Markdown],
    report: Output[HTML],
    accuracy_plot: Output[HTML],
    metrics: Output[Metrics],
) -> NamedTuple("SearchOutputs", [("experiment", str), ("ranks", list[int]), ("best_accuracy", float)]):
    """Run (or resume) the search to its budget, then publish its leaderboard, report and metrics.

    Args:
        experiment: nasagent experiment name; "" makes one from run_name and run_id (a retried run resumes its search).
        run_name: The KFP run's display name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        run_id: The KFP run's id (dsl.PIPELINE_JOB_ID_PLACEHOLDER).
        dataset: Dataset spec, normally the prepare step's prepared:URL.
        space: Search space preset (metaqnn, metaqnn-cifar, metaqnn-mnist, metaqnn-small).
        strategy: qlearning (MetaQNN) or random.
        trials: Unique architectures to train; 0 for the whole schedule.
        schedule: paper (Table 2, scaled to trials) or EPS:COUNT,...
        epochs: Training epochs per architecture.
        seed: Seed of the agent and of every trial.
        parallelism: Trials in flight at once.
        launcher: kubernetes (a Job per trial), kfp (a run per trial) or local (worker processes of this step).
        trial_image: Image of the trial pods.
        gpus_per_trial: nvidia.com/gpu limit of each trial pod (0: CPU trials).
        node_selector: Node labels the trial pods need, e.g. {"nvidia.com/gpu.present": "true"}.
        tolerations: Kubernetes tolerations of the trial pods (key, operator, value, effect).
        pending_timeout: Seconds a trial pod may wait for a node before it is retried.
        trial_cpu_request: CPU request of each trial pod (kubernetes launcher), e.g. "3".
        trial_cpu_limit: CPU limit of each trial pod.
        trial_memory_request: Memory request of each trial pod, e.g. "10Gi".
        trial_memory_limit: Memory limit of each trial pod.
        trial_shm_size: Size of each trial pod's /dev/shm (memory-backed), e.g. "2Gi".
        bucket: Artifact store: "" for s3://mlpipeline/private/<namespace>/nasagent, a bucket name, or a URL.
        s3_endpoint: S3 endpoint of the artifact store ("" keeps $NASAGENT_S3_ENDPOINT).
        keep_top: Checkpoints kept during the search: the current top K trials.
        finetune_top: How many of the best architectures the pipeline finetunes.
        db_secret: Secret holding the database URL (key url); must be nasagent-db with a cluster launcher.
        s3_secret: Secret holding the S3 keys (accesskey, secretkey); the kubernetes launcher's trial pods read it too.
        dashboard_url: The live dashboard the step's first line points to: "" for Kubeflow's, a URL, or none.
        early_stop: --early-stop: none, median or predict; "" leaves it out (none, or what a resumed experiment stored).
        early_stop_min_trials: --early-stop-min-trials; 0 leaves it out (the rule's default).
        early_stop_start_epoch: --early-stop-start-epoch; 0 leaves it out (the rule's default).
        early_stop_retrain_every: --early-stop-retrain-every (predict); 0 leaves it out (10).
        early_stop_delta: --early-stop-delta (predict); 0 leaves it out (0.99).
        early_stop_wait: --early-stop-wait in seconds; 0 leaves it out (10).
        max_params: --max-params; 0 for no limit.
        max_macs: --max-macs; 0 for no limit.
        max_latency_ms: --max-latency-ms; 0 for no limit.
        objective: --objective: accuracy or mnas; "" for accuracy.
        objective_metric: --objective-metric (mnas); "" for latency.
        objective_target: --objective-target (mnas); 0 for the metric's limit.
        objective_weight: --objective-weight (mnas); 0 for MnasNet's -0.07.
        leaderboard: The top 25 as a Markdown table.
        report: The self-contained HTML report (Figures 3, A2-A4, leaderboard, failures, timing).
        accuracy_plot: Figure 3 alone: the accuracy of every model in launch order.
        metrics: unique_trained, trials_done, failed, budget, best_accuracy.
    """
    import collections
    from pathlib import Path

    from nasagent import kubeflow
    from nasagent.persistence.artifacts import open_artifacts
    from nasagent.persistence.postgres import connect

    name = kubeflow.experiment_name(experiment, run_name, run_id)
    kubeflow.check_trial_secrets(launcher, db_secret)
    dashboard = kubeflow.dashboard_line(dashboard_url, name)
    if dashboard:
        print(dashboard, flush=True)
    kubeflow.use_s3_endpoint(s3_endpoint)
    url = kubeflow.artifacts_url(bucket)
    resources = kubeflow.TrialResources(
        trial_cpu_request, trial_cpu_limit, trial_memory_request, trial_memory_limit, trial_shm_size
    )
    kubeflow.run_cli(
        kubeflow.search_argv(
            experiment=name,
            dataset=dataset,
            space=space,
            strategy=strategy,
            trials=trials,
            schedule=schedule,
            epochs=epochs,
            seed=seed,
            parallelism=parallelism,
            launcher=launcher,
            trial_image=trial_image,
            gpus_per_trial=gpus_per_trial,
            node_selector=node_selector,
            tolerations=tolerations,
            pending_timeout=pending_timeout,
            artifacts=url,
            keep_top=keep_top,
            trial_resources=resources,
            s3_secret=s3_secret,
            s3_endpoint=s3_endpoint,
            trial_template=kubeflow.mounted_trial_template(),
            early_stop=kubeflow.EarlyStopping(
                early_stop,
                early_stop_min_trials,
                early_stop_start_epoch,
                early_stop_retrain_every,
                early_stop_delta,
                early_stop_wait,
            ),
            limits=kubeflow.DeploymentLimits(
                max_params, max_macs, max_latency_ms, objective, objective_metric, objective_target, objective_weight
            ),
        )
    )
    store = open_artifacts(url)
    with connect(None) as db:
        status = kubeflow.write_search_outputs(
            db, name, store, Path(leaderboard.path), Path(report.path), Path(accuracy_plot.path), metrics.log_metric
        )
        ranks = kubeflow.finetune_ranks(db, name, store, finetune_top)
    outputs = collections.namedtuple("SearchOutputs", ["experiment", "ranks", "best_accuracy"])
    return outputs(name, ranks, float(status["best_accuracy"] or 0.0))
