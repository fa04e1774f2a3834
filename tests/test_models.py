"""Model directories: export, ``load_model``, TorchScript and ONNX agree with the trained model;
``nasagent models list|pull`` on finetuned models of a real experiment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import nasagent
from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.core.networks import parse_network
from nasagent.errors import ModelError
from nasagent.persistence.artifacts import open_artifacts
from nasagent.persistence.postgres import Store
from nasagent.results.finetune import finetune_experiment
from nasagent.training.build import build_model
from nasagent.training.data import DataBundle, load_dataset
from nasagent.training.models import (
    META,
    ONNX,
    TORCHSCRIPT,
    WEIGHTS,
    accuracy,
    export_model,
    held_out_accuracy,
    list_models,
    load_model,
    load_stored_model,
    model_metadata,
    predict_proba,
    pull_model,
)
from nasagent.training.normalize import Normalize
from nasagent.training.settings import BuildOptions, TrainConfig
from nasagent.training.trainer import train_architecture

ARCH = "[C(8,3,1), P(2,2), FC(32), SM(10)]"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DataBundle:
    return load_dataset("digits", tmp_path_factory.mktemp("data"), seed=0)


@pytest.fixture(scope="module")
def trained(digits: DataBundle) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A really trained small network: its metadata and best-epoch weights."""
    result = train_architecture(
        Architecture.parse(ARCH),
        digits,
        TrainConfig(epochs=3, lr=0.025, lr_decay_every=100, threads=1),
        keep_weights=True,
    )
    assert result.status == "done" and result.state_dict is not None
    meta = model_metadata(
        ARCH,
        digits.input_shape,
        digits.mean,
        digits.std,
        digits.num_classes,
        BuildOptions(),
        {"val_accuracy": result.accuracy},
        experiment="unit",
        rank=1,
    )
    return meta, result.state_dict


def in_memory(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(Architecture.parse(meta["architecture"]), tuple(meta["input_shape"]), meta["mean"], meta["std"])
    model.load_state_dict(state)
    return model.eval()


def test_load_model_matches_the_trained_model(trained, digits: DataBundle, tmp_path: Path) -> None:
    meta, state = trained
    files = export_model(meta, state, tmp_path / "model")
    assert sorted(f.name for f in files) == sorted([META, WEIGHTS, TORCHSCRIPT])
    model = nasagent.load_model(tmp_path / "model")
    assert (
        not model.training
        and model.architecture == ARCH
        and model.metrics == {"val_accuracy": meta["metrics"]["val_accuracy"]}
    )
    x = digits.test.x[:64]
    with torch.inference_mode():
        assert torch.equal(model(x), in_memory(meta, state)(x))
    # Normalisation is the module's first layer, with the training split's statistics.
    assert isinstance(model[0], Normalize)
    assert model[0].mean.flatten().tolist() == pytest.approx(digits.mean)
    assert model[0].std.flatten().tolist() == pytest.approx(digits.std)
    # Raw [0, 1] images in, a useful classifier out: it learned digits in three epochs.
    assert accuracy(predict_proba(model, digits.test.x), digits.test.y) > 0.7


def test_held_out_accuracy_is_the_exported_models_test_accuracy(trained, digits: DataBundle, tmp_path: Path) -> None:
    meta, state = trained
    export_model(meta, state, tmp_path)
    expected = accuracy(predict_proba(load_model(tmp_path), digits.test.x), digits.test.y)
    assert held_out_accuracy(ARCH, state, digits, BuildOptions()) == expected > 0.7


def test_torchscript_gives_the_same_outputs(trained, digits: DataBundle, tmp_path: Path) -> None:
    meta, state = trained
    export_model(meta, state, tmp_path)
    extra = {META: ""}
    scripted = torch.jit.load(str(tmp_path / TORCHSCRIPT), _extra_files=extra)
    assert json.loads(extra[META])["architecture"] == ARCH  # self-describing without model.json
    x = digits.test.x[:50]
    with torch.inference_mode():
        assert torch.allclose(scripted(x), load_model(tmp_path)(x), atol=1e-6)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_torchscript_of_an_nsc_cell_graph_gives_the_same_outputs(
    digits: DataBundle, tmp_path: Path, padding: str
) -> None:
    """A NAS-environment network (its forward walks Python layer objects TorchScript cannot
    compile) is traced: the file gives the module's outputs at any batch size, merges included."""
    arch = "NSC[(1,1,3,0,0), (2,2,2,1,0), (3,5,0,2,1); HEAD(10)]"
    build = BuildOptions(nsc_padding=padding)
    meta = model_metadata(arch, digits.input_shape, digits.mean, digits.std, 10, build, {}, experiment="unit")
    torch.manual_seed(0)
    state = build_model(parse_network(arch), digits.input_shape, digits.mean, digits.std, build).state_dict()
    export_model(meta, state, tmp_path)
    scripted = torch.jit.load(str(tmp_path / TORCHSCRIPT))
    model = load_model(tmp_path)
    for batch in (1, 50):
        x = digits.test.x[:batch]
        with torch.inference_mode():
            assert torch.allclose(scripted(x), model(x), atol=1e-6)


def test_onnx_export_gives_the_same_outputs(trained, digits: DataBundle, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    meta, state = trained
    files = export_model(meta, state, tmp_path, onnx=True)
    assert tmp_path / ONNX in files
    graph = onnx.load(str(tmp_path / ONNX))
    onnx.checker.check_model(graph)
    evaluator = ReferenceEvaluator(graph)
    model = load_model(tmp_path)
    for n in (1, 7):  # the batch dimension is dynamic
        x = digits.test.x[:n]
        (logits,) = evaluator.run(None, {"images": x.numpy()})
        with torch.inference_mode():
            assert torch.allclose(torch.from_numpy(logits), model(x), atol=1e-4)


def test_broken_model_directories_are_one_line_errors(trained, tmp_path: Path) -> None:
    meta, state = trained
    with pytest.raises(ModelError, match="is not a nasagent model directory"):
        load_model(tmp_path / "missing")
    export_model(meta, state, tmp_path / "m")
    (tmp_path / "m" / META).write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path / "m")
    other = {**meta, "architecture": "[C(16,3,1), P(2,2), FC(32), SM(10)]"}
    (tmp_path / "m" / META).write_text(json.dumps(other))
    with pytest.raises(ModelError, match="cannot rebuild model") as info:
        load_model(tmp_path / "m")
    assert "\n" not in str(info.value)
    (tmp_path / "m" / META).write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(ModelError, match="unknown model format"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelError, match="cannot read the weights"):
        load_model(_with_weights(tmp_path / "m", meta, b"garbage"))


def _with_weights(directory: Path, meta: dict[str, Any], data: bytes) -> Path:
    (directory / META).write_text(json.dumps(meta))
    (directory / WEIGHTS).write_bytes(data)
    return directory


# ---------------------------------------------------------------------------------------------
# Finetuned models of a real experiment, and the CLI that lists and pulls them.

TINY_ARCHS = ["[C(8,3,1), P(2,2), FC(32), SM(10)]", "[C(4,3,1), P(2,2), SM(10)]", "[FC(32), SM(10)]"]


def make_experiment(store: Store, name: str, accuracies: list[float]) -> None:
    """An experiment whose search finished with the tiny architectures at the given accuracies (no search run)."""
    experiment = store.create_experiment(
        name, SearchConfig(dataset="digits", trials=len(accuracies), epochs=1).to_dict()
    )
    with store.transaction() as tx:
        for arch, acc in zip(TINY_ARCHS, accuracies):
            trial = tx.insert_trial(experiment.id, arch, Architecture.parse(arch).digest, 1.0)
            tx.finish_trial(trial, "done", acc, None, None, 1.0)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The real command, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def cli_here(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``nasagent.cli.main`` in this process (no interpreter start-up): exit code, stdout, stderr."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_models_list_and_pull(
    store: Store,
    db_url: str,
    digits: DataBundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    make_experiment(store, "m", [0.9, 0.8, 0.7])
    artifacts = open_artifacts(f"file://{tmp_path / 'artifacts'}")
    report = finetune_experiment(store, "m", artifacts, top=2, schedule="0.025:2", device="cpu")
    assert [row["rank"] for row in report["models"]] == [1, 2]
    models = list_models(artifacts, "m")
    assert [m["rank"] for m in models] == [1, 2]
    assert models[0]["architecture"] == TINY_ARCHS[0] and models[0]["files"] == sorted([META, WEIGHTS, TORCHSCRIPT])

    env = {"NASAGENT_DB": db_url, "NASAGENT_ARTIFACTS": artifacts.url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = cli_here(capsys, "models", "list", "--experiment", "m", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["rank"], r["arch"]) for r in rows] == [(1, TINY_ARCHS[0]), (2, TINY_ARCHS[1])]
    assert [r["test_accuracy"] for r in rows] == [m["test_accuracy"] for m in report["models"]]
    assert all(r["params"] > 0 and r["location"] == f"{artifacts.url}/m/finetuned/rank-{r['rank']}/" for r in rows)
    code, out, _ = cli_here(capsys, "models", "list", "--experiment", "m")
    assert code == 0 and "finetuned models of m" in out

    pulled = cli("models", "pull", "--experiment", "m", "--rank", "2", "--out", str(tmp_path / "pulled"), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == str(tmp_path / "pulled")
    model = load_model(tmp_path / "pulled")
    assert model.architecture == TINY_ARCHS[1]
    assert model.metrics["test_accuracy"] == report["models"][1]["test_accuracy"]
    assert accuracy(predict_proba(model, digits.test.x), digits.test.y) == model.metrics["test_accuracy"]
    x = digits.test.x[:20]
    with torch.inference_mode():
        assert torch.equal(model(x), load_stored_model(artifacts, "m/finetuned/rank-2/")(x))

    for args, words in [
        (
            ("models", "pull", "--experiment", "m", "--rank", "3", "--out", str(tmp_path / "x")),
            "no finetuned model of rank 3",
        ),
        (("models", "list", "--experiment", "nope"), "unknown experiment 'nope'"),
        (("models", "list", "--experiment", "m", "--artifacts", "ftp://host/x"), "must start with file:/// or s3://"),
        (("models",), "required"),
    ]:
        code, _, err = cli_here(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], (args, err)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ModelError, match="have ranks 1, 2"):
        pull_model(artifacts, "m", 5, tmp_path / "y")
