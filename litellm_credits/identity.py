"""Who pays for a request: one documented order over LiteLLM's key, team and end user.

Everything here comes from LiteLLM's ``UserAPIKeyAuth``, i.e. from what LiteLLM stored for the
key and its team (``metadata``, ``team_metadata``, ``team_id``, ``user_id``, ``user_role``),
never from the request body's ``metadata``, which the client writes.

The order (first match wins):

1. **Admin names the payer.** A proxy admin key (the master key, or a virtual key with role
   ``proxy_admin``) that names an end user (``x-litellm-end-user-id`` header or the body's
   ``user``) bills that user.
2. **Service key bills end users.** A key whose stored key metadata, or whose team's stored
   metadata, has ``credits_bill_end_users: true`` and that names an end user bills that user.
   The same flag in the request's metadata is ignored. Every other non-admin key's end user is
   ignored for billing (LiteLLM fills ``end_user_id`` for every key).
3. **Team wallet.** A key of a LiteLLM team (``team_id``) bills the team's account
   ``team:<team_id>`` *when that account exists* (the team has a wallet: an admin granted or a
   team admin bought credits for it). A team without a wallet does not pay: its member pays, as
   in 4. That is decided by the hold itself (:func:`reserve`), at no extra round trip.
4. **The key's user.** A key that belongs to a LiteLLM user bills that user.
5. Otherwise there is no payer: 401, never a free request.

Team accounts live in a reserved namespace of the ledger's ``user_id``: ``team:<team_id>``. A
person's id (a LiteLLM ``user_id``, an end user named by a request, ``?user_id=`` on the API)
may never start with ``team:`` (:func:`check_person_id`), so a user can never be confused with,
or bill, a team. Team ids are validated like user ids (length, control characters, Unicode).

Usage rows record who spent (:meth:`Payer.describe`): the key's hash (LiteLLM's
``user_api_key_hash``, never the key), its alias, the member's user id, the team and the rule.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from litellm_credits import errors

# The team namespace is a value rule (values.py); re-exported for the payer's callers.
from litellm_credits.values import TEAM_PREFIX as TEAM_PREFIX
from litellm_credits.values import check_person_id as check_person_id
from litellm_credits.values import check_team_id as check_team_id
from litellm_credits.values import team_account as team_account

if TYPE_CHECKING:
    from litellm_credits.ledger import Reservation

ADMIN_ROLES = frozenset({"proxy_admin"})
# LiteLLM's placeholder user id for the master key; it names nobody.
PLACEHOLDER_USER_IDS = frozenset({"default_user_id", "litellm-proxy-master-key"})
#: The stored key or team metadata flag that lets a key bill named end users.
BILL_END_USERS = "credits_bill_end_users"
_HASHED = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def role_of(auth: Any) -> str:
    role = getattr(auth, "user_role", None)
    return str(getattr(role, "value", role) or "")


def is_admin(auth: Any) -> bool:
    return role_of(auth) in ADMIN_ROLES


def _clean(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    return None


# --- stored flags and labels -----------------------------------------------------------
# (check_person_id, check_team_id, team_account and TEAM_PREFIX live in values.py, beside
# check_user_id; they are re-exported here.)


def _stored_flag(metadata: Any, where: str) -> bool:
    if not isinstance(metadata, dict) or metadata.get(BILL_END_USERS) is None:
        return False
    value = metadata[BILL_END_USERS]
    if not isinstance(value, bool):
        raise errors.InvalidInput(
            f"the {where} metadata has {BILL_END_USERS}={str(value)[:20]!r}; it must be true "
            "or false (JSON booleans)")
    return value


def bills_end_users(auth: Any) -> bool:
    """The key's or its team's STORED metadata allows billing named end users."""
    return (_stored_flag(getattr(auth, "metadata", None), "key's")
            or _stored_flag(getattr(auth, "team_metadata", None), "team's"))


def key_hash(auth: Any) -> str | None:
    """LiteLLM's hash of the key (``user_api_key_hash``); never the key itself."""
    token = getattr(auth, "token", None)
    if isinstance(token, str) and _HASHED.fullmatch(token):
        return token
    raw = getattr(auth, "api_key", None)
    if isinstance(raw, str) and raw:
        return raw if _HASHED.fullmatch(raw) else hashlib.sha256(raw.encode()).hexdigest()
    return None


def _label(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return _CONTROL.sub("", value)[:128] or None


# --- the payer -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payer:
    """The account to hold on, and who is spending."""

    account: str  # ledger user_id to bill first
    rule: str  # "admin_named" | "end_user" | "team" | "user"
    fallback: str | None = None  # the member, when a team turns out to have no wallet
    member: str | None = None  # the key's own user id
    team_id: str | None = None
    key_hash: str | None = None
    key_alias: str | None = None

    def describe(self, billed: str) -> dict[str, str | None]:
        """For the usage row's ``request_metadata.payer`` (JSON-safe, no secrets)."""
        rule = self.rule if billed == self.account else "member"
        return {"rule": rule, "member": self.member, "team_id": self.team_id,
                "key_hash": self.key_hash, "key_alias": self.key_alias}

    def to_metadata(self) -> dict[str, str | None]:
        """The JSON form carried in the request context (context.RequestContext)."""
        return {"account": self.account, "rule": self.rule, "fallback": self.fallback,
                "member": self.member, "team_id": self.team_id, "key_hash": self.key_hash,
                "key_alias": self.key_alias}

    @classmethod
    def from_metadata(cls, entry: Any) -> Payer | None:
        """The payer in a context entry written by :meth:`to_metadata`; None if absent."""
        if not isinstance(entry, Mapping):
            return None

        def opt(name: str) -> str | None:
            value = entry.get(name)
            return None if value is None else str(value)

        return cls(str(entry["account"]), str(entry["rule"]), fallback=opt("fallback"),
                   member=opt("member"), team_id=opt("team_id"), key_hash=opt("key_hash"),
                   key_alias=opt("key_alias"))


def payer(auth: Any, data: dict[str, Any]) -> str:
    """The account :func:`resolve` bills first."""
    return resolve(auth, data).account


def resolve(auth: Any, data: dict[str, Any]) -> Payer:
    """The payer of a request by the order above, or a CreditsError saying why there is none."""
    own = _clean(getattr(auth, "user_id", None))
    if own in PLACEHOLDER_USER_IDS:
        own = None
    if own is not None:
        own = check_person_id(own, "the key's user id")
    team = _clean(getattr(auth, "team_id", None))
    team = check_team_id(team) if team is not None else None
    who = {"member": own, "team_id": team, "key_hash": key_hash(auth),
           "key_alias": _label(getattr(auth, "key_alias", None))}
    named = _clean(getattr(auth, "end_user_id", None)) or _clean(data.get("user"))
    if named is not None:
        if is_admin(auth):
            return Payer(check_person_id(named, "end-user id"), "admin_named", **who)
        if bills_end_users(auth):
            return Payer(check_person_id(named, "end-user id"), "end_user", **who)
    if team is not None:
        return Payer(team_account(team), "team", fallback=own, **who)
    if own is None:
        raise errors.NotAuthenticated(
            "no payer for this request: use a key that belongs to a user or to a team with "
            "credits, or, with an admin key or a key whose stored metadata has "
            f"{BILL_END_USERS}: true, name the user in the x-litellm-end-user-id header or "
            "the body's 'user' field"
        )
    return Payer(own, "user", **who)


class HoldingLedger(Protocol):
    """The one ledger call :func:`reserve` makes (admission's ledger, or a fake)."""

    async def reserve(self, user_id: str, request_id: str, base_amount: Decimal,
                      level: str | None, ttl_seconds: int) -> Reservation: ...


async def reserve(
    ledger: HoldingLedger, who: Payer, request_id: str, base: Decimal, requested: str | None,
    ttl_seconds: int,
) -> tuple[str, Reservation]:
    """Hold on the payer's account; a team without a wallet falls back to its member.

    Returns the account actually held on. AccountNotFound from the fallback propagates.
    """
    try:
        return who.account, await ledger.reserve(who.account, request_id, base, requested,
                                                 ttl_seconds)
    except errors.AccountNotFound:
        if who.fallback is None:
            raise
    return who.fallback, await ledger.reserve(who.fallback, request_id, base, requested,
                                              ttl_seconds)
