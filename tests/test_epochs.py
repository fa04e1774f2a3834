"""Per-epoch metrics: the trainer reports each epoch, the worker writes it to ``trial_epochs`` as it
ends (local workers and trial pods alike), and ``status --json`` / ``top --json`` show the curves.

Real training of tiny networks on the bundled ``digits``, real worker processes, the real
``nasagent`` command, a real PostgreSQL (the embedded one), and the trial pods' real database role.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
from launcher_helpers import trial_role_url

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.core.trial import TrialSpec, trial_seed
from nasagent.execution.epochs import EpochRecorder
from nasagent.execution.local import LocalRunner
from nasagent.persistence.postgres import EpochRow, Store
from nasagent.training.data import DataBundle, Split, load_dataset
from nasagent.training.settings import TrainConfig
from nasagent.training.trainer import EpochMetrics, train_architecture

TINY = Architecture.parse("[FC(16), SM(10)]")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DataBundle:
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


def new_trial(store: Store, name: str = "curves", arch: str = str(TINY), epochs: int = 3) -> int:
    """A trial recorded as running in a new experiment on digits (as the agent launches it)."""
    experiment = store.find_experiment(name) or store.create_experiment(
        name, SearchConfig(dataset="digits", epochs=epochs).to_dict()
    )
    parsed = Architecture.parse(arch)
    with store.transaction() as tx:
        return tx.insert_trial(experiment.id, str(parsed), parsed.digest, 1.0)


# -- the trainer's hook ------------------------------------------------------------------------------


def test_the_trainer_reports_every_epoch_as_it_trains(digits: DataBundle) -> None:
    seen: list[EpochMetrics] = []
    result = train_architecture(TINY, digits, TrainConfig(epochs=4, lr_decay_every=2), on_epoch=seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3, 4]
    assert [m.val_accuracy for m in seen] == result.history
    assert [m.lr for m in seen] == pytest.approx(result.lrs) and seen[2].lr == pytest.approx(seen[0].lr * 0.2)
    assert all(m.restarts == 0 and m.train_loss > 0 for m in seen)
    elapsed = [m.elapsed for m in seen]
    assert elapsed == sorted(elapsed) and 0 < elapsed[-1] <= result.seconds
    # The loss falls as it learns.
    assert seen[-1].train_loss < seen[0].train_loss


def test_diverged_epochs_and_restarts_are_reported(digits: DataBundle) -> None:
    x = digits.train.x.clone()
    x[5, 0, 3, 3] = float("nan")
    poisoned = dataclasses.replace(digits, train=Split(x, digits.train.y))
    seen: list[EpochMetrics] = []
    result = train_architecture(TINY, poisoned, TrainConfig(epochs=3), on_epoch=seen.append)
    assert result.restarts == 5 and len(seen) == result.epochs_run == 6
    assert [m.restarts for m in seen] == [0, 1, 2, 3, 4, 5]
    assert all(m.val_accuracy is None and m.train_loss != m.train_loss for m in seen)  # NaN, never evaluated


# -- the recorder and the store ------------------------------------------------------------------------


def test_the_recorder_writes_each_epoch_readable_at_once(store: Store, digits: DataBundle) -> None:
    trial_id = new_trial(store)
    recorder = EpochRecorder(store, trial_id)
    reader = Store.connect(store.url)  # another connection: sees only what was committed
    try:
        seen_while_training: list[int] = []

        def record_and_look(metrics: EpochMetrics) -> None:
            recorder(metrics)
            seen_while_training.append(len(reader.experiment_curves(recorder.experiment_id)[trial_id]))

        train_architecture(TINY, digits, TrainConfig(epochs=3), on_epoch=record_and_look)
        assert seen_while_training == [1, 2, 3]
    finally:
        reader.close()
    rows = store.trial_epochs(trial_id)
    assert [(r.attempt, r.run, r.epoch) for r in rows] == [(1, 1, 1), (1, 1, 2), (1, 1, 3)]
    assert all(r.seconds is not None and r.seconds > 0 and 0 < r.val_accuracy <= 1 for r in rows)
    assert [r.created_at for r in rows] == sorted(r.created_at for r in rows)
    assert store.epoch_count(rows[0].experiment_id) == 3


def test_non_finite_numbers_are_stored_as_null(store: Store) -> None:
    trial_id = new_trial(store)
    recorder = EpochRecorder(store, trial_id)
    recorder(EpochMetrics(1, float("nan"), None, 1e-3, 0, 0.5))
    recorder(EpochMetrics(2, float("inf"), 0.25, 1e-3, 1, 1.25))
    rows = store.trial_epochs(trial_id)
    assert [(r.train_loss, r.val_accuracy, r.restarts, r.seconds) for r in rows] == [
        (None, None, 0, 0.5),
        (None, 0.25, 1, 0.75),
    ]
    json.dumps([r.to_json() for r in rows], allow_nan=False)  # valid JSON, always


def test_curves_show_the_latest_run_of_each_trial(store: Store) -> None:
    first, second = new_trial(store), new_trial(store, arch="[FC(8), SM(10)]")
    eid = store.trial(first).experiment_id
    for attempt, run, epochs in ((1, 1, 3), (1, 2, 2), (2, 1, 1)):
        for epoch in range(1, epochs + 1):
            store.record_epoch(EpochRow(eid, first, attempt, run, epoch, 1.0, 0.1 * attempt + 0.01 * run, 1e-3, 0, 1.0))
    store.record_epoch(EpochRow(eid, second, 1, 1, 1, 2.0, 0.5, 1e-3, 0, 1.0))
    store.record_epoch(EpochRow(eid, second, 1, 1, 1, 9.0, 0.9, 1e-3, 0, 1.0))  # the same epoch again: kept as it was
    curves = store.experiment_curves(eid)
    assert [(r.attempt, r.run, r.epoch) for r in curves[first]] == [(2, 1, 1)]
    assert [r.val_accuracy for r in curves[second]] == [0.5]
    assert list(store.experiment_curves(eid, [second])) == [second]
    assert len(store.trial_epochs(first)) == 6  # every run stays readable


def test_a_trial_trained_again_records_a_new_attempt(store: Store) -> None:
    trial_id = new_trial(store)
    EpochRecorder(store, trial_id)(EpochMetrics(1, 1.0, 0.5, 1e-3, 0, 1.0))
    with store.transaction() as tx:
        tx.restart_trial(trial_id)  # what the agent does before it trains a trial again
    EpochRecorder(store, trial_id, run=3)(EpochMetrics(1, 1.0, 0.7, 1e-3, 0, 1.0))
    assert [(r.attempt, r.run) for r in store.trial_epochs(trial_id)] == [(1, 1), (2, 3)]
    assert [r.val_accuracy for r in store.experiment_curves(store.trial(trial_id).experiment_id)[trial_id]] == [0.7]


def test_a_lost_store_costs_the_curves_not_the_training(store: Store, db_url: str, digits: DataBundle) -> None:
    trial_id = new_trial(store)
    other = Store.connect(db_url, retry_seconds=0)
    recorder = EpochRecorder(other, trial_id)
    other.close()  # the database is gone for good, as far as this recorder knows
    result = train_architecture(TINY, digits, TrainConfig(epochs=2), on_epoch=recorder)
    assert result.status == "done" and recorder.recorded == 0
    assert store.trial_epochs(trial_id) == []


# -- the same path in local workers and trial pods ----------------------------------------------------


def test_local_workers_record_epochs_while_the_trial_runs(store: Store, tmp_path: Path) -> None:
    config = SearchConfig(dataset="digits", epochs=3, data_dir=str(tmp_path))
    trial_id = new_trial(store, epochs=3)
    trial = store.trial(trial_id)
    with LocalRunner(config.trial_settings("cpu"), 1, 10, db_url=store.url) as runner:
        runner.submit(TrialSpec(trial_id, trial.arch, trial_seed(0, trial.digest)))
        deadline = time.monotonic() + 120
        outcomes = []
        while not outcomes and time.monotonic() < deadline:
            outcomes = runner.wait(1.0)
        received = time.monotonic()
    assert outcomes and outcomes[0].status == "done"
    assert outcomes[0].info["input_shape"] == [1, 8, 8]
    rows = store.trial_epochs(trial_id)
    assert [r.epoch for r in rows] == [1, 2, 3] and [r.val_accuracy for r in rows] == outcomes[0].info["history"]
    assert rows[0].created_at < rows[-1].created_at  # written one by one, as each epoch ended
    assert received > 0


def test_a_trial_pod_records_its_epochs_with_the_trial_role(
    store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``nasagent trial --experiment --trial-id`` as a pod runs it, as role nasagent_trial: its epochs
    land under the launcher's attempt; the role may insert epochs but read none of them."""
    trial_id = new_trial(store, name="pods", epochs=2)
    url = trial_role_url(db_url)
    monkeypatch.setenv("NASAGENT_ATTEMPT", "2")
    assert main(["trial", "--experiment", "pods", "--trial-id", str(trial_id), "--db", url]) == 0
    rows = store.trial_epochs(trial_id)
    assert [(r.attempt, r.run, r.epoch) for r in rows] == [(1, 2, 1), (1, 2, 2)]
    conn = psycopg2.connect(url)
    try:
        for statement in ("SELECT * FROM trial_epochs", "DELETE FROM trial_epochs", "UPDATE trial_epochs SET lr = 0"):
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
            conn.rollback()
    finally:
        conn.close()
    capsys.readouterr()


def test_a_role_that_may_not_record_epochs_fails_before_training(
    store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trial_id = new_trial(store, name="norole", epochs=1)
    url = trial_role_url(db_url)
    owner = psycopg2.connect(db_url)
    owner.autocommit = True
    try:
        with owner.cursor() as cur:
            cur.execute("REVOKE INSERT ON trial_epochs FROM nasagent_trial")
        code = main(["trial", "--experiment", "norole", "--trial-id", str(trial_id), "--db", url])
        err = capsys.readouterr().err
        assert code == 2 and "permission denied for table trial_epochs" in err and len(err.strip().splitlines()) == 1
        assert store.trial_result(trial_id) is None, "nothing was trained nor reported"
    finally:
        with owner.cursor() as cur:
            cur.execute("GRANT INSERT ON trial_epochs TO nasagent_trial")
        owner.close()


# -- status and top --------------------------------------------------------------------------------------


def test_status_and_top_show_the_curves_of_a_real_search(db_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "NASAGENT_DB": db_url, "NASAGENT_HOME": str(tmp_path)}

    def nasagent(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "nasagent.cli", *args], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    nasagent(
        "search", "--experiment", "live", "--dataset", "digits", "--space", "metaqnn-small",
        "--trials", "3", "--epochs", "2", "--workers", "1", "--device", "cpu",
    )  # fmt: skip
    status = json.loads(nasagent("status", "--experiment", "live", "--json"))
    top = json.loads(nasagent("top", "--experiment", "live", "-k", "3", "--json"))
    assert len(top) >= 1 and status["epochs_recorded"] >= sum(len(row["curve"]) for row in top) >= 2 * len(top)
    for row in top:
        assert [e["epoch"] for e in row["curve"]][:2] == [1, 2]
        last_attempt = [e for e in row["curve"] if e["restarts"] == row["curve"][-1]["restarts"]]
        assert max(e["val_accuracy"] for e in last_attempt) == row["accuracy"]  # the reward: its best epoch
        assert all(set(e) == {"epoch", "train_loss", "val_accuracy", "lr", "restarts", "seconds"} for e in row["curve"])
