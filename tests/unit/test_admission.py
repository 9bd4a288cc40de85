"""Admission against an in-memory ledger: estimate, hold, route, BYOK choice, fail-open.

The fake ledger answers ``reserve`` the way ``credits_reserve`` does (a balance per
user, a multiplier per level, one hold per request id) and records ``release``; the
real one is exercised against PostgreSQL in the integration and fault suites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.admission import Admitter, Refused
from litellm_credits.byok.refs import KeyRowRef
from litellm_credits.context import RequestContext
from litellm_credits.ledger import ByokKeyRef, Reservation
from litellm_credits.pricing import Price
from litellm_credits.routing import Deployment, LevelConfig
from litellm_credits.settings import Settings

D = Decimal
PRICE = Price(D("0.000001"), D("0.000002"))
LEVELS = {
    "eco": LevelConfig("eco", D("0.5"), 10_000, D("0"), ("openai", "anthropic")),
    "balanced": LevelConfig("balanced", D("1"), 10_000, D("0"), ("openai", "anthropic")),
    "precision": LevelConfig("precision", D("2"), 10_000, D("0"), ("anthropic", "openai")),
}
GROUP = [
    Deployment("d-openai", "chat", "openai/m", "openai", None, D("0.9"), PRICE),
    Deployment("d-anthropic", "chat", "anthropic/m", "anthropic", None, D("0.95"), PRICE),
]


@dataclass
class Account:
    balance: Decimal
    level: str = "balanced"
    keys: tuple[ByokKeyRef, ...] = ()


@dataclass
class FakeLedger:
    """reserve/release over in-memory accounts, like the SQL functions, no database."""

    accounts: dict[str, Account] = field(default_factory=dict)
    holds: dict[str, tuple[str, Decimal]] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)
    down: bool = False

    async def reserve(self, user_id: str, request_id: str, base_amount: Decimal,
                      level: str | None, ttl_seconds: int) -> Reservation:
        if self.down:
            raise errors.DatabaseUnavailable("the database is down")
        account = self.accounts.get(user_id)
        if account is None:
            raise errors.AccountNotFound(f"no credit account for user {user_id}")
        level = level or account.level
        multiplier = LEVELS[level].multiplier
        amount = (base_amount * multiplier).quantize(D("0.00000001"))
        held = sum((a for u, a in self.holds.values() if u == user_id), D(0))
        if request_id in self.holds:
            status = "exists"
        elif account.balance - held < amount:
            status = "insufficient"
        else:
            status = "placed"
            self.holds[request_id] = (user_id, amount)
            held += amount
        return Reservation(status, level, multiplier, amount, account.balance, held, "free",
                           None, D(0), account.keys)

    async def release(self, request_id: str) -> bool:
        self.released.append(request_id)
        return self.holds.pop(request_id, None) is not None


@dataclass
class FakeSnapshot:
    levels: dict[str, LevelConfig] = field(default_factory=lambda: dict(LEVELS))
    credits_per_usd: Decimal = D("10")
    latency_ms: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class FakeRuntime:
    ledger: FakeLedger
    settings: Settings = field(default_factory=lambda: Settings(database_url="postgresql://x"))
    snapshot: FakeSnapshot = field(default_factory=FakeSnapshot)
    catalog: dict[str, list[Deployment]] = field(default_factory=lambda: {"chat": GROUP})

    def group(self, model_group: str) -> list[Deployment]:
        return self.catalog.get(model_group, [])


class FakeVault:
    def decrypt(self, blob: bytes, key_id: str, ref: KeyRowRef) -> str:
        return f"plain:{ref.user_id}:{ref.provider}:{ref.key_name}:{blob.decode()}"


def key(id: int, provider: str, name: str, *, default: bool = True,
        fallback: bool = False) -> ByokKeyRef:
    return ByokKeyRef(id, provider, name, default, fallback, "k1", f"blob{id}".encode())


def admitter(ledger: FakeLedger, **settings: Any) -> tuple[Admitter, FakeRuntime]:
    rt = FakeRuntime(ledger, Settings(database_url="postgresql://x", **settings))
    return Admitter(rt, FakeVault), rt  # type: ignore[arg-type]


def request(user: str = "ann", rid: str = "req_1", model: str = "chat",
            **metadata: Any) -> tuple[dict[str, Any], RequestContext]:
    data = {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100, "metadata": metadata}
    return data, RequestContext(request_id=rid, user_id=user, model_group=model)


async def test_admits_with_a_hold_a_route_and_a_typed_context() -> None:
    ledger = FakeLedger({"ann": Account(D("10"))})
    adm, _ = admitter(ledger)
    data, ctx = request()
    admission = await adm.admit(data, ctx)
    c = admission.context
    assert c.power_level == "balanced" and c.multiplier == D("1")
    assert isinstance(c.hold, Decimal) and c.hold > 0 and c.admitted
    assert ledger.holds["req_1"] == ("ann", c.hold)
    assert c.credits_per_usd == D("10") and c.route == ("d-openai", "d-anthropic")
    assert c.route_rule is not None and c.available_after == D("10") - c.hold
    assert not c.fail_open and admission.keys == {} and admission.num_retries == 1


async def test_the_estimate_is_the_worst_case_over_the_group() -> None:
    ledger = FakeLedger({"ann": Account(D("10"), level="precision")})
    adm, rt = admitter(ledger)
    rt.catalog["chat"] = [GROUP[0], Deployment("d-dear", "chat", "anthropic/big", "anthropic",
                                               None, D("1"), Price(D("0.00001"), D("0.00002")))]
    data, ctx = request()
    c = (await adm.admit(data, ctx)).context
    # 100 completion tokens at 2e-5 USD, 10 credits per USD, x2 for precision, plus the prompt.
    assert c.hold is not None and c.hold > D("0.04")


@pytest.mark.parametrize(("model", "metadata", "error"), [
    ("nope", {}, errors.UnknownModel),
    ("", {}, errors.UnknownModel),
    ("chat", {"power_level": "turbo"}, errors.InvalidPowerLevel),
])
async def test_bad_requests_are_refused_before_any_hold(
        model: str, metadata: dict[str, Any], error: type[errors.CreditsError]) -> None:
    ledger = FakeLedger({"ann": Account(D("10"))})
    adm, _ = admitter(ledger)
    data, ctx = request(model=model, **metadata)
    with pytest.raises(Refused) as refused:
        await adm.admit(data, ctx)
    assert isinstance(refused.value.error, error)
    assert ledger.holds == {} and refused.value.context == ctx


async def test_an_unpriced_group_is_refused() -> None:
    adm, rt = admitter(FakeLedger({"ann": Account(D("10"))}))
    rt.catalog["free"] = [Deployment("d", "free", "x/y", "openai", None, D("1"), None)]
    with pytest.raises(Refused) as refused:
        await adm.admit(*request(model="free"))
    assert isinstance(refused.value.error, errors.UnpricedModel)


async def test_insufficient_credits_names_the_numbers_and_keeps_the_level() -> None:
    ledger = FakeLedger({"ann": Account(D("0.00000001"), level="eco")})
    adm, _ = admitter(ledger)
    with pytest.raises(Refused) as refused:
        await adm.admit(*request())
    err = refused.value.error
    assert isinstance(err, errors.InsufficientCredits)
    assert err.details["balance"] == "0.00000001" and "top_up" in err.details
    assert refused.value.context.power_level == "eco" and not refused.value.context.admitted
    assert ledger.released == []


async def test_no_account_is_a_clear_402() -> None:
    adm, _ = admitter(FakeLedger())
    with pytest.raises(Refused) as refused:
        await adm.admit(*request(user="ghost"))
    assert isinstance(refused.value.error, errors.AccountNotFound)
    assert refused.value.error.details["balance"] == "0"


async def test_a_refusal_after_the_hold_releases_it() -> None:
    ledger = FakeLedger({"ann": Account(D("10"))})
    adm, rt = admitter(ledger)
    del rt.snapshot.levels["balanced"]  # not loaded yet: no route
    with pytest.raises(Refused) as refused:
        await adm.admit(*request())
    assert isinstance(refused.value.error, errors.NoRoute)
    assert ledger.released == ["req_1"] and ledger.holds == {}


async def test_the_same_request_twice_holds_once() -> None:
    ledger = FakeLedger({"ann": Account(D("10"))})
    adm, _ = admitter(ledger)
    first = await adm.admit(*request())
    second = await adm.admit(*request())
    assert len(ledger.holds) == 1 and first.context.hold == second.context.hold


async def test_byok_default_key_named_key_and_fallback_retries() -> None:
    keys = (key(1, "openai", "main", fallback=True), key(2, "openai", "spare", default=False),
            key(3, "mistral", "other"))
    ledger = FakeLedger({"ann": Account(D("10"), keys=keys)})
    adm, _ = admitter(ledger)
    admission = await adm.admit(*request())
    assert admission.context.byok == {"openai": 1}
    assert admission.keys["openai"].plaintext == "plain:ann:openai:main:blob1"
    assert "plain" not in repr(admission.keys["openai"])  # never in a log line
    assert admission.context.fallbacks == {1: True, 2: False, 3: False}
    assert admission.num_retries == 2  # one more deployment, one platform-key retry
    assert "plain" not in str(admission.context.to_metadata())

    named = await adm.admit(*request(rid="req_2", byok_key_name="spare"))
    assert named.context.byok == {"openai": 2}


async def test_an_unknown_byok_key_name_is_refused_and_the_hold_released() -> None:
    ledger = FakeLedger({"ann": Account(D("10"), keys=(key(1, "openai", "main"),))})
    adm, _ = admitter(ledger)
    with pytest.raises(Refused) as refused:
        await adm.admit(*request(byok_key_name="missing"))
    assert isinstance(refused.value.error, errors.InvalidInput)
    assert ledger.released == ["req_1"]


async def test_database_down_fails_closed_by_default() -> None:
    ledger = FakeLedger({"ann": Account(D("10"))})
    adm, _ = admitter(ledger)
    await adm.admit(*request())
    ledger.down = True
    with pytest.raises(Refused) as refused:
        await adm.admit(*request(rid="req_2"))
    assert isinstance(refused.value.error, errors.DatabaseUnavailable)


async def test_fail_open_serves_a_seen_user_up_to_the_limit_without_a_ledger_row() -> None:
    ledger = FakeLedger({"ann": Account(D("10"))})
    adm, _ = admitter(ledger, fail_mode="open", fail_open_limit_credits=D("0.01"))
    seen = await adm.admit(*request())
    ledger.down = True
    served = await adm.admit(*request(rid="req_2"))
    c = served.context
    assert c.fail_open and c.power_level == "balanced" and c.hold == seen.context.hold
    assert c.available_after == seen.context.available_after - c.hold  # type: ignore[operator]
    assert "req_2" not in ledger.holds
    for n in range(3, 50):  # the limit is reached after a few requests
        try:
            await adm.admit(*request(rid=f"req_{n}"))
        except Refused as stop:
            assert isinstance(stop.error, errors.DatabaseUnavailable)
            break
    else:
        pytest.fail("fail-open never reached its limit")
    with pytest.raises(Refused):  # never seen: no balance to go on
        await adm.admit(*request(user="bob", rid="req_bob"))
    ledger.down = False  # back: a placed hold resets what was spent open
    await adm.admit(*request(rid="req_back"))
    ledger.down = True
    assert (await adm.admit(*request(rid="req_again"))).context.fail_open
