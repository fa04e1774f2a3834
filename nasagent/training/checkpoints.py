"""Search checkpoints: the trained weights of the current top-k trials of an experiment, nothing more.

The trial worker saves the best-epoch weights of every trial it trains to
``<experiment>/checkpoints/trial-<id>.pt`` (when the search has an artifact store). After each
trial is recorded the search's ``CheckpointKeeper`` (:mod:`nasagent.search.keeper`) deletes the
checkpoints of finished trials outside the top k, so the store holds about k checkpoints, plus
those of trials still training, whatever the length of the search.

A checkpoint is one ``torch.save`` file: ``{"metadata": <model.json dict>, "state_dict": ...}``,
the same metadata a finetuned model directory has (``nasagent.training.models``), so
``nasagent.training.models.restore_module`` turns either into a module.
"""

from __future__ import annotations

import io
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import torch

from nasagent.errors import ArtifactError, ModelError
from nasagent.persistence.artifacts import ArtifactStore, experiment_key, open_artifacts
from nasagent.training.models import model_metadata

if TYPE_CHECKING:
    from nasagent.core.trial import TrialSpec
    from nasagent.training.data import DataBundle
    from nasagent.training.settings import TrialSettings
    from nasagent.training.trainer import TrainResult

log = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^trial-(\d+)\.pt$")
SAVE_ATTEMPTS = 3
RETRY_DELAY_S = 2.0


def checkpoint_prefix(experiment: str) -> str:
    """``<experiment>/checkpoints/``."""
    return experiment_key(experiment, "checkpoints") + "/"


def checkpoint_key(experiment: str, trial_id: int) -> str:
    """``<experiment>/checkpoints/trial-<id>.pt``."""
    return experiment_key(experiment, "checkpoints", f"trial-{int(trial_id)}.pt")


def checkpoint_ids(store: ArtifactStore, experiment: str) -> list[int]:
    """Trial ids of the checkpoints ``store`` holds for ``experiment``, ascending."""
    prefix = checkpoint_prefix(experiment)
    ids = []
    for key in store.list(prefix):
        match = _CHECKPOINT.match(key[len(prefix) :])
        if match:
            ids.append(int(match.group(1)))
    return sorted(ids)


def save_checkpoint(
    store: ArtifactStore, experiment: str, trial_id: int, metadata: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> str:
    """Write the checkpoint of a trial; return its key."""
    buffer = io.BytesIO()
    torch.save(
        {"metadata": metadata, "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}}, buffer
    )
    key = checkpoint_key(experiment, trial_id)
    store.put_bytes(key, buffer.getvalue())
    return key


def load_checkpoint(
    store: ArtifactStore, experiment: str, trial_id: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, state_dict) of a trial's checkpoint; ArtifactError if there is none."""
    key = checkpoint_key(experiment, trial_id)
    data = store.get_bytes(key)
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return dict(saved["metadata"]), dict(saved["state_dict"])
    except Exception as exc:  # a damaged or foreign file: pickle, zip, key or type errors
        raise ModelError(f"cannot read checkpoint {key} in {store.url}: {type(exc).__name__}") from None


def save_trial_checkpoint(
    settings: TrialSettings, spec: TrialSpec, data: DataBundle, result: TrainResult
) -> str | None:
    """Called by the trial worker after training: save the best-epoch weights if the search keeps checkpoints.

    A failed write is retried (``SAVE_ATTEMPTS`` in all, ``RETRY_DELAY_S`` apart, then twice
    that...): a store that hiccups must not cost a checkpoint. Returns None on success (or when
    there is nothing to save) and the last reason otherwise, which the worker puts in the outcome
    as ``checkpoint_error``: the trial stays trained (not failed), and the search's checkpoint
    keeper stops the search with that reason (``nasagent.search.keeper``).
    """
    if (
        settings.artifacts is None
        or settings.experiment is None
        or result.status != "done"
        or result.state_dict is None
    ):
        return None
    metadata = model_metadata(
        spec.arch,
        data.input_shape,
        data.mean,
        data.std,
        data.num_classes,
        settings.build,
        {
            "val_accuracy": result.accuracy,
            "params": result.params,
            "epochs_run": result.epochs_run,
            "restarts": result.restarts,
        },
        experiment=settings.experiment,
        trial_id=spec.trial_id,
        dataset=data.name,
        seed=spec.seed,
    )
    delay = RETRY_DELAY_S
    for attempt in range(1, SAVE_ATTEMPTS + 1):
        try:
            save_checkpoint(
                open_artifacts(settings.artifacts), settings.experiment, spec.trial_id, metadata, result.state_dict
            )
            return None
        except ArtifactError as exc:
            if attempt == SAVE_ATTEMPTS:
                return str(exc)
            log.warning("checkpoint of trial %s not saved (%s); retrying in %.0f s", spec.trial_id, exc, delay)
            time.sleep(delay)
            delay *= 2
    return None
