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
    pooling: Literal["floor", "ceil"] = "floor"
    """How a MetaQNN pooling layer rounds its output size: ``floor`` as the authors' code tracks it
    (and as Table A2's parameter counts imply), ``ceil`` as Caffe executes it (see ``core.arch``)."""
    conv_padding: Literal["same", "valid"] = "same"
    """MetaQNN convolutions: ``same`` keeps the size (Tables 1, A2, A3); ``valid`` has no padding
    (the ``metaqnn-mnist`` reconstruction of Table A1)."""
    nsc_padding: Literal["valid", "same"] = "valid"
    """NSC (NAS environment) convolutions and max poolings: ``valid`` as the authors' Keras code
    (their default), ``same`` as an option (see ``core.nsc``)."""
    gcn: bool = False
    """Global contrast normalisation of each image as the model's first layer instead of per-channel
    statistics (§5, CIFAR-10 finetuning)."""

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "elu"):
            raise ConfigError(f"unknown activation {self.activation!r} (expected 'relu' or 'elu')")
        if self.pooling not in ("floor", "ceil") or self.conv_padding not in ("same", "valid"):
            raise ConfigError(
                f"pooling must be floor|ceil and conv_padding same|valid, got {self.pooling!r}, {self.conv_padding!r}"
            )
        if self.nsc_padding not in ("valid", "same"):
            raise ConfigError(f"nsc_padding must be valid|same, got {self.nsc_padding!r}")
        if self.dropout not in ("paper", "fc"):
            raise ConfigError(f"unknown dropout mode {self.dropout!r} (expected 'paper' or 'fc')")
        if not 0.0 <= self.fc_dropout < 1.0:
            raise ConfigError(f"fc_dropout must be in [0, 1), got {self.fc_dropout}")


MIN_STEPS = 100
"""Default ``TrainConfig.min_steps`` (see the README, "Small datasets")."""


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
    memory_limit: int | None = None
    """Bytes a training may use (its worker's share, set by the runner, never stored with the experiment).
    A network whose estimated training memory (:mod:`nasagent.training.memory`) exceeds it fails as
    "does not fit" without being built. None: no check."""
    lr_steps: tuple[tuple[float, int], ...] | None = None
    """Explicit (lr, epochs) phases replacing the ×lr_decay steps, e.g. §5's finetuning schedules; their
    epochs must sum to ``epochs``, and a restart scales every phase by ``restart_factor``."""
    min_steps: int = MIN_STEPS
    """The schedule's unit: an "epoch" is the fewest whole passes over the training split with at least
    this many optimiser steps, so a small dataset still gets a fair trial. One pass whenever a pass has
    that many (every set of 12,800+ images at batch 128: the paper's exactly); 0: always one pass."""
    score: Literal["best", "final"] = "best"
    """The reward: the best validation accuracy over the epochs (MetaQNN, §5) or the final epoch's
    (the NAS environment, §4.1.2)."""
    mirror: bool = False
    """Mirror each training image left-right with probability 1/2 (§5, CIFAR-10 finetuning)."""
    max_shift: int = 0
    """Translate each training image by up to this many pixels per axis (§5, CIFAR-10: 5)."""

    def __post_init__(self) -> None:
        if self.min_steps < 0 or self.max_shift < 0 or self.score not in ("best", "final"):
            raise ConfigError(
                f"min_steps and max_shift must be non-negative and score best|final, "
                f"got {self.min_steps}, {self.max_shift}, {self.score!r}"
            )
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
        if self.memory_limit is not None and self.memory_limit < 1:
            raise ConfigError(f"memory_limit must be a positive number of bytes, got {self.memory_limit}")
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
