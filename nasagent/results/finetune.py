"""Finetuning: the top-k architectures of a search, retrained with §5's long schedule, tested, exported.

After the search the paper selects the top ten models and trains them again "using a much longer
training schedule" (§5): Adam with all other parameters unchanged and step learning rates, for
CIFAR-10 0.025 for 40 epochs, 0.0125 for 40, 0.0001 for 160 and 0.00001 for 60; for SVHN 0.025,
0.0125, 0.0001, 0.00001 for 5, 5, 20 and 10 epochs. Schedules here are written the same way,
``LR:EPOCHS,...``; ``paper-cifar`` and ``paper-svhn`` name the paper's two.

The default schedule has the paper-cifar shape (the four learning rates, epochs in the ratio
40:40:160:60) over ``default_epochs`` epochs: the paper's finetune shows each CIFAR-10 image
300 times (15M samples); scaled down a hundredfold that is 150,000 samples, clamped to 15..300
epochs (the schedule's epochs, which on a small set hold several passes: see
``TrainConfig.min_steps``) and never fewer than the search trained each network (CIFAR-10, SVHN:
20, the search's). ``epochs`` rescales any schedule to that many epochs (``scale_schedule``).

**Recipe** (``recipe="paper"``, the default; ``"plain"`` drops it), §5 per dataset: CIFAR-10 images
are globally contrast-normalised (the model's first layer, so inference does it too) and
augmented while training by random mirroring and random translations of up to 5 pixels; SVHN adds
its extra training set (531,131 images) when its file is already under the data directory
(``svhn`` with torchvision's ``split="extra"``; it is never downloaded implicitly: 1.3 GB). MNIST
and the rest train as in the search (Table 3: no augmentation for MNIST and SVHN).

**Two phases** (``refit=True``, the default), as the paper: "we used the same validation set to
tune hyperparameters, resulting in a final training scheme which we ran on the entire training set".

1. Each model trains on the train split; the validation split picks its best epoch, gives its
   ``val_accuracy`` and ranks the finetuned models (the ensemble's members and best single
   model are chosen by it); the §5 restart rule applies.
2. The final model trains again from scratch on train + validation with the same schedule (at the
   learning rate phase 1 settled on after its restarts, none now) and its *final* epoch is kept:
   no data is left to choose an epoch with. It is the exported model and gives ``test_accuracy``,
   on the test split no phase saw.

With ``refit=False`` the phase-1 model (best validation epoch) is exported and tested.

* **Initialisation.** Models train from scratch (Xavier, seeded like the search's trial), as a
  schedule that starts at a learning rate 25× the search's implies.
* **Ranks** are the search's ranks (``nasagent top``), so ``rank-1`` is always the search's best.

Each model is exported to ``<experiment>/finetuned/rank-<r>/`` in the artifact store
(``nasagent.training.models``), with its metrics in ``model.json``; the run's report goes to
``<experiment>/reports/finetune.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasagent.core.networks import parse_network
from nasagent.core.trial import trial_seed
from nasagent.errors import ConfigError, DataError
from nasagent.persistence.artifacts import ArtifactStore, experiment_key
from nasagent.persistence.postgres import Store
from nasagent.training.models import (
    accuracy,
    export_to_store,
    finetuned_prefix,
    list_models,
    model_metadata,
    predict_proba,
    restore_module,
)
from nasagent.training.settings import BuildOptions, TrainConfig
from nasagent.training.sources import DataBundle, Split, as_float
from nasagent.training.trainer import resolve_device, train_architecture

Schedule = tuple[tuple[float, int], ...]

PAPER_SCHEDULES: dict[str, str] = {
    "paper-cifar": "0.025:40,0.0125:40,0.0001:160,0.00001:60",
    "paper-svhn": "0.025:5,0.0125:5,0.0001:20,0.00001:10",
}
DEFAULT_SHAPE = "paper-cifar"
SAMPLES_SEEN = 150_000
MIN_EPOCHS, MAX_EPOCHS = 15, 300
RECIPES = ("paper", "plain")
CIFAR_MAX_SHIFT = 5
"""§5: "random translation by up to 5 pixels"."""


REFIT_TOLERANCE = 0.05
"""How far below phase 1's validation accuracy a refit may end, on the validation images it trained on,
before it counts as diverged (its model is then not exported; the phase-1 model is)."""


def parse_schedule(text: str) -> Schedule:
    """``paper-cifar``, ``paper-svhn`` or ``LR:EPOCHS,...`` as (lr, epochs) phases; ConfigError if malformed."""
    text = PAPER_SCHEDULES.get(text.strip(), text)
    phases = []
    for part in text.split(","):
        lr_text, sep, epochs_text = part.strip().partition(":")
        try:
            lr, epochs = float(lr_text), int(epochs_text)
        except ValueError:
            lr, epochs = float("nan"), 0
        if not sep or not lr > 0 or lr == float("inf") or epochs < 1:
            raise ConfigError(
                f"--schedule must be paper-cifar, paper-svhn or LR:EPOCHS,... with LR > 0 and EPOCHS >= 1, got {text!r}"
            )
        phases.append((lr, epochs))
    return tuple(phases)


def scale_schedule(schedule: Schedule, epochs: int) -> Schedule:
    """``schedule`` stretched or shrunk to ``epochs`` epochs in all, keeping the phases' ratio.

    Largest-remainder rounding (so scaling paper-cifar to 15 epochs gives 2, 2, 8, 3), then any
    phase left at zero takes an epoch from the longest; with fewer epochs than phases only the
    first (highest learning-rate) phases remain, one epoch each.
    """
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    if epochs <= len(schedule):
        return tuple((lr, 1) for lr, _ in schedule[:epochs])
    total = sum(n for _, n in schedule)
    ideal = [epochs * n / total for _, n in schedule]
    counts = [int(v) for v in ideal]
    by_remainder = sorted(range(len(schedule)), key=lambda i: (-(ideal[i] - counts[i]), i))
    for i in by_remainder[: epochs - sum(counts)]:
        counts[i] += 1
    for i, count in enumerate(counts):
        if count == 0:
            counts[counts.index(max(counts))] -= 1
            counts[i] = 1
    return tuple((lr, count) for (lr, _), count in zip(schedule, counts))


def default_epochs(train_size: int, search_epochs: int = 0, min_steps: int = 0, batch_size: int = 128) -> int:
    """Finetuning epochs for a training split of ``train_size`` images (see the module docstring): the
    epochs that show about 150,000 samples (an epoch being ``TrainConfig.min_steps``' unit), clamped to
    15..300, and never fewer than ``search_epochs``."""
    steps_per_pass = max(1, -(-max(train_size, 1) // batch_size))
    samples_per_epoch = max(train_size, 1) * max(1, -(-min_steps // steps_per_pass))
    epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, round(SAMPLES_SEEN / samples_per_epoch)))
    return max(epochs, search_epochs)


def resolve_schedule(
    schedule: str | None, epochs: int | None, train_size: int, search_epochs: int = 0, min_steps: int = 0
) -> Schedule:
    """The schedule to train with: ``schedule`` (default: the paper-cifar shape over ``default_epochs``),
    rescaled to ``epochs`` if given.
    """
    if schedule is None:
        length = epochs or default_epochs(train_size, search_epochs, min_steps)
        return scale_schedule(parse_schedule(DEFAULT_SHAPE), length)
    phases = parse_schedule(schedule)
    return phases if epochs is None else scale_schedule(phases, epochs)


def finetune_experiment(
    db: Store,
    name: str,
    store: ArtifactStore,
    top: int = 10,
    schedule: str | None = None,
    epochs: int | None = None,
    device: str = "auto",
    onnx: bool = False,
    on_model: Callable[[dict[str, Any]], None] | None = None,
    only_rank: int | None = None,
    recipe: str = "paper",
    refit: bool = True,
) -> dict[str, Any]:
    """Finetune the ``top`` best trials of experiment ``name``, export each to ``store``, return the report.

    ``recipe`` (``paper``: §5's per-dataset preprocessing, augmentation and extra data; ``plain``) and
    ``refit`` (the final phase on train + validation) are described in the module docstring.
    ``on_model`` is called with each model's row as soon as it is done. ``only_rank`` finetunes
    that rank alone (``top`` is then ignored; one ParallelFor iteration of the Kubeflow pipeline):
    other ranks' models are left alone and the report goes to ``reports/finetune-rank-<r>.json``.
    Raises StoreError for an unknown experiment, ConfigError for bad settings or an experiment
    with no finished trial, DataError if the dataset has no test split, ArtifactError if the
    store fails.
    """
    from nasagent.config import SearchConfig

    if only_rank is not None:
        if only_rank < 1:
            raise ConfigError(f"--rank must be at least 1, got {only_rank}")
        top = only_rank
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    experiment = db.get_experiment(name)
    finetuned_prefix(name, 1)  # the name must be usable in artifact keys
    trials = db.top(experiment.id, top)
    if not trials:
        raise ConfigError(f"experiment {name!r} has no finished trial to finetune yet")
    if only_rank is not None and len(trials) < only_rank:
        raise ConfigError(f"experiment {name!r} has {len(trials)} finished trial(s): no rank {only_rank} to finetune")
    config = SearchConfig.from_dict(experiment.config)
    settings = config.trial_settings(device)
    data = settings.load_data()
    if data.test is None:
        raise DataError(f"dataset {data.name} has no test split to evaluate finetuned models on")
    search_epochs = settings.train.epochs
    phases = resolve_schedule(schedule, epochs, len(data.train), search_epochs, settings.train.min_steps)
    total = sum(n for _, n in phases)
    base_train, build, extras = paper_recipe(config.dataset, settings.train, settings.build, settings.data_dir, recipe)
    full = with_extra(data, extras, include_val=True) if refit else None
    data = with_extra(data, extras, include_val=False)
    rows = []
    for rank, trial in enumerate(trials, start=1):
        if only_rank is not None and rank != only_rank:
            continue
        train = dataclasses.replace(
            base_train,
            epochs=total,
            lr=phases[0][0],
            lr_steps=phases,
            seed=trial_seed(config.seed, trial.digest),
            score="best",
        )
        started = time.perf_counter()
        network = parse_network(trial.arch)
        result = train_architecture(network, data, train, build, keep_weights=True)
        val_accuracy, restarts = result.accuracy, result.restarts
        refit_rejected: str | None = None
        if refit and full is not None and result.status == "done":
            # Phase 2: the same schedule from scratch on train + validation, at the learning rate phase 1
            # settled on, no restarts (nothing held out to judge by), the final epoch kept.
            factor = train.restart_factor**result.restarts
            steps = tuple((lr * factor, n) for lr, n in phases)
            final = dataclasses.replace(train, lr=steps[0][0], lr_steps=steps, max_restarts=0, score="final")
            refitted = train_architecture(network, full, final, build, keep_weights=True)
            # With no restarts a refit can diverge; it saw the validation images, so ending far below
            # phase 1's validation accuracy on them means it did: keep the phase-1 model then.
            if refitted.status == "done" and refitted.accuracy >= val_accuracy - REFIT_TOLERANCE:
                result = refitted
            else:
                refit_rejected = (
                    f"refit ended at {refitted.accuracy:.4f} on data it trained on (phase 1: {val_accuracy:.4f}); "
                    "kept the phase-1 model"
                )
        row: dict[str, Any] = {
            "rank": rank,
            "trial_id": trial.id,
            "arch": trial.arch,
            "status": result.status,
            "search_accuracy": trial.accuracy,
            "val_accuracy": val_accuracy,
            "test_accuracy": None,
            "refit": refit and refit_rejected is None,
            "refit_rejected": refit_rejected,
            "params": result.params,
            "epochs_run": result.epochs_run,
            "restarts": restarts,
            "train_seconds": round(time.perf_counter() - started, 3),
            "failure": result.failure,
            "location": None,
        }
        prefix = finetuned_prefix(name, rank)
        if result.status == "done" and result.state_dict is not None:
            metrics = {
                k: row[k]
                for k in ("search_accuracy", "val_accuracy", "params", "epochs_run", "restarts", "train_seconds")
            }
            meta = model_metadata(
                trial.arch,
                data.input_shape,
                data.mean,
                data.std,
                data.num_classes,
                build,
                metrics,
                experiment=name,
                rank=rank,
                trial_id=trial.id,
                dataset=data.name,
                schedule=[list(p) for p in phases],
            )
            module = restore_module(meta, result.state_dict)
            row["test_accuracy"] = meta["metrics"]["test_accuracy"] = accuracy(
                predict_proba(module, data.test.x, resolve_device(device)), data.test.y
            )
            export_to_store(store, meta, result.state_dict, prefix, onnx=onnx)
            row["location"] = f"{store.url}/{prefix}"
        else:
            store.delete_prefix(prefix)  # an older run's model of this rank would no longer be the rank's
        rows.append(row)
        if on_model is not None:
            on_model(row)
    # Ranks beyond this run's top belong to an earlier, larger run: they are no longer the top k.
    for model in list_models(store, name) if only_rank is None else []:
        if model["rank"] > len(trials):
            store.delete_prefix(finetuned_prefix(name, model["rank"]))
    report = {
        "experiment": name,
        "dataset": data.name,
        "recipe": recipe,
        "gcn": build.gcn,
        "mirror": base_train.mirror,
        "max_shift": base_train.max_shift,
        "extra_train_size": len(extras) if extras is not None else 0,
        "refit": refit,
        "search_epochs": search_epochs,
        "artifacts": store.url,
        "schedule": [list(p) for p in phases],
        "epochs": total,
        "train_size": len(data.train),
        "val_size": len(data.val),
        "test_size": len(data.test),
        "models": rows,
    }
    report_name = "finetune.json" if only_rank is None else f"finetune-rank-{only_rank}.json"
    store.put_bytes(experiment_key(name, "reports", report_name), json.dumps(report, indent=2).encode())
    return report


def paper_recipe(
    dataset: str, train: TrainConfig, build: BuildOptions, data_dir: str, recipe: str
) -> tuple[TrainConfig, BuildOptions, Split | None]:
    """§5's finetuning recipe for ``dataset`` (module docstring): the training settings, the build options
    and any extra training images. ``recipe="plain"`` returns the search's settings unchanged."""
    if recipe == "paper" and dataset == "cifar10":
        return (
            dataclasses.replace(train, mirror=True, max_shift=CIFAR_MAX_SHIFT),
            dataclasses.replace(build, gcn=True),
            None,
        )
    if recipe == "paper" and dataset == "svhn":
        return train, build, svhn_extra(Path(data_dir))
    return train, build, None


def svhn_extra(root: Path) -> Split | None:
    """SVHN's extra training set (531,131 images) if torchvision finds it under ``root`` already; None otherwise."""
    try:
        from torchvision import datasets

        extra = datasets.SVHN(str(root), split="extra", download=False)
    except Exception:  # not downloaded, torchvision or scipy missing: the recipe goes without it
        return None
    x = torch.from_numpy(np.ascontiguousarray(extra.data))  # N×3×32×32 uint8 codes, as the train split
    y = torch.from_numpy(np.asarray(extra.labels, dtype=np.int64))
    return Split(x, y)


def with_extra(data: DataBundle, extra: Split | None, include_val: bool) -> DataBundle:
    """``data`` whose training split also holds ``extra`` and, with ``include_val``, the validation split
    (which stays in place as ``val``: during the final phase it only fills the history)."""
    parts = [data.train] + ([data.val] if include_val else []) + ([extra] if extra is not None else [])
    if len(parts) == 1:
        return data
    same = all(part.x.dtype == parts[0].x.dtype for part in parts)
    x = torch.cat([part.x if same else as_float(part.x) for part in parts])
    y = torch.cat([part.y for part in parts])
    return dataclasses.replace(data, train=Split(x, y))


def schedule_text(phases: Sequence[Sequence[float]]) -> str:
    """Phases in the ``LR:EPOCHS,...`` form the ``--schedule`` flag reads."""
    return ",".join(f"{lr:g}:{int(n)}" for lr, n in phases)
