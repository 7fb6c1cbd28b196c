"""bench/operator_settings_ab.py: how a variant is read from the command line."""

from __future__ import annotations

import argparse

import pytest
from bench.operator_settings_ab import DEFAULT_VARIANTS, parse_variant


def test_a_variant_is_a_name_and_its_environment() -> None:
    assert parse_variant("held:KEXP_DEFER_STATUS_ABOVE=32,KEXP_MAX_STATUS_DEFER_S=5") == (
        "held",
        {"KEXP_DEFER_STATUS_ABOVE": "32", "KEXP_MAX_STATUS_DEFER_S": "5"},
    )
    assert parse_variant("url:X=a=b") == ("url", {"X": "a=b"})  # a value may hold '='
    assert [parse_variant(v)[0] for v in DEFAULT_VARIANTS] == ["held", "at-once"]


@pytest.mark.parametrize("text", ["held", "held:", ":X=1", "held:X", "held:X=1,Y", "held:=1"])
def test_a_variant_without_a_name_or_a_setting_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--variant"):
        parse_variant(text)
