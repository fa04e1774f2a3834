"""REINFORCE controller: settings, the chain space, the policy gradient, persistence, learning, resume.

Learning and resume run through the real SearchLoop, a FunctionRunner whose reward is a known function of
the architecture (no training) and the real embedded PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from agent_helpers import CrashAfter

from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture, Conv
from nasagent.core.networks import Network
from nasagent.errors import ConfigError
from nasagent.execution.function import FunctionRunner
from nasagent.persistence.postgres import Store
from nasagent.search.loop import SearchLoop
from nasagent.search.status import experiment_status
from nasagent.strategies.base import Proposal, Strategy
from nasagent.strategies.options import options_from
from nasagent.strategies.reinforce import ChainSpace, ReinforceConfig, ReinforceStrategy
from nasagent.training.build import build_model

# The best network of the toy problem; the reward counts how many of its 9 decisions match.
TARGET = [(32, 3, 1), (64, 5, 2), (16, 1, 1)]


def toy_reward(arch: Architecture) -> float:
    """Known reward: 0.3 + 0.6 × (fraction of decisions equal to TARGET's) + a fixed ±0.02 jitter."""
    convs = [layer for layer in arch.hidden if isinstance(layer, Conv)]
    matches = sum((c.filters, c.kernel, c.stride)[i] == t[i] for c, t in zip(convs, TARGET) for i in range(3))
    jitter = int(hashlib.sha256(str(arch).encode()).hexdigest()[:8], 16) / 2**32 - 0.5
    return 0.3 + 0.6 * matches / 9 + 0.04 * jitter


def read_options(options: dict[str, Any]) -> ReinforceConfig:
    """``--option`` values as the factory reads them."""
    return options_from(ReinforceConfig, options, "reinforce")


def reinforce(seed: int = 0, **options: Any) -> ReinforceStrategy:
    config = read_options(options)
    return ReinforceStrategy(ChainSpace(config, 10), seed, config)


class UniformChain(Strategy):
    """Random search over the same fixed-depth space: every decision uniform (the baseline to beat)."""

    name = "uniform-chain"

    def __init__(self, space: ChainSpace, seed: int) -> None:
        self.space = space
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def ask(self, unique_launched: int) -> Proposal:
        picks = [int(self.rng.integers(len(self.space.choices[self.space.kind(t)]))) for t in range(self.space.steps)]
        return Proposal(self.space.decode(picks))

    def tell(self, arch: Network, reward: float, first_training: bool) -> None:
        """Learns nothing."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def restore(self, state: dict[str, Any] | None, values: dict, replay: list) -> None:
        if state is not None:
            self.rng.bit_generator.state = state["rng"]


def run_agent(
    store: Store, name: str, strategy: Strategy, budget: int, runner: FunctionRunner | None = None
) -> list[float]:
    """Run (or resume) experiment ``name``; the accuracies of its trials in launch order."""
    experiment = store.find_experiment(name) or store.create_experiment(name, {"test": True})
    agent = SearchLoop(
        store, experiment, strategy, runner or FunctionRunner(toy_reward), budget, seed=0, poll_seconds=0.0
    )
    agent.run()
    return [t.accuracy for t in store.trials(experiment.id)]


# -- settings and space --------------------------------------------------------------------------
def test_options_are_read_as_the_cli_parses_them() -> None:
    config = read_options(
        {
            "depth": 2,
            "filters": [16, 32],
            "kernels": 3,
            "strides": [1],
            "baseline": False,
            "beta": 0.9,
            "entropy": 0,
            "lr": 0.01,
            "hidden": 8,
            "batch": 4,
            "tanh": "none",
        }
    )
    assert (config.depth, config.filters, config.kernels, config.strides) == (2, (16, 32), (3,), (1,))
    assert (config.baseline, config.beta, config.entropy, config.lr, config.hidden, config.batch, config.tanh) == (
        False,
        0.9,
        0.0,
        0.01,
        8,
        4,
        None,
    )
    assert read_options({"clip": 0.05}).clip == 0.05
    assert read_options({"clip": "none"}).clip is None


@pytest.mark.parametrize(
    "options, words",
    [
        ({"dpeth": 3}, ["dpeth", "depth"]),
        ({"depth": 0}, ["depth"]),
        ({"filters": []}, ["filters"]),
        ({"kernels": [3, 3]}, ["kernels", "twice"]),
        ({"strides": [1, "two"]}, ["strides"]),
        ({"beta": 1.0}, ["beta"]),
        ({"clip": -0.1}, ["clip"]),
        ({"clip": 0.1, "baseline": False}, ["clip", "baseline"]),
        ({"baseline": "yes"}, ["baseline"]),
        ({"lr": "fast"}, ["lr"]),
        ({"batch": 0}, ["batch"]),
    ],
)
def test_bad_options_are_one_line_config_errors(options: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        read_options(options)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_space_encodes_and_decodes_every_choice_and_rejects_foreign_networks() -> None:
    space = ChainSpace(ReinforceConfig(), 10)
    assert space.size == (4 * 3 * 2) ** 3 and space.steps == 9
    arch = Architecture.parse("[C(32,3,1), C(64,5,2), C(16,1,1), SM(10)]")
    assert space.decode(space.encode(arch)) == arch
    for foreign in (
        "[C(32,3,1), C(64,5,2), SM(10)]",
        "[C(32,3,1), C(64,5,2), C(12,1,1), SM(10)]",
        "[C(32,3,1), C(64,5,2), C(16,1,1), GAP(10)]",
        "[C(32,3,1), P(2,2), C(16,1,1), SM(10)]",
    ):
        with pytest.raises(ValueError):
            space.encode(Architecture.parse(foreign))


def test_every_choice_is_valid_on_8x8_digits() -> None:
    # The smallest maps: all stride 2 (8 -> 4 -> 2 -> 1) with the largest kernel, and the widest net.
    space = ChainSpace(ReinforceConfig(), 10)
    for arch in ("[C(8,5,2), C(8,5,2), C(8,5,2), SM(10)]", "[C(64,5,1), C(64,5,1), C(64,5,1), SM(10)]"):
        model = build_model(space.decode(space.encode(Architecture.parse(arch))), (1, 8, 8))
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_cli_rejects_an_unknown_option_with_one_line(db_url: str) -> None:
    args = [
        "search",
        "--experiment",
        "bad",
        "--strategy",
        "reinforce",
        "--option",
        "dpeth=3",
        "--trials",
        "2",
        "--epochs",
        "1",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NASAGENT_DB": db_url},
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "nasagent: error: --option dpeth is not a setting of --strategy reinforce "
        "(settings: baseline, batch, beta, clip, depth, entropy, filters, hidden, kernels, lr, strides, tanh)"
    ]


def test_from_config_reads_the_experiments_options() -> None:
    config = SearchConfig(strategy="reinforce", trials=5, options={"depth": 2, "filters": [4, 8]})
    strategy = config.make_strategy((1, 8, 8), 10)
    assert isinstance(strategy, ReinforceStrategy) and strategy.space.depth == 2
    arch = strategy.ask(0).arch
    assert len(arch.hidden) == 2 and all(layer.filters in (4, 8) for layer in arch.hidden)
    with pytest.raises(ConfigError, match="not a setting of --strategy reinforce"):
        SearchConfig(strategy="reinforce", options={"epsilon": 0.1}).make_strategy((1, 8, 8), 10)


# -- the policy gradient -------------------------------------------------------------------------
def test_signal_is_accuracy_minus_the_moving_average_clipped() -> None:
    s = reinforce(beta=0.5, clip=0.1)
    assert s.signal(0.6) == 0.0 and s.baseline == pytest.approx(0.6)  # the baseline starts at the first accuracy
    assert s.signal(0.64) == pytest.approx(0.04) and s.baseline == pytest.approx(0.62)
    assert s.signal(0.9) == pytest.approx(0.1) and s.baseline == pytest.approx(0.76)  # 0.28 clipped to 0.1
    assert s.signal(0.5) == pytest.approx(-0.1)
    plain = reinforce(baseline=False)
    assert plain.signal(0.7) == 0.7 and plain.baseline is None


def test_a_positive_signal_makes_the_network_more_likely_and_a_negative_one_less() -> None:
    for reward, direction in ((0.9, 1), (-0.9, -1)):
        s = reinforce(baseline=False, entropy=0.0)
        arch = s.ask(0).arch
        before = s.log_prob(arch)
        s.tell(arch, reward, first_training=True)
        assert direction * (s.log_prob(arch) - before) > 0.05


def test_batch_waits_for_m_rewards_before_one_step() -> None:
    s = reinforce(batch=3)
    proposals = [s.ask(i) for i in range(3)]
    weights = [p.detach().clone() for p in s.controller.parameters()]
    for p in proposals[:2]:
        s.tell(p.arch, 0.5, first_training=True)
    assert s.updates == 0 and len(s.buffer) == 2
    assert all(torch.equal(a, b) for a, b in zip(weights, s.controller.parameters()))
    s.tell(proposals[2].arch, 0.7, first_training=True)
    assert s.updates == 1 and s.buffer == [] and s.pending == {}


def test_baseline_lowers_the_variance_of_the_policy_gradient_estimate() -> None:
    """The seed's claim, on the quantity the baseline exists for: per-sample gradient estimates
    (R - b)·∇log π(a) at a fixed policy, 300 samples from the initial controller."""

    def gradients(strategy: ReinforceStrategy) -> np.ndarray:
        rows = []
        for _ in range(300):
            arch = strategy.ask(0).arch
            signal = strategy.signal(toy_reward(arch))
            choices = torch.tensor([strategy.space.encode(arch)])
            strategy.controller.zero_grad()
            strategy.controller.run(choices)[1].sum().mul(signal).backward()
            rows.append(torch.cat([p.grad.flatten() for p in strategy.controller.parameters()]).numpy().copy())
        return np.array(rows)

    with_baseline = gradients(reinforce(seed=1))
    without = gradients(reinforce(seed=1, baseline=False))
    total_variance = lambda g: float(g.var(axis=0).sum())  # noqa: E731  trace of the covariance
    assert total_variance(with_baseline) < 0.1 * total_variance(without)
    # Both estimate the same gradient (the baseline adds no bias): their means agree within noise.
    assert np.linalg.norm(with_baseline.mean(0) - without.mean(0)) < 3 * np.sqrt(total_variance(without) / 300)


# -- persistence ---------------------------------------------------------------------------------
def drive(strategy: ReinforceStrategy, steps: int, start: int = 0) -> list[str]:
    archs = []
    for i in range(start, start + steps):
        arch = strategy.ask(i).arch
        strategy.tell(arch, toy_reward(arch), first_training=True)
        archs.append(str(arch))
    return archs


@pytest.mark.parametrize("batch", [1, 3])
def test_json_round_trip_then_both_continue_identically(batch: int) -> None:
    original = reinforce(seed=4, batch=batch)
    drive(original, 7)
    outstanding = original.ask(7)  # a proposal still waiting for its reward
    state = json.loads(json.dumps(original.state_dict()))
    assert state["pending"] == {str(outstanding.arch): 1} and len(state["buffer"]) == 7 % batch
    assert state["summary"]["baseline"].startswith("with baseline") and state["summary"]["rewards"] == 7
    copy = reinforce(seed=99, batch=batch)
    copy.restore(state, {}, [])
    for s in (original, copy):
        s.tell(outstanding.arch, 0.55, first_training=True)
    assert drive(copy, 12, 8) == drive(original, 12, 8)
    assert all(
        torch.equal(a, b)
        for a, b in zip(original.controller.state_dict().values(), copy.controller.state_dict().values())
    )
    assert copy.state_dict()["summary"] == original.state_dict()["summary"]


@pytest.mark.parametrize("crash_after", [0, 6, 17])
def test_resume_after_a_crash_continues_exactly_where_it_stopped(store: Store, crash_after: int) -> None:
    reference = run_agent(store, "ref", reinforce(seed=3), budget=24)
    with pytest.raises(KeyboardInterrupt):
        run_agent(store, "crash", reinforce(seed=3), budget=24, runner=CrashAfter(toy_reward, crash_after))
    experiment = store.get_experiment("crash")
    assert store.counts(experiment.id)["running"] == 1  # the trial in flight at the crash
    resumed = reinforce(seed=999)  # controller, optimizer, baseline and RNG come from the store
    run_agent(store, "crash", resumed, budget=24)
    ref_trials = store.trials(store.get_experiment("ref").id)
    got = store.trials(experiment.id)
    assert [t.arch for t in got] == [t.arch for t in ref_trials]  # nothing lost, nothing trained twice
    assert got[crash_after].attempts == 2
    assert store.load_agent_state(experiment.id)[1] == store.load_agent_state(store.get_experiment("ref").id)[1]
    assert len(reference) == 24


def test_parallel_workers_finish_the_budget_without_training_twice(store: Store) -> None:
    accuracies = run_agent(store, "par", reinforce(seed=2), budget=30, runner=FunctionRunner(toy_reward, capacity=3))
    trials = store.trials(store.get_experiment("par").id)
    assert len(accuracies) == 30 and len({t.digest for t in trials}) == 30


def test_status_shows_the_reward_statistics(store: Store) -> None:
    config = SearchConfig(strategy="reinforce", trials=12, options={"clip": 0.05})
    experiment = store.create_experiment("status", config.to_dict())
    agent = SearchLoop(
        store,
        experiment,
        config.make_strategy((1, 8, 8), 10),
        FunctionRunner(toy_reward),
        config.budget,
        0,
        poll_seconds=0.0,
    )
    agent.run()
    summary = experiment_status(store, "status")["strategy_summary"]
    assert summary["baseline"] == "with baseline (beta=0.8)" and summary["clip"] == 0.05
    assert summary["rewards"] >= 12 and 0 < summary["reward_variance"] < 0.1
    assert 0 < summary["signal_variance"] <= 0.05**2  # clipped to ±0.05


# -- learning ------------------------------------------------------------------------------------
def test_reinforce_learns_the_toy_problem_and_beats_uniform_sampling(store: Store) -> None:
    """80 unique trials, 3 seeds. Uniform sampling of the same space finds a best network of about
    0.72 and a top-5 mean of about 0.68; REINFORCE's rewards rise as its controller learns."""
    budget, seeds = 80, range(3)
    learned = [run_agent(store, f"rl{s}", reinforce(seed=s), budget) for s in seeds]
    uniform = [run_agent(store, f"u{s}", UniformChain(ChainSpace(ReinforceConfig(), 10), s), budget) for s in seeds]
    top5 = lambda runs: float(np.mean([np.mean(sorted(r)[-5:]) for r in runs]))  # noqa: E731
    late = lambda runs: float(np.mean([np.mean(r[-20:]) for r in runs]))  # noqa: E731  the policy's own level
    early = lambda runs: float(np.mean([np.mean(r[:20]) for r in runs]))  # noqa: E731
    assert top5(learned) > top5(uniform) + 0.04
    assert late(learned) > late(uniform) + 0.06
    assert late(learned) > early(learned) + 0.06  # it improved over the run, not just started lucky
    # Without the baseline the signal's second moment (what scales the gradient's variance) is far larger.
    with_b, without_b = reinforce(seed=0), reinforce(seed=0, baseline=False)
    run_agent(store, "b1", with_b, 30), run_agent(store, "b0", without_b, 30)
    assert with_b.summary()["signal_mean_square"] < 0.1 * without_b.summary()["signal_mean_square"]
