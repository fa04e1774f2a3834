"""Trains one architecture with the paper's quick exploration schedule (§5) and scores it.

Schedule: Adam (β = 0.9, 0.999, ε = 1e-8), batch 128, learning rate 1e-3 multiplied by 0.2
every 5 epochs, 20 epochs. If after the first epoch the network is no better than chance on
the validation split (a NaN or infinite loss in that epoch is no better either), it is
re-initialised and restarted with the learning rate × 0.4, at most 5 times; if the last attempt
is still no better, the trial fails with 1/K, as in the authors' code (``caffe_client.py``: a
model no learning rate could start scores 1/K). ``max_restarts=0`` switches the rule off. The
reward is the best validation accuracy of the surviving attempt (``score="final"``: its final
epoch's, the NAS environment's rule); earlier attempts are discarded. A loss that blows up after
the network has started learning ends the attempt, which keeps the best accuracy it reached.

An epoch of the schedule is the fewest whole passes over the training split with at least
``cfg.min_steps`` (100) optimiser steps: one pass on any set of 12,800 images or more (the
paper's datasets), several on a small one, so a small dataset gets a fair trial (README, "Small
datasets"). ``cfg.mirror`` and ``cfg.max_shift`` augment training batches (§5, CIFAR-10 finetuning).

"Chance" for the restart test is the majority-class fraction of the validation split: that is
what a network that collapsed to predicting one class scores, so on an unbalanced validation
split 1/K would count such a network as learning. Failed runs (diverged, out of memory) score
1/K, the accuracy of guessing, so they stay comparable across datasets of equal class count.

Data live in memory as tensors (8-bit images as uint8, turned into floats per batch), moved to the
device once per call and indexed per batch with a seeded permutation (a DataLoader only adds
overhead for in-memory tensors). With a ``memory_limit`` a network whose estimated training memory
exceeds it is not built at all: it fails as "does not fit" (:mod:`nasagent.training.memory`). On CUDA the model
runs under bf16 autocast with channels_last; on CPU in plain fp32. Divergence and running out of
memory never raise: they return a ``TrainResult`` with ``status="failed"`` so a search goes on.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from nasagent.core.arch import Architecture
from nasagent.core.nsc import NSCNetwork
from nasagent.core.trial import TrialStatus
from nasagent.errors import ConfigError
from nasagent.training.build import build_model, count_params
from nasagent.training.data import DataBundle, Split
from nasagent.training.memory import estimate_training_memory, gib
from nasagent.training.settings import BuildOptions, TrainConfig
from nasagent.training.sources import as_float

EVAL_BATCH = 1024


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch just trained, as ``train_architecture`` reports it to its ``on_epoch`` callback.

    ``epoch`` counts every epoch of the call from 1, restarted attempts included (``restarts``
    re-initialisations came before it); ``val_accuracy`` is None when the loss diverged (the
    epoch was not evaluated) and ``train_loss`` may then be NaN or infinite; ``elapsed`` is the
    seconds since the call started (an epoch's own time is the difference to the previous one).
    """

    epoch: int
    train_loss: float
    val_accuracy: float | None
    lr: float
    restarts: int
    elapsed: float


@dataclass(frozen=True)
class StopTraining:
    """What an ``on_epoch`` callback returns to end the training after the epoch it was shown (early
    stopping: the experiment's rule judged the network hopeless). ``reason`` says where and why;
    ``predicted`` is the predicted final accuracy when the rule made one (the network's reward)."""

    reason: str
    predicted: float | None = None


@dataclass
class TrainResult:
    """The outcome of training one architecture.

    ``accuracy`` is the best (or, with ``score="final"``, the last) validation accuracy of the
    surviving attempt: the reward; or 1/K when ``status="failed"``, with ``failure`` saying why.
    ``history`` and ``lrs`` hold the validation accuracy and the learning rate of every epoch
    trained, restarted attempts included, so both have ``epochs_run`` entries (a diverged epoch,
    never evaluated, is recorded at 1/K). ``state_dict`` holds the scored epoch's weights (on CPU)
    when asked for.
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
    stopped_epoch: int | None = None
    """With ``status="stopped"``: the epoch after which an ``on_epoch`` callback stopped the training
    (``accuracy`` is then the accuracy reached so far, ``failure`` the callback's reason)."""
    predicted_accuracy: float | None = None
    """With ``status="stopped"``: the predicted final accuracy the stop came with, if any."""


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
    arch: Architecture | NSCNetwork,
    data: DataBundle,
    cfg: TrainConfig,
    options: BuildOptions = BuildOptions(),
    keep_weights: bool = False,
    on_epoch: Callable[[EpochMetrics], StopTraining | None] | None = None,
) -> TrainResult:
    """Train ``arch`` on ``data.train`` with the §5 schedule and score it on ``data.val``.

    Returns a ``TrainResult``; a network that never beats chance, diverges before it learns or
    runs out of memory gives ``status="failed"`` rather than an exception. Same arch, data and ``cfg.seed`` on CPU give
    the same result. Raises ``ConfigError`` if the architecture's classes do not match the data.
    ``on_epoch``, if given, is called with the ``EpochMetrics`` of every epoch as soon as it is
    trained and evaluated (the trial worker writes them to the store: live learning curves); if it
    returns a ``StopTraining`` after an evaluated epoch, the training ends there with
    ``status="stopped"`` (early stopping), the accuracy reached so far and the signal's prediction.
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

    def result(
        status: TrialStatus,
        accuracy: float,
        failure: str | None,
        state: dict | None = None,
        stop: StopTraining | None = None,
    ) -> TrainResult:
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
            len(history) if stop is not None else None,
            stop.predicted if stop is not None else None,
        )

    if cfg.memory_limit is not None:
        on_device = data_bytes(data) if cuda else 0  # on a CPU the worker holds the data already
        batch, eval_batch = min(cfg.batch_size, len(data.train)), min(EVAL_BATCH, len(data.val))
        need = estimate_training_memory(arch, data.input_shape, batch, on_device, eval_batch)
        if need.total > cfg.memory_limit:
            params = need.params
            reason = f"does not fit: training needs {need.describe()}; a worker may use {gib(cfg.memory_limit)}"
            return result(TrialStatus.FAILED, guessing, reason)
    try:
        train_x, train_y = _to_device(data.train, device, memory_format)
        val_x, val_y = _to_device(data.val, device, memory_format)
        chance = chance_accuracy(data.val.y)
        passes = passes_per_epoch(len(train_y), cfg)
        judge = cfg.max_restarts > 0  # max_restarts 0 switches the first-epoch rule off
        base_lr = cfg.lr
        while True:
            model = build_model(arch, data.input_shape, data.mean, data.std, options)
            model = model.to(device, memory_format=memory_format)
            params = count_params(model)
            optimizer = torch.optim.Adam(model.parameters(), lr=base_lr, betas=cfg.betas, eps=cfg.eps)
            # Each attempt is scored on its own: a restart discards everything before it (finding 2).
            score, state, diverged, restart = -1.0, None, None, False
            for epoch in range(cfg.epochs):
                lr = lr_at(epoch, base_lr, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = _train_epoch(model, optimizer, train_x, train_y, cfg, passes, shuffle, cuda and cfg.bf16)
                lrs.append(lr)
                if math.isfinite(loss):
                    accuracy: float | None = _evaluate(model, val_x, val_y, cuda and cfg.bf16)
                    history.append(accuracy)  # type: ignore[arg-type]
                else:
                    accuracy = None
                    history.append(guessing)
                    what = "NaN" if math.isnan(loss) else "infinite"
                    diverged = f"diverged: loss became {what} at epoch {len(history)}"
                stop = None
                if on_epoch is not None:  # the epoch is over: report it before deciding what comes next
                    stop = on_epoch(
                        EpochMetrics(len(history), loss, accuracy, lr, restarts, time.perf_counter() - start)
                    )
                if stop is not None and accuracy is not None:
                    # Stopped early: the reward so far counts this epoch, as it would have counted it
                    # had the training gone on.
                    if cfg.score == "final" or accuracy > score:
                        score = accuracy
                        if keep_weights:
                            state = {
                                k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
                            }
                    return result(TrialStatus.STOPPED, score, stop.reason, state, stop)
                # §5: no better than a random predictor after the first epoch (a diverged epoch is
                # no better either) -> re-initialise with the learning rate x 0.4, at most
                # max_restarts times; the authors' code gives up after the last one (1/K).
                if judge and epoch == 0 and (accuracy is None or accuracy <= chance):
                    if restarts < cfg.max_restarts:
                        restarts += 1
                        base_lr *= cfg.restart_factor
                        restart = True
                        break
                    reason = diverged or (
                        f"not learning: no better than chance ({chance:.4f}) after the first epoch "
                        f"of each of {restarts + 1} attempts"
                    )
                    return result(TrialStatus.FAILED, guessing, reason)
                if accuracy is None:
                    break  # a network that diverged after it had started learning stops here
                if cfg.score == "final" or accuracy > score:
                    score = accuracy
                    if keep_weights:
                        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
            if not restart:
                break
            del model, optimizer
        if diverged is not None and (cfg.score == "final" or score < 0):
            # The final network is broken (or nothing was learnt before the loss blew up): 1/K.
            return result(TrialStatus.FAILED, guessing, diverged)
        # A late divergence keeps the best accuracy reached before it, as the authors' code does
        # (Caffe trains on through the NaNs and the best test accuracy is taken).
        return result(TrialStatus.DONE, score, None, state)
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    # Out of memory. Outside the except block the traceback, which pins the failed step's
    # tensors, is gone; drop this frame's references too before handing the cache back.
    model = optimizer = train_x = train_y = val_x = val_y = state = None  # noqa: F841
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result(TrialStatus.FAILED, guessing, f"out of memory: {message}")


def data_bytes(data: DataBundle) -> int:
    """Bytes of the training and validation images and labels (what ``train_architecture`` moves to its device)."""
    return sum(t.element_size() * t.nelement() for split in (data.train, data.val) for t in (split.x, split.y))


def _to_device(
    split: Split, device: torch.device, memory_format: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    x = split.x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    return x, split.y.to(device, non_blocking=True)


def passes_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    """Whole passes over ``n_train`` images that make one epoch of the schedule: the fewest with at
    least ``cfg.min_steps`` optimiser steps (one pass whenever a pass has that many already)."""
    steps_per_pass = max(1, -(-n_train // cfg.batch_size))
    return max(1, -(-cfg.min_steps // steps_per_pass))


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    passes: int,
    shuffle: torch.Generator,
    bf16: bool,
) -> float:
    """One epoch of the schedule, ``passes`` shuffled passes over the data; returns the mean loss
    (read once, so batches never sync the device)."""
    model.train()
    n = len(y)
    total = torch.zeros((), device=x.device)
    for _ in range(passes):
        order = torch.randperm(n, generator=shuffle).to(x.device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            batch = as_float(x[idx])
            if cfg.mirror or cfg.max_shift:
                batch = augment(batch, cfg.mirror, cfg.max_shift, shuffle)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(batch), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
    return float(total) / (n * passes)


def augment(x: torch.Tensor, mirror: bool, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """§5's "moderate data augmentation" of a batch N x C x H x W: each image mirrored left-right with
    probability 1/2 (``mirror``) and translated by up to ``max_shift`` pixels along each axis, the
    uncovered border filled with zeros. Random numbers come from ``generator`` (seeded: reproducible)."""
    n, c, h, w = x.shape
    if mirror:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if max_shift:
        s = max_shift
        padded = nn.functional.pad(x, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
        x = padded[batch, channel, rows, cols]
    return x


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    """Accuracy of ``model`` on ``(x, y)``, in batches without autograd."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(y), EVAL_BATCH):
            correct += (model(as_float(x[i : i + EVAL_BATCH])).argmax(dim=1) == y[i : i + EVAL_BATCH]).sum()
    return int(correct) / max(len(y), 1)


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    # The CPU allocator says "can't allocate memory" rather than "out of memory".
    return "out of memory" in text or "can't allocate memory" in text
