"""``--option KEY=VALUE`` read into a strategy's options dataclass: typed from its annotations, defaults from
the dataclass alone, one ``ConfigError`` line (exit 2 from the CLI) for an unknown key or a bad value, and a
docstring for every option of every registered strategy."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nasagent.cli import main
from nasagent.errors import ConfigError
from nasagent.persistence.postgres import Store
from nasagent.strategies.options import coerce, options_from, parse_option_pairs
from nasagent.strategies.registry import STRATEGIES, options_type


@dataclass(frozen=True)
class Example:
    """One field of every kind a strategy declares."""

    count: int = 1
    """A whole number."""
    rate: float = 0.5
    """A number."""
    flag: bool = False
    """A switch."""
    name: str | None = None
    """Text, or none."""
    sizes: tuple[int, ...] = (8,)
    """Whole numbers."""
    limit: float | None = 1.0
    """A number, or none."""


def test_cli_values_are_read_as_their_fields_types() -> None:
    pairs = ["count=3", "rate=1e-3", "flag=false", "name=run-7", "sizes=[16, 32]", "limit=none"]
    options = options_from(Example, parse_option_pairs(pairs), "example")
    assert options == Example(count=3, rate=0.001, flag=False, name="run-7", sizes=(16, 32), limit=None)
    assert type(options.rate) is float and type(options.count) is int  # "1e-3" is a string to YAML


@pytest.mark.parametrize(
    "key, value, read",
    [
        ("count", "5", 5),
        ("count", 5.0, 5),
        ("rate", 2, 2.0),
        ("rate", " 0.25 ", 0.25),
        ("flag", "TRUE", True),
        ("flag", 1, True),
        ("flag", 0, False),
        ("name", "None", None),
        ("name", None, None),
        ("sizes", 3, (3,)),
        ("sizes", (4, "5"), (4, 5)),
        ("limit", "null", None),
        ("limit", 3, 3.0),
    ],
)
def test_values_are_coerced_to_the_field_type(key: str, value: Any, read: Any) -> None:
    got = getattr(options_from(Example, {key: value}, "example"), key)
    assert got == read and type(got) is type(read)


def test_fields_not_given_keep_the_dataclass_defaults() -> None:
    assert options_from(Example, {}, "example") == Example()
    assert options_from(Example, {"count": 2}, "example") == Example(count=2)


def test_an_unknown_key_names_every_setting() -> None:
    with pytest.raises(ConfigError) as error:
        options_from(Example, {"count": 2, "colour": "red"}, "example")
    assert str(error.value) == (
        "--option colour is not a setting of --strategy example (settings: count, flag, limit, name, rate, sizes)"
    )


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("count", "many", "a whole number"),
        ("count", 2.5, "a whole number"),
        ("count", True, "a whole number"),
        ("count", None, "a whole number"),
        ("rate", "fast", "a number"),
        ("rate", float("nan"), "a number"),
        ("rate", "inf", "a number"),
        ("rate", [0.1], "a number"),
        ("flag", "maybe", "true or false"),
        ("flag", "yes", "true or false"),
        ("flag", 2, "true or false"),
        ("name", 12, "text or none"),
        ("sizes", [1, "two"], "a list of whole numbers (or one)"),
        ("sizes", {"a": 1}, "a list of whole numbers (or one)"),
        ("limit", "x", "a number or none"),
    ],
)
def test_a_bad_value_names_the_option_the_value_and_the_expected_type(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        options_from(Example, {key: value}, "example")
    assert str(error.value) == f"--option {key} of --strategy example must be {expected}, got {value!r}"


def test_a_field_of_a_type_options_cannot_read_is_a_bug_not_a_user_error() -> None:
    @dataclass(frozen=True)
    class Odd:
        mapping: dict[str, int] = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="not supported"):
        coerce(typing.get_type_hints(Odd)["mapping"], {"a": 1})


def field_docstrings(cls: type) -> dict[str, str]:
    """Field -> the string literal right below its annotation, from the sources of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for statement, following in zip(body, body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = following.value.value
    return docs


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_option_of_every_strategy_is_a_documented_field_of_one_frozen_dataclass(strategy: str) -> None:
    cls = options_type(strategy)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert cls.__doc__ and cls.__doc__.strip()
    names = [f.name for f in dataclasses.fields(cls)]
    docs = field_docstrings(cls)
    assert [n for n in names if not docs.get(n, "").strip()] == []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # the annotation and the default agree, and options_from reads the type
        assert coerce(hints[f.name], f.default) == f.default, f.name


def test_the_environment_options_are_shared_and_the_context_defaults_resolve() -> None:
    from nasagent.config import SearchConfig
    from nasagent.strategies.env_driver import EnvOptions

    for strategy in ("dqn", "meta-a2c", "random-nsc"):
        assert issubclass(options_type(strategy), EnvOptions)
    assert EnvOptions().space((1, 8, 8), 10).tau == 10 and EnvOptions(multi_branch=True).space((1, 8, 8), 10).tau == 20

    def built(strategy: str, **options: Any) -> Any:
        return SearchConfig(strategy=strategy, trials=7, options=options).make_strategy((1, 8, 8), 10)

    assert built("dqn").config.t_max == 70 and built("dqn", t_max=33).config.t_max == 33
    chain, branched = built("meta-a2c"), built("meta-a2c", multi_branch=True)
    assert (chain.config.horizon, branched.config.horizon) == (5, 10)  # §6.2: j = 10 multi-branch
    assert chain.config.learn is True and built("meta-a2c", learn=False).config.learn is False
    assert built("meta-a2c", horizon=3).config.horizon == 3


def test_the_cli_reports_a_bad_option_in_one_line_and_creates_nothing(db_url: str, tmp_path: Path, capsys) -> None:
    common = ["--trials", "2", "--db", db_url, "--data-dir", str(tmp_path)]
    assert main(["search", "--experiment", "typo", "--strategy", "dqn", "--option", "dpeth=3", *common]) == 2
    assert main(["search", "--experiment", "bad", "--strategy", "meta-a2c", "--option", "lr=fast", *common]) == 2
    typo, bad = capsys.readouterr().err.strip().splitlines()
    assert typo.startswith("nasagent: error: --option dpeth is not a setting of --strategy dqn (settings: ")
    assert "depth" in typo and "t_max" in typo
    assert bad == "nasagent: error: --option lr of --strategy meta-a2c must be a number, got 'fast'"
    store = Store.connect(db_url)
    try:
        assert store.find_experiment("typo") is None and store.find_experiment("bad") is None
    finally:
        store.close()
