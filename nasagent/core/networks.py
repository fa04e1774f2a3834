"""Every kind of network a searcher can propose, behind one parse and one digest.

MetaQNN, random search and REINFORCE propose chain ``Architecture``s (``[C(64,3,1), ..., SM(10)]``).
A network kind is any frozen value object with ``__str__`` (its stored form, which its parser
reads back) and ``digest`` (the replay dictionary's key). ``parse_network`` recognises each kind
by its string form, so the store, the agent and the trial worker need not know which it is.
"""

from __future__ import annotations

from typing import Protocol

from nasagent.core.arch import Architecture
from nasagent.core.nsc import NSCNetwork


class Network(Protocol):
    """What the agent and the runners need of a proposed network."""

    @property
    def digest(self) -> str: ...

    def __str__(self) -> str: ...


def parse_network(text: str) -> Architecture | NSCNetwork:
    """Read a network back from its stored string form: a chain ``Architecture`` or an ``NSCNetwork``."""
    if text.lstrip().startswith("NSC["):
        return NSCNetwork.parse(text)
    return Architecture.parse(text)
