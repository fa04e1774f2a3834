"""The CUDA paths of the trainer, the latency measurement and the model export, on a real GPU.

Skipped where torch sees no CUDA device (CI, the development machines); run on a GPU machine with
``python -m pytest tests/test_gpu.py``. What each test proves: training really runs on the GPU
with the data resident there, under bf16 autocast in channels_last (hooks look at what the first
convolution receives and returns), and learns; the NAS environment's networks train there too;
running out of GPU memory is a failed trial that gives its memory back, not a crash; latency is
measured with the GPU synchronised; a network trained on the GPU exports to a TorchScript file
that a CPU-only process loads and runs with the same predictions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nasagent.core.arch import Architecture
from nasagent.core.nsc import CONV, NSCLayer, NSCNetwork
from nasagent.training.build import build_model
from nasagent.training.data import DataBundle, Split, load_dataset
from nasagent.training.latency import measure_latency, network_latency
from nasagent.training.models import accuracy, export_model, load_model, model_metadata, predict_proba
from nasagent.training.settings import BuildOptions, TrainConfig
from nasagent.training.trainer import train_architecture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONV_NET = Architecture.parse("[C(32,3,1), P(2,2), C(64,3,1), FC(64), SM(10)]")
NSC_NET = NSCNetwork((NSCLayer(1, CONV, 3, 0), NSCLayer(2, CONV, 3, 1)), 10)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DataBundle:
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def colour() -> DataBundle:
    """A learnable 3-channel set (one random template per class under noise): with one channel, as
    in digits, a tensor is channels_last and contiguous at once, so layouts could not be told apart."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(10, 3, 16, 16, generator=g)

    def split(n: int) -> Split:
        y = torch.arange(n) % 10
        return Split((0.5 * templates[y] + 0.5 * torch.rand(n, 3, 16, 16, generator=g)).clamp(0, 1), y)

    return DataBundle("colour", split(2000), split(500), None, 10, (3, 16, 16), [0.5] * 3, [0.3] * 3)


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def spy_on_first_convolution(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool, torch.dtype]]:
    """Every forward pass of the first convolution of each model the trainer builds, from now on: the
    device of its input, whether that input is channels_last, and the dtype of its output."""
    seen: list[tuple[str, bool, torch.dtype]] = []
    build = build_model

    def look(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        seen.append((x.device.type, x.is_contiguous(memory_format=torch.channels_last), output.dtype))

    def spying_build(*args: Any, **kwargs: Any) -> nn.Module:
        model = build(*args, **kwargs)
        first_conv(model).register_forward_hook(look)
        return model

    monkeypatch.setattr("nasagent.training.trainer.build_model", spying_build)
    return seen


def test_training_runs_on_the_gpu_in_bf16_channels_last_and_learns(
    colour: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_on_first_convolution(monkeypatch)
    result = train_architecture(CONV_NET, colour, TrainConfig(epochs=4, device="cuda"))
    assert result.status == "done" and result.failure is None
    assert result.accuracy > 0.9
    assert seen, "the hook never ran"
    devices, channels_last, outputs = zip(*seen)
    assert set(devices) == {"cuda"}
    assert all(channels_last)  # the images arrive in channels_last: no layout conversion per batch
    assert set(outputs) == {torch.bfloat16}  # autocast ran the convolution in bf16


def test_fp32_contiguous_when_bf16_and_channels_last_are_off(
    colour: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_on_first_convolution(monkeypatch)
    cfg = TrainConfig(epochs=2, device="cuda", bf16=False, channels_last=False)
    result = train_architecture(CONV_NET, colour, cfg)
    assert result.status == "done" and result.accuracy > 0.5
    assert {dtype for _, _, dtype in seen} == {torch.float32}
    assert not any(layout for _, layout, _ in seen)


def test_nas_environment_network_trains_on_the_gpu(digits: DataBundle) -> None:
    result = train_architecture(NSC_NET, digits, TrainConfig(epochs=3, device="cuda", score="final"))
    assert result.status == "done" and result.accuracy > 0.5


def test_out_of_gpu_memory_is_a_failed_trial_that_gives_the_memory_back() -> None:
    # A batch of 128 images of 3x1024x1024 through 1,024 channels at full resolution: the first
    # convolution's output alone is 128*1024*1024*1024 values, 275 GB in bf16, beyond any GPU. The
    # pooling keeps the classifier small, so only the GPU (never the host) runs out.
    x = torch.zeros(128, 3, 1024, 1024, dtype=torch.uint8)
    y = torch.arange(128) % 2
    data = DataBundle("huge", Split(x, y), Split(x[:4], y[:4]), None, 2, (3, 1024, 1024), [0.5] * 3, [0.25] * 3)
    huge = Architecture.parse("[C(1024,3,1), P(8,8), SM(2)]")
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    result = train_architecture(huge, data, TrainConfig(epochs=1, device="cuda", max_restarts=0))
    assert result.status == "failed"
    assert result.failure is not None and result.failure.startswith("out of memory")
    assert result.accuracy == pytest.approx(0.5)  # 1/K
    assert torch.cuda.memory_allocated() <= before + 1024**2  # nothing of the failed trial stays allocated
    small = Architecture.parse("[C(8,3,1), P(8,8), SM(2)]")
    after = train_architecture(small, data, TrainConfig(epochs=1, device="cuda", max_restarts=0, min_steps=0))
    assert after.failure is None or not after.failure.startswith("out of memory")  # the GPU is usable afterwards


def test_latency_is_measured_on_the_gpu_with_synchronisation() -> None:
    device = torch.device("cuda")
    small = build_model(Architecture.parse("[C(16,3,1), SM(10)]"), (3, 32, 32))
    big = build_model(Architecture.parse("[C(512,3,1), C(512,3,1), C(512,3,1), C(512,3,1), SM(10)]"), (3, 224, 224))
    fast = measure_latency(small, (3, 32, 32), device, bf16=True, channels_last=True)
    slow = measure_latency(big, (3, 224, 224), device, bf16=True, channels_last=True)
    assert 0 < fast < 50 and math.isfinite(slow)
    # Four 512-channel 3x3 convolutions at 224x224 are ~1.9e11 multiply-accumulates: even at the
    # H200's bf16 peak that is over 0.2 ms. Without synchronisation a launch returns in microseconds.
    assert slow > 0.2 and slow > fast
    ms = network_latency(CONV_NET, (1, 8, 8), TrainConfig(device="cuda"), BuildOptions())
    assert 0 < ms < 50


def test_a_gpu_trained_network_exports_to_torchscript_that_runs_on_the_cpu(digits: DataBundle, tmp_path: Path) -> None:
    result = train_architecture(CONV_NET, digits, TrainConfig(epochs=2, device="cuda"), keep_weights=True)
    assert result.state_dict is not None
    assert {t.device.type for t in result.state_dict.values()} == {"cpu"}  # weights leave the GPU
    meta = model_metadata(
        str(CONV_NET),
        digits.input_shape,
        digits.mean,
        digits.std,
        10,
        BuildOptions(),
        {"val_accuracy": result.accuracy},
    )
    export_model(meta, result.state_dict, tmp_path / "model")
    scripted = torch.jit.load(str(tmp_path / "model" / "model.ts"), map_location="cpu")
    images = digits.val.x[:200]
    on_gpu = predict_proba(load_model(tmp_path / "model"), images, "cuda")
    on_cpu = predict_proba(scripted, images, "cpu")
    # The GPU predicts in fp32 here (predict_proba), so both devices agree to rounding.
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4)
    assert accuracy(on_cpu, digits.val.y[:200]) > 0.5
