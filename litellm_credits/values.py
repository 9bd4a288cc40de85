"""The shared values of the base layer: money, power levels, ids and input checks.

Every other module takes these names from here, so a rule (eight decimal
places, the three power levels, what a user id may contain) is written once.
Nothing here touches the database or the configuration: importing this module
is free of side effects, and it depends only on :mod:`litellm_credits.errors`.

Money is Decimal throughout (invariant I7): amounts from users are parsed from
their text, floats are refused because they are already inexact.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, get_args

from litellm_credits import errors

# --- money ------------------------------------------------------------------------

#: The quantum of a credit amount: eight decimal places, as NUMERIC(20, 8) in SQL.
CREDIT_PLACES: Final = Decimal("0.00000001")
#: The largest amount a single grant, debit or price may name.
MAX_AMOUNT: Final = Decimal("1000000000")


def money(value: Decimal | None) -> str | None:
    """Decimal as plain text (never exponent notation like 0E-8), for JSON and tables."""
    return None if value is None else format(value, "f")


def to_decimal(value: Any, what: str) -> Decimal:
    """A configured money-like value, exactly. Floats are refused: they are already inexact.

    Raises :class:`~litellm_credits.errors.ConfigError` naming ``what``.
    """
    if isinstance(value, bool | float):
        raise errors.ConfigError(f"{what} must be written as a string or integer, not {value!r}")
    try:
        result = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise errors.ConfigError(f"{what} is not a number: {value!r}") from None
    if not result.is_finite():
        raise errors.ConfigError(f"{what} must be finite, got {value!r}")
    return result


def parse_amount(value: Any, *, allow_zero: bool = False) -> Decimal:
    """An amount of credits from user input: exact, finite, positive, at most 8 places."""
    if isinstance(value, bool | float):
        raise errors.InvalidAmount(
            f"amount {value!r} must be given as a string or integer so it stays exact"
        )
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise errors.InvalidAmount(f"amount {str(value)[:40]!r} is not a number") from None
    if not amount.is_finite():
        raise errors.InvalidAmount(f"amount {amount} is not a finite number")
    if amount > MAX_AMOUNT:
        raise errors.InvalidAmount(f"amount {amount} is too large; the limit is {MAX_AMOUNT}")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise errors.InvalidAmount(f"amount must be positive, got {amount}")
    if amount != amount.quantize(CREDIT_PLACES):
        raise errors.InvalidAmount(f"amount {amount} has more than 8 decimal places")
    return amount


def parse_signed_amount(value: Any) -> tuple[bool, Decimal]:
    """An admin adjustment: ``(negative, magnitude)`` from text like ``"-12.5"`` or ``"100"``.

    The magnitude passes :func:`parse_amount`, so a bad amount is refused
    before anything is written, whichever way it points.
    """
    if isinstance(value, bool | float):
        raise errors.InvalidAmount(
            f"amount {value!r} must be given as a string or integer so it stays exact"
        )
    text = str(value).strip()
    negative = text.startswith("-")
    return negative, parse_amount(text[1:] if negative else text)


def json_default(value: Any) -> Any:
    """``json.dumps`` hook for Decimals (as exact text) and datetimes (ISO 8601)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} in a settlement record")


# --- power levels -----------------------------------------------------------------

#: The power levels a user can choose; the SQL CHECK constraint lists the same three.
PowerLevel = Literal["eco", "balanced", "precision"]
POWER_LEVELS: Final[tuple[PowerLevel, ...]] = get_args(PowerLevel)


def check_level(level: Any) -> PowerLevel:
    """``level`` if it names a power level, else InvalidPowerLevel."""
    for known in POWER_LEVELS:
        if level == known:
            return known
    raise errors.InvalidPowerLevel(
        f"unknown power level {str(level)[:40]!r}; use {', '.join(POWER_LEVELS[:-1])} "
        f"or {POWER_LEVELS[-1]}"
    )


# --- ids and text -----------------------------------------------------------------

#: Longest user id, request id or other external id we store (VARCHAR(255) in SQL).
MAX_ID_LENGTH: Final = 255
#: Longest free-text description.
MAX_DESCRIPTION_LENGTH: Final = 1000

# The same set as SQL's [[:cntrl:]]: C0, DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def new_request_id() -> str:
    """A fresh id for one proxied request; it keys the hold and the settlement (I1)."""
    return f"req_{uuid.uuid4().hex}"


def _encodable(value: str) -> bool:
    # Lone surrogates survive in a str but not in UTF-8 or PostgreSQL text.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_user_id(user_id: Any) -> str:
    """``user_id`` if it is a usable LiteLLM user id, else InvalidUserId saying why."""
    if not isinstance(user_id, str) or not user_id:
        raise errors.InvalidUserId("user id is empty; pass the LiteLLM user id")
    if len(user_id) > MAX_ID_LENGTH:
        raise errors.InvalidUserId(
            f"user id is {len(user_id)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if _CONTROL.search(user_id):
        raise errors.InvalidUserId("user id contains control characters")
    if not _encodable(user_id):
        raise errors.InvalidUserId("user id is not valid Unicode")
    return user_id


#: The reserved prefix of team accounts in the ledger: a LiteLLM team's wallet is the
#: account ``team:<team_id>`` (identity.py). No person's id may start with it.
TEAM_PREFIX: Final = "team:"


def check_person_id(value: Any, what: str = "user id") -> str:
    """A user id that names a person: :func:`check_user_id`, and never in the team namespace."""
    try:
        user_id = check_user_id(value)
    except errors.InvalidUserId as exc:
        raise errors.InvalidUserId(f"{what} refused: {exc.message}") from None
    if user_id.startswith(TEAM_PREFIX):
        raise errors.InvalidUserId(
            f"{what} refused: ids starting with {TEAM_PREFIX!r} are reserved for team accounts")
    return user_id


def check_team_id(value: Any) -> str:
    """A LiteLLM team id, validated like a user id; its account id must fit in 255."""
    if not isinstance(value, str) or not value:
        raise errors.InvalidUserId("team id is empty")
    limit = MAX_ID_LENGTH - len(TEAM_PREFIX)
    if len(value) > limit:
        raise errors.InvalidUserId(
            f"team id is {len(value)} characters long; the limit is {limit}")
    try:
        check_user_id(value)
    except errors.InvalidUserId as exc:
        raise errors.InvalidUserId(
            "team id refused: " + exc.message.replace("user id", "team id")) from None
    return value


def team_account(team_id: Any) -> str:
    """The ledger account of a LiteLLM team: ``team:<team_id>``."""
    return TEAM_PREFIX + check_team_id(team_id)


def check_text(what: str, value: str | None, limit: int) -> str | None:
    """Optional text that PostgreSQL can store: no NUL, valid Unicode, at most ``limit``."""
    if value is None:
        return None
    if "\x00" in value:
        raise errors.InvalidInput(f"{what} contains a NUL byte")
    if not _encodable(value):
        raise errors.InvalidInput(f"{what} is not valid Unicode")
    if len(value) > limit:
        raise errors.InvalidInput(f"{what} is {len(value)} characters long; the limit is {limit}")
    return value


def check_request_id(value: Any) -> str:
    """A non-empty request id that :func:`check_text` accepts."""
    if not isinstance(value, str) or not value:
        raise errors.InvalidInput("request id is empty")
    checked = check_text("request id", value, MAX_ID_LENGTH)
    assert checked is not None
    return checked
