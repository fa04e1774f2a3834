"""Trained models as self-contained directories, and loading them back as ready ``nn.Module``s.

A model directory holds:

* ``model.json``: the metadata: format, architecture string, input shape (C, H, W), the training
  images' per-channel mean/std, class count, build options (activation, dropout), metrics, and
  where the model came from (experiment, search rank, trial id);
* ``weights.pt``: the ``state_dict`` (``torch.load(..., weights_only=True)`` reads it);
* ``model.ts``: TorchScript (``torch.jit.load``), with ``model.json`` embedded as an extra file;
* ``model.onnx``: optional (needs the ``onnx`` package), opset of the legacy exporter, dynamic batch.

Every form takes float images N×C×H×W scaled to [0, 1] and returns N×K logits: the normalisation
the trainer used is the module's first layer, so a caller never normalises by hand. The same
metadata plus a ``state_dict`` also make up a search checkpoint (``nasagent.training.checkpoints``).
"""

from __future__ import annotations

import importlib.util
import io
import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasagent.core.networks import parse_network
from nasagent.errors import ModelError, NasagentError
from nasagent.persistence.artifacts import ArtifactStore, experiment_key
from nasagent.training.build import build_model
from nasagent.training.data import DataBundle
from nasagent.training.nsc_build import NSCModel
from nasagent.training.settings import BuildOptions
from nasagent.training.sources import as_float

FORMAT = "nasagent-model/1"
META = "model.json"
WEIGHTS = "weights.pt"
TORCHSCRIPT = "model.ts"
ONNX = "model.onnx"
PREDICT_BATCH = 1024


def model_metadata(
    architecture: str,
    input_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    build: BuildOptions,
    metrics: dict[str, Any],
    **source: Any,
) -> dict[str, Any]:
    """The JSON metadata of a model (see the module docstring); ``source`` says where it came from."""
    return {
        "format": FORMAT,
        "architecture": str(architecture),
        "input_shape": [int(v) for v in input_shape],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "num_classes": int(num_classes),
        "build": asdict(build),
        "metrics": dict(metrics),
        "source": dict(source),
    }


def restore_module(meta: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the module ``meta`` describes, load ``state_dict`` into it, and set it to eval mode.

    The module gets ``.architecture`` (str), ``.metrics`` (dict) and ``.metadata`` (the whole
    dict). ModelError if the metadata is malformed or the weights do not fit the architecture.
    """
    module = _build(meta, state_dict)
    module.architecture = meta["architecture"]
    module.metrics = dict(meta.get("metrics", {}))
    module.metadata = meta
    return module


def _build(meta: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The plain module of ``meta`` with ``state_dict`` loaded, in eval mode; ModelError if they do not fit."""
    if meta.get("format") != FORMAT:
        raise ModelError(f"unknown model format {meta.get('format')!r} (expected {FORMAT})")
    try:
        module = build_model(
            parse_network(meta["architecture"]),
            tuple(meta["input_shape"]),
            meta["mean"],
            meta["std"],
            # Models saved before these settings existed were built with ceil pooling and SAME NSC padding.
            BuildOptions(**{"pooling": "ceil", "nsc_padding": "same", **meta["build"]}),
        )
        module.load_state_dict(state_dict, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, NasagentError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot rebuild model {meta.get('architecture', '?')}: {reason}") from None
    return module.eval()


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """``state_dict`` serialised as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, buffer)
    return buffer.getvalue()


def read_weights(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from ``torch.save`` bytes; only tensors are accepted (``weights_only``)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for damaged files
        raise ModelError(
            f"cannot read the weights in {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    if not isinstance(state, dict):
        raise ModelError(f"{where} does not hold a state_dict")
    return state


def _torchscript(module: nn.Module, meta: dict[str, Any]) -> torch.jit.ScriptModule:
    """TorchScript of ``module``: compiled from its code for a chain network; traced on an example
    batch for an NSC cell graph, whose ``forward`` walks Python layer objects that TorchScript cannot
    compile. The graph and the image size are fixed per model, so the trace records the whole
    computation; only the batch size varies, and nothing in the graph depends on it."""
    if not isinstance(module, NSCModel):
        return torch.jit.script(module)
    example = torch.rand(2, *meta["input_shape"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes read as Python ints: constant here
        return torch.jit.trace(module, example)


def export_model(
    meta: dict[str, Any], state_dict: dict[str, torch.Tensor], directory: Path, onnx: bool = False
) -> list[Path]:
    """Write a model directory (``model.json``, ``weights.pt``, ``model.ts``, ``model.onnx`` if asked);
    return the files.

    The TorchScript and ONNX forms are made from the module as ``load_model`` rebuilds it, so all
    forms compute the same function. ModelError if ONNX is asked for without the ``onnx`` package.
    """
    if onnx and importlib.util.find_spec("onnx") is None:
        raise ModelError("ONNX export needs the onnx package: pip install onnx")
    # Without restore_module's Python attributes, which TorchScript would try to compile.
    module = _build(meta, state_dict)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, indent=2, allow_nan=False)
    (directory / META).write_text(text + "\n", encoding="utf-8")
    (directory / WEIGHTS).write_bytes(weights_bytes(module.state_dict()))
    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated; it is still the one format torch.jit.load reads without Python code.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(_torchscript(module, meta), str(directory / TORCHSCRIPT), _extra_files={META: text})
    files = [directory / META, directory / WEIGHTS, directory / TORCHSCRIPT]
    if onnx:
        example = torch.rand(1, *meta["input_shape"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
            torch.onnx.export(
                module,
                (example,),
                str(directory / ONNX),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        files.append(directory / ONNX)
    return files


def read_metadata(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse ``model.json`` content; ModelError if it is not a JSON object."""
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read {where}: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{where} is not a JSON object")
    return meta


def load_model(directory: str | Path) -> nn.Module:
    """The model in ``directory`` (as written by ``export_model`` or ``nasagent models pull``), ready to use.

    Returns an ``nn.Module`` in eval mode that takes float images N×C×H×W in [0, 1] and returns
    N×K logits; ``.architecture`` is the architecture string and ``.metrics`` the recorded
    metrics (e.g. ``test_accuracy``). ModelError (one line) if the directory is not a model.
    """
    directory = Path(directory).expanduser()
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise ModelError(f"{directory} is not a nasagent model directory (needs {META} and {WEIGHTS})")
    meta = read_metadata(meta_path.read_bytes(), str(meta_path))
    return restore_module(meta, read_weights(weights_path.read_bytes(), str(weights_path)))


@torch.inference_mode()
def predict_proba(module: nn.Module, x: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Softmax outputs (N×K, float32, on CPU) of ``module`` for images ``x``, in batches, in fp32."""
    module = module.to(device).eval()
    out = [
        torch.softmax(module(as_float(x[i : i + PREDICT_BATCH].to(device))).float(), dim=1).cpu()
        for i in range(0, len(x), PREDICT_BATCH)
    ]
    return torch.cat(out) if out else torch.empty(0)


def accuracy(probabilities: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows whose most probable class is the label."""
    return float((probabilities.argmax(dim=1) == y).float().mean()) if len(y) else 0.0


def held_out_accuracy(arch: str, state_dict: dict[str, torch.Tensor], data: DataBundle, build: BuildOptions) -> float:
    """Accuracy on ``data``'s held-out test split of network ``arch`` with the weights ``state_dict``
    trained on ``data`` (what the benchmarks report for a retrained network)."""
    meta = model_metadata(arch, data.input_shape, data.mean, data.std, data.num_classes, build, {})
    return accuracy(predict_proba(restore_module(meta, state_dict), data.test.x), data.test.y)


# ---------------------------------------------------------------------------------------------
# Finetuned models of an experiment in the artifact store: <experiment>/finetuned/rank-<r>/


def finetuned_prefix(experiment: str, rank: int) -> str:
    """The artifact-store prefix of the finetuned model of search rank ``rank`` (ends with ``/``)."""
    return experiment_key(experiment, "finetuned", f"rank-{int(rank)}") + "/"


def upload_model(store: ArtifactStore, directory: Path, prefix: str) -> None:
    """Replace whatever is under ``prefix`` with the files of model directory ``directory``.

    ``model.json`` is written last, so a listing never shows a model whose weights are missing.
    """
    store.delete_prefix(prefix)
    files = sorted((p for p in Path(directory).iterdir() if p.is_file()), key=lambda p: p.name == META)
    for path in files:
        store.put_file(prefix + path.name, path)


def list_models(store: ArtifactStore, experiment: str) -> list[dict[str, Any]]:
    """The finetuned models of ``experiment`` in ``store``, by rank: their metadata plus ``rank``,
    ``location`` and ``files``.
    """
    base = experiment_key(experiment, "finetuned") + "/"
    keys = store.list(base)
    models = []
    for key in keys:
        rest = key[len(base) :]
        directory, _, name = rest.partition("/")
        if name != META or not directory.startswith("rank-") or not directory[5:].isdigit():
            continue
        meta = read_metadata(store.get_bytes(key), f"{store.url}/{key}")
        prefix = base + directory + "/"
        models.append(
            {
                **meta,
                "rank": int(directory[5:]),
                "location": f"{store.url}/{prefix}",
                "files": sorted(k[len(prefix) :] for k in keys if k.startswith(prefix)),
            }
        )
    return sorted(models, key=lambda m: m["rank"])


def load_stored_model(store: ArtifactStore, prefix: str) -> nn.Module:
    """The model under ``prefix`` in ``store`` (see ``load_model``), read without a local copy."""
    meta = read_metadata(store.get_bytes(prefix + META), f"{store.url}/{prefix}{META}")
    return restore_module(meta, read_weights(store.get_bytes(prefix + WEIGHTS), f"{store.url}/{prefix}{WEIGHTS}"))


def pull_model(store: ArtifactStore, experiment: str, rank: int, out: Path) -> Path:
    """Copy the finetuned model of ``rank`` into directory ``out``; return it. ModelError if there is none."""
    available = [m["rank"] for m in list_models(store, experiment)]
    if rank not in available:
        have = f"ranks {', '.join(map(str, available))}" if available else "none; run nasagent finetune first"
        raise ModelError(
            f"experiment {experiment!r} has no finetuned model of rank {rank} in {store.url} (have {have})"
        )
    prefix = finetuned_prefix(experiment, rank)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ModelError(f"--out {out} exists and is not a directory")
    for key in store.list(prefix):
        store.get_file(key, out / key[len(prefix) :])
    return out


def export_to_store(
    store: ArtifactStore, meta: dict[str, Any], state_dict: dict[str, torch.Tensor], prefix: str, onnx: bool = False
) -> list[str]:
    """Export a model directory (``export_model``) straight into ``store`` under ``prefix``; return the keys."""
    with tempfile.TemporaryDirectory(prefix="nasagent-model-") as tmp:
        files = export_model(meta, state_dict, Path(tmp), onnx=onnx)
        upload_model(store, Path(tmp), prefix)
    return [prefix + f.name for f in files]


__all__ = [
    "ModelError",
    "accuracy",
    "export_model",
    "export_to_store",
    "finetuned_prefix",
    "list_models",
    "load_model",
    "load_stored_model",
    "model_metadata",
    "predict_proba",
    "pull_model",
    "read_weights",
    "restore_module",
    "upload_model",
    "weights_bytes",
]
