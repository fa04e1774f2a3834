"""Deployment limits and objectives (``--max-params``, ``--max-macs``, ``--max-latency-ms``, ``--objective``).

Proven here: no strategy ever proposes a network over a size limit (thousands of proposals on every
preset and every strategy, learning from rewards as a search does); the masking of MetaQNN walks is
exact (on a space small enough to enumerate, the allowed actions are exactly those that some network
within the limits continues); a limit no network meets is refused up front, naming the cheapest
network, and the cheapest network itself is accepted; the costs the limits use are those of the
models as built (parameters counted by torch, MACs by hooks on the built layers); MnasNet's objective
against hand-computed values; latency measured by real trials, recorded and penalised; every display
shows the columns; bad values are one line, exit 2, before any experiment exists.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture, Conv
from nasagent.core.cost import layer_costs, network_cost, nsc_cost, total_macs, total_params
from nasagent.core.limits import Frontier, Limits
from nasagent.core.networks import parse_network
from nasagent.core.nsc import NSCNetwork
from nasagent.core.objective import Objective
from nasagent.errors import ConfigError
from nasagent.execution.function import FunctionRunner
from nasagent.persistence.postgres import Store
from nasagent.search.loop import SearchLoop
from nasagent.spaces.limited import LimitedWalk
from nasagent.spaces.metaqnn import MetaQNNSpace, SpaceConfig, State, preset_names
from nasagent.strategies.base import Strategy

DIGITS = (1, 8, 8)
SMALL = {
    "reinforce": {"depth": 2},
    "meta-a2c": {"depth": 3},
    "dqn": {"depth": 3, "train_freq": 10},
    "random-nsc": {"depth": 3},
}
"""Options that keep a strategy small and fast here (DQN learning every 10 environment steps: under
limits most steps are rejections, each of which would otherwise be a training step of its network)."""


def within(config: SearchConfig, params: int, macs: int) -> bool:
    return (config.max_params is None or params <= config.max_params) and (
        config.max_macs is None or macs <= config.max_macs
    )


def propose(
    config: SearchConfig, n: int, shape: tuple[int, int, int] = DIGITS, reward: Callable[[int], float] | None = None
) -> list[tuple[str, int, int]]:
    """(network, params, MACs) of ``n`` proposals of ``config``'s strategy, each checked against its limits
    and told a reward as a search would (``reward(params)``, default: a reward that grows with the size,
    pushing the learners towards the limits)."""
    strategy: Strategy = config.make_strategy(shape, 10)
    strategy.restore(None, {}, [])
    build = config.trial_settings().build
    reward = reward or (lambda params: min(0.99, 0.1 + math.log10(1 + params) / 8))
    costs = []
    for i in range(n):
        proposal = strategy.ask(i)
        network = parse_network(str(proposal.arch))
        params, macs = network_cost(network, shape, build.pooling, build.conv_padding, build.nsc_padding)
        assert within(config, params, macs), f"{config.strategy} proposed {network}: {params:,} params, {macs:,} MACs"
        costs.append((str(network), params, macs))
        strategy.tell(proposal.arch, reward(params), first_training=True)
    return costs


# -- the objective ------------------------------------------------------------------------------


def test_mnas_objective_against_hand_computed_values() -> None:
    # MnasNet's soft form, w = -0.07: 2^-0.07 = e^(-0.07 ln 2) = 0.95263800, 0.5^-0.07 = 1.04971668.
    latency = Objective.resolve("mnas", "latency", 10.0, None, {})
    assert latency.weight == -0.07 and latency.target == 10.0
    assert latency.reward(0.9, 5000, 10**6, 20.0) == pytest.approx(0.85737420, abs=1e-8)  # twice the target
    assert latency.reward(0.8, 5000, 10**6, 5.0) == pytest.approx(0.83977335, abs=1e-8)  # half of it: a bonus
    assert latency.reward(0.8, 5000, 10**6, 10.0) == pytest.approx(0.8)  # on target: the accuracy
    assert latency.reward(0.8, 5000, 10**6, None) == 0.8  # not measured: no factor
    assert latency.reward(0.1, 5000, 10**6, 20.0, failed=True) == 0.1  # a failed training keeps chance
    params = Objective.resolve("mnas", "params", None, None, {"max_params": 100_000})  # target: the limit
    assert params.target == 100_000 and params.reward(0.75, 200_000, 1, None) == pytest.approx(0.71447850, abs=1e-8)
    macs = Objective.resolve("mnas", "macs", 1e6, -0.5, {})
    assert macs.reward(0.6, 1, 1_500_000, None) == pytest.approx(0.48989795, abs=1e-8)  # 0.6 / sqrt(1.5)
    # MnasNet's hard form past --max-latency-ms: x (L / LAT) = (LAT / L)^-1, on top of either objective.
    hard = Objective.resolve("accuracy", None, None, None, {"max_latency_ms": 10.0})
    assert hard.reward(0.9, 1, 1, 30.0) == pytest.approx(0.3) and hard.reward(0.9, 1, 1, 10.0) == 0.9
    assert hard.over_latency(10.5) and not hard.over_latency(10.0) and not hard.over_latency(None)
    both = Objective.resolve("mnas", None, None, None, {"max_latency_ms": 10.0})  # latency target = the limit
    assert both.reward(0.9, 1, 1, 20.0) == pytest.approx(0.42868710, abs=1e-8)  # 0.9 x 2^-0.07 x 1/2
    assert Objective().plain and not hard.plain and Objective().reward(0.7, 1, 1, 99.0) == 0.7


@pytest.mark.parametrize(
    "values,words",
    [
        ({"max_params": 0}, ["--max-params", "positive"]),
        ({"max_params": -100}, ["--max-params"]),
        ({"max_macs": -1}, ["--max-macs"]),
        ({"max_latency_ms": 0.0}, ["--max-latency-ms"]),
        ({"max_latency_ms": float("inf")}, ["--max-latency-ms"]),
        ({"objective": "speed"}, ["--objective", "accuracy, mnas"]),
        ({"objective": "mnas"}, ["--objective-target", "--max-latency-ms"]),
        ({"objective": "mnas", "objective_metric": "params"}, ["--max-params"]),
        ({"objective": "mnas", "objective_metric": "flops", "objective_target": 1.0}, ["--objective-metric"]),
        ({"objective": "mnas", "objective_target": -2.0}, ["--objective-target"]),
        ({"objective": "mnas", "objective_target": 2.0, "objective_weight": 0.5}, ["--objective-weight"]),
        ({"objective_weight": -0.07}, ["--objective-weight", "mnas only"]),
    ],
)
def test_bad_limits_and_objectives_are_config_errors(values: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        SearchConfig(trials=4, **values)
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_the_stored_config_holds_the_resolved_objective() -> None:
    config = SearchConfig(trials=4, objective="mnas", max_latency_ms=4.0, max_params=50_000)
    stored = SearchConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert (stored.objective_metric, stored.objective_target, stored.objective_weight) == ("latency", 4.0, -0.07)
    assert stored.limits() == Limits(50_000, None, 4.0) and stored.objective_rule() == config.objective_rule()
    assert SearchConfig(trials=4).space_size(DIGITS, 10) is not None
    assert config.space_size(DIGITS, 10) is None  # only part of the space is proposed under size limits


# -- the costs the limits use are the built models' ------------------------------------------------


def built_costs(network: Any, shape: tuple[int, int, int], **build: Any) -> tuple[int, int]:
    """(trainable parameters, MACs) of the torch model as built, MACs counted by forward hooks on its
    convolutions (output positions x C_in x k x k per output channel) and linear layers (in x out)."""
    import torch
    from torch import nn

    from nasagent.training.build import build_model, count_params
    from nasagent.training.settings import BuildOptions

    model = build_model(network, shape, options=BuildOptions(**build)).eval()
    macs = [0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs[0] += output[0].numel() * module.in_channels * k
        elif isinstance(module, nn.Linear):
            macs[0] += module.in_features * module.out_features

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.rand(1, *shape))
    return count_params(model), macs[0]


@pytest.mark.parametrize(
    "text,padding",
    [
        ("NSC[HEAD(10)]", "valid"),
        ("NSC[(1,1,3,0,0), (2,2,2,1,0), (3,1,1,2,0); HEAD(10)]", "valid"),
        ("NSC[(1,1,5,0,0), (2,1,3,1,0), (3,6,0,2,1), (4,3,2,3,0); HEAD(10)]", "same"),
        ("NSC[(1,1,1,0,0), (2,2,3,0,0), (3,5,0,1,0); HEAD(10)]", "same"),
        ("NSC[(1,1,3,0,0), (2,1,3,0,0), (3,2,2,2,0); HEAD(10)]", "valid"),
    ],
)
def test_nsc_costs_are_those_of_the_built_model(text: str, padding: str) -> None:
    network = NSCNetwork.parse(text)
    assert nsc_cost(network, DIGITS, padding) == built_costs(network, DIGITS, nsc_padding=padding)


@pytest.mark.parametrize(
    "text,shape,pooling,padding",
    [
        ("[C(16,3,1), P(2,2), C(32,5,1), FC(64), SM(10)]", DIGITS, "floor", "same"),
        ("[C(8,1,1), P(3,2), GAP(10)]", (3, 32, 32), "ceil", "same"),
        ("[C(60,3,1), C(120,2,2), P(2,2), FC(100), FC(50), SM(10)]", (1, 28, 28), "floor", "valid"),
    ],
)
def test_metaqnn_costs_are_those_of_the_built_model(
    text: str, shape: tuple[int, int, int], pooling: str, padding: str
) -> None:
    arch = Architecture.parse(text)
    costs = layer_costs(arch, shape, pooling, padding)
    assert (total_params(costs), total_macs(costs)) == built_costs(arch, shape, pooling=pooling, conv_padding=padding)


# -- masking -----------------------------------------------------------------------------------------

TINY = SpaceConfig.from_dict(
    {
        "name": "tiny",
        "max_depth": 3,
        "size_bins": None,
        "conv": {"filters": [4, 16], "kernels": [1, 3]},
        "pool": {"shapes": [[2, 2]]},
        "fc": {"units": [32, 8], "max_consecutive": 2, "max_size": 4},
        "terminals": ["gap", "softmax"],
    }
)


def all_walks(space: MetaQNNSpace) -> list[Architecture]:
    """Every architecture of ``space`` (depth-first over its legal actions)."""
    found: list[Architecture] = []

    def walk(state: State, size: int, layers: tuple[Any, ...]) -> None:
        if state.terminal:
            found.append(Architecture(layers))
            return
        for action in space.actions(state):
            walk(*space.step(state, size, action), layers + (action,))

    walk(space.start, space.input_size, ())
    return found


@pytest.mark.parametrize("which", ["params", "macs", "both"])
def test_masking_is_exact_on_an_enumerated_space(which: str) -> None:
    """The allowed actions after every prefix are exactly those some network within the limits takes
    next, so the walks reach every network within the limits and no other."""
    space = MetaQNNSpace(TINY, 8, 10)
    networks = all_walks(space)
    costs = {arch: layer_costs(arch, DIGITS) for arch in networks}
    params = sorted(total_params(c) for c in costs.values())
    macs = sorted(total_macs(c) for c in costs.values())
    limits = Limits(
        max_params=params[len(params) // 3] if which != "macs" else None,
        max_macs=macs[len(macs) // 2] if which != "params" else None,
    )
    fits = {arch for arch, c in costs.items() if limits.admits(total_params(c), total_macs(c))}
    assert 0 < len(fits) < len(networks), "the limits must cut the space for the test to mean anything"
    prefixes = {arch.layers[:i] for arch in fits for i in range(len(arch.layers) + 1)}
    walker = LimitedWalk(space, DIGITS, limits)
    reached: set[Architecture] = set()

    def walk(state: State, shape: Any, flat: int | None, spent: tuple[int, int], layers: tuple[Any, ...]) -> None:
        if state.terminal:
            reached.add(Architecture(layers))
            return
        allowed = walker.allowed(state, shape, flat, spent)
        assert set(allowed) == {a for a in space.actions(state) if layers + (a,) in prefixes}, layers
        for action in allowed:
            cost, nxt, shape2, flat2 = walker.step(state, shape, flat, action)
            walk(nxt, shape2, flat2, (spent[0] + cost[0], spent[1] + cost[1]), layers + (action,))

    walk(space.start, DIGITS, None, (0, 0), ())
    assert reached == fits


def test_a_frontier_keeps_exactly_the_pareto_minimal_costs() -> None:
    limits = Limits(max_params=100, max_macs=100)
    frontier = Frontier.of([(10, 90), (20, 50), (20, 60), (30, 50), (50, 10), (101, 1), (5, 120)], limits)
    assert frontier.points == ((10, 90), (20, 50), (50, 10))
    assert frontier.fits((50, 0), limits) and not frontier.fits((60, 55), limits)
    assert Frontier.of([(200, 1)], limits).empty


# -- never proposed over the limits ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["qlearning", "random"])
@pytest.mark.parametrize("preset", preset_names())
def test_metaqnn_walks_never_exceed_the_limits(preset: str, strategy: str) -> None:
    """1,500 proposals per preset and strategy, under a parameter limit, a MAC limit and both, with
    Q-learning exploring then exploiting (the schedule anneals ε over the proposals)."""
    unlimited = propose(SearchConfig(space=preset, strategy=strategy, trials=200, seed=1), 200)
    for limits in (
        {"max_params": 20_000},
        {"max_macs": 150_000},
        {"max_params": 40_000, "max_macs": 300_000},
    ):
        config = SearchConfig(space=preset, strategy=strategy, trials=500, seed=2, **limits)
        proposed = propose(config, 500)
        assert any(not within(config, p, m) for _, p, m in unlimited), (
            "the limit must bind for the test to mean anything"
        )
        assert len({network for network, _, _ in proposed}) > 50, "the limited walks still explore"


def test_the_valid_padding_preset_at_28_pixels_never_exceeds_the_limits() -> None:
    config = SearchConfig(
        space="metaqnn-mnist", strategy="qlearning", trials=150, max_params=60_000, max_macs=2_000_000
    )
    proposed = propose(config, 150, shape=(1, 28, 28))
    assert max(p for _, p, _ in proposed) > 20_000  # the walks go close to the limits, not only to tiny networks


@pytest.mark.parametrize(
    "strategy,space,limits",
    [
        ("reinforce", "metaqnn-small", {"max_params": 12_000}),
        ("reinforce", "metaqnn-mnist", {"max_params": 15_000, "max_macs": 400_000}),  # VALID convolutions
        ("dqn", "metaqnn-small", {"max_params": 30_000}),
        ("meta-a2c", "metaqnn-small", {"max_macs": 60_000}),
        ("random-nsc", "metaqnn-small", {"max_params": 30_000, "max_macs": 100_000}),
    ],
)
def test_the_other_strategies_never_exceed_the_limits(strategy: str, space: str, limits: dict[str, int]) -> None:
    """REINFORCE masks its controller's choices; the NAS environment rejects a network over the limits
    before it is evaluated (rule "limit"), so none is ever proposed."""
    config = SearchConfig(strategy=strategy, space=space, trials=1000, seed=3, options=dict(SMALL[strategy]), **limits)
    unlimited = propose(SearchConfig(strategy=strategy, trials=100, seed=3, options=dict(SMALL[strategy])), 100)
    assert any(not within(config, p, m) for _, p, m in unlimited), "the limit must bind for the test to mean anything"
    proposed = propose(config, 1000)
    assert len({network for network, _, _ in proposed}) > 5


# -- refused up front -------------------------------------------------------------------------------


def test_metaqnn_limits_are_tight_at_the_cheapest_network() -> None:
    """The cheapest network of the space meets a limit equal to its cost; one less is refused, the
    message naming that cost (``nasagent.spaces.limited``); checked against brute force on TINY."""
    space = MetaQNNSpace(TINY, 8, 10)
    least = min(total_params(layer_costs(a, DIGITS)) for a in all_walks(space))
    LimitedWalk(space, DIGITS, Limits(max_params=least))
    with pytest.raises(ConfigError, match=f"the smallest has {least:,} parameters"):
        LimitedWalk(space, DIGITS, Limits(max_params=least - 1))
    fewest = min(total_macs(layer_costs(a, DIGITS)) for a in all_walks(space))
    with pytest.raises(ConfigError, match=f"the one with the fewest MACs has {fewest:,}"):
        LimitedWalk(space, DIGITS, Limits(max_macs=fewest - 1))
    for preset in preset_names():  # through the strategies' factories, as a search builds them
        with pytest.raises(ConfigError, match=f"no network of space '{preset}' for 1x8x8 inputs meets --max-params 5"):
            SearchConfig(space=preset, trials=4, max_params=5).make_strategy(DIGITS, 10)


@pytest.mark.parametrize("strategy", ["reinforce", "dqn", "meta-a2c", "random-nsc"])
def test_limits_no_network_meets_are_refused(strategy: str) -> None:
    config = SearchConfig(strategy=strategy, trials=4, options=dict(SMALL[strategy]), max_params=300)
    with pytest.raises(ConfigError, match="meets --max-params 300"):
        config.make_strategy(DIGITS, 10)


def test_the_nsc_limit_boundary_is_the_cheapest_first_network() -> None:
    from nasagent.envs.nas_env import NSCSpace

    # maxpool3 on 8x8 leaves 2x2: 4 x 1024 + 1024 + 1024 x 10 + 10 = 15,370 parameters, the fewest.
    NSCSpace(DIGITS, 10, max_params=15_370)
    with pytest.raises(ConfigError, match="15,370 parameters"):
        NSCSpace(DIGITS, 10, max_params=15_369)


# -- the loop rewards the objective ---------------------------------------------------------------------


def test_the_loop_rewards_the_objective_and_keeps_it_across_a_resume(store: Store) -> None:
    config = SearchConfig(
        strategy="qlearning", trials=12, schedule="1.0:12", objective="mnas", max_params=20_000,
        objective_metric="params",
    )  # fmt: skip
    experiment = store.create_experiment("objective", config.to_dict())
    objective = config.objective_rule()

    def accuracy(arch: Architecture) -> float:
        return 0.5 + 0.01 * sum(1 for layer in arch.hidden if isinstance(layer, Conv))

    def run(budget: int) -> None:
        runner = FunctionRunner(accuracy, input_shape=DIGITS)
        strategy = config.make_strategy(DIGITS, 10)
        SearchLoop(store, experiment, strategy, runner, budget, 0, poll_seconds=0.0, objective=objective).run()

    run(6)
    trials = store.trials(experiment.id)
    assert len(trials) == 6
    for trial in trials:
        arch = Architecture.parse(trial.arch)
        expected = accuracy(arch) * (trial.params / 20_000) ** -0.07
        assert trial.params <= 20_000 and trial.reward == pytest.approx(expected, rel=1e-12)
        assert trial.accuracy == pytest.approx(accuracy(arch)) and trial.macs == network_cost(arch, DIGITS)[1]
    rewards = {trial.arch: trial.reward for trial in trials}
    assert all(reward == pytest.approx(rewards[arch]) for arch, reward in store.load_replay(experiment.id))
    run(12)  # resumed: replay-dictionary hits are rewarded with the stored objective, never the accuracy
    replay = store.load_replay(experiment.id)
    rewards = {trial.arch: trial.reward for trial in store.trials(experiment.id)}
    assert len(rewards) == 12 and all(reward == pytest.approx(rewards[arch]) for arch, reward in replay)
    top = store.top(experiment.id, 12)
    assert [t.reward for t in top] == sorted((t.reward for t in top), reverse=True)  # ranked by the objective


# -- end to end: real trials measure latency; every display shows the columns ----------------------------


def nasagent(*args: str, db: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "NASAGENT_DB": db, "COLUMNS": "250"}  # the whole leaderboard on one line
    return subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def search_args(name: str, *extra: str) -> list[str]:
    return [
        "search", "--experiment", name, "--dataset", "digits", "--space", "metaqnn-small", "--trials", "3",
        "--epochs", "1", "--workers", "1", "--seed", "0", *extra,
    ]  # fmt: skip


LIMITED = (
    "--max-params", "20000", "--max-macs", "400000", "--max-latency-ms", "0.0001",
    "--objective", "mnas", "--objective-metric", "params", "--objective-target", "5000",
)  # fmt: skip


def test_limits_latency_and_objective_end_to_end(db_url: str, tmp_path: Any) -> None:
    """A real search under every limit: trials measure their latency (all over a 0.1 µs limit, so all
    penalised), record MACs, are rewarded with the objective; status, top (text and JSON), the report,
    the live leaderboard's Markdown and the dashboard show it all; a resume must keep the limits."""
    result = nasagent(*search_args("limited", *LIMITED), db=db_url)
    assert result.returncode == 0, result.stderr
    assert "MACs" in result.stdout and "latency" in result.stdout and "reward" in result.stdout

    top = json.loads(nasagent("top", "--experiment", "limited", "-k", "3", "--json", db=db_url).stdout)
    assert len(top) == 3
    for row in top:
        arch = Architecture.parse(row["arch"])
        assert row["params"] <= 20_000 and row["macs"] <= 400_000
        assert (row["params"], row["macs"]) == network_cost(arch, DIGITS)
        assert row["latency_ms"] > 0.0001  # measured on the trial's device, far over the limit
        expected = row["accuracy"] * (row["params"] / 5000) ** -0.07 * (0.0001 / row["latency_ms"])
        assert row["reward"] == pytest.approx(expected, rel=1e-9)
    assert [r["reward"] for r in top] == sorted((r["reward"] for r in top), reverse=True)

    status = json.loads(nasagent("status", "--experiment", "limited", "--json", db=db_url).stdout)
    assert status["limits"] == {"max_params": 20_000, "max_macs": 400_000, "max_latency_ms": 0.0001}
    assert status["objective"]["kind"] == "mnas" and status["objective"]["weight"] == -0.07
    assert status["objective"]["latency_penalty"] == -1.0 and status["best_reward"] == pytest.approx(top[0]["reward"])

    with Store.connect(db_url) as store:
        trials = store.trials(store.get_experiment("limited").id)
        assert all(t.info.get("over_latency_limit") for t in trials)
        check_displays(store, db_url, top, status, tmp_path)

    refused = nasagent(*search_args("limited", LIMITED[0], "30000", *LIMITED[2:]), db=db_url)
    assert refused.returncode == 2 and "--max-params 20000" in refused.stderr, refused.stderr


def check_displays(store: Store, db_url: str, top: list[dict[str, Any]], status: dict[str, Any], out: Any) -> None:
    """The terminal table, the live leaderboard's Markdown, the report and the dashboard's JSON."""
    from rich.console import Console

    from nasagent.dashboard import data
    from nasagent.dashboard.store import ReadOnlyStore
    from nasagent.results.report import build_report, write_report
    from nasagent.search.display import leaderboard
    from nasagent.search.leaderboard import leaderboard_markdown

    table = leaderboard(top, "top")
    assert [c.header for c in table.columns] == [
        "rank", "accuracy", "reward", "params", "MACs", "latency ms", "ε", "architecture",
    ]  # fmt: skip
    console = Console(width=250, record=True)
    console.print(table)
    text = console.export_text()
    assert f"{top[0]['macs']:,}" in text and f"{top[0]['latency_ms']:.3f}" in text

    markdown = leaderboard_markdown("limited", status, top)
    assert "| rank | accuracy | reward | params | MACs | latency ms | ε | architecture |" in markdown
    assert "Objective mnas: accuracy × (params / 5000 parameters)^-0.07" in markdown
    assert "at most 20,000 parameters" in markdown and f"{top[0]['macs']:,}" in markdown

    page = (write_report(build_report(store, "limited"), out / "report")).read_text()
    assert "<th>MACs</th>" in page and "<th>latency ms</th>" in page and "<th>reward</th>" in page
    assert f"{top[0]['macs']:,}" in page and 'id="objective"' in page

    readonly = ReadOnlyStore.open(db_url)
    try:
        by_latency = data.trials_page(readonly, "limited", sort="latency", order="asc")["trials"]
        assert [t["latency_ms"] for t in by_latency] == sorted(t["latency_ms"] for t in by_latency)
        assert all(t["macs"] > 0 and t["reward"] < t["accuracy"] for t in by_latency)
        by_reward = data.trials_page(readonly, "limited", sort="reward")["trials"]
        assert [t["id"] for t in by_reward] == [row["trial_id"] for row in top]
        detail = data.trial_detail(readonly, top[0]["trial_id"])["trial"]
        assert detail["macs"] == top[0]["macs"] and detail["latency_ms"] == pytest.approx(
            top[0]["latency_ms"], abs=5e-4
        )
        summary = data.experiment_summary(readonly, "limited")["status"]
        assert summary["limits"]["max_macs"] == 400_000
    finally:
        readonly.close()


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--max-params", "0"], ["--max-params", "positive"]),
        (["--max-macs", "-5"], ["--max-macs"]),
        (["--max-latency-ms", "0"], ["--max-latency-ms"]),
        (["--max-params", "1.5e6"], ["--max-params"]),
        (["--max-params", "10"], ["no network of space 'metaqnn-small'", "the smallest has 20 parameters"]),
        (["--max-macs", "20"], ["no network", "the one with the fewest MACs has 40"]),
        (["--strategy", "random-nsc", "--max-params", "1000"], ["NAS environment", "--max-params 1,000"]),
        (["--objective", "mnas"], ["--objective-target"]),
        (["--objective-weight", "-0.1"], ["mnas only"]),
    ],
)
def test_bad_limits_exit_2_before_anything_is_created(db_url: str, extra: list[str], words: list[str]) -> None:
    result = nasagent(*search_args("refused", *extra), db=db_url)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasagent: error:") and "Traceback" not in result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    with Store.connect(db_url) as store:
        assert store.find_experiment("refused") is None


def test_trial_pods_report_macs_and_latency_through_their_role(
    store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial pod (role nasagent_trial) measures and reports them in its outcome, as it reports its
    result (migrations 002/003); the agent records them into the trial row with the reward."""
    from launcher_helpers import trial_role_url

    from nasagent.cli import main
    from nasagent.core.trial import outcome_from_json

    config = SearchConfig(dataset="digits", epochs=1, trials=2, max_latency_ms=0.0001)
    experiment = store.create_experiment("pods", config.to_dict())
    arch = Architecture.parse("[C(8,3,1), SM(10)]")
    with store.transaction() as tx:
        trial_id = tx.insert_trial(experiment.id, str(arch), arch.digest, 1.0)
    monkeypatch.setenv("NASAGENT_ATTEMPT", "1")
    code = main(["trial", "--experiment", "pods", "--trial-id", str(trial_id), "--db", trial_role_url(db_url)])
    assert code == 0
    capsys.readouterr()
    _, reported = store.trial_result(trial_id)
    outcome = outcome_from_json(reported)
    assert outcome.macs == network_cost(arch, DIGITS)[1] and outcome.latency_ms > 0

    # The agent resumes and records what the pod reported (its runner trains nothing: the budget is spent).
    SearchLoop(
        store, experiment, config.make_strategy(DIGITS, 10), FunctionRunner(lambda a: 0.0), 1, 0,
        objective=config.objective_rule(),
    ).run()  # fmt: skip
    trial = store.trial(trial_id)
    assert (trial.macs, trial.latency_ms) == (outcome.macs, pytest.approx(outcome.latency_ms))
    assert trial.reward == pytest.approx(outcome.accuracy * 0.0001 / outcome.latency_ms)


def test_reinforce_masks_keep_learning_finite() -> None:
    """Masked choices have probability 0 when sampled and scored; the policy gradient stays finite."""
    import torch

    config = SearchConfig(strategy="reinforce", trials=40, options={"depth": 2}, max_params=6_000)
    strategy = config.make_strategy(DIGITS, 10)
    strategy.restore(None, {}, [])
    for _ in range(60):
        proposal = strategy.ask(0)
        params, _ = network_cost(proposal.arch, DIGITS)  # type: ignore[arg-type]
        assert params <= 6_000
        strategy.tell(proposal.arch, float(np.clip(params / 6_000, 0, 1)), True)
        assert math.isfinite(strategy.log_prob(proposal.arch))
    assert all(torch.isfinite(p).all() for p in strategy.controller.parameters())  # type: ignore[attr-defined]
