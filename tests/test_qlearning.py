"""Q-learning: Algorithm 3 checked by hand, ε-greedy sampling, replay, persistence, and learning."""

from __future__ import annotations

import numpy as np
import pytest

from nasagent.core.arch import FC, Architecture, Conv, Pool
from nasagent.spaces.metaqnn import MetaQNNSpace, load_space
from nasagent.strategies.qlearning import QLearningConfig, QLearningStrategy
from nasagent.strategies.random_search import RandomStrategy
from nasagent.strategies.schedule import EpsilonSchedule

ARCH = Architecture.parse("[C(8,3,1), P(2,2), SM(10)]")


def strategy(replay_k: int = 100, seed: int = 0, schedule: str = "1.0:10") -> QLearningStrategy:
    space = MetaQNNSpace(load_space("metaqnn-small"), 8, 10)
    return QLearningStrategy(space, EpsilonSchedule.parse(schedule), seed, QLearningConfig(replay_k=replay_k))


def test_algorithm_3_by_hand_on_a_three_step_trajectory() -> None:
    q = strategy()
    s0, s1, s2, _ = (s.key for s in q.space.walk(ARCH))
    q.update(str(ARCH), 0.9)
    # Last transition moves towards the reward; earlier ones towards max Q of their successor.
    q_sm = 0.99 * 0.5 + 0.01 * 0.9
    q_pool = 0.99 * 0.5 + 0.01 * max(q_sm, 0.5)
    q_conv = 0.99 * 0.5 + 0.01 * max(q_pool, 0.5)
    assert q.value(s2, "SM(10)") == pytest.approx(q_sm)
    assert q.value(s1, "P(2,2)") == pytest.approx(q_pool)
    assert q.value(s0, "C(8,3,1)") == pytest.approx(q_conv)
    # A poor reward: the successor's max is now another action's untouched 0.5, not the updated one.
    q.update(str(ARCH), 0.1)
    q_sm2 = 0.99 * q_sm + 0.01 * 0.1
    assert q.value(s2, "SM(10)") == pytest.approx(q_sm2)
    assert q.value(s1, "P(2,2)") == pytest.approx(0.99 * q_pool + 0.01 * 0.5)
    assert q.value(s0, "C(8,3,1)") == pytest.approx(0.99 * q_conv + 0.01 * max(0.99 * q_pool + 0.01 * 0.5, 0.5))


def test_gamma_discounts_the_successor() -> None:
    space = MetaQNNSpace(load_space("metaqnn-small"), 8, 10)
    q = QLearningStrategy(space, EpsilonSchedule.parse("1.0:1"), 0, QLearningConfig(gamma=0.5, alpha=0.5, q_init=0.0))
    s0, s1, _ = (s.key for s in space.walk(Architecture.parse("[C(8,3,1), SM(10)]")))
    q.update("[C(8,3,1), SM(10)]", 1.0)
    assert q.value(s1, "SM(10)") == pytest.approx(0.5)
    assert q.value(s0, "C(8,3,1)") == pytest.approx(0.5 * 0.5 * 0.5)


def test_tell_replays_k_samples_from_memory() -> None:
    q = strategy(replay_k=100)
    q.tell(ARCH, 0.9, first_training=True)
    s2 = q.space.walk(ARCH)[2].key
    # One memory, replayed 100 times: Q(s2, SM) = 0.5·0.99^100 + 0.9·(1 - 0.99^100).
    assert q.value(s2, "SM(10)") == pytest.approx(0.5 * 0.99**100 + 0.9 * (1 - 0.99**100))
    assert q.replay == [(str(ARCH), 0.9)]
    assert len(q.pop_value_changes()) == 3 and q.pop_value_changes() == {}


def test_greedy_follows_the_best_q_and_breaks_ties_at_random() -> None:
    q = strategy()
    for _ in range(30):
        q.update("[C(64,5,1), P(3,2), FC(128), SM(10)]", 1.0)
    assert str(q.sample(epsilon=0.0)) == "[C(64,5,1), P(3,2), FC(128), SM(10)]"
    fresh = strategy(seed=1)
    firsts = {str(fresh.sample(epsilon=0.0).layers[0]) for _ in range(40)}
    assert len(firsts) > 5  # all Q equal: ties broken at random, not by order


def test_epsilon_one_is_a_uniform_walk() -> None:
    q = strategy(seed=3)
    actions = q.space.actions(q.space.start)
    counts: dict[str, int] = {}
    n = 6000
    for _ in range(n):
        first = str(q.sample(epsilon=1.0).layers[0])
        counts[first] = counts.get(first, 0) + 1
    expected = n / len(actions)
    assert set(counts) == {str(a) for a in actions}
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 60  # 17 degrees of freedom: p < 1e-5 beyond this


def test_ask_reports_the_scheduled_epsilon() -> None:
    q = strategy(schedule="1.0:2,0.5:2,0.1:1")
    assert [q.ask(i).epsilon for i in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    assert q.ask(3).info == {"epsilon_step": 1}


def test_state_dict_and_restore_reproduce_the_same_future() -> None:
    a = strategy(seed=7, schedule="0.5:100")
    for i in range(5):
        a.tell(a.ask(i).arch, 0.1 * i, True)
    values = {(s, act): v for s, row in a.q.items() for act, v in row.items()}
    b = strategy(seed=999, schedule="0.5:100")
    b.restore(a.state_dict(), values, [(Architecture.parse(x), r) for x, r in a.replay])
    for i in range(5, 10):
        pa, pb = a.ask(i), b.ask(i)
        assert pa.arch == pb.arch
        a.tell(pa.arch, 0.3, True)
        b.tell(pb.arch, 0.3, True)
    assert a.q == b.q


def toy_reward(arch: Architecture) -> float:
    """A known function of the architecture: deep stacks of wide 5x5 convolutions then one FC win."""
    convs = [layer for layer in arch.hidden if isinstance(layer, Conv)]
    score = sum(0.1 for c in convs if c.kernel == 5 and c.filters == 64)
    score -= 0.1 * sum(isinstance(layer, Pool) for layer in arch.hidden)
    score += 0.1 * any(isinstance(layer, FC) for layer in arch.hidden)
    return float(np.clip(0.4 + score, 0.1, 0.95))


def run_toy(strategy_obj, budget: int) -> list[float]:
    rewards = []
    for i in range(budget):
        proposal = strategy_obj.ask(i)
        reward = toy_reward(proposal.arch)
        strategy_obj.tell(proposal.arch, reward, True)
        rewards.append(reward)
    return rewards


def test_q_learning_learns_the_toy_problem_and_beats_random_search() -> None:
    space = MetaQNNSpace(load_space("metaqnn-small"), 32, 10)
    budget = 300
    explore, exploit, random_tail = [], [], []
    for seed in range(3):
        q_rewards = run_toy(QLearningStrategy(space, EpsilonSchedule.paper(budget), seed), budget)
        r_rewards = run_toy(RandomStrategy(space, seed), budget)
        explore.append(np.mean(q_rewards[: budget // 2]))  # ε = 1.0
        exploit.append(np.mean(q_rewards[-budget // 9 :]))  # the last ε steps
        random_tail.append(np.mean(r_rewards[-budget // 9 :]))
    assert all(e > x for e, x in zip(exploit, explore))
    # Exploitation beats exploration, and random search, by a clear margin (measured: ~0.13 and ~0.15).
    assert np.mean(exploit) > np.mean(explore) + 0.08
    assert np.mean(exploit) > np.mean(random_tail) + 0.08
