"""How every trial of an experiment loads its data and trains: plain data, so it crosses processes and pods."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nasagent.training.build import BuildOptions
from nasagent.training.data import DataBundle, load_dataset
from nasagent.training.trainer import TrainConfig


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
