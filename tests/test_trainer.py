"""train_architecture on digits with tiny nets: learning, schedule, restarts, failures, determinism."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

import nasagent.training.trainer as trainer
from nasagent.core.arch import Architecture
from nasagent.errors import ConfigError
from nasagent.training.build import build_model, count_params
from nasagent.training.data import DataBundle, Split, load_dataset
from nasagent.training.settings import TrainConfig
from nasagent.training.trainer import chance_accuracy, lr_at, resolve_device, train_architecture

CONV = Architecture.parse("[C(16,3,1), P(2,2), C(32,3,1), SM(10)]")
TINY = Architecture.parse("[FC(16), SM(10)]")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DataBundle:
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


def accuracy_of(model: nn.Module, split: Split) -> float:
    model.eval()
    with torch.no_grad():
        return (model(split.x).argmax(1) == split.y).float().mean().item()


def test_small_conv_net_learns_digits(digits: DataBundle) -> None:
    result = train_architecture(CONV, digits, TrainConfig(epochs=3))
    assert result.status == "done" and result.failure is None
    assert result.accuracy > 0.8
    assert result.accuracy == max(result.history) and len(result.history) == result.epochs_run == 3
    assert result.restarts == 0 and result.state_dict is None and result.seconds > 0
    assert result.params == count_params(build_model(CONV, digits.input_shape))


def test_lr_schedule_helper() -> None:
    cfg = TrainConfig()
    lrs = [lr_at(epoch, cfg.lr, cfg) for epoch in range(20)]
    assert lrs == pytest.approx([1e-3] * 5 + [2e-4] * 5 + [4e-5] * 5 + [8e-6] * 5)
    assert lr_at(7, 4e-4, TrainConfig(lr_decay=0.5, lr_decay_every=3)) == pytest.approx(1e-4)


def test_trainer_follows_the_schedule(digits: DataBundle) -> None:
    result = train_architecture(TINY, digits, TrainConfig(epochs=7, lr_decay_every=3))
    assert result.restarts == 0
    assert result.lrs == pytest.approx([1e-3] * 3 + [2e-4] * 3 + [4e-5])


def fake_accuracies(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """Validation accuracy of successive epochs, whatever the network does; the last one repeats."""
    queue = list(values)
    monkeypatch.setattr(trainer, "_evaluate", lambda *args: queue.pop(0) if len(queue) > 1 else queue[0])


def test_restarts_at_most_five_times_with_lr_times_0_4(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_accuracies(monkeypatch, [0.0])
    result = train_architecture(TINY, digits, TrainConfig(epochs=2))
    # Six one-epoch attempts at 1e-3 * 0.4^i, none better than chance: the authors' code gives 1/K.
    assert result.status == "failed" and result.restarts == 5 and result.accuracy == pytest.approx(0.1)
    assert result.epochs_run == 6 and len(result.history) == 6
    assert result.lrs == pytest.approx([1e-3 * 0.4**i for i in range(6)])


def test_restart_then_learning(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    chance = chance_accuracy(digits.val.y)
    # "No better than chance" includes exactly chance; restarts only look at the first epoch.
    fake_accuracies(monkeypatch, [chance, 0.05, 0.5, 0.4, 0.6, chance])
    result = train_architecture(TINY, digits, TrainConfig(epochs=5))
    assert result.restarts == 2
    assert result.history == [chance, 0.05, 0.5, 0.4, 0.6, chance, chance]
    assert result.accuracy == 0.6
    assert result.lrs == pytest.approx([1e-3, 4e-4] + [1.6e-4] * 5)


def test_better_than_chance_does_not_restart(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_accuracies(monkeypatch, [chance_accuracy(digits.val.y) + 0.01])
    assert train_architecture(TINY, digits, TrainConfig(epochs=1)).restarts == 0


def test_chance_is_the_majority_class_fraction() -> None:
    assert chance_accuracy(torch.tensor([0, 0, 0, 1])) == 0.75
    assert chance_accuracy(torch.tensor([0, 1, 2, 3, 4])) == 0.2


def test_nan_loss_fails_with_reason(digits: DataBundle) -> None:
    x = digits.train.x.clone()
    x[5, 0, 3, 3] = float("nan")
    poisoned = dataclasses.replace(digits, train=Split(x, digits.train.y))
    result = train_architecture(TINY, poisoned, TrainConfig(epochs=3))
    # Every attempt's first epoch diverges: restarted five times (lr x 0.4), then failed.
    assert result.status == "failed" and result.restarts == 5
    assert result.failure == "diverged: loss became NaN at epoch 6"
    assert result.accuracy == pytest.approx(0.1) and result.epochs_run == 6


def test_huge_lr_diverges(digits: DataBundle) -> None:
    result = train_architecture(TINY, digits, TrainConfig(epochs=3, lr=1e30))
    assert (
        result.status == "failed" and result.failure is not None and result.failure.startswith("diverged: loss became")
    )


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        MemoryError(),
    ],
)
def test_out_of_memory_fails_with_reason(
    digits: DataBundle, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def boom(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise error

    monkeypatch.setattr(nn.Sequential, "forward", boom)
    result = train_architecture(TINY, digits, TrainConfig(epochs=2))
    assert result.status == "failed"
    assert result.failure is not None and result.failure.startswith("out of memory: ")
    assert result.accuracy == pytest.approx(0.1) and result.state_dict is None


def test_other_errors_are_not_swallowed(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(nn.Sequential, "forward", boom)
    with pytest.raises(RuntimeError, match="shapes"):
        train_architecture(TINY, digits, TrainConfig(epochs=1))


def test_same_seed_same_result(digits: DataBundle) -> None:
    cfg = TrainConfig(epochs=2, seed=7)
    arch = Architecture.parse("[C(8,3,1), P(2,2), FC(16), SM(10)]")
    a = train_architecture(arch, digits, cfg, keep_weights=True)
    b = train_architecture(arch, digits, cfg, keep_weights=True)
    c = train_architecture(arch, digits, dataclasses.replace(cfg, seed=8), keep_weights=True)
    assert a.history == b.history
    assert a.state_dict is not None and b.state_dict is not None and c.state_dict is not None
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not torch.equal(a.state_dict["1.weight"], c.state_dict["1.weight"])


def test_keep_weights_returns_the_best_epoch(digits: DataBundle, tmp_path: Path) -> None:
    result = train_architecture(CONV, digits, TrainConfig(epochs=2), keep_weights=True)
    assert result.state_dict is not None
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    model = build_model(CONV, digits.input_shape)
    model.load_state_dict(result.state_dict)
    assert accuracy_of(model, digits.val) == pytest.approx(result.accuracy)
    # Normalisation statistics are part of the checkpoint.
    assert torch.equal(result.state_dict["0.mean"].flatten(), torch.tensor(digits.mean, dtype=torch.float32))


def test_class_count_mismatch_is_config_error(digits: DataBundle) -> None:
    with pytest.raises(ConfigError, match="predicts 3 classes but digits has 10"):
        train_architecture(Architecture.parse("[SM(3)]"), digits, TrainConfig(epochs=1))


def test_threads_setting(digits: DataBundle) -> None:
    before = torch.get_num_threads()
    try:
        train_architecture(TINY, digits, TrainConfig(epochs=1, threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_device_resolution() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("abacus")


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"max_restarts": -1}, {"threads": 0}])
def test_bad_config_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**bad)
