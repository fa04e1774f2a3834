"""The strategy contract of ``nasagent/strategies/base.py``, checked over every registered strategy and over
the example subclass in ``Strategy``'s docstring (so a new strategy is covered by registering it, and the
example cannot rot).

The contract: after ``restore(None, {}, [])``, ``ask`` proposes a network that survives its stored form;
``tell`` takes rewards of first trainings and of replay-dictionary hits; ``state_dict`` is JSON; a second
instance restored from (state, accumulated value changes, replay memory) proposes exactly what the first
one does next; ``pop_value_changes`` hands each change over once; bad ``--option`` values are a
``ConfigError`` line. The agent's loop is mimicked here without a store: the agent's own tests cover
persistence through PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pytest

from nasagent.config import SearchConfig
from nasagent.core.networks import Network, parse_network
from nasagent.errors import ConfigError
from nasagent.strategies.base import Proposal, Strategy
from nasagent.strategies.registry import STRATEGIES, options_type

SHAPE = (1, 8, 8)
CLASSES = 10
TRIALS = 12
SMALL = {"reinforce": {"depth": 2}, "meta-a2c": {"depth": 3}, "dqn": {"depth": 3}, "random-nsc": {"depth": 3}}
"""Options that keep a strategy small and fast here; a strategy not named runs with its defaults."""
EXAMPLE = "docstring-example"


def docstring_example() -> type[Strategy]:
    """The ``Strategy`` subclass in the code block (after ``::``) of ``Strategy``'s docstring, executed."""
    doc = inspect.getdoc(Strategy) or ""
    assert "::\n" in doc, "Strategy's docstring lost its example"
    block: list[str] = []
    for line in doc.split("::\n", 1)[1].splitlines():
        if line.strip() and not line.startswith(" "):
            break  # the first line back at the docstring's margin ends the block
        block.append(line)
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent("\n".join(block)), "<Strategy docstring>", "exec"), namespace)
    found = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, Strategy) and v is not Strategy]
    assert len(found) == 1, found
    return found[0]


def build(name: str, seed: int = 0, options: dict[str, Any] | None = None) -> Strategy:
    """Strategy ``name`` as a search builds it: through ``SearchConfig`` (the docstring example directly
    from the context, as its factory would)."""
    config = SearchConfig(strategy="random" if name == EXAMPLE else name, trials=TRIALS, seed=seed)
    config.options = dict(SMALL.get(name, {}) if options is None else options)
    if name == EXAMPLE:
        return docstring_example()(config.strategy_context(SHAPE, CLASSES))  # type: ignore[call-arg]
    return config.make_strategy(SHAPE, CLASSES)


ALL = [*STRATEGIES, EXAMPLE]
WITH_OPTIONS = [name for name in STRATEGIES if dataclasses.fields(options_type(name))]


def reward_of(arch: Network) -> float:
    """A fixed pseudo-accuracy per architecture, so two runs are told the same numbers."""
    return int(hashlib.sha256(str(arch).encode()).hexdigest()[:8], 16) / 2**32


@dataclass
class History:
    """What the agent persists between steps: the value table, the replay memory, the trained networks."""

    values: dict[tuple[str, str], float] = field(default_factory=dict)
    replay: list[tuple[Network, float]] = field(default_factory=list)
    trained: set[str] = field(default_factory=set)

    def copy(self) -> History:
        return History(dict(self.values), list(self.replay), set(self.trained))


def ask(strategy: Strategy, history: History) -> Proposal:
    """The agent's ask: the budget position is the count of distinct networks launched so far."""
    proposal = strategy.ask(len(history.trained))
    history.values.update(strategy.pop_value_changes())
    return proposal


def tell(strategy: Strategy, history: History, proposal: Proposal) -> None:
    """The agent's tell: a first training, or at once for a network trained before (a replay-dictionary hit)."""
    first = proposal.arch.digest not in history.trained
    history.trained.add(proposal.arch.digest)
    reward = reward_of(proposal.arch)
    strategy.tell(proposal.arch, reward, first)
    history.replay.append((proposal.arch, reward))
    history.values.update(strategy.pop_value_changes())


def run(strategy: Strategy, history: History, steps: int) -> list[tuple[str, float | None, str]]:
    """``steps`` ask/tell rounds with one worker; what was proposed, as comparable plain values."""
    seen = []
    for _ in range(steps):
        proposal = ask(strategy, history)
        tell(strategy, history, proposal)
        seen.append((str(proposal.arch), proposal.epsilon, json.dumps(proposal.info, sort_keys=True)))
    return seen


@pytest.fixture(params=ALL)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_the_docstring_example_is_a_strategy_a_search_can_use() -> None:
    example = docstring_example()
    assert not inspect.isabstract(example) and example.name == "random-walk"


def test_ask_proposes_a_network_that_survives_its_stored_form(name: str) -> None:
    strategy = build(name)
    strategy.restore(None, {}, [])
    for _ in range(3):
        proposal = strategy.ask(0)
        assert isinstance(proposal, Proposal)
        assert isinstance(proposal.arch.digest, str) and proposal.arch.digest
        stored = parse_network(str(proposal.arch))  # what the agent reads back from the trials table
        assert str(stored) == str(proposal.arch) and stored.digest == proposal.arch.digest
        assert proposal.epsilon is None or 0.0 <= proposal.epsilon <= 1.0
        json.dumps(proposal.info)  # stored as JSON with the trial
        strategy.tell(proposal.arch, reward_of(proposal.arch), True)


def test_tell_takes_first_trainings_and_replay_hits(name: str) -> None:
    strategy = build(name)
    strategy.restore(None, {}, [])
    first = strategy.ask(0)
    strategy.tell(first.arch, 0.5, True)
    strategy.tell(first.arch, 0.5, False)  # the same network again: the agent's replay dictionary answers
    hit = strategy.ask(1)
    strategy.tell(hit.arch, 0.25, False)
    assert isinstance(strategy.ask(1), Proposal)
    json.dumps(strategy.state_dict())


def test_state_is_json_and_a_restored_strategy_proposes_exactly_what_the_original_does(name: str) -> None:
    original, history = build(name), History()
    original.restore(None, {}, [])
    run(original, history, 8)
    in_flight = ask(original, history)  # saved between an ask and its tell, as a crash with a trial running
    saved = json.loads(json.dumps(original.state_dict()))
    stored_replay = [(parse_network(str(arch)), reward) for arch, reward in history.replay]

    restored = build(name, seed=1)  # another seed: everything must come from what was saved
    restored.restore(saved, dict(history.values), stored_replay)
    assert json.dumps(restored.state_dict(), sort_keys=True) == json.dumps(saved, sort_keys=True)
    resumed = history.copy()
    tell(original, history, in_flight)  # the agent reruns the in-flight trial and tells both its reward
    tell(restored, resumed, Proposal(parse_network(str(in_flight.arch))))
    assert run(restored, resumed, 6) == run(original, history, 6)
    assert resumed.values == history.values


def test_pop_value_changes_hands_each_change_over_once(name: str) -> None:
    strategy = build(name)
    strategy.restore(None, {}, [])
    proposal = strategy.ask(0)
    strategy.pop_value_changes()
    strategy.tell(proposal.arch, 0.7, True)
    changes = strategy.pop_value_changes()
    assert isinstance(changes, dict)
    assert all(isinstance(s, str) and isinstance(a, str) and isinstance(v, float) for (s, a), v in changes.items())
    assert strategy.pop_value_changes() == {}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_unknown_option_is_a_config_error_naming_every_setting(strategy: str) -> None:
    with pytest.raises(ConfigError) as error:
        build(strategy, options={"no_such_setting": 1})
    message = str(error.value)
    settings = sorted(f.name for f in dataclasses.fields(options_type(strategy))) or ["none"]
    assert message.startswith(f"--option no_such_setting is not a setting of --strategy {strategy} (settings: ")
    assert "\n" not in message and all(setting in message for setting in settings), message


@pytest.mark.parametrize("strategy", WITH_OPTIONS)
def test_a_value_of_the_wrong_type_is_a_config_error_naming_the_option(strategy: str) -> None:
    bad = {"not": "a value"}  # what ``--option KEY={not: a value}`` reads as; no setting takes a mapping
    for setting in dataclasses.fields(options_type(strategy)):
        with pytest.raises(ConfigError) as error:
            build(strategy, options={setting.name: bad})
        message = str(error.value)
        assert message.startswith(f"--option {setting.name} of --strategy {strategy} must be "), message
        assert message.endswith(f", got {bad!r}") and "\n" not in message, message


@pytest.mark.parametrize("strategy", WITH_OPTIONS)
def test_every_default_given_explicitly_builds_the_same_strategy(strategy: str) -> None:
    """Each field's default passes its own type check (annotation and default agree), and stored
    configs that spell a default out behave as those that leave it out."""
    defaults = {f.name: f.default for f in dataclasses.fields(options_type(strategy))}
    explicit = build(strategy, options={**defaults, **SMALL.get(strategy, {})})
    implicit = build(strategy)
    assert json.dumps(explicit.state_dict(), sort_keys=True) == json.dumps(implicit.state_dict(), sort_keys=True)
    assert explicit.ask(0) == implicit.ask(0)
