"""``--option KEY=VALUE`` flags, read into the mapping a strategy factory checks."""

from __future__ import annotations

from typing import Any

import yaml

from nasagent.errors import ConfigError


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
