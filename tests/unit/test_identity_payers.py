"""The payer order of identity.py: team wallets, service keys, the reserved team namespace."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.admission import Refused
from litellm_credits.context import RequestContext
from litellm_credits.identity import (
    Payer,
    check_person_id,
    check_team_id,
    reserve,
    resolve,
    team_account,
)
from litellm_credits.settlement.build import failure_record
from tests.unit.test_admission import Account, admitter, request
from tests.unit.test_admission import FakeLedger as AdmissionLedger

FLAG = "credits_bill_end_users"


@dataclass
class Auth:
    user_id: str | None = None
    user_role: object = "internal_user"
    end_user_id: str | None = None
    team_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    team_metadata: dict[str, Any] | None = None
    token: str | None = None
    api_key: str | None = None
    key_alias: str | None = None


def test_a_user_key_bills_its_user_and_records_the_key_hash_not_the_key() -> None:
    who = resolve(Auth(user_id="alice", api_key="sk-secret", key_alias="laptop"), {})
    assert (who.account, who.rule, who.fallback) == ("alice", "user", None)
    assert who.describe("alice") == {
        "rule": "user", "member": "alice", "team_id": None,
        "key_hash": hashlib.sha256(b"sk-secret").hexdigest(), "key_alias": "laptop"}
    assert "sk-secret" not in str(who)


def test_litellms_stored_hash_is_used_as_is() -> None:
    token = "a" * 64
    assert resolve(Auth(user_id="alice", token=token, api_key=token), {}).key_hash == token


def test_a_team_key_bills_the_team_first_then_its_member() -> None:
    who = resolve(Auth(user_id="alice", team_id="acme"), {})
    assert (who.account, who.rule, who.fallback) == ("team:acme", "team", "alice")
    assert who.describe("alice")["rule"] == "member"
    assert resolve(Auth(team_id="acme"), {}).fallback is None


def test_stored_flag_on_key_or_team_bills_the_named_end_user() -> None:
    on_key = Auth(user_id="saas", metadata={FLAG: True}, end_user_id="cust")
    assert (resolve(on_key, {}).account, resolve(on_key, {}).rule) == ("cust", "end_user")
    on_team = Auth(team_id="t", team_metadata={FLAG: True})
    assert resolve(on_team, {"user": "cust2"}).account == "cust2"
    assert resolve(Auth(user_id="saas", metadata={FLAG: True}), {}).account == "saas"


def test_a_forged_flag_in_the_request_is_ignored() -> None:
    auth = Auth(user_id="alice", end_user_id="bob")
    data = {"user": "bob", "metadata": {FLAG: True}, "litellm_metadata": {FLAG: True}}
    assert resolve(auth, data).account == "alice"
    assert resolve(Auth(user_id="alice", metadata={FLAG: False}, end_user_id="bob"),
                   {}).account == "alice"


@pytest.mark.parametrize("value", ["true", 1, "yes"])
def test_a_stored_flag_that_is_not_a_boolean_is_refused(value: object) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        resolve(Auth(user_id="saas", metadata={FLAG: value}, end_user_id="c"), {})
    assert info.value.http_status == 400


@pytest.mark.parametrize("auth", [
    Auth(user_id="team:acme"),
    Auth(user_id="admin", user_role="proxy_admin", end_user_id="team:acme"),
    Auth(user_id="saas", metadata={FLAG: True}, end_user_id="team:acme"),
])
def test_nobody_but_a_team_key_reaches_the_team_namespace(auth: Auth) -> None:
    with pytest.raises(errors.InvalidUserId) as info:
        resolve(auth, {})
    assert "reserved for team accounts" in info.value.message


@pytest.mark.parametrize("bad", ["", "x" * 251, "acme\x00", "acme\n", "acme\x85"])
def test_team_ids_are_validated_like_user_ids(bad: str) -> None:
    with pytest.raises(errors.InvalidUserId):
        check_team_id(bad)
    with pytest.raises(errors.InvalidUserId):
        resolve(Auth(user_id="alice", team_id=bad or "\x01"), {})


def test_namespace_helpers() -> None:
    assert team_account("acme") == "team:acme"
    assert check_person_id("alice") == "alice"
    assert len(team_account("x" * 250)) == 255


def test_no_payer_is_401() -> None:
    with pytest.raises(errors.NotAuthenticated):
        resolve(Auth(user_id="default_user_id", user_role="proxy_admin"), {})
    with pytest.raises(errors.NotAuthenticated):
        resolve(Auth(end_user_id="bob"), {"user": "bob"})


class FakeLedger:
    """Only what reserve() calls; accounts that exist answer, others raise AccountNotFound."""

    def __init__(self, accounts: set[str]) -> None:
        self.accounts = accounts
        self.calls: list[str] = []

    async def reserve(self, account: str, *args: Any) -> str:
        self.calls.append(account)
        if account not in self.accounts:
            raise errors.AccountNotFound(account)
        return f"held:{account}"


@pytest.mark.parametrize(("accounts", "billed"), [
    ({"team:acme", "alice"}, "team:acme"),
    ({"alice"}, "alice"),
])
async def test_reserve_falls_back_to_the_member_only_without_a_wallet(
    accounts: set[str], billed: str,
) -> None:
    ledger = FakeLedger(accounts)
    who = Payer("team:acme", "team", fallback="alice", member="alice", team_id="acme")
    account, held = await reserve(ledger, who, "req", Decimal(1), None, 60)  # type: ignore[arg-type]
    assert (account, held) == (billed, f"held:{billed}")


async def test_reserve_without_fallback_propagates() -> None:
    ledger = FakeLedger(set())
    with pytest.raises(errors.AccountNotFound):
        await reserve(ledger, Payer("team:acme", "team"), "req", Decimal(1), None, 60)  # type: ignore[arg-type]


# --- the payer on the request path: context, admission, the settlement record ---------


def _team_ctx(payer: Payer) -> RequestContext:
    return RequestContext(request_id="req_t", user_id=payer.account, model_group="chat",
                          payer=payer)


def test_the_payer_travels_in_the_request_context() -> None:
    who = Payer("team:acme", "team", fallback="alice", member="alice", team_id="acme",
                key_hash="a" * 64, key_alias="ci")
    ctx = _team_ctx(who)
    entry = ctx.to_metadata()
    assert entry["payer"]["account"] == "team:acme"
    back = RequestContext.from_metadata(entry)
    assert back is not None and back.payer == who
    assert RequestContext.from_metadata(
        RequestContext(request_id="r", user_id="u").to_metadata()).payer is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("accounts", "billed", "rule"), [
    ({"team:acme": "50", "alice": "50"}, "team:acme", "team"),
    ({"alice": "50"}, "alice", "member"),
])
async def test_admission_holds_on_the_team_or_its_member_and_the_record_says_which(
    accounts: dict[str, str], billed: str, rule: str,
) -> None:
    ledger = AdmissionLedger({k: Account(Decimal(v)) for k, v in accounts.items()})
    adm, _ = admitter(ledger)
    data, _ = request()
    who = Payer("team:acme", "team", fallback="alice", member="alice", team_id="acme")
    admission = await adm.admit(data, _team_ctx(who))
    ctx = admission.context
    assert ctx.user_id == billed and ledger.holds["req_t"][0] == billed
    meta = failure_record(ctx, error_type="x", status_code=500, message=None).request_metadata
    assert meta["payer"] == {"rule": rule, "member": "alice", "team_id": "acme",
                             "key_hash": None, "key_alias": None}


async def test_an_empty_team_wallet_refuses_and_does_not_bill_the_member() -> None:
    ledger = AdmissionLedger({"team:acme": Account(Decimal(0)), "alice": Account(Decimal(50))})
    adm, _ = admitter(ledger)
    data, _ = request()
    who = Payer("team:acme", "team", fallback="alice", member="alice", team_id="acme")
    with pytest.raises(Refused) as info:
        await adm.admit(data, _team_ctx(who))
    assert info.value.error.http_status == 402
    assert info.value.context.user_id == "team:acme" and not ledger.holds
