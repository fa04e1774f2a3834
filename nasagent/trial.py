"""One trial: an architecture string in, a recorded outcome out.

The same code runs in a local worker process and (through ``nasagent trial``) in a Kubernetes pod,
so everything a trial needs travels in ``TrialSettings``, which is plain data.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasagent.networks import parse_network
from nasagent.build import BuildOptions
from nasagent.training.data import DataBundle, load_dataset
from nasagent.training.trainer import TrainConfig, train_architecture


@dataclass(frozen=True)
class TrialSettings:
    """Where the data come from and how every trial of an experiment is trained."""

    dataset: str
    data_dir: str
    data_seed: int = 0
    val_size: int | float | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    build: BuildOptions = field(default_factory=BuildOptions)
    artifacts: str | None = None
    """Artifact store URL: when set (with ``experiment``), each trial saves its weights as a checkpoint."""
    experiment: str | None = None

    def load_data(self) -> DataBundle:
        return load_dataset(self.dataset, Path(self.data_dir), val_size=self.val_size, seed=self.data_seed)


@dataclass(frozen=True)
class TrialSpec:
    """A trial handed to a runner: which architecture, under which record, with which seed."""

    trial_id: int
    arch: str
    seed: int


@dataclass
class TrialOutcome:
    """What a runner hands back: the reward and what the store records about the training."""

    trial_id: int
    status: str
    accuracy: float
    params: int | None = None
    failure: str | None = None
    train_seconds: float | None = None
    worker: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, trial_id: int, reason: str, num_classes: int, worker: str | None = None) -> TrialOutcome:
        """A trial that could not finish: chance-level reward, so the search goes on."""
        return cls(trial_id, "failed", 1.0 / num_classes, failure=reason, worker=worker)


def trial_seed(experiment_seed: int, digest: str) -> int:
    """A seed fixed by the experiment and the architecture: a rerun after a crash trains the same way."""
    return (experiment_seed * 1_000_003 + int(digest[:8], 16)) % 2**31


def run_trial(spec: TrialSpec, data: DataBundle, settings: TrialSettings, worker: str | None = None) -> TrialOutcome:
    """Train one architecture and turn the result into an outcome. Never raises for a bad network."""
    arch = parse_network(spec.arch)
    started = time.perf_counter()
    config = dataclasses.replace(settings.train, seed=spec.seed)
    keep = settings.artifacts is not None and settings.experiment is not None
    result = train_architecture(arch, data, config, settings.build, keep_weights=keep)
    info: dict[str, Any] = {"epochs_run": result.epochs_run, "restarts": result.restarts, "history": result.history}
    if keep:
        from nasagent.checkpoints import save_trial_checkpoint

        error = save_trial_checkpoint(settings, spec, data, result)
        if error:
            info["checkpoint_error"] = error
    return TrialOutcome(
        trial_id=spec.trial_id,
        status=result.status,
        accuracy=result.accuracy,
        params=result.params,
        failure=result.failure,
        train_seconds=time.perf_counter() - started,
        worker=worker,
        info=info,
    )
