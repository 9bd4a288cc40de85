"""The shared values: money text, amounts, power levels, ids and text checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.values import (
    CREDIT_PLACES,
    MAX_AMOUNT,
    POWER_LEVELS,
    check_level,
    check_request_id,
    check_text,
    check_user_id,
    json_default,
    money,
    new_request_id,
    parse_amount,
    parse_signed_amount,
    to_decimal,
)


def test_the_credit_quantum_is_eight_places() -> None:
    assert CREDIT_PLACES == Decimal("1e-8")
    assert CREDIT_PLACES.as_tuple().exponent == -8


def test_money_is_plain_text() -> None:
    assert money(Decimal("0E-8")) == "0.00000000"
    assert money(Decimal("1E+3")) == "1000"
    assert money(None) is None


@pytest.mark.parametrize("value", ["1", "0.00000001", 5, Decimal("12.5"), " 7 ", MAX_AMOUNT])
def test_parse_amount_accepts_exact_positive_amounts(value: Any) -> None:
    assert parse_amount(value) == Decimal(str(value).strip())


@pytest.mark.parametrize(("value", "fragment"), [
    (1.5, "must be given as a string or integer"),
    (True, "must be given as a string or integer"),
    ("abc", "is not a number"),
    ("NaN", "is not a finite number"),
    ("Infinity", "is not a finite number"),
    ("0", "must be positive"),
    ("-1", "must be positive"),
    ("0.000000001", "more than 8 decimal places"),
    (MAX_AMOUNT + 1, "too large"),
])
def test_parse_amount_refuses(value: Any, fragment: str) -> None:
    with pytest.raises(errors.InvalidAmount) as caught:
        parse_amount(value)
    assert fragment in caught.value.message


def test_parse_amount_allows_zero_only_when_asked() -> None:
    assert parse_amount("0", allow_zero=True) == 0


def test_parse_signed_amount() -> None:
    assert parse_signed_amount("-12.5") == (True, Decimal("12.5"))
    assert parse_signed_amount(" 3 ") == (False, Decimal("3"))
    assert parse_signed_amount(4) == (False, Decimal("4"))
    with pytest.raises(errors.InvalidAmount):
        parse_signed_amount("--1")
    with pytest.raises(errors.InvalidAmount):
        parse_signed_amount(-1.5)


def test_to_decimal_is_a_config_error() -> None:
    assert to_decimal(" 2.50 ", "x") == Decimal("2.50")
    for bad in (1.5, "x", "inf", True):
        with pytest.raises(errors.ConfigError, match="^x "):
            to_decimal(bad, "x")


def test_power_levels() -> None:
    assert POWER_LEVELS == ("eco", "balanced", "precision")
    for level in POWER_LEVELS:
        assert check_level(level) == level
    for bad in ("turbo", None, 3, ["eco"]):
        with pytest.raises(errors.InvalidPowerLevel, match="use eco, balanced or precision"):
            check_level(bad)


@pytest.mark.parametrize("value", ["alice", "a" * 255, "ü-ser@example.com"])
def test_check_user_id_accepts(value: str) -> None:
    assert check_user_id(value) == value


@pytest.mark.parametrize(("value", "fragment"), [
    ("", "empty"), (None, "empty"), (7, "empty"), ("a" * 256, "the limit is 255"),
    ("a\x00b", "control characters"), ("a\x85b", "control characters"),
    ("a\ud800b", "not valid Unicode"),
])
def test_check_user_id_refuses(value: Any, fragment: str) -> None:
    with pytest.raises(errors.InvalidUserId, match=fragment):
        check_user_id(value)


def test_check_text() -> None:
    assert check_text("d", None, 3) is None
    assert check_text("d", "tab\tok", 10) == "tab\tok"
    for value, fragment in (("a\x00", "NUL byte"), ("\ud800", "not valid Unicode"),
                            ("abcd", "the limit is 3")):
        with pytest.raises(errors.InvalidInput, match=fragment):
            check_text("d", value, 3)


def test_request_ids() -> None:
    rid = new_request_id()
    assert rid.startswith("req_") and len(rid) == 36
    assert new_request_id() != rid
    assert check_request_id(rid) == rid
    for bad in ("", None, "x" * 256, "a\x00"):
        with pytest.raises(errors.InvalidInput):
            check_request_id(bad)


def test_json_default_keeps_decimals_exact() -> None:
    when = datetime(2026, 11, 30, tzinfo=UTC)
    text = json.dumps({"a": Decimal("0.10000000"), "t": when}, default=json_default)
    assert json.loads(text) == {"a": "0.10000000", "t": when.isoformat()}
    with pytest.raises(TypeError, match="cannot encode set"):
        json.dumps({1, 2}, default=json_default)
