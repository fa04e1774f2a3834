"""``--option KEY=VALUE``: read from the command line, then checked and typed against a strategy's options.

Each strategy module declares its settings once, as a frozen dataclass with a docstring per field
(CleanRL's ``Args``): the defaults live there and nowhere else. :func:`options_from` turns the
experiment's stored mapping into that dataclass, so a typo or a value of the wrong type is one
``ConfigError`` line naming the option, never a traceback from deep inside a learner. Range checks
that need more than the type (``0 < gamma <= 1``) stay in the dataclass's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

from nasagent.errors import ConfigError

T = TypeVar("T")
NONE_WORDS = ("none", "null")
"""Text a ``X | None`` option reads as None (YAML reads ``none`` as a string, ``null`` as None)."""


def parse_option_pairs(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` flags into a mapping; values read as YAML scalars or lists (``[16, 32]``)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--option {key}: cannot read value {value!r}") from None
    return options


def options_from(cls: type[T], options: Mapping[str, Any], strategy: str) -> T:
    """The options dataclass ``cls`` of ``--strategy strategy``, from the experiment's ``--option`` values.

    Keys are checked against the dataclass's fields (an unknown one names the known ones), each value
    is read as its field's annotated type (see :func:`coerce`), and fields not given keep their
    defaults. Every failure is a one-line ``ConfigError``."""
    hints = typing.get_type_hints(cls)
    known = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(known))
    if unknown:
        settings = ", ".join(known) or "none"
        raise ConfigError(f"--option {unknown[0]} is not a setting of --strategy {strategy} (settings: {settings})")
    values: dict[str, Any] = {}
    for key, value in options.items():
        try:
            values[key] = coerce(hints[key], value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"--option {key} of --strategy {strategy} must be {describe(hints[key])}, got {value!r}"
            ) from None
    return cls(**values)


def coerce(kind: Any, value: Any) -> Any:
    """``value`` (as YAML or JSON read it) as type ``kind``; ValueError if it does not fit.

    int: a whole number (also ``"5"`` or ``5.0``); float: a finite number (also text such as ``"1e-3"``,
    which YAML leaves a string); bool: true/false (also ``"true"``, ``"false"``, 1, 0); str: text;
    ``tuple[X, ...]``: a list of X, or one X; ``X | None``: None, ``"none"``/``"null"``, or an X."""
    if _is_optional(kind):
        if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
            return None
        return coerce(_inner(kind), value)
    if typing.get_origin(kind) is tuple:
        (item,) = [a for a in typing.get_args(kind) if a is not Ellipsis]
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(coerce(item, v) for v in items)
    if value is None:
        raise ValueError("no value")
    if kind is bool:
        return _as_bool(value)
    if kind is int:
        return _as_int(value)
    if kind is float:
        return _as_float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError("not text")
        return value
    raise TypeError(f"an option of type {kind!r} is not supported")  # a strategy declared a type coerce cannot read


def describe(kind: Any) -> str:
    """What a value of ``kind`` looks like, for error messages."""
    if _is_optional(kind):
        return f"{describe(_inner(kind))} or none"
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return f"a list of {_PLURAL.get(item, 'values')} (or one)"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(kind, str(kind))


_PLURAL = {bool: "booleans", int: "whole numbers", float: "numbers", str: "texts"}


def _is_optional(kind: Any) -> bool:
    return typing.get_origin(kind) in (types.UnionType, typing.Union) and type(None) in typing.get_args(kind)


def _inner(kind: Any) -> Any:
    (inner,) = [a for a in typing.get_args(kind) if a is not type(None)]
    return inner


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("not a boolean")


def _as_int(value: Any) -> int:
    if isinstance(value, bool):  # True is an int to Python, not to a user typing depth=true
        raise ValueError("a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError("not a whole number")


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = float(value.strip())
    else:
        raise ValueError("not a number")
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number
