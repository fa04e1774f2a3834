"""How networks are built and trained: plain, validated data with no torch import, so that the CLI,
the experiment config and the KFP components can carry it cheaply across processes and pods.

``BuildOptions`` (how hidden layers are realised), ``TrainConfig`` (§5's schedule) and
``TrialSettings`` (where a trial's data come from, plus both) are consumed by
:mod:`nasagent.training.build`, :mod:`nasagent.training.trainer` and the trial worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nasagent.errors import ConfigError

if TYPE_CHECKING:
    from nasagent.training.sources import DataBundle


@dataclass(frozen=True)
class BuildOptions:
    """How hidden layers are realised.

    ``dropout="paper"`` is §5 of the paper: a dropout layer after every two hidden layers, the
    i-th of n having probability i/(2n). ``dropout="fc"`` is appendix C (the MNIST experiment):
    dropout ``fc_dropout`` after each FC layer only, usually with ``activation="elu"``.
    """

    activation: Literal["relu", "elu"] = "relu"
    dropout: Literal["paper", "fc"] = "paper"
    fc_dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "elu"):
            raise ConfigError(f"unknown activation {self.activation!r} (expected 'relu' or 'elu')")
        if self.dropout not in ("paper", "fc"):
            raise ConfigError(f"unknown dropout mode {self.dropout!r} (expected 'paper' or 'fc')")
        if not 0.0 <= self.fc_dropout < 1.0:
            raise ConfigError(f"fc_dropout must be in [0, 1), got {self.fc_dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the paper's (§5)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_decay: float = 0.2
    lr_decay_every: int = 5
    restart_factor: float = 0.4
    max_restarts: int = 5
    device: str = "auto"
    bf16: bool = True
    channels_last: bool = True
    seed: int = 0
    threads: int | None = None
    lr_steps: tuple[tuple[float, int], ...] | None = None
    """Explicit (lr, epochs) phases replacing the ×lr_decay steps, e.g. §5's finetuning schedules; their
    epochs must sum to ``epochs``, and a restart scales every phase by ``restart_factor``."""

    def __post_init__(self) -> None:
        if self.lr_steps is not None:
            if not self.lr_steps or any(not lr > 0 or n < 1 for lr, n in self.lr_steps):
                raise ConfigError(f"lr_steps must be (lr > 0, epochs >= 1) pairs, got {self.lr_steps}")
            if sum(n for _, n in self.lr_steps) != self.epochs:
                raise ConfigError(
                    f"lr_steps cover {sum(n for _, n in self.lr_steps)} epochs but epochs is {self.epochs}"
                )
        if self.epochs < 1 or self.batch_size < 1 or self.lr_decay_every < 1:
            raise ConfigError(
                "epochs, batch_size and lr_decay_every must be at least 1, "
                f"got {self.epochs}, {self.batch_size}, {self.lr_decay_every}"
            )
        if not self.lr > 0 or self.max_restarts < 0:
            raise ConfigError(
                f"lr must be positive and max_restarts non-negative, got {self.lr} and {self.max_restarts}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")


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
        """The experiment's dataset with its validation split (torch is loaded here, not on import)."""
        from nasagent.training.data import load_dataset

        return load_dataset(self.dataset, Path(self.data_dir), val_size=self.val_size, seed=self.data_seed)
