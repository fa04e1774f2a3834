"""The trial worker: an architecture string in, an outcome out.

The same code runs in a local worker process (``LocalRunner``), in a Kubernetes pod or a KFP step
(``nasagent trial --experiment --trial-id``, which records the outcome in ``trial_results``), and
standalone (``nasagent trial --arch``). Everything a trial needs travels in ``TrialSettings``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.core.cost import network_cost
from nasagent.core.networks import parse_network
from nasagent.core.nsc import NSCNetwork
from nasagent.core.trial import TrialOutcome, TrialSpec, TrialStatus, outcome_to_json, trial_seed
from nasagent.errors import ConfigError, StoreError
from nasagent.execution.cluster import ATTEMPT_ENV
from nasagent.execution.epochs import EpochRecorder
from nasagent.persistence.embedded import nasagent_home
from nasagent.persistence.postgres import Store
from nasagent.training.checkpoints import save_trial_checkpoint
from nasagent.training.data import DataBundle
from nasagent.training.latency import network_latency
from nasagent.training.settings import TrialSettings
from nasagent.training.trainer import EpochMetrics, StopTraining, train_architecture


def run_trial(
    spec: TrialSpec,
    data: DataBundle,
    settings: TrialSettings,
    worker: str | None = None,
    on_epoch: Callable[[EpochMetrics], StopTraining | None] | None = None,
) -> TrialOutcome:
    """Train one architecture and turn the result into an outcome. Never raises for a bad network.
    ``on_epoch`` sees every epoch as it ends (``run_trial_or_fail`` records them in the store) and
    may stop the training early: the outcome is then ``stopped``, rewarded with the predicted final
    accuracy when the stop came with one (Baker et al.), else with the accuracy reached."""
    arch = parse_network(spec.arch)
    started = time.perf_counter()
    config = dataclasses.replace(settings.train, seed=spec.seed)
    keep = settings.artifacts is not None and settings.experiment is not None
    result = train_architecture(arch, data, config, settings.build, keep_weights=keep, on_epoch=on_epoch)
    info: dict[str, Any] = {"epochs_run": result.epochs_run, "restarts": result.restarts, "history": result.history}
    info["input_shape"] = list(data.input_shape)  # the dashboard's layer table sizes each layer from it
    accuracy = result.accuracy
    if result.status == TrialStatus.STOPPED:  # early stopping (nasagent.stopping): where, and the reward
        info.update(
            stopped_epoch=result.stopped_epoch,
            observed_accuracy=result.accuracy,
            predicted_accuracy=result.predicted_accuracy,
        )
        if result.predicted_accuracy is not None:
            accuracy = result.predicted_accuracy
    if keep:
        error = save_trial_checkpoint(settings, spec, data, result)
        if error:
            info["checkpoint_error"] = error
    train_seconds = time.perf_counter() - started
    latency_ms = None
    if result.status != TrialStatus.FAILED:  # a network that failed to train has no result to deploy
        try:
            latency_ms = network_latency(arch, data.input_shape, config, settings.build)
        except (RuntimeError, MemoryError) as exc:
            info["latency_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return TrialOutcome(
        trial_id=spec.trial_id,
        status=result.status,
        accuracy=accuracy,
        params=result.params,
        failure=result.failure,
        train_seconds=train_seconds,
        worker=worker,
        info=info,
        macs=network_macs(arch, data.input_shape, settings),
        latency_ms=latency_ms,
    )


def network_macs(
    arch: Architecture | NSCNetwork, input_shape: tuple[int, int, int], settings: TrialSettings
) -> int | None:
    """MACs of one image's forward pass of ``arch`` as the trial builds it; None if it cannot be built."""
    build = settings.build
    try:
        return network_cost(arch, input_shape, build.pooling, build.conv_padding, build.nsc_padding)[1]
    except ConfigError:
        return None


def run_trial_or_fail(
    spec: TrialSpec,
    data: DataBundle,
    settings: TrialSettings,
    worker: str | None = None,
    store: Store | None = None,
    run: int = 1,
) -> TrialOutcome:
    """``run_trial``, with a crash (a bug, a network the builder rejects late) turned into a failed
    outcome: a trial must always end as a recorded outcome, never take its worker or pod down.

    With a ``store`` (local workers and trial pods alike) every epoch is written to it as it ends
    (``EpochRecorder``; ``run``: the launcher's attempt); a store refusing that is a StoreError
    before training, the deployment's fault, never the architecture's."""
    on_epoch = EpochRecorder(store, spec.trial_id, run) if store is not None else None
    try:
        return run_trial(spec, data, settings, worker=worker, on_epoch=on_epoch)
    except Exception as exc:
        return TrialOutcome.failed(
            spec.trial_id, f"trial crashed: {type(exc).__name__}: {exc}", data.num_classes, worker
        )


def attempt_from_env() -> int:
    """The attempt number a launcher put in ``NASAGENT_ATTEMPT`` (1 when unset)."""
    raw = os.environ.get(ATTEMPT_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{ATTEMPT_ENV} must be a positive integer, got {raw!r}")
    return int(raw)


def record_trial(
    store: Store, experiment: str, trial_id: int, attempt: int, device: str = "auto", data_dir: str | None = None
) -> TrialOutcome:
    """Train trial ``trial_id`` of ``experiment`` and write its outcome to ``trial_results``.

    Trains with the experiment's stored settings and the trial seed the agent would use, so a
    trial trains the same way in a pod as in a local worker. A training that crashes is recorded
    as a failed outcome (as the local runner does); data that cannot be loaded raise (exit 2).
    """
    found = store.get_experiment(experiment)
    trial = store.trial(trial_id)
    if trial is None or trial.experiment_id != found.id:
        raise StoreError(f"experiment {experiment!r} has no trial {trial_id}")
    config = SearchConfig.from_dict(found.config)
    settings = config.trial_settings(device)
    if data_dir is None and not Path(settings.data_dir).is_dir():
        # The stored data directory is the agent's; a pod elsewhere downloads into its own home.
        data_dir = str(nasagent_home() / "data")
    if data_dir:
        settings = dataclasses.replace(settings, data_dir=data_dir)
    artifacts = os.environ.get("NASAGENT_ARTIFACTS")
    if artifacts:  # set by the launcher when the search keeps checkpoints: save this trial's weights there
        settings = dataclasses.replace(settings, artifacts=artifacts, experiment=experiment)
    spec = TrialSpec(trial.id, trial.arch, trial_seed(config.seed, trial.digest))
    data = settings.load_data()
    worker = os.environ.get("HOSTNAME") or socket.gethostname()  # the pod's name in Kubernetes
    outcome = run_trial_or_fail(spec, data, settings, worker, store=store, run=attempt)
    with store.transaction() as tx:
        tx.save_trial_result(trial.id, attempt, outcome_to_json(outcome))
    return outcome


def standalone_trial(config: SearchConfig, arch_text: str, device: str = "auto") -> TrialOutcome:
    """Train ``arch_text`` as a trial of ``config`` would, without a database (trial id 0)."""
    arch = parse_network(arch_text)
    settings = config.trial_settings(device)
    data = settings.load_data()
    spec = TrialSpec(0, str(arch), trial_seed(config.seed, arch.digest))
    return run_trial(spec, data, settings, worker=socket.gethostname())
