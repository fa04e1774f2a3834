"""Trains one architecture with the paper's quick exploration schedule (§5) and scores it.

Schedule: Adam (β = 0.9, 0.999, ε = 1e-8), batch 128, learning rate 1e-3 multiplied by 0.2
every 5 epochs, 20 epochs. If after the first epoch the network is no better than chance on
the validation split, it is re-initialised and restarted with the learning rate × 0.4, at most
5 times; the last attempt then trains its full schedule whatever it scores. The reward is the
best validation accuracy over all epochs.

"Chance" for the restart test is the majority-class fraction of the validation split: that is
what a network that collapsed to predicting one class scores, so on an unbalanced validation
split 1/K would count such a network as learning. Failed runs (diverged, out of memory) score
1/K, the accuracy of guessing, so they stay comparable across datasets of equal class count.

Data live in memory as tensors, moved to the device once per call and indexed per batch with a
seeded permutation (a DataLoader only adds overhead for in-memory tensors). On CUDA the model
runs under bf16 autocast with channels_last; on CPU in plain fp32. Divergence and running out of
memory never raise: they return a ``TrainResult`` with ``status="failed"`` so a search goes on.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from nasagent.core.arch import Architecture
from nasagent.core.trial import TrialStatus
from nasagent.errors import ConfigError
from nasagent.training.build import build_model, count_params
from nasagent.training.data import DataBundle, Split
from nasagent.training.settings import BuildOptions, TrainConfig

EVAL_BATCH = 1024


@dataclass
class TrainResult:
    """The outcome of training one architecture.

    ``accuracy`` is the best validation accuracy (the reward), or 1/K when ``status="failed"``,
    with ``failure`` saying why. ``history`` and ``lrs`` hold the validation accuracy and the
    learning rate of every epoch trained, restarted attempts included, so both have
    ``epochs_run`` entries (a diverged epoch, never evaluated, is recorded at 1/K). ``state_dict`` holds
    the best epoch's weights (on CPU) when asked for.
    """

    status: TrialStatus
    accuracy: float
    failure: str | None
    epochs_run: int
    restarts: int
    seconds: float
    params: int
    history: list[float]
    state_dict: dict[str, torch.Tensor] | None
    lrs: list[float] = field(default_factory=list)


def lr_at(epoch: int, base_lr: float, cfg: TrainConfig) -> float:
    """Learning rate of 0-based ``epoch`` of an attempt starting at ``base_lr``: × lr_decay every lr_decay_every epochs,
    or with ``cfg.lr_steps`` the lr of the phase holding ``epoch``, × base_lr / cfg.lr (restarts lower it)."""
    if cfg.lr_steps:
        end = 0
        for lr, n in cfg.lr_steps:
            end += n
            if epoch < end:
                return lr * (base_lr / cfg.lr)
        return cfg.lr_steps[-1][0] * (base_lr / cfg.lr)
    return base_lr * cfg.lr_decay ** (epoch // cfg.lr_decay_every)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: {exc}") from None


def chance_accuracy(y: torch.Tensor) -> float:
    """Majority-class fraction of labels ``y``: what a constant predictor scores."""
    return float(torch.bincount(y).max()) / max(len(y), 1)


def train_architecture(
    arch: Architecture,
    data: DataBundle,
    cfg: TrainConfig,
    options: BuildOptions = BuildOptions(),
    keep_weights: bool = False,
) -> TrainResult:
    """Train ``arch`` on ``data.train`` with the §5 schedule and score it on ``data.val``.

    Returns a ``TrainResult``; a loss that becomes NaN/inf or running out of memory gives
    ``status="failed"`` rather than an exception. Same arch, data and ``cfg.seed`` on CPU give
    the same result. Raises ``ConfigError`` if the architecture's classes do not match the data.
    """
    if arch.terminal.classes != data.num_classes:
        raise ConfigError(
            f"architecture {arch} predicts {arch.terminal.classes} classes but {data.name} has {data.num_classes}"
        )
    start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    guessing = 1.0 / data.num_classes

    torch.manual_seed(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    params = 0
    history: list[float] = []
    lrs: list[float] = []
    restarts = 0

    def result(status: TrialStatus, accuracy: float, failure: str | None, state: dict | None = None) -> TrainResult:
        return TrainResult(
            status,
            accuracy,
            failure,
            len(history),
            restarts,
            time.perf_counter() - start,  # type: ignore[arg-type]
            params,
            history,
            state,
            lrs,
        )

    try:
        train_x, train_y = _to_device(data.train, device, memory_format)
        val_x, val_y = _to_device(data.val, device, memory_format)
        chance = chance_accuracy(data.val.y)
        best, best_state = -1.0, None
        base_lr = cfg.lr
        while True:
            model = build_model(arch, data.input_shape, data.mean, data.std, options)
            model = model.to(device, memory_format=memory_format)
            params = count_params(model)
            optimizer = torch.optim.Adam(model.parameters(), lr=base_lr, betas=cfg.betas, eps=cfg.eps)
            restarted = False
            for epoch in range(cfg.epochs):
                lr = lr_at(epoch, base_lr, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = _train_epoch(model, optimizer, train_x, train_y, cfg.batch_size, shuffle, cuda and cfg.bf16)
                lrs.append(lr)
                if not math.isfinite(loss):
                    history.append(guessing)
                    what = "NaN" if math.isnan(loss) else "infinite"
                    return result(TrialStatus.FAILED, guessing, f"diverged: loss became {what} at epoch {len(history)}")
                accuracy = _evaluate(model, val_x, val_y, cuda and cfg.bf16)
                history.append(accuracy)
                if accuracy > best:
                    best = accuracy
                    if keep_weights:
                        best_state = {
                            k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
                        }
                if epoch == 0 and accuracy <= chance and restarts < cfg.max_restarts:
                    restarts += 1
                    base_lr *= cfg.restart_factor
                    restarted = True
                    break
            if not restarted:
                break
            del model, optimizer
        return result(TrialStatus.DONE, best, None, best_state)
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    # Out of memory. Outside the except block the traceback, which pins the failed step's
    # tensors, is gone; drop this frame's references too before handing the cache back.
    model = optimizer = train_x = train_y = val_x = val_y = best_state = None  # noqa: F841
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result(TrialStatus.FAILED, guessing, f"out of memory: {message}")


def _to_device(
    split: Split, device: torch.device, memory_format: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    x = split.x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    return x, split.y.to(device, non_blocking=True)


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: torch.Generator,
    bf16: bool,
) -> float:
    """One pass over the data; returns the mean loss (read once, so batches never sync the device)."""
    model.train()
    n = len(y)
    order = torch.randperm(n, generator=shuffle).to(x.device)
    total = torch.zeros((), device=x.device)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
    return float(total) / n


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    """Accuracy of ``model`` on ``(x, y)``, in batches without autograd."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(y), EVAL_BATCH):
            correct += (model(x[i : i + EVAL_BATCH]).argmax(dim=1) == y[i : i + EVAL_BATCH]).sum()
    return int(correct) / max(len(y), 1)


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    # The CPU allocator says "can't allocate memory" rather than "out of memory".
    return "out of memory" in text or "can't allocate memory" in text
