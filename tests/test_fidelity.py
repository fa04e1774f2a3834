"""Fidelity to the papers (issue 12, findings 1-7 and the small-data rule), one block per finding.

Training runs are tiny nets on ``digits`` for one or two epochs; where a test needs a particular
accuracy or loss it replaces only that number (``_evaluate`` / the epoch's loss), never the training.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import nasagent.training.trainer as trainer
from nasagent.config import SearchConfig
from nasagent.core.arch import FC, Architecture, Conv, Pool, output_size
from nasagent.core.nsc import AVG_POOL, CONV, MAX_POOL, NSCLayer, NSCNetwork
from nasagent.core.trial import TrialStatus
from nasagent.envs.nas_env import EPOCHS, NSCSpace, NSCState, step
from nasagent.errors import ConfigError
from nasagent.persistence import Store
from nasagent.persistence.artifacts import open_artifacts
from nasagent.results.finetune import default_epochs, finetune_experiment, paper_recipe, with_extra
from nasagent.spaces.metaqnn import MetaQNNSpace, SpaceConfig, load_space
from nasagent.training.build import ContrastNormalize, build_model, count_params
from nasagent.training.data import DataBundle, Split, load_dataset
from nasagent.training.nsc_build import build_nsc_model
from nasagent.training.settings import MIN_STEPS, BuildOptions, TrainConfig
from nasagent.training.trainer import augment, chance_accuracy, passes_per_epoch, train_architecture

TINY = Architecture.parse("[FC(16), SM(10)]")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DataBundle:
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


def fake_losses(monkeypatch: pytest.MonkeyPatch, bad_epochs: set[int], value: float = math.nan) -> list[int]:
    """The epochs (1-based, counting every attempt) in ``bad_epochs`` report ``value`` as their loss after
    training for real; returns the list of epochs run so far."""
    real = trainer._train_epoch
    calls: list[int] = []

    def train_epoch(*args, **kwargs):  # type: ignore[no-untyped-def]
        loss = real(*args, **kwargs)
        calls.append(len(calls) + 1)
        return value if calls[-1] in bad_epochs else loss

    monkeypatch.setattr(trainer, "_train_epoch", train_epoch)
    return calls


def fake_accuracies(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """Validation accuracy of successive evaluations, whatever the network does; the last one repeats."""
    queue = list(values)
    monkeypatch.setattr(trainer, "_evaluate", lambda *args: queue.pop(0) if len(queue) > 1 else queue[0])


# --- Finding 1: a NaN loss restarts like any first epoch no better than chance ---------------------


def test_nan_in_the_first_epoch_restarts_with_a_lower_rate(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_losses(monkeypatch, {1})
    result = train_architecture(TINY, digits, TrainConfig(epochs=2))
    assert result.status == TrialStatus.DONE and result.restarts == 1
    assert result.lrs == pytest.approx([1e-3, 4e-4, 4e-4])
    assert result.history[0] == pytest.approx(0.1) and result.accuracy == max(result.history[1:]) > 0.3


def test_diverging_every_time_fails_after_the_last_restart(digits: DataBundle) -> None:
    result = train_architecture(TINY, digits, TrainConfig(epochs=3, lr=1e30, min_steps=0))
    assert result.status == TrialStatus.FAILED and result.restarts == 5
    assert result.failure is not None and result.failure.startswith("diverged: loss became")
    assert result.accuracy == pytest.approx(0.1) and result.epochs_run == 6
    assert result.lrs == pytest.approx([1e30 * 0.4**i for i in range(6)])


def test_late_divergence_keeps_the_best_accuracy_reached(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_losses(monkeypatch, {3})
    fake_accuracies(monkeypatch, [0.5, 0.7])
    result = train_architecture(TINY, digits, TrainConfig(epochs=5, min_steps=0))
    assert result.status == TrialStatus.DONE and result.accuracy == 0.7 and result.restarts == 0
    assert result.history == [0.5, 0.7, pytest.approx(0.1)] and result.epochs_run == 3


def test_late_divergence_scored_by_the_final_epoch_fails(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_losses(monkeypatch, {3})
    result = train_architecture(TINY, digits, TrainConfig(epochs=5, min_steps=0, score="final", max_restarts=0))
    assert result.status == TrialStatus.FAILED and result.accuracy == pytest.approx(0.1)
    assert result.failure == "diverged: loss became NaN at epoch 3"


# --- Finding 2: when every restart fails, the authors give 1/K --------------------------------------


def test_never_better_than_chance_fails_with_guessing_accuracy(
    digits: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    chance = chance_accuracy(digits.val.y)
    fake_accuracies(monkeypatch, [chance])
    result = train_architecture(TINY, digits, TrainConfig(epochs=4, min_steps=0))
    assert result.status == TrialStatus.FAILED and result.accuracy == pytest.approx(1 / 10)
    assert result.restarts == 5 and result.epochs_run == 6  # six one-epoch attempts, no full sixth run
    assert result.failure is not None and result.failure.startswith("not learning: no better than chance")


def test_a_restart_discards_the_earlier_attempts(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    chance = chance_accuracy(digits.val.y)
    # Attempt 1: chance after its first epoch (restart). Attempt 2 learns, then is scored alone.
    fake_accuracies(monkeypatch, [chance, 0.3, 0.6, 0.5])
    result = train_architecture(TINY, digits, TrainConfig(epochs=3, min_steps=0, score="final"))
    assert result.restarts == 1 and result.history == [chance, 0.3, 0.6, 0.5] and result.accuracy == 0.5


def test_restart_rule_off_trains_on_whatever_the_first_epoch(
    digits: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_accuracies(monkeypatch, [0.0, 0.4])
    result = train_architecture(TINY, digits, TrainConfig(epochs=2, min_steps=0, max_restarts=0))
    assert result.status == TrialStatus.DONE and result.restarts == 0 and result.accuracy == 0.4


# --- Small datasets: the schedule's unit ------------------------------------------------------------


def test_an_epoch_is_one_pass_on_paper_sized_sets_and_more_on_small_ones() -> None:
    cfg = TrainConfig()
    assert cfg.min_steps == MIN_STEPS == 100
    # CIFAR-10 and SVHN (45,000 / 68,257 after the 5,000 validation images), MNIST (55,000): one pass.
    assert [passes_per_epoch(n, cfg) for n in (45_000, 68_257, 55_000, 12_800)] == [1, 1, 1, 1]
    assert passes_per_epoch(12_672, cfg) == 2  # 99 steps a pass
    assert passes_per_epoch(1_150, cfg) == 12  # digits: 9 steps a pass -> 108 steps an epoch
    assert passes_per_epoch(1_150, TrainConfig(min_steps=0)) == 1


def test_every_epoch_takes_at_least_min_steps(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = 0
    real = torch.optim.Adam.step

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal steps
        steps += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting)
    result = train_architecture(TINY, digits, TrainConfig(epochs=2, min_steps=30))
    assert result.epochs_run == 2 and len(result.lrs) == 2
    assert steps == 2 * 4 * 9  # 4 passes of 9 batches make the first whole-pass epoch with >= 30 steps


def test_small_data_lets_a_linear_classifier_learn_digits(digits: DataBundle) -> None:
    # Two 9-step passes leave softmax regression near chance; two 108-step epochs do not.
    arch = Architecture.parse("[SM(10)]")
    short = train_architecture(arch, digits, TrainConfig(epochs=2, min_steps=0, max_restarts=0))
    fair = train_architecture(arch, digits, TrainConfig(epochs=2, max_restarts=0))
    assert short.accuracy < 0.3 and fair.accuracy > 0.7


# --- Finding 3 is tested end to end in test_finetune (the best single model is chosen on validation).
# --- Finding 4: finetuning ---------------------------------------------------------------------------


def test_default_finetune_is_never_shorter_than_the_search() -> None:
    assert default_epochs(45_000, search_epochs=20) == 20  # CIFAR-10: 15 by samples seen, 20 searched
    assert default_epochs(45_000) == 15 and default_epochs(1150) == 130
    assert default_epochs(1150, search_epochs=10, min_steps=100) == 15  # 12 passes an epoch


def test_cifar_recipe_is_contrast_normalisation_mirroring_and_shifts(tmp_path: Path) -> None:
    train, build, extra = paper_recipe("cifar10", TrainConfig(), BuildOptions(), str(tmp_path), "paper")
    assert (train.mirror, train.max_shift, build.gcn, extra) == (True, 5, True, None)
    assert paper_recipe("cifar10", TrainConfig(), BuildOptions(), str(tmp_path), "plain")[:2] == (
        TrainConfig(),
        BuildOptions(),
    )
    # SVHN's extra set is used only when already downloaded; here it is not.
    assert paper_recipe("svhn", TrainConfig(), BuildOptions(), str(tmp_path), "paper") == (
        TrainConfig(),
        BuildOptions(),
        None,
    )
    assert paper_recipe("mnist", TrainConfig(), BuildOptions(), str(tmp_path), "paper")[1] == BuildOptions()


def test_augmentation_mirrors_and_shifts_with_zero_fill() -> None:
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).view(2, 1, 4, 6) + 1
    g = torch.Generator().manual_seed(0)
    mirrored = augment(x, True, 0, g)
    for i in range(2):
        assert torch.equal(mirrored[i], x[i]) or torch.equal(mirrored[i], x[i].flip(2))
    for seed in range(20):
        shifted = augment(x, False, 2, torch.Generator().manual_seed(seed))
        for i in range(2):
            kept = shifted[i][shifted[i] > 0]
            # A translation by at most 2 pixels: what remains is a contiguous block of the image.
            assert kept.numel() >= (4 - 2) * (6 - 2) and set(kept.tolist()) <= set(x[i].flatten().tolist())
    assert torch.equal(augment(x, False, 0, g), x)


def test_contrast_normalisation_is_per_image() -> None:
    x = torch.rand(3, 3, 8, 8) * torch.tensor([0.4, 1.0, 0.6]).view(3, 1, 1, 1) + torch.tensor([0.5, 0.0, 0.2]).view(
        3, 1, 1, 1
    )
    y = ContrastNormalize()(x)
    assert y.flatten(1).mean(1).abs().max() < 1e-5
    assert torch.allclose(y.flatten(1).std(1, unbiased=False), torch.ones(3), atol=0.05)
    model = build_model(Architecture.parse("[C(4,3,1), SM(10)]"), (3, 8, 8), options=BuildOptions(gcn=True))
    assert isinstance(model[0], ContrastNormalize)


def test_final_phase_trains_on_train_plus_validation(digits: DataBundle) -> None:
    full = with_extra(digits, None, include_val=True)
    assert len(full.train) == len(digits.train) + len(digits.val) and full.val is digits.val
    assert with_extra(digits, None, include_val=False) is digits
    extra = Split(digits.val.x[:7], digits.val.y[:7])
    assert len(with_extra(digits, extra, include_val=False).train) == len(digits.train) + 7


def test_finetune_refits_and_reports_the_recipe(store: Store, tmp_path: Path) -> None:
    arch = "[C(4,3,1), P(2,2), SM(10)]"
    experiment = store.create_experiment("f", SearchConfig(dataset="digits", trials=1, epochs=1).to_dict())
    with store.transaction() as tx:
        trial = tx.insert_trial(experiment.id, arch, Architecture.parse(arch).digest, 1.0)
        tx.finish_trial(trial, "done", 0.5, None, None, 1.0)
    artifacts = open_artifacts(f"file://{tmp_path}/art")
    report = finetune_experiment(store, "f", artifacts, top=1, epochs=2, device="cpu")
    (row,) = report["models"]
    assert report["refit"] is True and row["refit"] is True and report["search_epochs"] == 1
    assert report["recipe"] == "paper" and report["gcn"] is False and report["extra_train_size"] == 0
    assert row["status"] == "done" and row["epochs_run"] == 2 and 0.5 < row["test_accuracy"] <= 1.0
    plain = finetune_experiment(store, "f", artifacts, top=1, epochs=2, device="cpu", refit=False)
    assert plain["models"][0]["refit"] is False
    with pytest.raises(ConfigError, match="--recipe"):
        finetune_experiment(store, "f", artifacts, top=1, epochs=2, device="cpu", recipe="fancy")


def test_a_refit_that_diverges_is_not_exported(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refit has no restarts; one that ends far below phase 1 (diverged) must not replace its model."""
    import nasagent.results.finetune as finetune

    arch = "[C(4,3,1), P(2,2), SM(10)]"
    experiment = store.create_experiment("d", SearchConfig(dataset="digits", trials=1, epochs=1).to_dict())
    with store.transaction() as tx:
        trial = tx.insert_trial(experiment.id, arch, Architecture.parse(arch).digest, 1.0)
        tx.finish_trial(trial, "done", 0.5, None, None, 1.0)
    real = finetune.train_architecture

    def diverging_refit(network, data, config, build, keep_weights=False):  # type: ignore[no-untyped-def]
        result = real(network, data, config, build, keep_weights=keep_weights)
        return dataclasses.replace(result, accuracy=0.1) if config.score == "final" else result

    monkeypatch.setattr(finetune, "train_architecture", diverging_refit)
    report = finetune_experiment(store, "d", open_artifacts(f"file://{tmp_path}/art"), top=1, epochs=2, device="cpu")
    (row,) = report["models"]
    assert row["refit"] is False and "kept the phase-1 model" in row["refit_rejected"]
    assert row["status"] == "done" and 0.5 < row["test_accuracy"] <= 1.0  # the phase-1 model was exported


# --- Finding 6: pooling rounds down by default; the builder agrees with the size tracking ------------


def test_pooling_floor_and_ceil() -> None:
    assert [output_size(10, Pool(3, 2), pooling) for pooling in ("floor", "ceil")] == [4, 5]
    assert [output_size(32, Pool(5, 3), pooling) for pooling in ("floor", "ceil")] == [10, 10]
    assert output_size(28, Conv(8, 4, 1), padding="valid") == 25 and output_size(28, Conv(8, 4, 1)) == 28
    with pytest.raises(ConfigError):
        output_size(8, Pool(2, 2), "round")


@pytest.mark.parametrize("pooling", ["floor", "ceil"])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_built_sizes_agree_with_output_size(pooling: str, padding: str) -> None:
    options = BuildOptions(pooling=pooling, conv_padding=padding)  # type: ignore[arg-type]
    rng = torch.Generator().manual_seed(1)
    for _ in range(30):
        n, layers = 23, []
        while len(layers) < 4:
            if torch.rand(1, generator=rng) < 0.5:
                layer: Conv | Pool = Conv(2, int(torch.randint(1, 4, (1,), generator=rng)), 1)
            else:
                layer = Pool(
                    int(torch.randint(2, 4, (1,), generator=rng)), int(torch.randint(1, 4, (1,), generator=rng))
                )
            if layer.kernel > n:
                break
            layers.append(layer)
            n = output_size(n, layer, pooling, padding)
        arch = Architecture((*layers, FC(3), Architecture.parse("[SM(10)]").terminal))
        model = build_model(arch, (1, 23, 23), options=options)
        flatten = next(i for i, m in enumerate(model) if isinstance(m, nn.Flatten))
        out = model[:flatten](torch.zeros(1, 1, 23, 23))
        assert out.shape[2:] == (n, n), (arch, pooling, padding)


def test_the_space_and_the_trials_use_the_same_size_rules(tmp_path: Path) -> None:
    mnist = SearchConfig(space="metaqnn-mnist", data_dir=str(tmp_path)).trial_settings("cpu").build
    assert (mnist.pooling, mnist.conv_padding, mnist.activation, mnist.dropout) == ("floor", "valid", "elu", "fc")
    spec = load_space("metaqnn").to_dict()
    path = tmp_path / "ceil.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": "ceil", "build": {**spec["build"], "pooling": "ceil"}}))
    config = SearchConfig(space=str(path), data_dir=str(tmp_path))
    assert config.trial_settings("cpu").build.pooling == "ceil"
    space = MetaQNNSpace(config.space_config(), 32, 10)
    assert space.step(space.start, 10, Pool(3, 2))[1] == 5  # ceil((10 - 3) / 2) + 1; floor gives 4
    with pytest.raises(ConfigError, match="build.pooling"):
        SpaceConfig.from_dict({**spec, "build": {"pooling": "round"}})


def test_table_a2_fifth_network_floor_against_ceil() -> None:
    arch = Architecture.parse("[C(64,3,1), C(128,3,1), P(5,3), C(256,3,1), P(3,2), FC(512), FC(128), SM(10)]")
    floor = count_params(build_model(arch, (3, 32, 32)))
    ceil = count_params(build_model(arch, (3, 32, 32), options=BuildOptions(pooling="ceil")))
    assert (floor, ceil) == (2_535_434, 3_715_082)


# --- Finding 7: the NAS environment as the authors' code ----------------------------------------------


def test_nsc_valid_padding_shrinks_every_window() -> None:
    net = NSCNetwork((NSCLayer(1, CONV, 3, 0), NSCLayer(2, MAX_POOL, 2, 1), NSCLayer(3, AVG_POOL, 3, 2)), 10)
    assert net.shapes((1, 28, 28)) == [(1, 28, 28), (32, 26, 26), (32, 13, 13), (32, 4, 4), (32, 4, 4)]
    assert net.shapes((1, 28, 28), "same")[1:3] == [(32, 28, 28), (32, 14, 14)]
    model = build_nsc_model(net, (1, 28, 28))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    deep = NSCNetwork(tuple(NSCLayer(i, CONV, 5, i - 1) for i in range(1, 3)), 10)
    assert not deep.is_valid((1, 8, 8)) and deep.is_valid((1, 8, 8), "same")


def test_environment_rule_e_fires_on_valid_padding() -> None:
    space = NSCSpace((1, 8, 8), 10)
    assert space.padding == "valid"
    first = step(space, NSCState(), 2)  # conv 5x5: 8 -> 4
    second = step(space, first.after, 2)  # conv 5x5 of a 4x4 map: invalid
    assert first.rules == () and second.rules == ("e",) and second.scale == 0.0
    same = NSCSpace((1, 8, 8), 10, padding="same")
    assert step(same, step(same, NSCState(), 2).after, 2).rules == ()
    with pytest.raises(ConfigError):
        NSCSpace((1, 8, 8), 10, padding="full")


@pytest.mark.parametrize("strategy", ["dqn", "meta-a2c", "random-nsc"])
def test_environment_searches_train_as_the_paper(strategy: str, tmp_path: Path) -> None:
    settings = SearchConfig(strategy=strategy, data_dir=str(tmp_path)).trial_settings("cpu")
    assert settings.train.epochs == EPOCHS == 12
    assert (settings.train.score, settings.train.max_restarts, settings.build.nsc_padding) == ("final", 0, "valid")
    options = {"score": "best", "restarts": True, "padding": "same"}
    other = SearchConfig(strategy=strategy, options=options, epochs=3, data_dir=str(tmp_path)).trial_settings("cpu")
    assert (other.train.epochs, other.train.score, other.train.max_restarts, other.build.nsc_padding) == (
        3,
        "best",
        5,
        "same",
    )
    metaqnn = SearchConfig(data_dir=str(tmp_path)).trial_settings("cpu")
    assert (metaqnn.train.epochs, metaqnn.train.score, metaqnn.train.max_restarts) == (20, "best", 5)


def test_final_epoch_score(digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_accuracies(monkeypatch, [0.5, 0.8, 0.6])
    cfg = TrainConfig(epochs=3, min_steps=0, score="final", max_restarts=0)
    assert train_architecture(TINY, digits, cfg).accuracy == 0.6
    fake_accuracies(monkeypatch, [0.5, 0.8, 0.6])
    assert train_architecture(TINY, digits, dataclasses.replace(cfg, score="best")).accuracy == 0.8
