"""Ensemble evaluation (Table 3's "MetaQNN (ensemble)"): the top models vote by averaging their softmax outputs.

Members are the finetuned models of the experiment (``nasagent finetune``), best validation
accuracy first (ties: better search rank), or, when none were finetuned, the search's
checkpoints (``nasagent search --artifacts``), best search accuracy first. Each member and the
ensemble are scored on the test split, which no member saw in training or selection.

The "best single model" set beside the ensemble (Table 3's "MetaQNN (top model)") is the member
best on *validation* (ties: better search rank), and its test accuracy is reported, as the note
under Table A3 says the paper did. Taking the member with the highest test accuracy would select
on the test set and overstate the single model.
The report also goes to ``<experiment>/reports/ensemble.json``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from nasagent.errors import ConfigError, DataError
from nasagent.persistence.artifacts import ArtifactStore, experiment_key
from nasagent.persistence.postgres import Store
from nasagent.training.checkpoints import checkpoint_ids, load_checkpoint
from nasagent.training.models import (
    accuracy,
    finetuned_prefix,
    list_models,
    load_stored_model,
    predict_proba,
    restore_module,
)
from nasagent.training.trainer import resolve_device

DEFAULT_TOP = 5


def ensemble_members(
    db: Store, name: str, store: ArtifactStore, top: int
) -> tuple[str, list[tuple[dict[str, Any], nn.Module]]]:
    """(source, [(row, module)]): up to ``top`` members, finetuned models if there are any, else checkpoints.

    ConfigError if the experiment has neither in ``store``.
    """
    experiment = db.get_experiment(name)
    finetuned = [m for m in list_models(store, name) if m["metrics"].get("val_accuracy") is not None]
    if finetuned:
        finetuned.sort(key=lambda m: (-m["metrics"]["val_accuracy"], m["rank"]))
        members = []
        for model in finetuned[:top]:
            row = {
                "rank": model["rank"],
                "trial_id": model["source"].get("trial_id"),
                "arch": model["architecture"],
                "val_accuracy": model["metrics"]["val_accuracy"],
            }
            members.append((row, load_stored_model(store, finetuned_prefix(name, model["rank"]))))
        return "finetuned", members
    saved = set(checkpoint_ids(store, name))
    if saved:
        # Ranks as in ``nasagent top``: checkpoints are kept for the best trials only.
        everything = db.top(experiment.id, db.counts(experiment.id)["unique_trained"])
        ranked = [(rank, trial) for rank, trial in enumerate(everything, start=1) if trial.id in saved]
        members = []
        for rank, trial in ranked[:top]:
            meta, state = load_checkpoint(store, name, trial.id)
            row = {"rank": rank, "trial_id": trial.id, "arch": trial.arch, "val_accuracy": trial.accuracy}
            members.append((row, restore_module(meta, state)))
        if members:
            return "checkpoints", members
    raise ConfigError(
        f"experiment {name!r} has no finetuned models or checkpoints in {store.url}: "
        f"run nasagent finetune (or search with --artifacts), or pass the --artifacts they used"
    )


def ensemble_experiment(
    db: Store, name: str, store: ArtifactStore, top: int = DEFAULT_TOP, device: str = "auto"
) -> dict[str, Any]:
    """Score the top ``top`` models of experiment ``name`` and their softmax average on the test split;
    return the report.
    """
    from nasagent.config import SearchConfig

    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    experiment = db.get_experiment(name)
    source, members = ensemble_members(db, name, store, top)
    data = SearchConfig.from_dict(experiment.config).trial_settings(device).load_data()
    if data.test is None:
        raise DataError(f"dataset {data.name} has no test split to evaluate the ensemble on")
    target = resolve_device(device)
    total = torch.zeros(len(data.test), data.num_classes)
    rows = []
    for row, module in members:
        probabilities = predict_proba(module, data.test.x, target)
        total += probabilities
        rows.append({**row, "test_accuracy": accuracy(probabilities, data.test.y)})
    # Members come best on validation first; ties keep the better search rank (see ensemble_members).
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["rank"]))
    report = {
        "experiment": name,
        "source": source,
        "requested": top,
        "members": rows,
        "test_size": len(data.test),
        "best_single": {k: best[k] for k in ("rank", "arch", "val_accuracy", "test_accuracy")},
        "best_single_test_accuracy": best["test_accuracy"],
        "ensemble_test_accuracy": accuracy(total / len(members), data.test.y),
    }
    store.put_bytes(experiment_key(name, "reports", "ensemble.json"), json.dumps(report, indent=2).encode())
    return report
