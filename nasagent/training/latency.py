"""Batch-1 inference latency of a network on the trial's device (``--max-latency-ms``, ``--objective mnas``).

MnasNet measures latency by running the model on the target device rather than counting FLOPs;
here the target is the device the trial trained on. The model is built afresh (latency depends on
the layers and the shapes, not on the trained weights), put in eval mode and run on one image in
the precision the trainer evaluates with (bf16 autocast and channels_last on CUDA, fp32 on a CPU).
``warmup`` runs are discarded (kernel selection, caches, lazy initialisation), then each of
``repeats`` runs is timed alone, synchronising the GPU before and after, and the median is the
result: robust to the odd slow run that another process on the machine causes. A slow network
stops early after ``budget_s`` seconds of timed runs (at least 3), so measuring never costs more
than a few seconds of a trial.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from nasagent.core.networks import Network
from nasagent.training.build import build_model
from nasagent.training.settings import BuildOptions, TrainConfig
from nasagent.training.trainer import resolve_device

WARMUP = 10
REPEATS = 50
BUDGET_S = 3.0


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    device: torch.device,
    bf16: bool = False,
    channels_last: bool = False,
    warmup: int = WARMUP,
    repeats: int = REPEATS,
    budget_s: float = BUDGET_S,
) -> float:
    """The median wall time, in milliseconds, of one forward pass of ``model`` on one image of
    ``input_shape`` (C, H, W) on ``device`` (see the module docstring for the protocol)."""
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda and channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    x = torch.rand(1, *input_shape, device=device).contiguous(memory_format=memory_format)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    times: list[float] = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and bf16):
        for _ in range(warmup):
            model(x)
        sync()
        started = time.perf_counter()
        for i in range(repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
            if i >= 2 and time.perf_counter() - started > budget_s:
                break
    return 1000.0 * statistics.median(times)


def network_latency(
    arch: Network, input_shape: tuple[int, int, int], train: TrainConfig, options: BuildOptions
) -> float:
    """Batch-1 latency (ms) of ``arch`` as the trial builds it, on the trial's device (``train.device``)."""
    device = resolve_device(train.device)
    model = build_model(arch, input_shape, options=options)  # type: ignore[arg-type]
    try:
        return measure_latency(model, input_shape, device, bf16=train.bf16, channels_last=train.channels_last)
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
