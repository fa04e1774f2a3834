"""The searchers acting in the NAS environment (meta-A2C, DQN, random-nsc): they learn on a toy
problem with a known reward, continue exactly after a state_dict round trip or a crash of the agent,
and meta-A2C's policy travels through a file and through ``nasagent meta-train``."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from agent_helpers import CrashAfter

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.nsc import CONV, NSCNetwork
from nasagent.envs.nas_env import A_TERMINAL, NSCSpace
from nasagent.envs.nas_env import step as env_step
from nasagent.errors import ConfigError
from nasagent.execution.function import FunctionRunner
from nasagent.persistence.postgres import Store
from nasagent.search.loop import SearchLoop
from nasagent.strategies.dqn import DQNOptions, DQNStrategy
from nasagent.strategies.env_driver import EnvStrategy, Lane
from nasagent.strategies.meta_a2c import MetaA2COptions, MetaA2CStrategy, load_policy, save_policy_from_state
from nasagent.strategies.meta_a2c import from_context as meta_a2c_from_context
from nasagent.strategies.random_nsc import RandomNSCStrategy

# SAME padding: on 8x8 inputs the authors' VALID padding (the default) would make the toy's optimum,
# six 3x3 convolutions, invalid (rule e).
SPACE = NSCSpace((1, 8, 8), 10, depth=6, tau=6, padding="same")
SMALL = NSCSpace((1, 8, 8), 10, depth=4, tau=6, multi_branch=True, padding="same")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy(net: NSCNetwork) -> float:
    """Known reward: every 3x3 convolution helps, anything else hurts a little (best: d of them)."""
    good = sum(1 for layer in net.layers if layer.type == CONV and layer.kernel == 3)
    return float(min(1.0, max(0.0, 0.1 + 0.09 * good - 0.03 * (len(net) - good))))


def make(name: str, seed: int, space: NSCSpace = SPACE, t_max: int = 600) -> EnvStrategy:
    if name == "meta-a2c":
        return MetaA2CStrategy(space, seed)
    if name == "dqn":
        return DQNStrategy(space, seed, DQNOptions(t_max=t_max))
    return RandomNSCStrategy(space, seed)


def drive(strategy: EnvStrategy, steps: int, reward: Callable[[NSCNetwork], float] = toy) -> list[tuple[str, float]]:
    """The agent's loop without the store: ask, answer from the cache or the reward function, tell."""
    known: dict[str, float] = {}
    seen: list[tuple[str, float]] = []
    target = strategy.env_steps + steps
    while strategy.env_steps < target:
        net = strategy.ask(len(known)).arch
        first = net.digest not in known
        if first:
            known[net.digest] = reward(net)  # type: ignore[arg-type]
        seen.append((str(net), known[net.digest]))
        strategy.tell(net, known[net.digest], first)
    return seen


# -- learning on a toy problem ------------------------------------------------------------------


def scores(name: str, steps: int = 600, seeds: int = 3) -> tuple[float, float]:
    """(mean reward of the last 100 environment steps, best accuracy found), averaged over seeds."""
    last, best = [], []
    for seed in range(seeds):
        strategy = make(name, seed, t_max=steps)
        seen = drive(strategy, steps)
        last.append(np.mean(strategy.recent))
        best.append(max(r for _, r in seen))
    return float(np.mean(last)), float(np.mean(best))


@pytest.fixture(scope="module")
def random_scores() -> tuple[float, float]:
    return scores("random-nsc", 1000)


@pytest.mark.parametrize(("name", "steps"), [("meta-a2c", 600), ("dqn", 1000)])
def test_learner_beats_random_search_on_a_known_reward(
    name: str, steps: int, random_scores: tuple[float, float]
) -> None:
    last, best = scores(name, steps)  # DQN, ε-greedy from scratch, needs a few more steps
    random_last, random_best = random_scores
    optimum = toy(NSCNetwork.parse("NSC[" + ", ".join(f"({i},1,3,{i - 1},0)" for i in range(1, 7)) + "; HEAD(10)]"))
    assert random_last < 0.15 and random_best < 0.5
    assert last > random_last + 0.2  # it settled on building good networks
    assert best >= random_best + 0.15 and best > 0.9 * optimum  # and found (nearly) the best one


# -- exact continuation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["meta-a2c", "dqn", "random-nsc"])
@pytest.mark.parametrize("space", [SPACE, SMALL], ids=["chain", "multi-branch"])
def test_state_dict_round_trip_continues_exactly(name: str, space: NSCSpace) -> None:
    original = make(name, 3, space, t_max=200)
    drive(original, 137)
    original.ask(0)  # stop with a proposal pending, as a crash between launch and result would
    saved = json.loads(json.dumps(original.state_dict()))
    restored = make(name, 999, space, t_max=200)  # a different seed: everything must come from the state
    restored.restore(saved, {}, [])
    assert json.dumps(restored.state_dict(), sort_keys=True) == json.dumps(saved, sort_keys=True)
    pending = [step for step in (lane.pending for lane in original.lanes) if step is not None]
    assert len(pending) == 1
    # Both receive the same answer for the pending proposal, then continue on their own.
    for strategy in (original, restored):
        lane = next(each for each in strategy.lanes if each.pending is not None)
        net = env_step(strategy.space, lane.state, lane.pending).network
        strategy.tell(net, toy(net), True)
    assert drive(original, 150) == drive(restored, 150)
    assert json.dumps(original.state_dict(), sort_keys=True) == json.dumps(restored.state_dict(), sort_keys=True)


# -- through the agent and PostgreSQL --------------------------------------------------------------


def agent(
    store: Store, name: str, strategy: EnvStrategy, budget: int, runner: FunctionRunner | None = None
) -> tuple[SearchLoop, FunctionRunner]:
    experiment = store.find_experiment(name) or store.create_experiment(name, {"test": True})
    runner = runner or FunctionRunner(toy, 1)
    return SearchLoop(store, experiment, strategy, runner, budget, seed=0, poll_seconds=0.0), runner


@pytest.mark.parametrize("name", ["meta-a2c", "dqn", "random-nsc"])
def test_resume_after_a_crash_continues_exactly_where_it_stopped(store: Store, name: str) -> None:
    reference, _ = agent(store, "ref", make(name, 3, SMALL, t_max=100), budget=10)
    reference.run()
    crashed, _ = agent(store, "crash", make(name, 3, SMALL, t_max=100), budget=10, runner=CrashAfter(toy, 4))
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    exp = store.get_experiment("crash")
    assert store.counts(exp.id)["running"] == 1  # the trial in flight at the crash
    resumed, runner = agent(store, "crash", make(name, 777, SMALL, t_max=100), budget=10)  # state comes from the store
    resumed.run()
    ref = store.get_experiment("ref")
    got = store.trials(exp.id)
    assert [t.arch for t in got] == [t.arch for t in store.trials(ref.id)]  # nothing lost, nothing trained twice
    assert runner.submitted[0].arch == got[4].arch and got[4].attempts == 2  # the in-flight trial ran again
    assert store.load_replay(exp.id) == store.load_replay(ref.id)
    assert store.load_agent_state(exp.id) == store.load_agent_state(ref.id)
    assert all(t.arch.startswith("NSC[") for t in got)


def test_parallel_workers_get_a_lane_each_and_never_train_a_network_twice(store: Store) -> None:
    strategy = make("meta-a2c", 0, SMALL)
    run, runner = agent(store, "par", strategy, budget=15, runner=FunctionRunner(toy, 3))
    run.run()
    archs = [spec.arch for spec in runner.submitted]
    assert len(archs) == len(set(archs)) == 15
    assert len(strategy.lanes) >= 3
    assert all(lane.pending is None for lane in strategy.lanes)  # every proposal was answered


def test_one_answer_completes_every_lane_waiting_on_that_network() -> None:
    strategy = RandomNSCStrategy(SPACE, 0)
    first = strategy.ask(0).arch
    # Make a second lane wait on the same network, as a duplicate proposal under W workers would.
    strategy.lanes.append(Lane(strategy.lanes[0].state, strategy.lanes[0].pending))
    strategy.tell(first, 0.5, True)
    assert [lane.pending for lane in strategy.lanes] == [None, None]
    assert strategy.env_steps == 2
    strategy.tell(first, 0.5, False)  # the agent's second tell for the duplicate: nothing waits on it
    assert strategy.env_steps == 2


def test_search_config_selects_the_gym_strategies() -> None:

    for name, cls in (("meta-a2c", MetaA2CStrategy), ("dqn", DQNStrategy), ("random-nsc", RandomNSCStrategy)):
        strategy = SearchConfig(strategy=name, trials=20, options={"depth": 5, "multi_branch": True}).make_strategy(
            (1, 8, 8), 10
        )
        assert isinstance(strategy, cls) and strategy.space.depth == 5 and strategy.space.n_actions == 14
    dqn = SearchConfig(strategy="dqn", trials=40).make_strategy((1, 8, 8), 10)
    assert dqn.config.t_max == 400 and dqn.config.buffer_size == 200 and dqn.epsilon_now() == 1.0
    with pytest.raises(ConfigError, match="not a setting"):
        SearchConfig(strategy="dqn", trials=5, options={"policy": "x"}).make_strategy((1, 8, 8), 10)
    with pytest.raises(ConfigError, match="multi_branch"):
        SearchConfig(strategy="random-nsc", trials=5, options={"multi_branch": "maybe"}).make_strategy((1, 8, 8), 10)


def test_dqn_epsilon_falls_linearly_to_its_floor() -> None:
    # By default over all t_max steps, as the authors' run script (--exploration_fraction=1.0).
    assert [round(DQNOptions(t_max=1000).epsilon(s), 3) for s in (0, 500, 1000, 2000)] == [1.0, 0.55, 0.1, 0.1]
    cfg = DQNOptions(t_max=1000, exploration_fraction=0.1)
    assert [round(cfg.epsilon(s), 3) for s in (0, 50, 100, 500)] == [1.0, 0.55, 0.1, 0.1]
    strategy = DQNStrategy(SPACE, 0, cfg)
    drive(strategy, 120)
    assert strategy.epsilon_now() == pytest.approx(0.1)
    assert strategy.buffer.size == 120 and strategy.gradient_steps > 0


# -- meta-A2C's policy file --------------------------------------------------------------------------


def test_dqn_defaults_are_the_authors_run_script() -> None:
    # scripts/experiments-benchmarks/run_nas_dqn.sh of the authors' nas-dmrl: --gamma=1.0,
    # --exploration_fraction=1.0, --exploration_final_eps=0.1 (QEpsilon), --batch_size=20,
    # --train_freq=1, --target_network_update_freq=100; baselines' deepq learning rate 5e-4 (§6.1).
    o = DQNOptions()
    assert (o.gamma, o.exploration_fraction, o.eps_final, o.batch_size) == (1.0, 1.0, 0.1, 20)
    assert (o.train_freq, o.target_update, o.lr) == (1, 100, 5e-4)


def test_a_trained_policy_runs_fixed_on_a_new_problem(tmp_path: Path) -> None:
    trained = MetaA2CStrategy(SPACE, 0)
    drive(trained, 600)
    policy = tmp_path / "policy.pt"
    save_policy_from_state(json.loads(json.dumps(trained.state_dict())), policy)
    config = SearchConfig(strategy="meta-a2c", trials=10, options={"policy": str(policy)})
    fixed = meta_a2c_from_context(config.strategy_context((3, 16, 16), 4))  # another data shape and class count
    assert not fixed.config.learn and fixed.space.depth == SPACE.depth and fixed.space.tau == SPACE.tau
    before = {k: v.clone() for k, v in fixed.net.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in trained.net.state_dict().items())

    def shifted(net: NSCNetwork) -> float:  # a new "dataset": the same preference, other scores
        return 0.8 * toy(net) + 0.05

    drive(fixed, 300, shifted)
    random = RandomNSCStrategy(fixed.space, 0)
    drive(random, 300, shifted)
    assert np.mean(fixed.recent) > np.mean(random.recent) + 0.15
    assert fixed.updates == 0 and all(torch.equal(before[k], v) for k, v in fixed.net.state_dict().items())
    assert fixed.state_dict()["summary"]["learning"] == 0


def test_policy_files_are_checked(tmp_path: Path) -> None:
    policy = tmp_path / "p.pt"
    save_policy_from_state(MetaA2CStrategy(SPACE, 0).state_dict(), policy)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a policy")

    def build(options: dict) -> MetaA2CStrategy:
        return meta_a2c_from_context(
            SearchConfig(strategy="meta-a2c", trials=5, options=options).strategy_context((1, 8, 8), 10)
        )

    assert build({"policy": str(policy), "learn": True}).config.learn
    with pytest.raises(ConfigError, match="does not match the policy"):
        build({"policy": str(policy), "depth": 8})
    with pytest.raises(ConfigError, match="does not match the policy"):
        build({"policy": str(policy), "multi_branch": True})
    with pytest.raises(ConfigError, match="no such file"):
        build({"policy": str(tmp_path / "missing.pt")})
    with pytest.raises(ConfigError, match="not a policy file"):
        build({"policy": str(bad)})


def test_a_policy_brings_its_lstm_size_and_an_explicit_other_one_is_refused(tmp_path: Path) -> None:
    policy = tmp_path / "small.pt"
    trained = MetaA2CStrategy(SPACE, 0, MetaA2COptions(hidden=16))
    save_policy_from_state(trained.state_dict(), policy)

    def build(options: dict) -> MetaA2CStrategy:
        return meta_a2c_from_context(
            SearchConfig(strategy="meta-a2c", trials=5, options=options).strategy_context((1, 8, 8), 10)
        )

    loaded = build({"policy": str(policy)})
    assert loaded.config.hidden == 16 and not loaded.config.learn
    assert all(torch.equal(v, trained.net.state_dict()[k]) for k, v in loaded.net.state_dict().items())
    assert build({"policy": str(policy), "hidden": 16}).config.hidden == 16
    with pytest.raises(ConfigError, match="hidden=32 does not match the policy, trained with hidden=16"):
        build({"policy": str(policy), "hidden": 32})


def test_a_terminal_first_action_is_rewarded_with_the_empty_network() -> None:
    strategy = RandomNSCStrategy(SPACE, 0)
    strategy.lanes.append(Lane(pending=A_TERMINAL))
    strategy.tell(NSCNetwork((), 10), 0.3, True)
    assert strategy.episodes == 1 and strategy.recent == [0.3] and strategy.lanes[0].pending is None


# -- the commands ----------------------------------------------------------------------------------------


def tiny_npz(path: Path, flip: bool) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:300] / 16.0).astype(np.float32)
    np.savez(path, x=x[:, :, ::-1] if flip else x, y=digits.target[:300])
    return path


def test_meta_train_then_search_with_the_fixed_policy_on_an_unseen_dataset(db_url: str, tmp_path: Path, capsys) -> None:
    a, b = tiny_npz(tmp_path / "a.npz", False), tiny_npz(tmp_path / "b.npz", True)
    out = tmp_path / "policy.pt"
    common = ["--epochs", "1", "--workers", "1", "--db", db_url, "--data-dir", str(tmp_path), "--device", "cpu"]
    code = main(
        [
            "meta-train",
            "--datasets",
            f"npz:{a},npz:{b}",
            "--trials-per-dataset",
            "2",
            "--out",
            str(out),
            "--experiment",
            "m",
            "--option",
            "depth=3",
            *common,
        ]
    )
    assert code == 0 and out.exists()
    printed = capsys.readouterr().out
    assert "m-1-a: 2 networks" in printed and "m-2-b: 2 networks" in printed
    store = Store.connect(db_url)
    try:
        first = store.get_experiment("m-1-a")
        second = store.get_experiment("m-2-b")
        assert first.config["options"] == {"depth": 3, "learn": True}
        assert second.config["options"] == {"depth": 3, "learn": True, "policy": str(out)}
        assert all(t.status == "done" and t.arch.startswith("NSC[") for t in store.trials(second.id))
        weights, settings, _ = load_policy(out)  # the file holds the policy the last dataset ended with
        last = torch.load(
            io.BytesIO(base64.b64decode(store.load_agent_state(second.id)[1]["learner"]["blob"])), weights_only=True
        )
        assert settings["depth"] == 3 and all(torch.equal(weights[k], v) for k, v in last["net"].items())
        code = main(
            [
                "search",
                "--experiment",
                "eval",
                "--strategy",
                "meta-a2c",
                "--policy",
                str(out),
                "--trials",
                "2",
                "--dataset",
                "digits",
                *common,
            ]
        )
        assert code == 0
        state = store.load_agent_state(store.get_experiment("eval").id)[1]
        assert state["summary"]["learning"] == 0 and state["summary"]["updates"] == 0
        assert state["space"]["depth"] == 3  # taken from the policy
        assert len(store.trials(store.get_experiment("eval").id)) == 2
    finally:
        store.close()
    assert (
        main(
            [
                "search",
                "--experiment",
                "bad",
                "--strategy",
                "meta-a2c",
                "--policy",
                str(tmp_path / "nope.pt"),
                "--trials",
                "2",
                "--db",
                db_url,
                "--data-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    assert (
        main(["meta-train", "--datasets", "digits", "--trials-per-dataset", "0", "--out", str(out), "--db", db_url])
        == 2
    )
