"""Finetuning schedules, the trainer's lr_steps hook, top-k checkpoints, and the whole path end to end:
search (checkpoints in a real S3 server) -> ensemble of checkpoints -> finetune -> ensemble -> models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from s3_helpers import s3_env, s3_server  # noqa: F401  (fixtures)

from nasagent.cli import main
from nasagent.core.arch import Architecture
from nasagent.errors import ConfigError
from nasagent.persistence.artifacts import open_artifacts
from nasagent.persistence.postgres import Store
from nasagent.results.finetune import default_epochs, parse_schedule, resolve_schedule, scale_schedule
from nasagent.search.keeper import CheckpointKeeper, search_keeper
from nasagent.training.build import build_model
from nasagent.training.checkpoints import checkpoint_ids, load_checkpoint, save_checkpoint
from nasagent.training.data import load_dataset
from nasagent.training.models import model_metadata, restore_module
from nasagent.training.settings import BuildOptions, TrainConfig
from nasagent.training.trainer import lr_at, train_architecture

CIFAR = ((0.025, 40), (0.0125, 40), (0.0001, 160), (0.00001, 60))


# -- schedules -----------------------------------------------------------------------------------


def test_paper_schedules_and_explicit_steps() -> None:
    assert parse_schedule("paper-cifar") == CIFAR
    assert parse_schedule("paper-svhn") == ((0.025, 5), (0.0125, 5), (0.0001, 20), (0.00001, 10))
    assert parse_schedule(" 0.1:3, 0.01:2") == ((0.1, 3), (0.01, 2))
    for bad in ("", "0.1", "0.1:0", "-1:3", "x:3", "0.1:2.5", "inf:2", "0.1:2,"):
        with pytest.raises(ConfigError, match="--schedule must be"):
            parse_schedule(bad)


def test_scaling_keeps_the_paper_ratio() -> None:
    assert scale_schedule(CIFAR, 300) == CIFAR
    assert scale_schedule(CIFAR, 15) == ((0.025, 2), (0.0125, 2), (0.0001, 8), (0.00001, 3))
    assert scale_schedule(CIFAR, 600) == tuple((lr, 2 * n) for lr, n in CIFAR)
    for epochs in range(1, 60):
        scaled = scale_schedule(CIFAR, epochs)
        assert sum(n for _, n in scaled) == epochs and all(n >= 1 for _, n in scaled)
    assert scale_schedule(CIFAR, 2) == ((0.025, 1), (0.0125, 1))  # the learning phases come first
    assert scale_schedule(CIFAR, 5) == ((0.025, 1), (0.0125, 1), (0.0001, 2), (0.00001, 1))
    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        scale_schedule(CIFAR, 0)


def test_default_length_follows_the_dataset_size() -> None:
    assert default_epochs(1150) == 130  # digits' training split: 150,000 samples seen
    assert default_epochs(45_000) == 15 and default_epochs(10) == 300
    assert sum(n for _, n in resolve_schedule(None, None, 1150)) == 130
    assert resolve_schedule(None, 15, 1150) == scale_schedule(CIFAR, 15)
    assert resolve_schedule("0.1:3,0.01:1", None, 1150) == ((0.1, 3), (0.01, 1))
    assert resolve_schedule("paper-svhn", 8, 1150) == ((0.025, 1), (0.0125, 1), (0.0001, 4), (0.00001, 2))


def test_trainer_follows_lr_steps_and_restarts_scale_them() -> None:
    cfg = TrainConfig(epochs=5, lr=0.025, lr_steps=((0.025, 2), (0.0125, 1), (0.0001, 2)))
    assert [lr_at(e, cfg.lr, cfg) for e in range(5)] == [0.025, 0.025, 0.0125, 0.0001, 0.0001]
    assert lr_at(2, cfg.lr * 0.4, cfg) == pytest.approx(0.0125 * 0.4)
    with pytest.raises(ConfigError, match="cover 4 epochs but epochs is 5"):
        TrainConfig(epochs=5, lr_steps=((0.1, 4),))
    with pytest.raises(ConfigError, match="lr_steps must be"):
        TrainConfig(epochs=1, lr_steps=((0.0, 1),))
    digits = load_dataset("digits", Path("."), seed=0)
    result = train_architecture(
        Architecture.parse("[FC(32), SM(10)]"),
        digits,
        TrainConfig(epochs=3, lr=0.025, lr_steps=((0.025, 1), (0.0125, 1), (0.0001, 1)), threads=1),
    )
    assert result.lrs == [0.025, 0.0125, 0.0001] and result.accuracy > 0.8


# -- checkpoints of the top k --------------------------------------------------------------------

ARCHS = ["[FC(32), SM(10)]", "[FC(16), SM(10)]", "[C(4,3,1), SM(10)]", "[C(8,3,1), SM(10)]", "[SM(10)]"]


def _checkpoint(store, name: str, trial_id: int, arch: str) -> dict[str, torch.Tensor]:
    state = build_model(Architecture.parse(arch), (1, 8, 8)).state_dict()
    meta = model_metadata(arch, (1, 8, 8), [0.3], [0.4], 10, BuildOptions(), {"val_accuracy": 0.5}, trial_id=trial_id)
    save_checkpoint(store, name, trial_id, meta, state)
    return state


def test_keeper_keeps_only_the_current_top_k(store: Store, tmp_path: Path) -> None:
    artifacts = open_artifacts(f"file://{tmp_path}")
    experiment = store.create_experiment("k", {"test": True})
    ids = []
    with store.transaction() as tx:
        for arch in ARCHS:
            ids.append(tx.insert_trial(experiment.id, arch, Architecture.parse(arch).digest, 1.0))
    states = {tid: _checkpoint(artifacts, "k", tid, arch) for tid, arch in zip(ids, ARCHS)}
    with store.transaction() as tx:
        for tid, acc in zip(ids[:4], [0.5, 0.9, 0.7, 0.6]):
            tx.finish_trial(tid, "done", acc, 10, None, 1.0)
    keeper = CheckpointKeeper(artifacts, "k", 2)
    removed = keeper.keep_top(store, experiment)
    # The top two stay; the last trial is still running, so its checkpoint stays too.
    assert sorted(removed) == [ids[0], ids[3]]
    assert checkpoint_ids(artifacts, "k") == sorted([ids[1], ids[2], ids[4]])
    with store.transaction() as tx:
        tx.finish_trial(ids[4], "done", 0.95, 10, None, 1.0)
    assert keeper.keep_top(store, experiment) == [ids[2]]
    assert checkpoint_ids(artifacts, "k") == sorted([ids[1], ids[4]])
    meta, state = load_checkpoint(artifacts, "k", ids[1])
    assert meta["architecture"] == ARCHS[1] and meta["source"]["trial_id"] == ids[1]
    assert all(torch.equal(state[k], states[ids[1]][k]) for k in state)
    assert restore_module(meta, state).architecture == ARCHS[1]


def test_search_keeps_checkpoints_only_when_a_store_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NASAGENT_ARTIFACTS", raising=False)
    assert search_keeper(None, "e", 10) is None
    assert search_keeper(f"file://{tmp_path}", "e", 0) is None
    monkeypatch.setenv("NASAGENT_ARTIFACTS", f"file://{tmp_path}")
    keeper = search_keeper(None, "e", 3)
    assert keeper is not None and keeper.k == 3 and keeper.store.url == f"file://{tmp_path}"
    with pytest.raises(ConfigError, match="--keep-top must be 0"):
        search_keeper(None, "e", -1)


# -- end to end, through the CLI -----------------------------------------------------------------

TINY_SPACE = """
name: tiny
max_depth: 2
size_bins: [8, 4, 1]
conv: {filters: [8, 16], kernels: [3]}
pool: {shapes: [[2, 2]]}
fc: {units: [32]}
terminals: [softmax]
"""


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``nasagent ARGS`` in this process: exit code, stdout, stderr."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result: tuple[int, str, str], words: str) -> None:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("nasagent: error:") and words in lines[0], err


def test_search_finetune_ensemble_and_models_end_to_end(
    store: Store,
    db_url: str,
    s3_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("NASAGENT_DB", db_url)
    monkeypatch.delenv("NASAGENT_ARTIFACTS", raising=False)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    art = ("--artifacts", s3_env)
    code, _, err = run(
        capsys,
        "search",
        "--experiment",
        "e",
        "--dataset",
        "digits",
        "--space",
        str(space),
        "--trials",
        "6",
        "--epochs",
        "1",
        "--workers",
        "2",
        "--seed",
        "0",
        *art,
        "--keep-top",
        "2",
    )
    assert code == 0, err
    experiment = store.get_experiment("e")
    top = store.top(experiment.id, 3)
    artifacts = open_artifacts(s3_env)
    # The workers (separate processes) wrote checkpoints to S3; the agent pruned them to the top two.
    assert checkpoint_ids(artifacts, "e") == sorted(t.id for t in top[:2])

    code, out, err = run(capsys, "ensemble", "--experiment", "e", "--top", "2", "--json", *art)
    assert code == 0, err
    from_checkpoints = json.loads(out)
    assert from_checkpoints["source"] == "checkpoints"
    assert [m["trial_id"] for m in from_checkpoints["members"]] == [t.id for t in top[:2]]
    assert [m["rank"] for m in from_checkpoints["members"]] == [1, 2]

    code, out, err = run(capsys, "finetune", "--experiment", "e", "--top", "3", "--epochs", "2", "--json", *art)
    assert code == 0, err
    report = json.loads(out)
    assert report["schedule"] == [[0.025, 1], [0.0125, 1]] and report["test_size"] == 359
    models = report["models"]
    assert [(m["rank"], m["trial_id"], m["arch"]) for m in models] == [(i + 1, t.id, t.arch) for i, t in enumerate(top)]
    assert all(
        m["status"] == "done" and m["location"] == f"{artifacts.url}/e/finetuned/rank-{m['rank']}/" for m in models
    )
    assert max(m["test_accuracy"] for m in models) > 0.5  # two epochs of §5's first phases learn digits
    assert err.count("rank ") == 3  # one progress line per model

    code, out, err = run(capsys, "ensemble", "--experiment", "e", "--top", "2", "--json", *art)
    assert code == 0, err
    ensemble = json.loads(out)
    assert ensemble["source"] == "finetuned" and ensemble["test_size"] == 359
    by_val = sorted(models, key=lambda m: (-m["val_accuracy"], m["rank"]))[:2]
    assert [m["rank"] for m in ensemble["members"]] == [m["rank"] for m in by_val]
    # Scored again from the stored models: the same test accuracies finetune measured in memory.
    assert [m["test_accuracy"] for m in ensemble["members"]] == [m["test_accuracy"] for m in by_val]
    # The best single model is the one best on validation (Table A3's note), not on test.
    assert ensemble["best_single"]["rank"] == by_val[0]["rank"]
    assert ensemble["best_single_test_accuracy"] == by_val[0]["test_accuracy"]
    assert 0.0 < ensemble["ensemble_test_accuracy"] <= 1.0
    assert json.loads(artifacts.get_bytes("e/reports/ensemble.json")) == ensemble
    assert json.loads(artifacts.get_bytes("e/reports/finetune.json"))["models"] == models
    code, out, _ = run(capsys, "ensemble", "--experiment", "e", *art)
    assert code == 0 and "ensemble test accuracy" in out

    code, out, _ = run(capsys, "models", "list", "--experiment", "e", "--json", *art)
    assert code == 0 and [r["rank"] for r in json.loads(out)] == [1, 2, 3]
    code, _, err = run(
        capsys, "models", "pull", "--experiment", "e", "--rank", "1", "--out", str(tmp_path / "best"), *art
    )
    assert code == 0, err
    from nasagent import load_model

    assert load_model(tmp_path / "best").metrics["test_accuracy"] == models[0]["test_accuracy"]

    # Finetuning fewer models removes the ranks that are no longer in the top.
    code, _, err = run(capsys, "finetune", "--experiment", "e", "--top", "1", "--schedule", "0.025:1", *art)
    assert code == 0, err
    code, out, _ = run(capsys, "models", "list", "--experiment", "e", "--json", *art)
    assert [r["rank"] for r in json.loads(out)] == [1]

    store.create_experiment("empty", {"dataset": "digits"})
    assert_one_line_error(run(capsys, "finetune", "--experiment", "nope", *art), "unknown experiment 'nope'")
    assert_one_line_error(run(capsys, "finetune", "--experiment", "empty", *art), "has no finished trial")
    assert_one_line_error(run(capsys, "finetune", "--experiment", "e", "--top", "0", *art), "--top must be at least 1")
    assert_one_line_error(
        run(capsys, "finetune", "--experiment", "e", "--schedule", "fast", *art), "--schedule must be"
    )
    assert_one_line_error(run(capsys, "ensemble", "--experiment", "empty", *art), "no finetuned models or checkpoints")
    assert_one_line_error(
        run(capsys, "ensemble", "--experiment", "e", "--artifacts", "gs://bucket/x"), "must start with"
    )
    assert_one_line_error(
        run(capsys, "models", "pull", "--experiment", "e", "--rank", "4", "--out", str(tmp_path / "x"), *art),
        "no finetuned model of rank 4",
    )
    # A wrong secret stops a search before anything is created or trained.
    monkeypatch.setenv("NASAGENT_S3_SECRET_KEY", "wrong")
    assert_one_line_error(
        run(capsys, "search", "--experiment", "e2", "--dataset", "digits", "--trials", "2", *art), "access denied"
    )
    assert store.find_experiment("e2") is None
