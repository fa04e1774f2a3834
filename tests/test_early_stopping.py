"""Early stopping (``--early-stop median|predict``): the rules on curves whose right answer is known,
the trainer's stop, the decision protocol over a real PostgreSQL (the embedded one), a resumed
judge that keeps its decisions and its predictor, and whole searches whose trials are stopped in
real local worker processes and in trial pods run by the FAKE Kubernetes API's kubelet (no API
server can run here) as the trial pods' own database role.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from launcher_helpers import SubprocessKubernetes, trial_role_url

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.core.trial import TrialStatus
from nasagent.dashboard import data as dashboard
from nasagent.dashboard.store import ReadOnlyStore
from nasagent.errors import ConfigError
from nasagent.execution.cluster import LauncherSettings
from nasagent.execution.epochs import SHORT_WAIT, EpochRecorder
from nasagent.persistence.postgres import DecisionRow, EpochRow, Experiment, Store
from nasagent.results.report import build_report, render_html
from nasagent.search.judge import StopJudge
from nasagent.search.run import open_experiment, poll_seconds, run_search
from nasagent.search.status import experiment_status, top_trials
from nasagent.stopping.features import architecture_features, surviving_curve
from nasagent.stopping.median import MedianRule
from nasagent.stopping.predict import (
    PredictorState,
    PredictRule,
    SequentialRegression,
    TrainedTrial,
    probability_not_better,
)
from nasagent.stopping.settings import EarlyStopConfig
from nasagent.training.data import DataBundle, load_dataset
from nasagent.training.settings import TrainConfig
from nasagent.training.trainer import EpochMetrics, StopTraining, train_architecture

# -- synthetic learning curves -------------------------------------------------------------------------


def saturating(asymptote: float, tau: float, epochs: int, rng: np.random.RandomState, noise: float = 0.003) -> tuple:
    """A learning curve rising to ``asymptote`` with time constant ``tau`` (epochs), with a little noise."""
    return tuple(float(asymptote * (1 - math.exp(-(t + 1) / tau)) + rng.normal(0, noise)) for t in range(epochs))


def synthetic_trials(n: int, epochs: int, seed: int = 0) -> list[TrainedTrial]:
    """Trained trials whose reward is a known function of their partial curve: the best accuracy
    of a saturating curve, whose asymptote and pace the first epochs reveal."""
    rng = np.random.RandomState(seed)
    trials = []
    for i in range(n):
        curve = saturating(rng.uniform(0.3, 0.95), rng.uniform(1.0, 3.0), epochs, rng)
        features = (rng.uniform(3, 6), 4.0, 2.0, 1.0, 1.0, 0.0)
        trials.append(TrainedTrial(i + 1, features, curve, max(curve)))
    return trials


# -- the median rule -----------------------------------------------------------------------------------

COMPLETED = [
    [0.50, 0.70, 0.80, 0.85, 0.88],
    [0.40, 0.65, 0.78, 0.84, 0.86],
    [0.55, 0.72, 0.82, 0.86, 0.89],
    [0.30, 0.50, 0.60, 0.65, 0.70],
    [0.45, 0.68, 0.79, 0.83, 0.87],
]


def test_median_stops_a_clearly_bad_curve_and_keeps_a_good_one() -> None:
    rule = MedianRule(min_trials=3, start_epoch=4)
    # Running averages at t=4: 0.7125, 0.6675, 0.7375, 0.5125, 0.6875 -> median 0.6875.
    bad = rule.decide([0.10, 0.12, 0.15, 0.20], COMPLETED)
    good = rule.decide([0.50, 0.70, 0.80, 0.86], COMPLETED)
    assert bad.stop and "0.2000" in bad.reason and "0.6875" in bad.reason and bad.predicted is None
    assert not good.stop
    # Strictly below: a best accuracy equal to the median goes on (Katib's and NNI's rule).
    assert not rule.decide([0.3, 0.5, 0.6, 0.6875], COMPLETED).stop
    assert rule.decide([0.3, 0.5, 0.6, 0.6874], COMPLETED).stop


def test_median_respects_its_warm_up() -> None:
    rule = MedianRule(min_trials=3, start_epoch=4)
    hopeless = [0.01, 0.01, 0.01, 0.01, 0.01]
    for t in (1, 2, 3):  # before start_epoch nobody is stopped
        verdict = rule.decide(hopeless[:t], COMPLETED)
        assert not verdict.stop and "warm-up" in verdict.reason
    assert rule.decide(hopeless[:4], COMPLETED).stop
    # Too few completed trials reach epoch t: the rule waits (completed curves shorter than t do not count).
    short = [c[:3] for c in COMPLETED[:3]] + COMPLETED[3:]
    verdict = rule.decide(hopeless[:4], short)
    assert not verdict.stop and "2 of 3" in verdict.reason
    assert not MedianRule(min_trials=6, start_epoch=1).decide(hopeless[:2], COMPLETED).stop


# -- the predictor and Baker et al.'s rule -------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor() -> tuple[SequentialRegression, list[TrainedTrial]]:
    trials = synthetic_trials(100, 10, seed=0)
    model = SequentialRegression(10, seed=1)
    model.fit(trials)
    return model, trials


def test_the_predictor_learns_the_final_accuracy_from_the_partial_curve(
    predictor: tuple[SequentialRegression, list[TrainedTrial]],
) -> None:
    model, _ = predictor
    held_out = synthetic_trials(60, 10, seed=7)
    errors: dict[int, float] = {}
    for t in (2, 3, 5, 8):
        predictions = [model.predict(trial.features, trial.curve[:t]) for trial in held_out]
        errors[t] = float(np.mean([abs(p[0] - trial.final) for p, trial in zip(predictions, held_out)]))
    assert errors[3] < 0.03 and errors[5] < 0.015 and errors[8] < 0.01, errors
    assert errors[8] < errors[3] < errors[2], "more of the curve, better predictions"
    # One model per epoch t < T: none for the last epoch (nothing is left to predict there).
    assert model.predict(held_out[0].features, held_out[0].curve[:10]) is None
    assert sorted(model.state.hypers) == list(range(1, 10))


def test_the_rule_stops_the_hopeless_and_keeps_the_promising(
    predictor: tuple[SequentialRegression, list[TrainedTrial]],
) -> None:
    model, trials = predictor
    best = max(trial.final for trial in trials)
    rule = PredictRule(epochs=10, delta=0.99, start_epoch=1)
    rng = np.random.RandomState(3)
    features = (4.5, 4.0, 2.0, 1.0, 1.0, 0.0)
    hopeless = rule.decide(model, features, saturating(0.45, 2.0, 10, rng)[:3], best)
    promising = rule.decide(model, features, saturating(0.97, 1.5, 10, rng)[:3], best)
    assert hopeless.stop and hopeless.predicted == pytest.approx(0.45 * (1 - math.exp(-5)), abs=0.04)
    assert "P(no better than the best" in hopeless.reason
    assert not promising.stop and promising.predicted is not None and promising.predicted > best - 0.03
    # The rule stops those whose chance of beating the best is at most 1 - Δ, no others.
    for asymptote in np.linspace(0.3, 1.0, 15):
        curve = saturating(float(asymptote), 2.0, 10, rng)[:4]
        verdict = rule.decide(model, features, curve, best)
        mean, std = model.predict(features, curve)
        assert verdict.stop == (probability_not_better(mean, std, best) >= 0.99)


def test_the_rule_waits_for_its_model_its_start_and_never_judges_the_last_epoch(
    predictor: tuple[SequentialRegression, list[TrainedTrial]],
) -> None:
    model, _ = predictor
    hopeless = [0.05] * 10
    warm = PredictRule(epochs=10).decide(None, (0.0,) * 6, hopeless[:3], 0.9, "warm-up: 7 of 100 trained trials")
    assert not warm.stop and warm.reason == "warm-up: 7 of 100 trained trials"
    late = PredictRule(epochs=10, start_epoch=4).decide(model, (4.0, 4.0, 2.0, 1.0, 1.0, 0.0), hopeless[:3], 0.9)
    assert not late.stop and "before --early-stop-start-epoch 4" in late.reason
    last = PredictRule(epochs=10).decide(model, (4.0, 4.0, 2.0, 1.0, 1.0, 0.0), hopeless, 0.9)
    assert not last.stop and "last" in last.reason


def test_the_probability_is_the_gaussian_tail() -> None:
    assert probability_not_better(0.8, 0.1, 0.8) == pytest.approx(0.5)
    assert probability_not_better(0.6, 0.1, 0.8) == pytest.approx(0.97725, abs=1e-4)  # 2 sigma below
    assert probability_not_better(0.9, 0.05, 0.8) == pytest.approx(0.02275, abs=1e-4)


def test_a_restored_predictor_is_the_same_predictor(predictor: tuple[SequentialRegression, list[TrainedTrial]]) -> None:
    model, trials = predictor
    stored = PredictorState.from_json(model.state.to_json())
    again = SequentialRegression(10, seed=1)
    again.restore(stored, list(reversed(trials)))  # order does not matter: trials are sorted by id
    assert again.state.to_json() == model.state.to_json()
    for trial in synthetic_trials(5, 10, seed=11):
        for t in (1, 4, 9):
            assert again.predict(trial.features, trial.curve[:t]) == model.predict(trial.features, trial.curve[:t])


def test_architecture_features_count_weights_and_layers() -> None:
    features = architecture_features("[C(8,3,1), P(2,2), FC(16), SM(10)]", (1, 8, 8))
    weights = (1 * 9 * 8 + 8) + (8 * 4 * 4 * 16 + 16) + (16 * 10 + 10)
    assert features == pytest.approx((math.log10(1 + weights), 4.0, 1.0, 1.0, 1.0))
    nsc = architecture_features("NSC[(1,1,3,0,0), (2,2,2,1,0), (3,5,0,2,1); HEAD(10)]", (1, 8, 8))
    assert nsc == (0.0, 4.0, 1.0, 1.0, 1.0)


def test_the_curve_judged_is_that_of_the_attempt_now_training() -> None:
    rows = [
        EpochRow(1, 1, 1, 1, 1, 2.3, 0.1, 1e-3, 0, 1.0),
        EpochRow(1, 1, 1, 1, 2, 2.3, 0.4, 4e-4, 1, 1.0),
        EpochRow(1, 1, 1, 1, 3, 1.0, 0.6, 4e-4, 1, 1.0),
    ]
    assert surviving_curve(rows) == [0.4, 0.6]


# -- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, message",
    [
        ({"rule": "sometimes"}, "--early-stop must be one of none, median, predict"),
        ({"min_trials": 3}, "--early-stop-min-trials needs --early-stop median or --early-stop predict"),
        ({"rule": "median", "delta": 0.9}, "--early-stop-delta needs --early-stop predict"),
        ({"rule": "median", "retrain_every": 5}, "--early-stop-retrain-every needs --early-stop predict"),
        ({"rule": "predict", "delta": 1.0}, "--early-stop-delta must be in [0.5, 1)"),
        ({"rule": "predict", "min_trials": 0}, "--early-stop-min-trials must be a whole number of at least 1"),
        ({"rule": "median", "start_epoch": -1}, "--early-stop-start-epoch must be a whole number"),
        ({"rule": "predict", "retrain_every": 0}, "--early-stop-retrain-every must be a whole number"),
        ({"rule": "median", "wait_seconds": 0}, "--early-stop-wait must be in (0, 600]"),
        ({"rule": "median", "start_epoch": 20}, "--early-stop-start-epoch 20 must be below --epochs 20"),
        ({"rule": "median", "bogus": 1}, "unknown early-stop setting(s): bogus"),
    ],
)
def test_bad_settings_are_config_errors(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        SearchConfig(early_stop=given)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_each_rule_gets_its_defaults_and_the_config_round_trips() -> None:
    assert SearchConfig().early_stop == EarlyStopConfig("none")
    median = SearchConfig(early_stop={"rule": "median"}).early_stop
    assert (median.min_trials, median.start_epoch, median.retrain_every, median.delta) == (3, 4, None, None)
    config = SearchConfig(early_stop={"rule": "predict", "delta": 0.95})
    predict = config.early_stop
    assert (predict.min_trials, predict.start_epoch, predict.retrain_every, predict.delta) == (100, 1, 10, 0.95)
    assert SearchConfig.from_dict(config.to_dict()).early_stop == predict
    assert SearchConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "early_stop"}).early_stop.rule == (
        "none"
    ), "experiments stored before early stopping existed resume with none"


# -- the trainer's stop ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DataBundle:
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


def test_the_trainer_stops_when_its_callback_says_so(digits: DataBundle) -> None:
    seen: list[EpochMetrics] = []

    def judge(metrics: EpochMetrics) -> StopTraining | None:
        seen.append(metrics)
        return StopTraining("hopeless", predicted=0.42) if metrics.epoch == 2 else None

    arch = Architecture.parse("[FC(16), SM(10)]")
    result = train_architecture(arch, digits, TrainConfig(epochs=5), keep_weights=True, on_epoch=judge)
    assert result.status == TrialStatus.STOPPED and result.failure == "hopeless"
    assert [m.epoch for m in seen] == [1, 2] and result.epochs_run == result.stopped_epoch == 2
    assert result.accuracy == max(result.history) and result.predicted_accuracy == 0.42
    assert result.state_dict is not None, "the weights reached are kept like any trial's"


# -- the protocol over the store -------------------------------------------------------------------------


def new_experiment(store: Store, name: str, epochs: int = 3, **early_stop: Any) -> Experiment:
    config = SearchConfig(dataset="digits", epochs=epochs, early_stop=early_stop or None)
    return store.create_experiment(name, config.to_dict())


def running_trial(store: Store, experiment: Experiment, arch: str) -> int:
    parsed = Architecture.parse(arch)
    with store.transaction() as tx:
        return tx.insert_trial(experiment.id, str(parsed), parsed.digest, 1.0)


def trained_trial(
    store: Store, experiment: Experiment, arch: str, curve: tuple | list, final: float | None = None
) -> int:
    """A fully trained trial with its learning curve, as a search leaves it."""
    trial_id = running_trial(store, experiment, arch)
    for epoch, accuracy in enumerate(curve, start=1):
        store.record_epoch(EpochRow(experiment.id, trial_id, 1, 1, epoch, 0.5, accuracy, 1e-3, 0, 0.1))
    with store.transaction() as tx:
        tx.finish_trial(trial_id, TrialStatus.DONE, max(curve) if final is None else final, 1000, None, 1.0)
    return trial_id


def metrics(epoch: int, accuracy: float | None = 0.5, restarts: int = 0) -> EpochMetrics:
    return EpochMetrics(epoch, 0.5, accuracy, 1e-3, restarts, float(epoch))


def test_a_trial_waits_for_its_decision_and_stops_when_told(store: Store, db_url: str) -> None:
    experiment = new_experiment(store, "told", rule="median", start_epoch=1)
    trial_id = running_trial(store, experiment, "[FC(16), SM(10)]")
    recorder = EpochRecorder(store, trial_id)
    agent = Store.connect(db_url)

    def decide_later(epoch: int, stop: bool) -> threading.Thread:
        def write() -> None:
            time.sleep(0.5)
            with agent.transaction() as tx:
                tx.record_decision(
                    DecisionRow(experiment.id, trial_id, 1, 1, epoch, stop, "median", None, f"epoch {epoch}")
                )

        thread = threading.Thread(target=write)
        thread.start()
        return thread

    try:
        writer = decide_later(1, False)
        started = time.monotonic()
        assert recorder(metrics(1)) is None
        assert time.monotonic() - started >= 0.4, "it waited for the answer"
        writer.join()
        writer = decide_later(2, True)
        signal = recorder(metrics(2))
        writer.join()
    finally:
        agent.close()
    assert signal == StopTraining("epoch 2", None)
    assert recorder.decided == 2 and recorder.missed == 0 and recorder.recorded == 2


def test_a_trial_trains_on_when_the_agent_does_not_answer(store: Store) -> None:
    experiment = new_experiment(store, "silent", epochs=5, rule="median", start_epoch=1, wait_seconds=2.0)
    trial_id = running_trial(store, experiment, "[FC(16), SM(10)]")
    recorder = EpochRecorder(store, trial_id)
    started = time.monotonic()
    assert recorder(metrics(1)) is None
    first = time.monotonic() - started
    assert 2.0 <= first < 2.0 + 3, "bounded by --early-stop-wait"
    started = time.monotonic()
    assert recorder(metrics(2)) is None
    assert time.monotonic() - started < SHORT_WAIT + 1.5, "once missed, later epochs wait a second at most"
    assert recorder(metrics(3, accuracy=None)) is None, "a diverged epoch is not waited for"
    assert recorder(metrics(5)) is None, "nor the last epoch of the schedule"
    assert recorder.missed == 2 and recorder.recorded == 4


def test_a_trial_does_not_wait_where_the_rule_cannot_stop_it(store: Store) -> None:
    experiment = new_experiment(store, "early", epochs=5, rule="median", start_epoch=3)
    recorder = EpochRecorder(store, running_trial(store, experiment, "[FC(16), SM(10)]"))
    started = time.monotonic()
    assert recorder(metrics(1)) is None and recorder(metrics(2)) is None  # before --early-stop-start-epoch
    assert recorder(metrics(4, restarts=2)) is None  # epoch 2 of the attempt now training
    assert time.monotonic() - started < 1.0 and recorder.missed == recorder.decided == 0


def test_without_early_stopping_a_trial_never_waits(store: Store) -> None:
    experiment = new_experiment(store, "plain")
    recorder = EpochRecorder(store, running_trial(store, experiment, "[FC(16), SM(10)]"))
    started = time.monotonic()
    assert recorder(metrics(1)) is None and recorder(metrics(2)) is None
    assert time.monotonic() - started < 1.0 and recorder.missed == recorder.decided == 0


def test_the_judge_decides_each_new_epoch_once(store: Store) -> None:
    experiment = new_experiment(store, "median", epochs=5, rule="median", min_trials=3, start_epoch=2)
    for i, curve in enumerate(COMPLETED[:4]):
        trained_trial(store, experiment, f"[FC({i + 1}), SM(10)]", curve)
    bad = running_trial(store, experiment, "[FC(32), SM(10)]")
    good = running_trial(store, experiment, "[FC(64), SM(10)]")
    config = SearchConfig.from_dict(experiment.config)
    judge = StopJudge(store, experiment, config.early_stop, 5, (1, 8, 8))
    for trial_id, curve in ((bad, [0.1, 0.15]), (good, [0.6, 0.75])):
        for epoch, accuracy in enumerate(curve, start=1):
            store.record_epoch(EpochRow(experiment.id, trial_id, 1, 1, epoch, 0.5, accuracy, 1e-3, 0, 0.1))
    decided = judge.step()
    assert [(d.trial_id, d.epoch, d.stop) for d in decided] == [
        (bad, 1, False),
        (bad, 2, True),
        (good, 1, False),
        (good, 2, False),
    ]
    assert "warm-up" in decided[0].reason and "below the median" in decided[1].reason
    assert judge.step() == [], "each epoch is decided once"
    assert store.stop_decision(bad, 1, 1, 2).stop and not store.stop_decision(good, 1, 1, 2).stop


def predict_experiment(store: Store, name: str, n: int = 20, epochs: int = 6) -> Experiment:
    """An experiment with ``--early-stop predict`` and ``n`` synthetic trained trials (their reward a
    known function of their curve), enough for the predictor."""
    experiment = new_experiment(
        store, name, epochs=epochs, rule="predict", min_trials=n, retrain_every=5, start_epoch=1
    )
    for trial in synthetic_trials(n, epochs, seed=5):
        trained_trial(store, experiment, f"[FC({trial.trial_id}), SM(10)]", trial.curve, trial.final)
    return experiment


def test_a_resumed_judge_keeps_its_decisions_and_its_predictor(store: Store, db_url: str) -> None:
    """A judge that stops (as when its agent is killed) and a new one on the same store: the decisions
    are kept, not taken again, and the new judge predicts with the very same models."""
    experiment = predict_experiment(store, "resume")
    config = SearchConfig.from_dict(experiment.config).early_stop
    rng = np.random.RandomState(9)
    hopeless = running_trial(store, experiment, "[FC(100), SM(10)]")
    for epoch, accuracy in enumerate(saturating(0.4, 2.0, 6, rng)[:3], start=1):
        store.record_epoch(EpochRow(experiment.id, hopeless, 1, 1, epoch, 0.5, accuracy, 1e-3, 0, 0.1))
    first = StopJudge(store, experiment, config, 6, (1, 8, 8), seed=0)
    decided = first.step()
    assert [d.epoch for d in decided] == [1, 2, 3] and decided[-1].stop and decided[-1].predicted is not None
    saved = store.load_stopping_state(experiment.id)
    assert saved is not None and saved[0] == "predict" and len(saved[1]["trained_on"]) == 20 and saved[1]["fits"] == 1
    before = store.decisions(experiment.id)

    with Store.connect(db_url) as resumed_store:  # the agent's successor, after kill -9 of the first
        resumed = StopJudge(resumed_store, experiment, config, 6, (1, 8, 8), seed=0)
        assert resumed.step() == [], "decisions already taken are kept, not taken again"
        assert resumed.model is not None and resumed.model.state.to_json() == first.model.state.to_json()
        promising = running_trial(store, experiment, "[FC(101), SM(10)]")
        curve = saturating(0.97, 1.2, 6, rng)[:2]
        for epoch, accuracy in enumerate(curve, start=1):
            store.record_epoch(EpochRow(experiment.id, promising, 1, 1, epoch, 0.5, accuracy, 1e-3, 0, 0.1))
        late = resumed.step()
        features = (*architecture_features("[FC(101), SM(10)]", (1, 8, 8)), 0.0)
        assert [d.trial_id for d in late] == [promising, promising]
        assert late[-1].predicted == pytest.approx(min(1.0, first.model.predict(features, list(curve))[0])), (
            "the resumed predictor predicts exactly as the first"
        )
        # More trained trials: the resumed judge refits after --early-stop-retrain-every (5) of them.
        for trial in synthetic_trials(5, 6, seed=13):
            trained_trial(resumed_store, experiment, f"[FC({200 + trial.trial_id}), SM(10)]", trial.curve, trial.final)
        resumed._read_trained([t.id for t in resumed_store.trials(experiment.id, TrialStatus.DONE)])
        resumed.step()
        assert resumed_store.load_stopping_state(experiment.id)[1]["fits"] == 2
        assert len(resumed_store.load_stopping_state(experiment.id)[1]["trained_on"]) == 25
    assert store.decisions(experiment.id)[: len(before)] == before


# -- whole searches ----------------------------------------------------------------------------------------

WEAK_SPACE = (
    "name: weak\nmax_depth: 2\nsize_bins: [8, 4, 1]\nconv: {filters: [2], kernels: [1], strides: [1]}\n"
    "pool: {shapes: [[2, 2]]}\nfc: {units: [4], max_consecutive: 1, max_size: 7}\nterminals: [gap, softmax]\n"
    "build: {activation: relu, dropout: paper}\n"
)
"""Small, weak networks (2 filters, 4 units): quick to train, and far below the trained trials
the tests seed, so the rules stop them at their first epoch."""


def seeded_search(store: Store, name: str, tmp_path: Path, rule: str, epochs: int = 3) -> tuple[Experiment, dict]:
    """A search created as ``nasagent search`` creates it, with trained trials seeded in that beat any
    network of ``WEAK_SPACE`` (median) or teach the predictor that a weak start ends weak (predict);
    one trial left to train."""
    space = tmp_path / "weak.yaml"
    space.write_text(WEAK_SPACE)
    if rule == "median":
        early_stop: dict[str, Any] = {"rule": "median", "min_trials": 2, "start_epoch": 1}
        curves = [[1.0] * epochs, [1.0] * epochs]
        finals = [1.0, 1.0]
    else:
        early_stop = {"rule": "predict", "min_trials": 8, "start_epoch": 1}
        starts = np.linspace(0.05, 0.99, 8)
        curves = [[float(y)] * epochs for y in starts]
        finals = [0.2 + 0.78 * float(y) ** 8 for y in starts]  # only a very strong start ends strong
    given = {
        "dataset": "digits",
        "space": str(space),
        "trials": len(curves) + 1,
        "epochs": epochs,
        "seed": 0,
        "data_dir": str(tmp_path / "data"),
        "early_stop": early_stop,
    }
    experiment, _ = open_experiment(store, name, given)
    for i, (curve, final) in enumerate(zip(curves, finals)):
        trained_trial(store, experiment, f"[FC({10 + i}), SM(10)]", curve, final)
    return experiment, given


def check_stopped(store: Store, experiment: Experiment, rule: str) -> None:
    """The search's one trained trial was stopped after its first epoch, as the decision says, and is
    shown so; its reward is the rule's and counts towards the budget."""
    [trial] = [t for t in store.trials(experiment.id) if not t.arch.startswith("[FC(1")]
    assert trial.status == TrialStatus.STOPPED, trial
    [decision] = store.decisions(experiment.id, trial.id)
    assert decision.stop and decision.epoch == 1 and decision.rule == rule
    assert [e.epoch for e in store.trial_epochs(trial.id)] == [1], "it trained no further"
    assert trial.info["stopped_epoch"] == 1 and trial.failure == decision.reason
    observed = store.trial_epochs(trial.id)[0].val_accuracy
    assert trial.info["observed_accuracy"] == observed
    if rule == "predict":  # Baker et al.: the predicted final accuracy is the stopped network's reward
        assert (
            trial.accuracy == pytest.approx(decision.predicted) and trial.info["predicted_accuracy"] == trial.accuracy
        )
    else:
        assert trial.accuracy == observed and trial.info["predicted_accuracy"] is None
    replay = dict(store.load_replay(experiment.id))
    assert replay[trial.arch] == pytest.approx(trial.accuracy), "the strategy was told the rule's reward"
    status = experiment_status(store, experiment.name)
    assert status["stopped"] == 1 and status["unique_trained"] == status["budget"] and status["finished"]
    assert status["early_stop"]["rule"] == rule
    [row] = [r for r in top_trials(store, experiment.name, 20) if r["trial_id"] == trial.id]
    assert row["status"] == "stopped" and row["stopped_epoch"] == 1 and row["stop_reason"] == decision.reason
    assert row["predicted_accuracy"] == (decision.predicted if rule == "predict" else None)
    assert row["accuracy_source"] == ("predicted" if rule == "predict" else "partial")  # top --json says so
    others = [r for r in top_trials(store, experiment.name, 20) if r["trial_id"] != trial.id]
    assert all(r["accuracy_source"] == "trained" for r in others)
    # The report lists it apart, and the dashboard's trial lists and trial page show where it stopped.
    report = build_report(store, experiment.name)
    [stopped] = report.to_json()["stopped"]
    assert stopped["trial_id"] == trial.id and stopped["stopped_epoch"] == 1 and stopped["reward"] == trial.accuracy
    assert "Stopped early (1)" in render_html(report, {})
    viewer = ReadOnlyStore.open(store.url)
    try:
        [listed] = dashboard.trials_page(viewer, experiment.name, status="stopped")["trials"]
        detail = dashboard.trial_detail(viewer, trial.id)["trial"]
    finally:
        viewer.close()
    for shown in (listed, detail):
        assert shown["status"] == "stopped" and shown["stopped_epoch"] == 1 and shown["failure"] == decision.reason
        assert shown["predicted_accuracy"] == (pytest.approx(decision.predicted) if rule == "predict" else None)


@pytest.mark.parametrize("rule", ["median", "predict"])
def test_local_workers_stop_a_hopeless_trial(rule: str, store: Store, tmp_path: Path) -> None:
    """The real agent and real worker processes: the worker records epoch 1, waits for the judge's
    decision in the store, stops, and its outcome comes back as any other."""
    experiment, given = seeded_search(store, f"local-{rule}", tmp_path, rule)
    progress = run_search(store, experiment.name, given, workers=1, device="cpu")
    assert progress.stopped == 1 and progress.unique_finished == len(store.trials(experiment.id))
    check_stopped(store, experiment, rule)


def test_kill_9_of_the_agent_keeps_every_decision_and_the_predictor(db_url: str, tmp_path: Path) -> None:
    """``nasagent search`` killed with SIGKILL right after its judge's first decision, then run again:
    the decisions taken before are all still there, unchanged, the predictor's saved state is the
    one the resumed judge starts from (no refit: no new trained trials), and the search finishes."""
    space = tmp_path / "weak.yaml"
    space.write_text(WEAK_SPACE)
    flags = [
        "search", "--experiment", "killed", "--dataset", "digits", "--space", str(space), "--trials", "10",
        "--epochs", "3", "--seed", "0", "--data-dir", str(tmp_path / "data"), "--early-stop", "predict",
        "--early-stop-min-trials", "8", "--workers", "1", "--device", "cpu", "--db", db_url,
    ]  # fmt: skip
    with Store.connect(db_url) as store:
        given = {
            "dataset": "digits", "space": str(space), "trials": 10, "epochs": 3, "seed": 0,
            "data_dir": str(tmp_path / "data"), "early_stop": {"rule": "predict", "min_trials": 8},
        }  # fmt: skip
        experiment, _ = open_experiment(store, "killed", given)
        for i, start in enumerate(np.linspace(0.05, 0.99, 8)):
            trained_trial(store, experiment, f"[FC({10 + i}), SM(10)]", [float(start)] * 3, float(start))
        env = {**os.environ, "NASAGENT_HOME": str(tmp_path / "home")}
        agent = subprocess.Popen([sys.executable, "-m", "nasagent.cli", *flags], env=env, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while not store.decisions(experiment.id) and time.monotonic() < deadline and agent.poll() is None:
                time.sleep(0.05)
            assert store.decisions(experiment.id), "the judge decided an epoch"
        finally:
            agent.kill()  # SIGKILL: nothing of the agent runs after this
            agent.communicate(timeout=60)
        before = store.decisions(experiment.id)
        state = store.load_stopping_state(experiment.id)
        assert state is not None and state[1]["fits"] == 1 and len(state[1]["trained_on"]) == 8
        done = subprocess.run([sys.executable, "-m", "nasagent.cli", *flags], env=env, capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        after = store.decisions(experiment.id)
        keys = {(b.trial_id, b.attempt, b.run, b.epoch) for b in before}
        assert [d for d in after if (d.trial_id, d.attempt, d.run, d.epoch) in keys] == before
        assert store.load_stopping_state(experiment.id) == state, "the resumed judge kept the predictor it was given"
        status = experiment_status(store, "killed")
        assert status["finished"] and status["unique_trained"] == 10
        trials = {t.id: t for t in store.trials(experiment.id)}
        for decision in after:  # every trial that was told to stop in its current attempt did stop
            if decision.stop and decision.attempt == trials[decision.trial_id].attempts:
                assert trials[decision.trial_id].status == TrialStatus.STOPPED


def test_trial_pods_stop_a_hopeless_trial(
    store: Store, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real agent through the Kubernetes launcher against the FAKE API, whose kubelet runs each
    Job's ``nasagent trial`` as a real process connected as the trial pods' role ``nasagent_trial``:
    the pod reads the decision with the SELECT migration 007 grants, and stops."""
    experiment, given = seeded_search(store, "pods", tmp_path, "median")
    cluster = SubprocessKubernetes({"nasagent-trial-db": {"url": trial_role_url(db_url)}}, tmp_path)
    monkeypatch.setattr("nasagent.execution.kubernetes.connect_kubernetes", lambda: cluster)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # the agent "runs in a pod"
    monkeypatch.setenv("POD_NAMESPACE", "nas")
    monkeypatch.setenv("POD_NAME", "search-agent-0")
    monkeypatch.setenv("POD_UID", "6f1c7a52-0000-4000-8000-00000000abcd")
    launcher = LauncherSettings(
        experiment="pods", image="registry.example/nasagent:1.0", namespace="nas", parallelism=1,
        pending_timeout=60, trial_timeout=600, max_retries=0, gpus_per_trial=0,
    )  # fmt: skip
    try:
        run_search(store, "pods", given, workers=1, launcher="kubernetes", cluster=launcher)
    finally:
        cluster.kill_all()
    check_stopped(store, experiment, "median")
    [trial] = [t for t in store.trials(experiment.id) if not t.arch.startswith("[FC(1")]
    assert trial.info["launcher"] == "kubernetes", "trained in a pod"


# -- the command line ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--early-stop", "always"], "--early-stop must be one of none, median, predict, got 'always'"),
        (["--early-stop-delta", "0.9"], "--early-stop-delta needs --early-stop predict"),
        (["--early-stop", "predict", "--early-stop-delta", "2"], "--early-stop-delta must be in [0.5, 1)"),
        (["--early-stop", "median", "--early-stop-min-trials", "-3"], "--early-stop-min-trials must be"),
        (["--early-stop", "median", "--early-stop-start-epoch", "5"], "must be below --epochs 5"),
    ],
)
def test_bad_values_exit_2_before_anything_is_created(
    flags: list[str], message: str, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["search", "--experiment", "bad", "--dataset", "digits", "--epochs", "5", "--db", db_url]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    with Store.connect(db_url) as store:
        assert store.find_experiment("bad") is None


def test_a_resume_must_keep_the_rule(store: Store, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    open_experiment(store, "kept", {"dataset": "digits", "epochs": 5, "early_stop": {"rule": "median"}})
    code = main(["search", "--experiment", "kept", "--early-stop", "predict", "--db", db_url])
    err = capsys.readouterr().err
    assert code == 2 and "exists with --early-stop median" in err and "not --early-stop predict" in err
    assert main(["status", "--experiment", "kept", "--json", "--db", db_url]) == 0
    assert '"rule": "median"' in capsys.readouterr().out


def test_flags_reach_the_stored_config(db_url: str) -> None:
    with Store.connect(db_url) as store:
        experiment, config = open_experiment(
            store,
            "flags",
            {"dataset": "digits", "epochs": 5, "early_stop": {"rule": "predict", "min_trials": 30, "delta": 0.95}},
        )
        stored = store.get_experiment("flags").config["early_stop"]
    assert stored == {
        "rule": "predict", "min_trials": 30, "start_epoch": 1, "retrain_every": 10, "delta": 0.95, "wait_seconds": 10.0,
    }  # fmt: skip
    assert experiment.name == "flags" and config.early_stop.min_trials == 30


def test_the_cli_parses_every_early_stop_flag() -> None:
    from nasagent.cli import _early_stop_given, build_parser

    args = build_parser().parse_args(
        ["search", "--experiment", "x", "--early-stop", "predict", "--early-stop-min-trials", "50",
         "--early-stop-start-epoch", "2", "--early-stop-retrain-every", "5", "--early-stop-delta", "0.95",
         "--early-stop-wait", "3"]
    )  # fmt: skip
    assert _early_stop_given(args) == {
        "rule": "predict", "min_trials": 50, "start_epoch": 2, "retrain_every": 5, "delta": 0.95, "wait_seconds": 3.0,
    }  # fmt: skip
    assert _early_stop_given(build_parser().parse_args(["search", "--experiment", "x"])) is None


def test_the_loop_passes_more_often_while_it_judges_local_trials() -> None:
    # A judged epoch waits for the judge's next pass: local workers get one every 0.2 s; cluster
    # runners, whose every pass also asks an API server, and searches without a judge keep 1 s.
    assert poll_seconds("local", judging=True) == 0.2
    assert poll_seconds("local", judging=False) == 1.0
    assert poll_seconds("kubernetes", judging=True) == poll_seconds("kfp", judging=True) == 1.0


def test_the_replay_benchmark_stops_what_the_rule_stops_and_counts_the_epochs(store: Store, tmp_path: Path) -> None:
    # bench/replay_early_stop.py replays recorded curves through the real judge: six networks that
    # learn, then two that never do. The median rule (warm-up 3, from epoch 4) stops each bad one
    # after its 4th epoch: 6 x 6 + 2 x 4 = 44 of 48 epochs, and none of the five best is stopped.
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from replay_early_stop import replay

    good = [[0.5 + 0.05 * e + 0.01 * i for e in range(6)] for i in range(6)]
    curves = good + [[0.1] * 6, [0.11] * 6]
    records = [
        {"arch": f"[FC({8 * (i + 1)}), SM(10)]", "history": c, "restarts": 0, "status": "done", "accuracy": max(c)}
        | {"dataset": "digits", "trial_id": i, "params": None, "epsilon": 1.0}
        for i, c in enumerate(curves)
    ]
    args = argparse.Namespace(work=tmp_path, min_trials=6, retrain_every=5)
    result = replay(store, "digits|test|0", records, "median", args)
    assert (result.networks, result.epochs, result.full_epochs, result.stopped) == (8, 44, 48, 2)
    assert (result.late_epochs, result.late_full) == (8, 12)
    assert result.top_stopped == 0 and result.best_kept == pytest.approx(max(good[-1]))
    assert result.run == "digits, test, 0"
