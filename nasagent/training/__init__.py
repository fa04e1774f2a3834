"""Data loading and training: datasets as in-memory tensors, and the paper's training schedule."""

from __future__ import annotations

from nasagent.training.data import DataBundle, Split, load_dataset
from nasagent.training.trainer import TrainConfig, TrainResult, lr_at, train_architecture

__all__ = ["DataBundle", "Split", "TrainConfig", "TrainResult", "load_dataset", "lr_at", "train_architecture"]
