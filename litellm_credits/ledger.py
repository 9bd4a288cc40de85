"""The credit ledger: grants, debits, refunds, holds and settlement.

Every money movement goes through the SQL functions of 0002/0003, which lock
the account and write one chained transaction (invariant I2). This module
checks input with :mod:`litellm_credits.values` before it reaches the
database (so a NUL byte or a float never gets that far), runs the named
queries, and returns typed results.
Money is Decimal throughout (invariant I7).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from litellm_credits import errors
from litellm_credits.holds import HoldPlacer, HoldRequest
from litellm_credits.store.db import Database
from litellm_credits.values import (
    MAX_DESCRIPTION_LENGTH,
    MAX_ID_LENGTH,
    check_level,
    check_request_id,
    check_text,
    check_user_id,
    json_default,
    money,
    parse_amount,
    parse_signed_amount,
)

ADD_TYPES = ("purchase", "bonus", "admin_adjustment")
DEBIT_TYPES = ("usage", "refund", "admin_adjustment")


@dataclass(frozen=True)
class TxResult:
    success: bool
    new_balance: Decimal
    transaction_id: int | None


@dataclass(frozen=True)
class Account:
    user_id: str
    balance: Decimal
    held: Decimal
    tier: str
    power_level: str
    level_override_allowed: bool
    monthly_quota: Decimal | None
    quota_used_pct: Decimal
    low_balance_threshold: Decimal | None

    @property
    def available(self) -> Decimal:
        return self.balance - self.held

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "balance": money(self.balance),
            "held": money(self.held),
            "available": money(self.available),
            "tier": self.tier,
            "power_level": self.power_level,
            "level_override_allowed": self.level_override_allowed,
            "monthly_quota": money(self.monthly_quota),
            "quota_used_pct": money(self.quota_used_pct),
            "low_balance_threshold": money(self.low_balance_threshold),
        }


@dataclass(frozen=True)
class ByokKeyRef:
    """An active BYOK key row as the hot path sees it: sealed, never plaintext."""

    id: int
    provider: str
    key_name: str
    is_default: bool
    fallback: bool
    key_id: str
    blob: bytes


@dataclass(frozen=True)
class Reservation:
    status: str  # placed | exists | insufficient | quota
    power_level: str
    cost_multiplier: Decimal
    hold_amount: Decimal
    balance: Decimal
    held: Decimal
    tier: str
    monthly_quota: Decimal | None
    quota_used: Decimal
    byok_keys: tuple[ByokKeyRef, ...]

    @property
    def ok(self) -> bool:
        return self.status in ("placed", "exists")

    @property
    def available_after(self) -> Decimal:
        return self.balance - self.held


def _tx(row: dict[str, Any] | None) -> TxResult:
    assert row is not None  # the SQL functions always return one row
    return TxResult(bool(row["success"]), row["new_balance"], row["transaction_id"])


def _jsonb(value: dict[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(value)


LedgerObserver = Callable[[str, dict[str, Any]], None]


class Ledger:
    """Money movements. Observers (metrics) hear about each one after it is written."""

    def __init__(self, db: Database, *, reserve_batch: int = 64) -> None:
        self.db = db
        self.observers: list[LedgerObserver] = []
        self.holds = HoldPlacer(db, max_batch=reserve_batch)

    def _notify(self, event: str, **fields: Any) -> None:
        for observer in self.observers:
            observer(event, fields)

    async def add_credits(
        self,
        user_id: str,
        amount: Any,
        *,
        type: str = "admin_adjustment",
        payment_id: str | None = None,
        description: str | None = None,
        created_by: str | None = None,
        metadata: dict[str, Any] | None = None,
        package_id: int | None = None,
        charge_id: str | None = None,
        amount_usd: Decimal | None = None,
        stripe_event_id: str | None = None,
    ) -> TxResult:
        if type not in ADD_TYPES:
            raise errors.InvalidTransactionType(
                f"transaction type {type!r} cannot add credits; use {', '.join(ADD_TYPES)}"
            )
        row = await self.db.fetchone(
            "add_credits",
            {
                "user_id": check_user_id(user_id),
                "amount": parse_amount(amount),
                "type": type,
                "payment_id": check_text("payment id", payment_id, MAX_ID_LENGTH),
                "description": check_text("description", description, MAX_DESCRIPTION_LENGTH),
                "created_by": check_text("created_by", created_by, MAX_ID_LENGTH),
                "metadata": _jsonb(metadata),
                "package_id": package_id,
                "charge_id": check_text("charge id", charge_id, MAX_ID_LENGTH),
                "amount_usd": amount_usd,
                "stripe_event_id": check_text("event id", stripe_event_id, MAX_ID_LENGTH),
            },
        )
        result = _tx(row)
        self._notify("added", type=type, amount=amount, amount_usd=amount_usd, result=result)
        return result

    async def debit(
        self,
        user_id: str,
        amount: Any,
        *,
        type: str = "admin_adjustment",
        request_id: str | None = None,
        description: str | None = None,
        created_by: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TxResult:
        if type not in DEBIT_TYPES:
            raise errors.InvalidTransactionType(
                f"transaction type {type!r} cannot debit credits; use {', '.join(DEBIT_TYPES)}"
            )
        row = await self.db.fetchone(
            "debit_credits",
            {
                "user_id": check_user_id(user_id),
                "amount": parse_amount(amount),
                "type": type,
                "request_id": check_text("request id", request_id, MAX_ID_LENGTH),
                "description": check_text("description", description, MAX_DESCRIPTION_LENGTH),
                "created_by": check_text("created_by", created_by, MAX_ID_LENGTH),
                "metadata": _jsonb(metadata),
            },
        )
        result = _tx(row)
        self._notify("debited", type=type, amount=amount, result=result)
        return result

    async def adjust(
        self, user_id: str, amount: Any, *, created_by: str, description: str | None = None,
        idempotency_key: str | None = None,
    ) -> TxResult:
        """An admin grant (positive) or correction (negative), written as admin_adjustment."""
        negative, value = parse_signed_amount(amount)
        if negative:
            return await self.debit(
                user_id, value, type="admin_adjustment", request_id=idempotency_key,
                description=description, created_by=created_by,
            )
        return await self.add_credits(
            user_id, value, type="admin_adjustment", payment_id=idempotency_key,
            description=description, created_by=created_by,
        )

    async def refund_purchase(
        self,
        payment_intent_id: str,
        target_credits: Decimal,
        *,
        charge_id: str | None,
        stripe_event_id: str | None,
        amount_usd: Decimal | None,
    ) -> tuple[TxResult, Decimal]:
        row = await self.db.fetchone(
            "refund_purchase",
            {
                "payment_intent_id": check_text("payment intent", payment_intent_id, MAX_ID_LENGTH),
                "target_credits": parse_amount(target_credits, allow_zero=True),
                "charge_id": check_text("charge id", charge_id, MAX_ID_LENGTH),
                "stripe_event_id": check_text("event id", stripe_event_id, MAX_ID_LENGTH),
                "amount_usd": amount_usd,
            },
        )
        assert row is not None
        result, refunded = _tx(row), row["refunded"]
        self._notify("refunded", amount=refunded, amount_usd=amount_usd, result=result)
        return result, refunded

    async def account(self, user_id: str) -> Account:
        row = await self.db.fetchone("account", {"user_id": check_user_id(user_id)})
        if row is None:
            raise errors.AccountNotFound(
                f"no credit account for user {user_id}; grant credits first: "
                "litellm-credits grant USER AMOUNT"
            )
        return Account(
            user_id=row["user_id"],
            balance=row["balance"],
            held=row["held"],
            tier=row["tier"],
            power_level=row["power_level"],
            level_override_allowed=row["level_override_allowed"],
            monthly_quota=row["monthly_quota"],
            quota_used_pct=row["quota_used_pct"],
            low_balance_threshold=row["low_balance_threshold"],
        )

    async def transactions(
        self,
        user_id: str,
        *,
        limit: int = 50,
        offset: int = 0,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= 1000 or offset < 0:
            raise errors.InvalidInput("limit must be 1 to 1000 and offset 0 or more")
        return await self.db.fetchall(
            "transactions",
            {"user_id": check_user_id(user_id), "limit": limit, "offset": offset,
             "since": since, "until": until},
        )

    async def reserve(
        self,
        user_id: str,
        request_id: str,
        base_amount: Decimal,
        level: str | None,
        ttl_seconds: int,
    ) -> Reservation:
        """Place (or find) the hold for one request; see :mod:`litellm_credits.holds`."""
        # Checked here, not only in SQL: reserves share a statement, so bad text
        # must be refused before it could fail the neighbours' JSON.
        request = HoldRequest(
            user_id=check_user_id(user_id),
            request_id=check_request_id(request_id),
            base_amount=_hold_base(base_amount),
            level=None if level is None else check_level(level),
            ttl_seconds=ttl_seconds,
        )
        row = await self.holds.place(request)
        keys = tuple(
            ByokKeyRef(
                id=int(k["id"]), provider=k["provider"], key_name=k["key_name"],
                is_default=bool(k["is_default"]), fallback=bool(k["fallback"]),
                key_id=k["key_id"], blob=_b64(k["blob"]),
            )
            for k in (row["byok_keys"] or [])
        )
        return Reservation(
            status=row["status"],
            power_level=row["power_level"],
            cost_multiplier=row["cost_multiplier"],
            hold_amount=row["hold_amount"],
            balance=row["balance"],
            held=row["held"],
            tier=row["tier"],
            monthly_quota=row["monthly_quota"],
            quota_used=row["quota_used"],
            byok_keys=keys,
        )

    async def release(self, request_id: str) -> bool:
        row = await self.db.fetchone("release_hold", {"request_id": request_id})
        released = bool(row and row["released"])
        if released:
            self._notify("released", request_id=request_id)
        return released

    async def sweep_expired_holds(self) -> int:
        row = await self.db.fetchone("sweep_expired_holds")
        return int(row["expired"]) if row else 0

    async def settle(
        self, records: Sequence[dict[str, Any]], deadline: float | None = None
    ) -> list[dict[str, Any]]:
        """Settle a batch of usage records in one transaction (see settle_usage in SQL)."""
        payload = json.dumps(list(records), default=json_default)
        # One statement, one transaction, one round trip (Database.fetchall).
        # Abandoning a slow batch is safe: the writer spools it, and if the
        # abandoned transaction commits after all, the replay is a no-op (I1).
        return await self.db.fetchall("settle_usage", {"records": payload}, deadline)

    async def set_power_level(self, user_id: str, level: str, *, by: str) -> None:
        row = await self.db.fetchone(
            "set_power_level",
            {"user_id": check_user_id(user_id), "level": check_level(level), "by": by},
        )
        if row is None:
            raise errors.AccountNotFound(f"no credit account for user {user_id}")

    async def set_tier(
        self,
        user_id: str,
        tier: str,
        *,
        monthly_quota: Decimal | None,
        low_balance_threshold: Decimal | None,
        by: str,
    ) -> None:
        row = await self.db.fetchone(
            "set_tier",
            {"user_id": check_user_id(user_id), "tier": tier, "monthly_quota": monthly_quota,
             "low_balance_threshold": low_balance_threshold, "by": by},
        )
        if row is None:
            raise errors.AccountNotFound(f"no credit account for user {user_id}")


def _hold_base(value: Any) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise errors.InvalidAmount(f"hold amount must be a finite, non-negative Decimal, "
                                   f"got {str(value)[:40]!r}")
    return value


def _b64(text: str) -> bytes:
    return base64.b64decode(text)

