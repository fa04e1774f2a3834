"""The NAS environment: gymnasium's checker, the §4.2.1 encoding, termination rules (a)-(e) one by
one, σ-scaled shift rewards and the (dataset, network) cache."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from nasagent.core.nsc import AVG_POOL, CONCAT, CONV, MAX_POOL, NUM_TYPES, NSCLayer, NSCNetwork
from nasagent.envs.nas_env import (
    A_ADD,
    A_CONCAT,
    A_P1_DOWN,
    A_P1_UP,
    A_P2_DOWN,
    A_P2_UP,
    A_TERMINAL,
    NASEnv,
    NSCSpace,
    NSCState,
    encode,
    step,
)

CONV1, CONV3, CONV5, MAXPOOL2, MAXPOOL3, AVGPOOL2, AVGPOOL3 = range(7)


def accuracy(net: NSCNetwork) -> float:
    """A known stand-in for training: more layers, more accuracy."""
    return 0.1 + 0.05 * len(net)


class Counting:
    """An ``evaluate`` that counts its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, net: NSCNetwork) -> float:
        self.calls.append(str(net))
        return accuracy(net)


def make_env(**kw) -> tuple[NASEnv, Counting]:
    evaluate = Counting()
    space = NSCSpace(kw.pop("input_shape", (1, 8, 8)), 10, **kw)
    env = NASEnv(space, evaluate, dataset="digits")
    env.reset(seed=0)
    return env, evaluate


@pytest.mark.parametrize("multi_branch", [False, True])
def test_gymnasium_env_checker_passes(multi_branch: bool) -> None:
    env = NASEnv(NSCSpace((1, 8, 8), 10, multi_branch=multi_branch), accuracy, dataset="digits")
    check_env(env, skip_render_check=True)
    assert env.action_space.n == (14 if multi_branch else 8)


def test_render_describes_the_state() -> None:
    env = NASEnv(NSCSpace((1, 8, 8), 10, multi_branch=True), accuracy, render_mode="ansi")
    env.reset()
    env.step(CONV3)
    assert env.render() == "NSC[(1,1,3,0,0); HEAD(10)] p1=1 p2=1 after 1 actions"


def test_state_encoding_follows_section_4_2_1() -> None:
    d, k = 10, 5
    chain, mb = NSCSpace((1, 8, 8), 10, depth=d), NSCSpace((1, 8, 8), 10, depth=d, multi_branch=True)
    assert chain.obs_shape == (d, d + k + 10)  # footnote 7: one predecessor
    assert mb.obs_shape == (d + 1, 2 * d + k + 11)  # plus our pointer row
    state = NSCState(
        (NSCLayer(1, CONV, 3, 0), NSCLayer(2, MAX_POOL, 2, 1), NSCLayer(3, CONCAT, 0, 2, 0)), terminal=True, shift2=2
    )
    x = encode(mb, state)
    assert x.dtype == np.float32 and set(np.unique(x)) <= {0.0, 1.0}
    assert (x[:d].sum(axis=1) == 4).all()  # four one-hots per NSC row: type, pred1, pred2, kernel
    pred1, pred2, kernel = NUM_TYPES, NUM_TYPES + d + 1, NUM_TYPES + 2 * (d + 1)
    assert np.flatnonzero(x[0]).tolist() == [CONV, pred1 + 0, pred2 + 0, kernel + 3]
    assert np.flatnonzero(x[1]).tolist() == [MAX_POOL, pred1 + 1, pred2 + 0, kernel + 2]
    assert np.flatnonzero(x[2]).tolist() == [CONCAT, pred1 + 2, pred2 + 0, kernel + 0]
    assert np.flatnonzero(x[3]).tolist() == [7, pred1, pred2, kernel]  # the terminal row
    assert np.flatnonzero(x[4]).tolist() == [0, pred1, pred2, kernel]  # empty rows: type 0
    assert np.flatnonzero(x[d]).tolist() == [pred1 + 3, pred2 + 1]  # pointers p1 = 3, p2 = 3 - 2
    y = encode(chain, state)
    assert np.flatnonzero(y[1]).tolist() == [MAX_POOL, pred1 + 1, NUM_TYPES + d + 1 + 2]


def test_chain_layers_always_read_the_previous_layer() -> None:
    env, _ = make_env(input_shape=(1, 28, 28))  # VALID padding: 28 -> 28 -> 9 -> 5 -> 2
    for action in (CONV1, MAXPOOL3, CONV5, AVGPOOL2):
        env.step(action)
    net = env.state.network(10)
    assert net.is_chain and [(layer.type, layer.kernel) for layer in net.layers] == [
        (CONV, 1),
        (MAX_POOL, 3),
        (CONV, 5),
        (AVG_POOL, 2),
    ]


def test_multi_branch_pointers_are_offsets_from_the_newest_layer() -> None:
    env, _ = make_env(multi_branch=True, tau=20)
    env.step(CONV3)  # layer 1 reads the input
    env.step(CONV1)  # layer 2 reads layer 1
    env.step(A_P2_DOWN)  # p2: 2 -> 1
    env.step(A_P1_DOWN)
    env.step(A_P1_DOWN)  # p1: 2 -> 0 (the input)
    assert env.state.pointers == (0, 1)
    env.step(A_CONCAT)  # layer 3 concatenates the input and layer 1
    assert env.state.network(10).layers[-1] == NSCLayer(3, CONCAT, 0, 0, 1)
    assert env.state.pointers == (1, 2)  # the pointers moved with the network
    env.step(A_P1_UP)
    env.step(A_ADD)
    assert env.state.network(10).layers[-1] == NSCLayer(4, 5, 0, 2, 2)


# -- termination rules, one by one ------------------------------------------------------------


def test_rule_a_pointer_out_of_bounds_ends_the_episode_with_no_reward() -> None:
    space = NSCSpace((1, 8, 8), 10, multi_branch=True)
    for action in (A_P1_UP, A_P1_DOWN, A_P2_UP, A_P2_DOWN):
        result = step(space, NSCState(), action)  # no layers: both pointers are on the input
        assert result.rules == ("a",) and result.network is None and result.scale == 0.0
    one = step(space, NSCState(), CONV3).after
    assert step(space, one, A_P1_DOWN).rules == ()  # back to the input: in bounds
    assert step(space, one, A_P2_UP).rules == ("a",)
    env, evaluate = make_env(multi_branch=True)
    _, reward, terminated, truncated, info = env.step(A_P2_DOWN)
    assert (reward, terminated, truncated, info["rules"], evaluate.calls) == (0.0, True, False, ("a",), [])


def test_rule_b_terminal_action_ends_the_episode_rewarded_with_the_unchanged_network() -> None:
    env, evaluate = make_env()
    env.step(CONV3)
    _, reward, terminated, _, info = env.step(A_TERMINAL)
    assert terminated and info["rules"] == ("b",) and info["kind"] == "terminal"
    assert reward == pytest.approx(accuracy(env.state.network(10)))
    assert env.state.terminal and env.state.rows == 2
    assert len(evaluate.calls) == 1  # the terminal adds no layer: its network was already evaluated


def test_rule_c_depth_limit_ends_the_episode() -> None:
    env, _ = make_env(depth=3, tau=10)
    assert env.step(CONV3)[2] is False
    assert env.step(CONV3)[2] is False
    _, _, terminated, _, info = env.step(CONV3)
    assert terminated and info["rules"] == ("c",)
    space = NSCSpace((1, 8, 8), 10, depth=3, tau=10)
    two = NSCState((NSCLayer(1, CONV, 3, 0), NSCLayer(2, CONV, 3, 1)), steps=2)
    assert step(space, two, A_TERMINAL).rules == ("b", "c")  # the terminal row fills the last slot


def test_rule_d_episode_length_limit_ends_the_episode() -> None:
    env, _ = make_env(multi_branch=True, tau=4)
    for action in (CONV3, A_P1_DOWN, A_P1_UP):
        assert env.step(action)[2] is False
    _, _, terminated, _, info = env.step(A_P2_DOWN)
    assert terminated and info["rules"] == ("d",)
    assert env.state.steps == 4 and env.state.n == 1


def test_rule_e_invalid_network_ends_the_episode_with_no_reward() -> None:
    env, evaluate = make_env(input_shape=(1, 4, 4))
    env.step(MAXPOOL2)  # 4x4 -> 2x2
    _, reward, terminated, _, info = env.step(AVGPOOL3)  # a 3x3 average over 2x2: invalid
    assert (reward, terminated, info["rules"]) == (0.0, True, ("e",))
    assert len(evaluate.calls) == 1  # the invalid network was never evaluated
    assert not env.state.network(10).is_valid((1, 4, 4))


def test_no_step_after_the_end() -> None:
    env, _ = make_env()
    env.step(A_TERMINAL)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(CONV1)
    env.reset()
    assert env.step(CONV1)[2] is False


# -- rewards --------------------------------------------------------------------------------------


def test_shift_rewards_are_sigma_times_the_accuracy() -> None:
    env, evaluate = make_env(multi_branch=True, sigma=0.25)
    _, r_layer, *_ = env.step(CONV3)
    _, r_shift, *_ = env.step(A_P1_DOWN)
    assert r_layer == pytest.approx(accuracy(env.state.network(10)))
    assert r_shift == pytest.approx(0.25 * r_layer)
    assert len(evaluate.calls) == 1  # the shift did not change the network: a cache hit
    zero, evaluate0 = make_env(multi_branch=True, sigma=0.0)
    assert zero.step(A_P2_DOWN)[1] == 0.0
    zero.reset()
    zero.step(CONV1)
    zero.step(A_P1_DOWN)
    assert zero.step(A_P1_UP)[1] == 0.0
    assert len(evaluate0.calls) == 1  # at σ = 0 a shift needs no evaluation at all


def test_cache_is_keyed_by_dataset_and_network() -> None:
    cache: dict[tuple[str, str], float] = {}
    space = NSCSpace((1, 8, 8), 10)
    a, b, c = Counting(), Counting(), Counting()
    env_a = NASEnv(space, a, dataset="digits", cache=cache)
    env_b = NASEnv(space, b, dataset="digits", cache=cache)
    env_c = NASEnv(space, c, dataset="npz:other", cache=cache)
    for env in (env_a, env_b, env_c, env_a):
        env.reset()
        env.step(CONV3)
        env.step(A_TERMINAL)
    assert len(a.calls) == 1 and b.calls == [] and len(c.calls) == 1
    assert env_a.evaluations == 1 and len(cache) == 2


def test_random_walks_only_ever_reach_well_formed_states() -> None:
    space = NSCSpace((1, 8, 8), 10, depth=5, multi_branch=True, tau=6)
    rng = np.random.default_rng(0)
    ends: set[str] = set()
    for _ in range(1000):
        state = NSCState()
        while True:
            result = step(space, state, int(rng.integers(space.n_actions)))
            net = result.after.network(10)
            assert NSCNetwork.parse(str(net)) == net
            assert result.after.rows <= space.depth and result.after.steps <= space.tau
            assert (result.network is None) == (result.scale == 0.0)
            if result.done:
                ends.update(result.rules)
                break
            state = result.after
    assert ends == {"a", "b", "c", "d", "e"}
