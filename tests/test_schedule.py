from __future__ import annotations

import pytest

from nasagent.errors import ConfigError
from nasagent.strategies.schedule import PAPER_SCHEDULE, EpsilonSchedule


def test_paper_schedule_is_table_2() -> None:
    schedule = EpsilonSchedule.paper()
    assert schedule.total == 2700
    assert [e for e, _ in schedule.steps] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert schedule.steps[0] == (1.0, 1500)


def test_position_walks_through_the_quotas() -> None:
    schedule = EpsilonSchedule.paper()
    assert schedule.position(0) == (0, 1.0)
    assert schedule.position(1499) == (0, 1.0)
    assert schedule.position(1500) == (1, 0.9)
    assert schedule.position(1799) == (3, 0.7)
    assert schedule.position(1800) == (4, 0.6)
    assert schedule.position(2699) == (9, 0.1)
    assert schedule.position(10_000) == (9, 0.1)  # past the end the last ε holds


@pytest.mark.parametrize("trials", [1, 7, 27, 100, 270, 1000, 2700])
def test_scaled_schedule_sums_exactly_and_keeps_proportions(trials: int) -> None:
    schedule = EpsilonSchedule.paper(trials)
    assert schedule.total == trials
    for eps, count in schedule.steps:
        paper = dict(PAPER_SCHEDULE)[eps]
        assert abs(count - trials * paper / 2700) < 1.0


def test_scaled_270_is_a_tenth_of_table_2() -> None:
    assert EpsilonSchedule.paper(270).steps == tuple((e, c // 10) for e, c in PAPER_SCHEDULE)


def test_explicit_schedule_and_errors() -> None:
    schedule = EpsilonSchedule.parse("1.0:5,0.5:3,0.1:2")
    assert schedule.total == 10 and schedule.position(6) == (1, 0.5)
    for bad in ("1.0", "x:3", "1.5:3", "0.5:0", ""):
        with pytest.raises(ConfigError):
            EpsilonSchedule.parse(bad)
    with pytest.raises(ConfigError):
        EpsilonSchedule.parse("1.0:5", trials=6)
    with pytest.raises(ConfigError):
        EpsilonSchedule.paper(0)
