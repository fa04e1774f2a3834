"""Trainer throughput against a minimal hand-written PyTorch loop on the same net and data.

Both sides build the same network with ``build_model``, train it with Adam, batch 128, for the
same number of epochs over the same in-memory tensors, and report training samples per second
of wall time (model building included). The minimal loop is measured twice: training only,
and training plus one validation pass per epoch, which the trainer must do to score a network
(the reward is the best validation accuracy). Runs alternate between the loops and the median
of several repeats is reported, since this machine's cores are shared. On a GPU (``--device cuda``)
the minimal loop runs in the trainer's precision and layout (bf16 autocast, channels_last), so
both sides do the same arithmetic, and the result goes to its own section.

    python bench/bench_trainer.py [--repeats 7] [--epochs 3] [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import machine, write_section  # noqa: E402

from nasagent.core.arch import Architecture  # noqa: E402
from nasagent.training.build import build_model  # noqa: E402
from nasagent.training.data import DataBundle, Split  # noqa: E402
from nasagent.training.settings import TrainConfig
from nasagent.training.trainer import resolve_device, train_architecture  # noqa: E402

ARCH = Architecture.parse("[C(32,3,1), P(2,2), C(64,3,1), P(2,2), C(128,3,1), FC(128), SM(10)]")
TARGET = 0.95


def synthetic(n_train: int, n_val: int, seed: int = 0) -> DataBundle:
    """A learnable 32×32×3 set: one random template per class plus noise, values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, 32, 32, generator=g)

    def split(n: int) -> Split:
        y = torch.arange(n) % 10
        x = (0.5 * templates[y] + 0.5 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)
        return Split(x, y)

    train = split(n_train)
    mean = train.x.mean(dim=(0, 2, 3)).tolist()
    std = train.x.std(dim=(0, 2, 3)).tolist()
    return DataBundle("synthetic", train, split(n_val), None, 10, (3, 32, 32), mean, std)


def minimal_loop(data: DataBundle, cfg: TrainConfig, evaluate: bool) -> float:
    """The plain loop: build, Adam, randperm + slicing; optionally one val pass per epoch. Returns seconds."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    layout = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    model = build_model(ARCH, data.input_shape, data.mean, data.std).to(device, memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    x, y = data.train.x.to(device).contiguous(memory_format=layout), data.train.y.to(device)
    vx, vy = data.val.x.to(device).contiguous(memory_format=layout), data.val.y.to(device)
    n = len(y)
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if evaluate:
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                correct = sum(
                    int((model(vx[i : i + 1024]).argmax(1) == vy[i : i + 1024]).sum()) for i in range(0, len(vy), 1024)
                )
            _ = correct / len(vy)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def trainer_run(data: DataBundle, cfg: TrainConfig) -> float:
    start = time.perf_counter()
    result = train_architecture(ARCH, data, cfg)
    seconds = time.perf_counter() - start
    if result.status != "done" or result.restarts:
        raise SystemExit(
            f"benchmark net did not train cleanly: {result.status} {result.failure} restarts={result.restarts}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=2700, help="training samples (the paper's 45,000:5,000 ratio)")
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads, as each search worker uses (default 1)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = synthetic(args.train, args.val)
    # min_steps=0: one pass per epoch, as the minimal loop does (the trainer's default would make an
    # epoch of 2,700 images five passes, to reach 100 optimiser steps).
    cfg = TrainConfig(epochs=args.epochs, threads=args.threads, device=args.device, min_steps=0)
    samples = args.epochs * args.train

    # Warm-up: first calls pay for allocator, kernel selection and lazy initialisation.
    warm = TrainConfig(epochs=1, threads=args.threads, device=args.device, min_steps=0)
    trainer_run(data, warm)
    minimal_loop(data, warm, evaluate=True)

    times: dict[str, list[float]] = {"trainer": [], "minimal + eval": [], "minimal, train only": []}
    for r in range(args.repeats):
        runs = [
            ("trainer", lambda: trainer_run(data, cfg)),
            ("minimal + eval", lambda: minimal_loop(data, cfg, evaluate=True)),
            ("minimal, train only", lambda: minimal_loop(data, cfg, evaluate=False)),
        ]
        for name, run in runs[r % 3 :] + runs[: r % 3]:  # rotate the order against drifting load
            times[name].append(run())
            print(f"repeat {r + 1}: {name}: {samples / times[name][-1]:.0f} samples/s", flush=True)

    rate = {name: samples / statistics.median(t) for name, t in times.items()}
    # Runs of one repeat are adjacent in time, so their ratio cancels most of the drifting load.
    paired = {
        name: statistics.median(m / t for m, t in zip(times[name], times["trainer"]))
        for name in ("minimal + eval", "minimal, train only")
    }
    device = resolve_device(cfg.device).type
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    body = f"""## Trainer throughput (`bench/bench_trainer.py`)

Machine: {machine()}; device {device}, {args.threads} CPU thread(s); load average (1/5/15 min) at the end: {load}
(the cores are shared with other work, hence the alternating order and medians).
Net `{ARCH}` on a synthetic learnable 32×32×3 set ({args.train} train / {args.val} validation, 10 classes),
Adam, batch 128, {args.epochs} epochs (one pass each) per run, median of {args.repeats} runs,
samples/s = training samples / wall seconds of the whole call (model building included).

| loop | samples/s (median run) | trainer / loop (median of paired ratios) |
| --- | ---: | ---: |
| `train_architecture` | {rate["trainer"]:.0f} | — |
| minimal loop + one validation pass per epoch (same work) | {rate["minimal + eval"]:.0f} \
| {paired["minimal + eval"]:.3f} |
| minimal loop, training only | {rate["minimal, train only"]:.0f} | {paired["minimal, train only"]:.3f} |

Paired ratio: in each repeat, the loop's seconds over the trainer's; their median is reported.
Target: ratio ≥ {TARGET} against the minimal loop doing the same work: \
{"met" if paired["minimal + eval"] >= TARGET else "NOT met"}.
The training-only loop skips the per-epoch validation the trainer needs for its reward
({args.val} of {args.train + args.val} samples, forward only), so that ratio is bounded by that share.
"""
    print(body)
    write_section("bench_trainer" if device == "cpu" else f"bench_trainer_{device}", body)


if __name__ == "__main__":
    main()
