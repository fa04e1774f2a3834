"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class NasagentError(Exception):
    """A problem with the user's input (data, config, flags, URLs, database): never a bug."""


class DataError(NasagentError):
    """The dataset is missing, unreadable or malformed."""


class ConfigError(NasagentError):
    """A search space, preset or flag is invalid."""


class StoreError(NasagentError):
    """The database cannot be reached, or the experiment does not exist."""
