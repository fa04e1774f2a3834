"""``nasagent trial``: one architecture trained and recorded, in cluster mode (a trial of an
experiment, outcome into ``trial_results`` in real PostgreSQL) and standalone (no database)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.persistence.postgres import Store

ARCH = "[C(16,3,1), P(2,2), SM(10)]"


def add_trial(store: Store, experiment: str, arch: str, seed: int = 0, epochs: int = 1) -> int:
    """An experiment on digits with one trial of ``arch`` recorded as running (as the agent submits it)."""
    found = store.find_experiment(experiment) or store.create_experiment(
        experiment, SearchConfig(dataset="digits", epochs=epochs, seed=seed).to_dict()
    )
    parsed = Architecture.parse(arch)
    with store.transaction() as tx:
        return tx.insert_trial(found.id, str(parsed), parsed.digest, 1.0)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["trial", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cluster_mode_reports_to_trial_results_and_trains_like_standalone(
    store: Store, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trial_id = add_trial(store, "exp", ARCH, seed=3)
    monkeypatch.setenv("NASAGENT_ATTEMPT", "2")
    monkeypatch.setenv("HOSTNAME", "nas-exp-1-2-abcde-pod")
    code, out, _ = run(capsys, "--experiment", "exp", "--trial-id", str(trial_id), "--db", db_url)
    assert code == 0
    attempt, reported = store.trial_result(trial_id)
    assert attempt == 2 and json.loads(out) == reported
    assert (
        reported["trial_id"] == trial_id
        and reported["status"] == "done"
        and reported["worker"] == "nas-exp-1-2-abcde-pod"
    )
    assert reported["accuracy"] > 0.2 and reported["params"] > 0 and reported["info"]["epochs_run"] == 1  # chance: 0.1
    trial = store.trial(trial_id)
    assert (trial.status, trial.accuracy) == ("running", None), "the trial row is the agent's to write"

    # Standalone with the experiment's settings trains the same network the same way: same seed, same accuracy.
    out_file = tmp_path / "result.json"
    code, out, _ = run(
        capsys, "--arch", ARCH, "--dataset", "digits", "--epochs", "1", "--seed", "3", "--out", str(out_file)
    )
    assert code == 0
    standalone = json.loads(out_file.read_text())
    assert standalone == json.loads(out)
    assert standalone["trial_id"] == 0 and standalone["info"]["history"] == reported["info"]["history"]
    assert (standalone["accuracy"], standalone["params"]) == (reported["accuracy"], reported["params"])


def test_a_trial_that_crashes_in_a_pod_is_recorded_failed(
    store: Store, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trial_id = add_trial(store, "exp", "[SM(5)]")  # five classes: digits has ten
    code, out, _ = run(capsys, "--experiment", "exp", "--trial-id", str(trial_id), "--db", db_url)
    assert code == 0, "the failure is recorded, so the launcher can hand it to the agent"
    attempt, reported = store.trial_result(trial_id)
    assert attempt == 1 and reported["status"] == "failed" and reported["accuracy"] == pytest.approx(0.1)
    assert (
        reported["failure"] == "trial crashed: ConfigError: architecture [SM(5)] predicts 5 classes but digits has 10"
    )
    # Standalone, the same mistake is the user's: exit 2, one line.
    code, _, err = run(capsys, "--arch", "[SM(5)]", "--epochs", "1")
    assert code == 2 and err.strip() == "nasagent: error: architecture [SM(5)] predicts 5 classes but digits has 10"


@pytest.mark.parametrize(
    "args, env, words",
    [
        ([], {}, "give --experiment NAME --trial-id ID"),
        (["--experiment", "exp"], {}, "needs both --experiment and --trial-id"),  # exit 3: see below
        (
            ["--experiment", "exp", "--trial-id", "1", "--epochs", "2", "--arch", "[SM(10)]"],
            {},
            "leave out --arch, --epochs",
        ),
        (["--arch", "[C(8,3,1)]"], {}, "must end in GAP(k) or SM(k)"),
        (["--arch", "[SM(10)]", "--db", "postgresql://h/db"], {}, "--db is for cluster mode"),
        (["--arch", "[SM(10)]", "--dataset", "imagenet"], {}, "imagenet"),
        (["--arch", "[SM(10)]", "--epochs", "0"], {}, "--epochs must be at least 1"),
        (
            ["--arch", "[SM(10)]", "--epochs", "1", "--out", "/nonexistent/dir/out.json"],
            {},
            "cannot write --out /nonexistent/dir/out.json",
        ),
        (["--experiment", "ghost", "--trial-id", "1"], {}, "unknown experiment 'ghost'"),
        (["--experiment", "other", "--trial-id", "{trial}"], {}, "experiment 'other' has no trial"),
        (
            ["--experiment", "exp", "--trial-id", "{trial}"],
            {"NASAGENT_ATTEMPT": "first"},
            "NASAGENT_ATTEMPT must be a positive integer",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    store: Store,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    words: str,
) -> None:
    trial_id = add_trial(store, "exp", "[SM(10)]")
    store.create_experiment("other", SearchConfig().to_dict())
    monkeypatch.setenv("NASAGENT_DB", db_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, _, err = run(capsys, *[a.replace("{trial}", str(trial_id)) for a in args])
    lines = err.strip().splitlines()
    # In cluster mode a configuration error exits 3 (CONFIG_ERROR_EXIT): the trial Job's
    # podFailurePolicy fails the Job at once on it; a missing experiment or trial stays 2.
    config_error = "--experiment" in args and "unknown experiment" not in words and "has no trial" not in words
    assert code == (3 if config_error else 2), (code, err)
    assert len(lines) == 1 and lines[0].startswith("nasagent: error:") and words in lines[0], err
    assert store.trial_result(trial_id) is None
