from __future__ import annotations

import pytest

from nasagent.core.arch import FC, GAP, Architecture, Conv, Pool, Softmax
from nasagent.errors import ConfigError


def test_paper_string_round_trip() -> None:
    text = "[C(64,3,1), P(2,2), FC(128), SM(10)]"
    arch = Architecture.parse(text)
    assert arch.layers == (Conv(64, 3, 1), Pool(2, 2), FC(128), Softmax(10))
    assert str(arch) == text
    assert Architecture.parse(str(arch)) == arch


def test_paper_table_a2_architecture_parses() -> None:
    text = "[C(512,5,1), C(256,3,1), C(256,5,1), C(256,3,1), P(5,3), C(512,3,1), C(512,5,1), P(2,2), SM(10)]"
    assert str(Architecture.parse(text)) == text


def test_digest_is_stable_and_distinguishes() -> None:
    a = Architecture.parse("[C(64,3,1), GAP(10)]")
    assert a.digest == Architecture.parse("[ C(64, 3, 1),GAP(10) ]").digest
    assert a.digest != Architecture.parse("[C(64,5,1), GAP(10)]").digest
    assert len(a.digest) == 16


@pytest.mark.parametrize(
    "text",
    [
        "C(64,3,1), SM(10)",
        "[C(64,3), SM(10)]",
        "[C(64,3,1)]",
        "[SM(10), C(64,3,1)]",
        "[FC(128), C(8,3,1), SM(10)]",
        "[FC(128), GAP(10)]",
        "[X(1), SM(10)]",
        "[C(0,3,1), SM(10)]",
        "[C(64,3,1) junk, SM(10)]",
        "[]",
    ],
)
def test_malformed_architectures_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError):
        Architecture.parse(text)


def test_terminal_and_hidden() -> None:
    arch = Architecture((Conv(8, 3, 1), GAP(3)))
    assert arch.terminal == GAP(3)
    assert arch.hidden == (Conv(8, 3, 1),)
