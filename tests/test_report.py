"""The experiment report against a real search: the real agent and strategies, real PostgreSQL, rewards
from a known function (``FunctionRunner``) and one trial that fails. Every number the report shows is
recomputed here straight from the store and compared, including the data drawn in the figures."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture, Conv
from nasagent.core.trial import TrialOutcome, TrialSpec
from nasagent.execution.function import FunctionRunner
from nasagent.persistence.postgres import Store
from nasagent.results.report import Report, build_report, make_figures, write_report
from nasagent.search.leaderboard import leaderboard_markdown
from nasagent.search.loop import SearchLoop
from nasagent.spaces.metaqnn import MetaQNNSpace, load_space
from nasagent.strategies.qlearning import QLearningStrategy
from nasagent.strategies.random_search import RandomStrategy
from nasagent.strategies.schedule import EpsilonSchedule

SCHEDULE = "1.0:15,0.5:8,0.1:7"
FAILURE = "diverged: loss is NaN in epoch 2"
FAILED_AT = 4  # the 5th architecture submitted fails


def reward(arch: Architecture) -> float:
    """Known reward: more and wider convolutions score higher."""
    convs = [layer for layer in arch.hidden if isinstance(layer, Conv)]
    return min(0.95, 0.3 + 0.05 * len(convs) + sum(c.filters for c in convs) / 2000)


class KnownRunner(FunctionRunner):
    """``FunctionRunner`` that also reports params and training seconds (known functions of the
    architecture) and fails the ``fail_at``-th submitted trial the way a diverging network does."""

    def __init__(self, fail_at: int | None) -> None:
        super().__init__(reward, capacity=2)
        self.fail_at = fail_at

    def wait(self, timeout: float) -> list[TrialOutcome]:
        if not self._queue:
            return []
        spec: TrialSpec = self._queue.popleft()
        arch = Architecture.parse(spec.arch)
        if self.fail_at is not None and self.submitted.index(spec) == self.fail_at:
            return [TrialOutcome.failed(spec.trial_id, FAILURE, num_classes=10, worker="known")]
        return [
            TrialOutcome(
                spec.trial_id,
                "done",
                reward(arch),
                params=1000 * len(arch.layers) + len(str(arch)),
                train_seconds=0.25 * len(arch.layers),
                worker="known",
            )
        ]


def run_experiment(store: Store, name: str, strategy_name: str) -> None:
    config = SearchConfig(strategy=strategy_name, schedule=SCHEDULE, space="metaqnn-small", epochs=1)
    experiment = store.create_experiment(name, config.to_dict())
    space = MetaQNNSpace(load_space("metaqnn-small"), 8, 10)
    if strategy_name == "qlearning":
        strategy = QLearningStrategy(space, EpsilonSchedule.parse(SCHEDULE), seed=1, config=config.qlearning)
        runner = KnownRunner(FAILED_AT)
    else:
        strategy, runner = RandomStrategy(space, seed=1), KnownRunner(None)
    SearchLoop(store, experiment, strategy, runner, config.budget, seed=0, poll_seconds=0.0).run()


@pytest.fixture
def qreport(store: Store) -> Report:
    run_experiment(store, "q", "qlearning")
    return build_report(store, "q")


def finished_trials(store: Store, name: str) -> list:
    return [t for t in store.trials(store.get_experiment(name).id) if t.status in ("done", "failed")]


def test_fig3_and_a2_hold_the_stores_accuracies(store: Store, qreport: Report) -> None:
    trials = finished_trials(store, "q")
    accuracies = [t.accuracy for t in trials]
    assert len(trials) == 30
    curve = qreport.accuracy
    assert curve.trial_ids == [t.id for t in trials] and curve.accuracies == accuracies
    assert curve.failed == [t.status == "failed" for t in trials] and sum(curve.failed) == 1
    assert curve.accuracies[FAILED_AT] == pytest.approx(0.1)  # the chance reward the agent received
    # Rolling mean over n // 5 = 6 models (the paper's 100 only from 500 models on).
    assert curve.window == 6
    expected_rolling = [float(np.mean(accuracies[j - 6 : j])) for j in range(6, 31)]
    assert curve.rolling_iterations == list(range(6, 31))
    assert curve.rolling_mean == pytest.approx(expected_rolling)
    # Mean per ε, in schedule order, each spanning its launches.
    by_eps: dict[float, list[float]] = {}
    for t in trials:
        by_eps.setdefault(t.epsilon, []).append(t.accuracy)
    assert [g.epsilon for g in curve.groups] == [1.0, 0.5, 0.1]
    assert [g.count for g in curve.groups] == [15, 8, 7]
    assert [(g.first_iteration, g.last_iteration) for g in curve.groups] == [(1, 15), (16, 23), (24, 30)]
    assert [g.mean_accuracy for g in curve.groups] == pytest.approx([np.mean(by_eps[e]) for e in (1.0, 0.5, 0.1)])
    # Fig A2: shared bins over all accuracies, numpy's counts per ε.
    edges = np.asarray(curve.histogram_edges)
    assert edges[0] == pytest.approx(min(accuracies)) and edges[-1] == pytest.approx(max(accuracies))
    for g in curve.groups:
        assert g.histogram == np.histogram(by_eps[g.epsilon], bins=edges)[0].tolist()
    replay = store.load_replay(store.get_experiment("q").id)
    assert curve.replay_samples == len(replay) and curve.dictionary_hits == len(replay) - 30
    # What the figures draw is exactly these numbers.
    figures = make_figures(qreport)
    ax = figures["fig3"].axes[0]
    line = next(ln for ln in ax.lines if ln.get_label().startswith("rolling mean"))
    assert list(line.get_xdata()) == list(range(6, 31)) and list(line.get_ydata()) == pytest.approx(expected_rolling)
    bars = next(c for c in ax.containers if c.get_label() == "mean per ε")
    assert [b.get_height() for b in bars] == pytest.approx([g.mean_accuracy for g in curve.groups])
    assert [b.get_width() for b in bars] == [15, 8, 7]
    for axis, g in zip(figures["figA2"].axes, curve.groups):
        assert [p.get_height() for p in axis.patches] == pytest.approx([c / g.count for c in g.histogram])


def _q_by(store: Store, name: str, key) -> dict:
    """{group: {depth: mean Q}} recomputed from the raw Q-table with string handling only."""
    sums: dict = {}
    for (state, action), value in store.load_q(store.get_experiment(name).id).items():
        group = key(action)
        if group is not None:
            sums.setdefault(group, {}).setdefault(int(state.split("|")[0]) + 1, []).append(value)
    return {g: {d: float(np.mean(v)) for d, v in by_depth.items()} for g, by_depth in sums.items()}


def _kind(action: str) -> str:
    prefix = action.split("(")[0]
    return {"C": "convolution", "P": "pooling", "FC": "fully connected", "GAP": "termination", "SM": "termination"}[
        prefix
    ]


def test_fig_a3_a4_hold_the_mean_q_per_layer_type_and_kernel_by_depth(store: Store, qreport: Report) -> None:
    q = store.load_q(store.get_experiment("q").id)
    assert qreport.q.entries == len(q) > 0 and qreport.q.skipped == 0 and qreport.q.note is None
    expected_type = _q_by(store, "q", _kind)
    got_type = {c.label: dict(zip(c.depths, c.means)) for c in qreport.q.by_type}
    assert set(got_type) == set(expected_type) >= {"convolution", "termination"}
    for label, by_depth in expected_type.items():
        assert got_type[label] == pytest.approx(by_depth)
    # Depth is that of the layer the action adds: the first layer (from the start state) is depth 1.
    assert min(d for c in qreport.q.by_type for d in c.depths) == 1
    expected_kernel = _q_by(store, "q", lambda a: int(a[2:-1].split(",")[1]) if a.startswith("C(") else None)
    got_kernel = {int(c.label.split("×")[0]): dict(zip(c.depths, c.means)) for c in qreport.q.by_kernel}
    assert set(got_kernel) == set(expected_kernel)
    for kernel, by_depth in expected_kernel.items():
        assert got_kernel[kernel] == pytest.approx(by_depth)
    figures = make_figures(qreport)
    for key, curves in (("figA3", qreport.q.by_type), ("figA4", qreport.q.by_kernel)):
        lines = {ln.get_label(): ln for ln in figures[key].axes[0].lines}
        for c in curves:
            assert list(lines[c.label].get_xdata()) == c.depths
            assert list(lines[c.label].get_ydata()) == pytest.approx(c.means)


def test_leaderboard_failures_and_time_per_trial(store: Store, qreport: Report) -> None:
    trials = finished_trials(store, "q")
    done = sorted((t for t in trials if t.status == "done"), key=lambda t: (-t.accuracy, t.id))
    assert [r["trial_id"] for r in qreport.leaderboard] == [t.id for t in done[:25]]
    assert [r["params"] for r in qreport.leaderboard] == [t.params for t in done[:25]]
    assert all(r["params"] > 0 for r in qreport.leaderboard)
    failed = [t for t in trials if t.status == "failed"]
    assert [(f["trial_id"], f["failure"], f["arch"]) for f in qreport.failures] == [
        (t.id, FAILURE, t.arch) for t in failed
    ]
    assert qreport.failure_reasons == [{"failure": FAILURE, "count": 1}]
    assert [t.train_seconds for t in qreport.times] == [t.train_seconds for t in trials]
    assert [t.wall_seconds for t in qreport.times] == pytest.approx(
        [(t.finished_at - t.started_at).total_seconds() for t in trials]
    )
    assert all(t.wall_seconds >= 0 for t in qreport.times)
    assert qreport.timing["train_seconds_total"] == pytest.approx(sum(t.train_seconds or 0 for t in trials))
    assert qreport.status["unique_trained"] == 30 and qreport.status["failed"] == 1


def test_written_page_is_self_contained_with_figures_and_failures(qreport: Report, tmp_path: Path) -> None:
    index = write_report(qreport, tmp_path / "out")
    assert index == tmp_path / "out" / "index.html"
    page = index.read_text()
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    assert links and all(link.startswith("data:") for link in links)
    assert "<script" not in page.lower() and "url(" not in page and "@import" not in page
    images = re.findall(r'<figure id="(\w+)"><img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [key for key, _ in images] == ["fig3", "figA2", "figA3", "figA4", "timing"]
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for _, data in images)
    assert FAILURE in page and qreport.leaderboard[0]["arch"] in page
    numbers = json.loads((tmp_path / "out" / "report.json").read_text())
    assert numbers["fig3"]["rolling_mean"] == pytest.approx(qreport.accuracy.rolling_mean)
    assert [g["mean_accuracy"] for g in numbers["fig3"]["per_epsilon"]] == pytest.approx(
        [g.mean_accuracy for g in qreport.accuracy.groups]
    )
    assert numbers["figA3"]["curves"][0]["means"] == pytest.approx(qreport.q.by_type[0].means)
    assert numbers["failures"][0]["failure"] == FAILURE
    markdown = (tmp_path / "out" / "leaderboard.md").read_text()
    assert f"| 1 | {qreport.leaderboard[0]['accuracy']:.4f} |" in markdown
    assert markdown.count("\n| ") == len(qreport.leaderboard) + 1  # header + one row per model


def test_random_search_report_says_there_are_no_q_values(store: Store, tmp_path: Path) -> None:
    run_experiment(store, "rand", "random")
    report = build_report(store, "rand")
    assert report.q.entries == 0 and report.q.by_type == [] and "keeps no Q-values" in report.q.note
    assert [g.epsilon for g in report.accuracy.groups] == [None]  # random search has no ε
    assert report.failures == [] and report.failure_reasons == []
    figures = make_figures(report)
    assert "figA3" not in figures and "figA4" not in figures and "fig3" in figures
    page = write_report(report, tmp_path).read_text()
    assert "keeps no Q-values" in page and 'id="figA3-missing"' in page and "No trial failed." in page


def nasagent(*args: str, db: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NASAGENT_DB": db, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_writes_the_report_and_rejects_an_unknown_experiment(
    store: Store, db_url: str, tmp_path: Path, capsys
) -> None:
    run_experiment(store, "cli", "qlearning")
    result = nasagent(
        "report", "--experiment", "cli", "--out", str(tmp_path / "r"), "-k", "5", "--db", db_url, db=db_url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "r" / "index.html")
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"index.html", "report.json", "leaderboard.md"}
    assert len(json.loads((tmp_path / "r" / "report.json").read_text())["leaderboard"]) == 5
    for args, word in (
        (["--experiment", "nope", "--out", str(tmp_path / "x")], "unknown experiment 'nope'"),
        (["--experiment", "cli", "--out", str(tmp_path / "r" / "index.html" / "sub")], "cannot write the report"),
    ):
        assert main(["report", *args, "--db", db_url]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nasagent: error:") and word in lines[0], lines
    assert not (tmp_path / "x").exists()


def test_report_of_an_experiment_with_no_finished_trial(store: Store, tmp_path: Path) -> None:
    store.create_experiment("fresh", SearchConfig(schedule=SCHEDULE).to_dict())
    report = build_report(store, "fresh")
    assert report.accuracy.accuracies == [] and report.accuracy.groups == [] and report.leaderboard == []
    assert make_figures(report) == {}
    page = write_report(report, tmp_path).read_text()
    assert "<img" not in page and page.count("No trial has finished yet.") == 3
    assert report.q.note is not None and "no model has been rewarded yet" in page


# Trials of an experiment with early stopping: (architecture, status, accuracy, stopped epoch,
# best accuracy reached, predicted final accuracy). A stopped trial's accuracy is its reward: the
# prediction (predict) or the best it reached (median), which is what the search ranks it by.
PREDICT_TRIALS = [
    ("[FC(32), SM(10)]", "done", 0.90, None, None, None),
    ("[C(8,3,1), SM(10)]", "stopped", 0.93, 2, 0.61, 0.93),
    ("[SM(10)]", "done", 0.80, None, None, None),
    ("[FC(8), SM(10)]", "stopped", 0.40, 1, 0.35, 0.40),
]
MEDIAN_TRIALS = [
    ("[FC(32), SM(10)]", "done", 0.90, None, None, None),
    ("[C(8,3,1), SM(10)]", "stopped", 0.55, 4, 0.55, None),
]


def stopping_experiment(store: Store, name: str, rule: str, trials: list[tuple]) -> None:
    """An experiment searching with ``--early-stop rule`` whose ``trials`` have finished, recorded as
    the search records them (a stopped trial's ``info`` and the reason it was stopped)."""
    config = SearchConfig(trials=len(trials), space="metaqnn-small", epochs=6, early_stop=rule)
    experiment = store.create_experiment(name, config.to_dict())
    with store.transaction() as tx:
        for arch, status, accuracy, epoch, observed, predicted in trials:
            trial_id = tx.insert_trial(experiment.id, arch, Architecture.parse(arch).digest, 1.0)
            info = {"stopped_epoch": epoch, "observed_accuracy": observed, "predicted_accuracy": predicted}
            reason = f"{rule}: stopped after epoch {epoch}" if status == "stopped" else None
            tx.finish_trial(trial_id, status, accuracy, 1000, reason, 2.0, info if status == "stopped" else None)


def test_stopped_trials_are_marked_in_every_leaderboard(store: Store, tmp_path: Path) -> None:
    """A trial stopped early is ranked by its reward like the others, but no leaderboard (the report's
    page, its leaderboard.md and report.json, the terminal table of ``top``) shows its accuracy as if
    the network had been trained: a status column says ``stopped@t`` and the accuracy says
    ``(predicted)`` (predict) or ``(partial)`` (median), with a note saying what that means."""
    from rich.console import Console

    from nasagent.search.display import leaderboard
    from nasagent.search.status import top_trials

    stopping_experiment(store, "pred", "predict", PREDICT_TRIALS)
    report = build_report(store, "pred")
    assert [(r["arch"], r["status"], r["accuracy_source"]) for r in report.leaderboard] == [
        ("[C(8,3,1), SM(10)]", "stopped", "predicted"),  # ranked first by its predicted final accuracy
        ("[FC(32), SM(10)]", "done", "trained"),
        ("[SM(10)]", "done", "trained"),
        ("[FC(8), SM(10)]", "stopped", "predicted"),
    ]
    index = write_report(report, tmp_path / "pred")
    markdown = (tmp_path / "pred" / "leaderboard.md").read_text()
    assert "4 of 4 models trained, 0 failed, 2 stopped early, 0 running, best accuracy 0.9000." in markdown
    assert "| rank | accuracy | status | params | MACs | latency ms | ε | architecture |" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert [line.split(" | ")[:3] for line in rows] == [
        ["| 1", "0.9300 (predicted)", "stopped@2"],
        ["| 2", "0.9000", "done"],
        ["| 3", "0.8000", "done"],
        ["| 4", "0.4000 (predicted)", "stopped@1"],
    ]
    assert "A trial with status stopped@t was stopped early after epoch t (--early-stop) and never trained" in markdown
    numbers = json.loads((tmp_path / "pred" / "report.json").read_text())
    assert [r["accuracy_source"] for r in numbers["leaderboard"]] == ["predicted", "trained", "trained", "predicted"]

    page = index.read_text()
    table = page[page.index('<table class="leaderboard">') :].partition("</table>")[0]
    assert "<th>accuracy</th><th>status</th><th>params</th>" in table
    assert "<td>1</td><td>0.9300 (predicted)</td><td>stopped@2</td>" in table
    assert "<td>2</td><td>0.9000</td><td>done</td>" in table
    assert '<p class="note" id="stopped-in-leaderboard">A trial with status stopped@t was stopped early' in page
    assert "<h2>Stopped early (2)</h2>" in page  # the details of each, as before

    console = Console(width=250, record=True)
    console.print(leaderboard(top_trials(store, "pred", 10), "top 10 of pred"))
    text = console.export_text()
    lines = [line for line in text.splitlines() if "[" in line]
    assert "0.9300 (predicted)" in lines[0] and "stopped@2" in lines[0] and "[C(8,3,1), SM(10)]" in lines[0]
    assert "0.9000 " in lines[1] and "done" in lines[1] and "predicted" not in lines[1]
    assert "status" in text and "A trial with status stopped@t was stopped early after epoch t" in text

    stopping_experiment(store, "med", "median", MEDIAN_TRIALS)  # median: the accuracy reached, not a prediction
    markdown = leaderboard_markdown("med", build_report(store, "med").status, top_trials(store, "med", 10))
    assert "| 1 | 0.9000 | done |" in markdown and "| 2 | 0.5500 (partial) | stopped@4 |" in markdown


def test_a_leaderboard_without_stopped_trials_has_no_status_column(qreport: Report, tmp_path: Path) -> None:
    write_report(qreport, tmp_path)
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "| rank | accuracy | params | MACs | latency ms | ε | architecture |" in markdown
    assert "stopped" not in markdown and "(predicted)" not in markdown
    assert all(r["accuracy_source"] == "trained" for r in qreport.leaderboard)
    assert 'id="stopped-in-leaderboard"' not in (tmp_path / "index.html").read_text()
