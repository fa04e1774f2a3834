"""The agent loop against the real embedded PostgreSQL, with rewards from a known function."""

from __future__ import annotations

from collections import Counter

import pytest
from agent_helpers import CrashAfter

from nasagent.core.arch import Architecture, Conv
from nasagent.core.trial import TrialOutcome, TrialStatus
from nasagent.execution.function import FunctionRunner
from nasagent.persistence.postgres import Store
from nasagent.search.callbacks import SearchCallback, SearchView
from nasagent.search.loop import SearchLoop
from nasagent.spaces.metaqnn import MetaQNNSpace, SpaceConfig, load_space
from nasagent.strategies.qlearning import QLearningStrategy
from nasagent.strategies.random_search import RandomStrategy
from nasagent.strategies.schedule import EpsilonSchedule


def reward(arch: Architecture) -> float:
    """Known reward: more and wider convolutions score higher; a deterministic function of the arch."""
    convs = [layer for layer in arch.hidden if isinstance(layer, Conv)]
    return min(0.95, 0.3 + 0.05 * len(convs) + sum(c.filters for c in convs) / 2000)


def small_space(input_size: int = 8) -> MetaQNNSpace:
    return MetaQNNSpace(load_space("metaqnn-small"), input_size, 10)


# Two hidden-layer choices and a depth of 1: exactly 2 * 2 + 2 = 6 architectures.
TINY = SpaceConfig.from_dict(
    {
        "name": "tiny",
        "max_depth": 1,
        "size_bins": [8, 4, 1],
        "conv": {"filters": [4, 8], "kernels": [3]},
        "pool": {"shapes": []},
        "fc": {"units": []},
        "terminals": ["gap", "softmax"],
    }
)


def make_agent(
    store: Store, name: str, strategy, budget: int, capacity: int = 1, runner=None
) -> tuple[SearchLoop, FunctionRunner]:
    experiment = store.find_experiment(name) or store.create_experiment(name, {"test": True})
    runner = runner or FunctionRunner(reward, capacity)
    return SearchLoop(store, experiment, strategy, runner, budget, seed=0, poll_seconds=0.0), runner


def qlearner(
    schedule: str = "1.0:12,0.5:6,0.1:6", seed: int = 0, space: MetaQNNSpace | None = None
) -> QLearningStrategy:
    return QLearningStrategy(space or small_space(), EpsilonSchedule.parse(schedule), seed)


def test_search_records_everything_in_postgres(store: Store) -> None:
    strategy = qlearner()
    agent, runner = make_agent(store, "e", strategy, budget=24)
    progress = agent.run()
    exp = store.get_experiment("e")
    trials = store.trials(exp.id)
    assert len(trials) == 24 == progress.unique_finished
    assert len({t.digest for t in trials}) == 24 and all(t.status == "done" for t in trials)
    assert [t.arch for t in trials] == [s.arch for s in runner.submitted]
    assert all(t.accuracy == pytest.approx(reward(Architecture.parse(t.arch))) for t in trials)
    # Only first trainings count towards each ε step's quota.
    assert Counter(t.epsilon for t in trials) == {1.0: 12, 0.5: 6, 0.1: 6}
    replay = store.load_replay(exp.id)
    assert len(replay) == progress.trials_done >= 24
    assert store.counts(exp.id)["trials_done"] == len(replay)
    # The Q-values in PostgreSQL are exactly the strategy's.
    assert store.load_q(exp.id) == pytest.approx({(s, a): v for s, row in strategy.q.items() for a, v in row.items()})
    assert progress.best_accuracy == max(t.accuracy for t in trials)


def test_replay_dictionary_never_trains_twice_and_reuses_the_accuracy(store: Store) -> None:
    strategy = QLearningStrategy(MetaQNNSpace(TINY, 8, 10), EpsilonSchedule.parse("1.0:6"), 0)
    agent, runner = make_agent(store, "tiny", strategy, budget=6, capacity=3)
    progress = agent.run()
    exp = store.get_experiment("tiny")
    archs = [s.arch for s in runner.submitted]
    assert len(archs) == len(set(archs)) == 6  # every architecture of the space trained exactly once
    replay = store.load_replay(exp.id)
    assert len(replay) > 6  # the tiny space forces replay-dictionary hits
    for arch, r in replay:
        assert r == pytest.approx(reward(Architecture.parse(arch)))  # hits see the stored accuracy
    assert progress.trials_done == len(replay)


def test_search_stops_when_the_space_is_exhausted(store: Store, monkeypatch) -> None:
    monkeypatch.setattr("nasagent.search.loop.MAX_REPEATS_IN_A_ROW", 200)
    strategy = RandomStrategy(MetaQNNSpace(TINY, 8, 10), seed=0)
    agent, runner = make_agent(store, "exhaust", strategy, budget=10)
    progress = agent.run()
    assert len(runner.submitted) == 6
    assert any("exhausted" in note for note in progress.notes)


def test_same_seed_same_rewards_same_search(store: Store) -> None:
    first, _ = make_agent(store, "a", qlearner(seed=5), budget=24)
    second, _ = make_agent(store, "b", qlearner(seed=5), budget=24)
    first.run(), second.run()
    trials_a = [t.arch for t in store.trials(store.get_experiment("a").id)]
    trials_b = [t.arch for t in store.trials(store.get_experiment("b").id)]
    assert trials_a == trials_b


@pytest.mark.parametrize("crash_after", [0, 1, 7, 15])
def test_resume_after_a_crash_continues_exactly_where_it_stopped(store: Store, crash_after: int) -> None:
    reference, _ = make_agent(store, "ref", qlearner(seed=3), budget=24)
    reference.run()
    crashed, _ = make_agent(store, "crash", qlearner(seed=3), budget=24, runner=CrashAfter(reward, crash_after))
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    exp = store.get_experiment("crash")
    assert store.counts(exp.id)["running"] == 1  # the trial in flight at the crash
    resumed, runner = make_agent(store, "crash", qlearner(seed=999), budget=24)  # the RNG comes from the store
    resumed.run()
    ref_trials = store.trials(store.get_experiment("ref").id)
    got = store.trials(exp.id)
    assert [t.arch for t in got] == [t.arch for t in ref_trials]  # nothing lost, nothing trained twice
    assert runner.submitted[0].arch == got[crash_after].arch  # the in-flight trial was run again
    assert got[crash_after].attempts == 2
    assert store.load_q(exp.id) == pytest.approx(store.load_q(store.get_experiment("ref").id))


def test_parallel_agent_keeps_w_trials_in_flight(store: Store) -> None:
    class Watch(FunctionRunner):
        peak = 0

        def wait(self, timeout: float) -> list[TrialOutcome]:
            Watch.peak = max(Watch.peak, self.in_flight)
            return super().wait(timeout)

    agent, runner = make_agent(store, "par", qlearner(), budget=24, runner=Watch(reward, 4))
    agent.run()
    assert Watch.peak == 4
    trials = store.trials(store.get_experiment("par").id)
    assert len(trials) == 24 and len({t.digest for t in trials}) == 24


class Recorder(SearchCallback):
    """Records which hook saw what, and what the store showed at that moment."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[tuple[str, object]] = []

    def on_step(self, search: SearchView) -> None:
        self.events.append(("step", search.progress.unique_finished))

    def on_trial_finished(self, search: SearchView, outcome: TrialOutcome) -> None:
        # The outcome is committed before the hook runs: the store already shows the trial finished.
        row = search.store.trial(outcome.trial_id)
        assert row is not None and row.status == outcome.status == TrialStatus.DONE
        self.events.append(("trial", outcome.trial_id))

    def on_search_end(self, search: SearchView) -> None:
        self.events.append(("end", search.progress.unique_finished))


def test_callbacks_see_every_trained_trial_once_and_the_end(store: Store) -> None:
    first, second = Recorder("first"), Recorder("second")
    experiment = store.create_experiment("hooks", {"test": True})
    # The tiny space has 6 architectures; random search proposes known ones often (replay hits, no training).
    loop = SearchLoop(
        store,
        experiment,
        RandomStrategy(MetaQNNSpace(TINY, 8, 10), 0),
        FunctionRunner(reward, 2),
        6,
        0,
        callbacks=[first, second],
        poll_seconds=0.0,
    )
    progress = loop.run()
    trials = [event for event in first.events if event[0] == "trial"]
    assert sorted(tid for _, tid in trials) == [t.id for t in store.trials(experiment.id)]  # each once
    assert progress.trials_done > len(trials)  # replay hits happened, and they called no on_trial_finished
    assert first.events[-1] == ("end", 6) and [e for e in first.events if e[0] == "end"] == [("end", 6)]
    assert first.events == second.events  # every callback sees every hook, in list order
    assert any(kind == "step" for kind, _ in first.events)
