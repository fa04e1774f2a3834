"""An experiment's life as a careful (and a careless) user lives it: names and inputs checked at the
edge, a space that runs out, artifacts that cannot be written, Ctrl-C, extending and deleting."""

from __future__ import annotations

import io
import itertools
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasagent import cli
from nasagent.config import SearchConfig, check_experiment_name
from nasagent.core.arch import Architecture
from nasagent.core.trial import TrialOutcome, TrialStatus
from nasagent.errors import ArtifactError, ConfigError
from nasagent.execution.function import FunctionRunner
from nasagent.persistence.artifacts import open_artifacts
from nasagent.persistence.postgres import Store
from nasagent.search.keeper import CheckpointKeeper, search_keeper
from nasagent.search.lifecycle import extend_experiment
from nasagent.search.loop import SearchLoop
from nasagent.search.run import open_experiment
from nasagent.search.status import experiment_status
from nasagent.spaces.metaqnn import MetaQNNSpace, SpaceConfig, load_space
from nasagent.training.checkpoints import checkpoint_key, save_trial_checkpoint

REPO = Path(__file__).resolve().parent.parent


def nasagent(*args: str, db: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NASAGENT_DB": db, **env},
        timeout=timeout,
        cwd=REPO,
    )


def one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasagent: error:") and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def reward(arch: Architecture) -> float:
    return 1.0 / (1 + len(str(arch)))


# -- names and inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "-x", "x-", "a b", 'a"b', "a'b", "a\nb", "../../etc/passwd", "a/b", "é", "a" * 64]
)
def test_unusable_experiment_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is not allowed: use 1 to 63 letters, digits"):
        check_experiment_name(name)


def test_usable_experiment_names_pass() -> None:
    for name in ("a", "cifar-10_run.2", "A" * 63, "0"):
        assert check_experiment_name(name) == name


def test_bad_names_and_spaces_are_one_line_and_create_nothing(db_url: str, tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
        for i in range(12)
    ]
    bomb.write_text("\n".join(lines) + "\n")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    cases = [
        (["--experiment", "../../etc/passwd"], "experiment name '../../etc/passwd' is not allowed"),
        (["--experiment", "x" * 10_000], "(10000 characters) is not allowed"),
        (["--experiment", "a\nb"], "is not allowed"),
        (["--experiment", "deep", "--space", str(deep)], "is nested too deeply"),
        (["--experiment", "bomb", "--space", str(bomb)], "holds more than 100,000 values"),
        (["--experiment", "big", "--space", str(big)], "a space file must be under 1,048,576"),
    ]
    for flags, words in cases:
        one_line(nasagent("search", *flags, "--trials", "2", "--epochs", "1", db=db_url), words)
    with Store.connect(db_url) as store:
        assert store.list_experiments() == []


def test_a_legacy_name_too_long_for_files_is_one_line(store: Store, db_url: str, tmp_path: Path) -> None:
    name = "n" * 300  # made before names were checked: still listed and deleted, without a traceback
    store.create_experiment(name, SearchConfig(trials=2).to_dict())
    art = f"file://{tmp_path}/art"
    open_artifacts(art).put_bytes("other/reports/a.md", b"x")  # a store in use
    listed = nasagent("models", "list", "--experiment", name, "--artifacts", art, db=db_url)
    assert listed.returncode == 0 and "no finetuned models of" in listed.stdout, listed.stderr
    one_line(
        nasagent("search", "--experiment", name, "--artifacts", art, db=db_url), "cannot write", "File name too long"
    )
    result = nasagent("delete", "--experiment", name, "--yes", "--artifacts", art, db=db_url)
    assert result.returncode == 0, result.stderr
    assert store.find_experiment(name) is None


# -- a space that runs out -------------------------------------------------------------------


def test_counting_a_space_agrees_with_enumerating_it() -> None:
    config = SpaceConfig.from_dict(
        {
            "max_depth": 3,
            "size_bins": [4, 1],
            "conv": {"filters": [4, 8], "kernels": [1, 3], "strides": [1]},
            "pool": {"shapes": [[2, 2]]},
            "fc": {"units": [16, 8], "max_consecutive": 2},
        }
    )
    space = MetaQNNSpace(config, 6, 10)

    def walks(state, size, layers):  # every layer sequence, by brute force
        if state.terminal:
            yield tuple(layers)
            return
        for action in space.actions(state):
            yield from walks(*space.step(state, size, action), [*layers, action])

    found = set(walks(space.start, 6, []))
    assert space.count() == len(found) > 100
    assert MetaQNNSpace(load_space("metaqnn"), 32, 10).count() > 10**13  # the paper's space: exact, and instant


TWO = {"name": "two", "max_depth": 1, "conv": {"filters": [], "kernels": [1]}, "pool": {"shapes": []}}


def test_an_exhausted_space_ends_the_search_in_one_line_without_flooding(store: Store) -> None:
    experiment, config = open_experiment(store, "two", {"space_spec": TWO, "trials": 6, "space": "two"})
    space_size = config.space_size((1, 8, 8), 10)
    assert space_size == 2  # [SM(10)] and [GAP(10)]
    for run in range(2):
        runner = FunctionRunner(reward, capacity=2)
        strategy = config.make_strategy((1, 8, 8), 10)
        loop = SearchLoop(store, experiment, strategy, runner, config.budget, config.seed, space_size=space_size)
        progress = loop.run()
        notes = [n for n in progress.notes if "space exhausted" in n]
        assert len(notes) == 1 and "all 2 architectures of the space are trained" in notes[0], progress.notes
        assert len(runner.submitted) == (2 if run == 0 else 0)
        replay = len(store.load_replay(experiment.id))
        if run == 0:
            first_replay = replay
        assert replay == first_replay <= 4  # the rerun writes nothing at all
    status = experiment_status(store, "two")
    assert status["finished"] and status["unique_trained"] == 2 and status["budget"] == 6
    assert status["exhausted"].startswith("space exhausted")


# -- artifacts -------------------------------------------------------------------------------


def test_a_store_that_cannot_take_writes_stops_the_search_before_training(db_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = nasagent(
        "search", "--experiment", "nostore", "--trials", "2", "--artifacts", f"file://{blocker}/art", db=db_url
    )
    one_line(result, "cannot write nostore/checkpoints/.write-check-")
    with Store.connect(db_url) as store:
        assert store.find_experiment("nostore") is None


def test_artifacts_are_private(tmp_path: Path) -> None:
    store = open_artifacts(f"file://{tmp_path}/art")
    store.put_bytes("exp/checkpoints/trial-1.pt", b"weights")
    for path in (tmp_path / "art", tmp_path / "art" / "exp", tmp_path / "art" / "exp" / "checkpoints"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((tmp_path / "art/exp/checkpoints/trial-1.pt").stat().st_mode) == 0o600
    keeper = search_keeper(f"file://{tmp_path}/art", "exp", 3)  # the write check leaves nothing behind
    assert keeper is not None and store.list("exp/") == ["exp/checkpoints/trial-1.pt"]


def test_a_checkpoint_that_cannot_be_written_is_retried_then_stops_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nasagent.core.trial import TrialSpec
    from nasagent.training import checkpoints
    from nasagent.training.data import load_dataset
    from nasagent.training.trainer import TrainResult

    monkeypatch.setattr(checkpoints, "RETRY_DELAY_S", 0.0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = SearchConfig(trials=2).trial_settings("cpu")
    settings = type(settings)(**{**settings.__dict__, "artifacts": f"file://{blocker}", "experiment": "exp"})
    data = load_dataset("digits", tmp_path)
    result = TrainResult(TrialStatus.DONE, 0.9, None, 1, 0, 1.0, 10, [0.9], {})
    calls = []
    real_open = checkpoints.open_artifacts
    monkeypatch.setattr(checkpoints, "open_artifacts", lambda url: calls.append(url) or real_open(url))
    error = save_trial_checkpoint(settings, TrialSpec(7, "[SM(10)]", 0), data, result)
    assert error is not None and "cannot write exp/checkpoints/trial-7.pt" in error
    assert len(calls) == checkpoints.SAVE_ATTEMPTS == 3
    keeper = CheckpointKeeper(open_artifacts(f"file://{tmp_path}/art"), "exp", 2)
    outcome = TrialOutcome(7, TrialStatus.DONE, 0.9, info={"checkpoint_error": error})
    with pytest.raises(ArtifactError, match="trial 7 trained, but its checkpoint could not be saved"):
        keeper.on_trial_finished(None, outcome)  # type: ignore[arg-type]
    assert not open_artifacts(f"file://{tmp_path}/art").exists(checkpoint_key("exp", 7))


# -- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_prints_no_traceback_from_the_agent_or_its_workers(db_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasagent.cli", "search", "--experiment", "ctrlc", "--trials", "30"]
        + ["--epochs", "5", "--workers", "2"],
        env={**os.environ, "NASAGENT_DB": db_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the terminal's Ctrl-C reaches every process
        cwd=REPO,
    )
    with Store.connect(db_url) as store:
        deadline = time.monotonic() + 120
        while store.find_experiment("ctrlc") is None or not store.trials(store.get_experiment("ctrlc").id):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
    time.sleep(1.0)  # workers are training now
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "nasagent: interrupted; run the same command again to resume"


# -- extending and deleting ------------------------------------------------------------------


def test_extending_a_finished_search_continues_its_schedule_at_its_last_epsilon(store: Store) -> None:
    experiment, config = open_experiment(store, "ext", {"trials": 20, "dataset": "digits"})
    SearchLoop(store, experiment, config.make_strategy((1, 8, 8), 10), FunctionRunner(reward), 20, 0).run()
    extension = extend_experiment(store, "ext", 26)
    assert (extension.before, extension.after, extension.epsilon) == (20, 26, 0.1)
    assert "nasagent search --experiment ext" in extension.describe()
    config = SearchConfig.from_dict(store.get_experiment("ext").config)
    assert config.budget == 26 and config.epsilon_schedule().steps[-1] == (0.1, 6)
    assert config.epsilon_schedule().steps[:-1] == SearchConfig(trials=20).epsilon_schedule().steps
    progress = SearchLoop(
        store, experiment, config.make_strategy((1, 8, 8), 10), FunctionRunner(reward), config.budget, 0
    ).run()
    trials = store.trials(experiment.id)
    assert progress.unique_finished == len(trials) == 26 and len({t.digest for t in trials}) == 26
    assert [t.epsilon for t in trials[20:]] == [0.1] * 6
    # The command line the search started with still resumes it; a larger --trials points to extend.
    open_experiment(store, "ext", {"trials": 20})
    with pytest.raises(ConfigError, match="run: nasagent extend --experiment ext --trials 40"):
        open_experiment(store, "ext", {"trials": 40})
    with pytest.raises(ConfigError, match="must be more than the experiment's 26"):
        extend_experiment(store, "ext", 26)


def test_delete_asks_then_removes_rows_and_artifacts(
    store: Store, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment, config = open_experiment(store, "gone", {"trials": 3})
    SearchLoop(store, experiment, config.make_strategy((1, 8, 8), 10), FunctionRunner(reward), 3, 0).run()
    art = open_artifacts(f"file://{tmp_path}/art")
    for key in ("gone/checkpoints/trial-1.pt", "gone/finetuned/rank-1/model.json", "kept/reports/a.md"):
        art.put_bytes(key, b"x")
    monkeypatch.setenv("NASAGENT_DB", db_url)
    answers = itertools.chain(["n\n", "y\n"])

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for expected in (1, 0):
        monkeypatch.setattr(sys, "stdin", Terminal(next(answers)))
        assert cli.main(["delete", "--experiment", "gone", "--artifacts", art.url]) == expected
        assert (store.find_experiment("gone") is None) == (expected == 0)
    assert art.list() == ["kept/reports/a.md"]
    assert store._fetch("SELECT count(*) FROM replay_memory")[0][0] == 0
    one_line(nasagent("delete", "--experiment", "gone", "--yes", db=db_url), "unknown experiment 'gone'")
    one_line(nasagent("delete", "--experiment", "other", db=db_url), "unknown experiment 'other'")
