"""Buying credits end to end: the real proxy, the Stripe stand-in, signed webhooks, refunds.

One proxy for the module. Webhook events are signed with the test secret exactly as Stripe
signs them (``t=<ts>,v1=HMAC-SHA256``) and posted to ``/credits/stripe/webhook`` as raw bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest

from devtools.stripe_stub import (
    StripeStub,
    completed_event,
    make_event,
    refunded_event,
    sign_event,
    sign_payload,
)

pytestmark = pytest.mark.e2e

Sql = Callable[..., list[tuple[Any, ...]]]
WEBHOOK = "/credits/stripe/webhook"
WEBHOOK_SECRET = ""  # set from the stand-in's configuration by the fixture below


@pytest.fixture(scope="module", autouse=True)
def _webhook_secret(api_stripe: StripeStub) -> None:
    global WEBHOOK_SECRET
    assert api_stripe.webhook_secret
    WEBHOOK_SECRET = api_stripe.webhook_secret


def post_event(api: Any, event: dict[str, Any], *, secret: str | None = None,
               timestamp: int | None = None) -> httpx.Response:
    body, signature = sign_event(event, secret or WEBHOOK_SECRET, timestamp)
    return api.post(WEBHOOK, key=None, content=body,
                    headers={"Stripe-Signature": signature, "Content-Type": "application/json"})


def post_raw(api: Any, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return api.post(WEBHOOK, key=None, content=body, headers=headers)


def balance(api: Any, user: str) -> Decimal:
    r = api.get("/credits/balance", params={"user_id": user})
    if r.status_code == 404:
        return Decimal(0)
    assert r.status_code == 200, r.text
    return Decimal(r.json()["balance"])


def tx_count(sql: Sql, user: str | None = None) -> int:
    if user is None:
        return int(sql("SELECT count(*) FROM credit_transactions")[0][0])
    return int(sql("SELECT count(*) FROM credit_transactions WHERE user_id = %s", user)[0][0])


def buy(api: Any, stub: StripeStub, user: str, package_id: int = 1,
        nonce: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"package_id": package_id}
    if nonce is not None:
        body["nonce"] = nonce
    r = api.post("/credits/purchase", key=api.user(user), json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# --- the full path ------------------------------------------------------------------------------


def test_full_purchase_path_credits_once(api: Any, api_stripe: StripeStub, api_sql: Sql) -> None:
    checkout = buy(api, api_stripe, "pat", package_id=2)
    assert checkout["checkout_url"].startswith(api_stripe.base_url + "/c/pay/")
    assert checkout["credits"] == "500.00000000" and checkout["price_usd"] == "45.00"
    session = api_stripe.session(checkout["session_id"])
    assert session["metadata"] == {"user_id": "pat", "package_id": "2",
                                   "credits": "500.00000000"}
    assert session["amount_total"] == 4500 and session["currency"] == "usd"
    request = api_stripe.checkout_requests()[-1]
    assert request.api_key == api_stripe.api_key
    assert request.idempotency_key and request.idempotency_key.startswith(
        "litellm-credits-checkout-")
    assert tx_count(api_sql, "pat") == 0  # nothing is credited before payment

    # The customer pays on the (stand-in) hosted page; Stripe posts the signed event.
    paid = httpx.post(checkout["checkout_url"], follow_redirects=False)
    assert paid.status_code == 303
    assert api_stripe.deliveries[-1] == ("checkout.session.completed", 200)
    assert balance(api, "pat") == Decimal("500")

    pi = session["payment_intent"]
    rows = api_sql(
        "SELECT transaction_type, amount::text, payment_intent_id, charge_id, package_id, "
        "amount_usd::text, stripe_event_id IS NOT NULL, created_by FROM credit_transactions "
        "WHERE user_id = 'pat'")
    charge = api_stripe.payment_intent(pi)["latest_charge"]
    assert rows == [("purchase", "500.00000000", pi, charge, 2, "45.00", True, "stripe")]

    # Stripe redelivers the same event, and sends another one for the same payment.
    same = completed_event(api_stripe.session(checkout["session_id"]))
    r1 = post_event(api, same)
    r2 = post_event(api, same)
    other = dict(same, id="evt_test_second", type="checkout.session.async_payment_succeeded")
    r3 = post_event(api, other)
    for r in (r1, r2, r3):
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "duplicate"
    assert balance(api, "pat") == Decimal("500")
    assert tx_count(api_sql, "pat") == 1

    # The user sees it.
    mine = api.get("/credits/transactions", key=api.user("pat")).json()["transactions"]
    assert [(t["transaction_type"], t["amount"], t["package_id"]) for t in mine] == [
        ("purchase", "500.00000000", 2)]


def test_same_event_posted_twice_raises_balance_once(api: Any, api_stripe: StripeStub) -> None:
    """The issue's own check: sign one completed event, post it twice."""
    checkout = buy(api, api_stripe, "quinn")
    session = api_stripe.complete_session(checkout["session_id"])
    event = completed_event(session)
    body, signature = sign_event(event, WEBHOOK_SECRET)
    first = post_raw(api, body, signature)
    second = post_raw(api, body, signature)
    assert first.status_code == 200 and first.json()["status"] == "credited"
    assert first.json()["credits"] == "100.00000000"
    assert second.status_code == 200 and second.json()["status"] == "duplicate"
    assert balance(api, "quinn") == Decimal("100")


def test_concurrent_deliveries_credit_once(
    api: Any, api_stripe: StripeStub, api_sql: Sql
) -> None:
    checkout = buy(api, api_stripe, "olga")
    event = completed_event(api_stripe.complete_session(checkout["session_id"]))
    body, signature = sign_event(event, WEBHOOK_SECRET)
    url = api.proxy.url(WEBHOOK)
    headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}

    def deliver(_: int) -> int:
        return httpx.post(url, content=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(deliver, range(8)))
    assert statuses == [200] * 8
    assert balance(api, "olga") == Decimal("100")
    assert tx_count(api_sql, "olga") == 1


def test_purchase_nonce_makes_checkout_idempotent(api: Any, api_stripe: StripeStub) -> None:
    a = buy(api, api_stripe, "rita", nonce="retry-1")
    b = buy(api, api_stripe, "rita", nonce="retry-1")
    c = buy(api, api_stripe, "rita", nonce="retry-2")
    d = buy(api, api_stripe, "rita")
    e = buy(api, api_stripe, "rita")
    assert a["session_id"] == b["session_id"]
    assert len({a["session_id"], c["session_id"], d["session_id"], e["session_id"]}) == 4
    assert api_stripe.checkout_requests()[-4].replayed


def test_admin_can_start_a_checkout_for_a_user(api: Any, api_stripe: StripeStub) -> None:
    r = api.post("/credits/purchase", params={"user_id": "sam"}, json={"package_id": 1})
    assert r.status_code == 200, r.text
    assert api_stripe.session(r.json()["session_id"])["metadata"]["user_id"] == "sam"


def test_stripe_failure_is_502_and_writes_nothing(
    api: Any, api_stripe: StripeStub, api_sql: Sql
) -> None:
    before = tx_count(api_sql)
    api_stripe.fail_next(400, "Your account cannot currently make live charges.",
                         "invalid_request_error")
    r = api.post("/credits/purchase", key=api.user("tom"), json={"package_id": 1})
    assert r.status_code == 502, r.text
    assert error_of(r)["code"] == "payment_provider_error"
    assert tx_count(api_sql) == before


# --- refunds -------------------------------------------------------------------------------------


def paid_purchase(api: Any, stub: StripeStub, user: str, package_id: int) -> str:
    checkout = buy(api, stub, user, package_id=package_id)
    session = stub.complete_session(checkout["session_id"])
    r = post_event(api, completed_event(session))
    assert r.status_code == 200 and r.json()["status"] == "credited", r.text
    return str(session["payment_intent"])


def test_partial_then_full_refund_takes_back_proportional_credits(
    api: Any, api_stripe: StripeStub, api_sql: Sql
) -> None:
    pi = paid_purchase(api, api_stripe, "uma", package_id=3)  # 1000 credits for $80.00
    assert balance(api, "uma") == Decimal("1000")

    partial = api_stripe.refund(pi, 2000)  # $20 of $80: a quarter
    r = post_event(api, partial)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "refunded" and r.json()["credits_taken_back"] == "250.00000000"
    assert balance(api, "uma") == Decimal("750")
    # Replayed: nothing more.
    assert post_event(api, partial).json()["status"] == "duplicate"
    assert post_event(api, dict(partial, id="evt_test_again")).json()["status"] == "duplicate"
    assert balance(api, "uma") == Decimal("750")

    # The user spends most of the rest, then the payment is refunded in full.
    r = api.post("/credits/admin/grant", json={"user_id": "uma", "amount": "-700"})
    assert r.status_code == 200, r.text
    full = api_stripe.refund(pi)  # the remaining $60
    r = post_event(api, full)
    assert r.json()["credits_taken_back"] == "750.00000000"
    assert r.json()["credits_taken_back_total"] == "1000.00000000"
    assert balance(api, "uma") == Decimal("-700")  # negative: blocked until topped up
    assert post_event(api, full).json()["status"] == "duplicate"
    # A late, out-of-order copy of the partial refund moves nothing either.
    assert post_event(api, partial).json()["status"] == "duplicate"
    assert balance(api, "uma") == Decimal("-700")

    rows = api_sql(
        "SELECT amount::text, amount_usd::text, charge_id IS NOT NULL, payment_intent_id "
        "FROM credit_transactions WHERE user_id = 'uma' AND transaction_type = 'refund' "
        "ORDER BY id")
    assert rows == [("-250.00000000", "20.00", True, pi), ("-750.00000000", "60.00", True, pi)]
    chain = api_sql("SELECT sum(amount)::text FROM credit_transactions WHERE user_id = 'uma'")
    assert chain == [("-700.00000000",)]


def test_odd_partial_refund_rounds_exactly(api: Any, api_stripe: StripeStub) -> None:
    pi = paid_purchase(api, api_stripe, "vic", package_id=2)  # 500 credits for $45.00
    r = post_event(api, api_stripe.refund(pi, 1))  # one cent
    # 500 * 1 / 4500 = 0.111111111... -> 8 places, half-even
    assert r.json()["credits_taken_back"] == "0.11111111"
    assert balance(api, "vic") == Decimal("499.88888889")


def test_refund_for_unknown_payment_is_acknowledged(api: Any, api_sql: Sql) -> None:
    before = tx_count(api_sql)
    r = post_event(api, refunded_event("pi_test_not_ours", "ch_test_x", 1000, 1000))
    assert r.status_code == 200
    assert r.json()["status"] == "ignored"
    assert tx_count(api_sql) == before


# --- what the webhook refuses ---------------------------------------------------------------------


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert "error" in body, body
    return body["error"]  # type: ignore[no-any-return]


def test_bad_signatures_are_400_and_write_nothing(
    api: Any, api_stripe: StripeStub, api_sql: Sql
) -> None:
    checkout = buy(api, api_stripe, "walt")
    event = completed_event(api_stripe.complete_session(checkout["session_id"]))
    before = tx_count(api_sql)
    body, good = sign_event(event, WEBHOOK_SECRET)

    wrong_secret = post_event(api, event, secret="whsec_wrong")
    stale = post_event(api, event, timestamp=int(time.time()) - 3600)
    future = post_event(api, event, timestamp=int(time.time()) + 3600)
    missing = post_raw(api, body, None)
    garbage = post_raw(api, body, "nonsense")
    tampered = post_raw(api, body.replace(b'"walt"', b'"mallory"'), good)
    tampered_credits = post_raw(
        api, body.replace(b'"100.00000000"', b'"99999.00000000"'), good)
    for r in (wrong_secret, stale, future, missing, garbage, tampered, tampered_credits):
        assert r.status_code == 400, r.text
        assert error_of(r)["code"] == "bad_webhook_signature"
    assert "tolerance" in error_of(stale)["message"]
    assert "missing" in error_of(missing)["message"]
    assert tx_count(api_sql) == before
    assert balance(api, "walt") == 0 and balance(api, "mallory") == 0

    # The genuine event still works afterwards.
    assert post_raw(api, body, good).json()["status"] == "credited"
    assert balance(api, "walt") == Decimal("100")


def test_unknown_and_foreign_events_are_acknowledged(api: Any, api_sql: Sql) -> None:
    before = tx_count(api_sql)
    r = post_event(api, make_event("customer.created", {"id": "cus_1", "object": "customer"}))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    foreign = completed_event({"id": "cs_test_foreign", "object": "checkout.session",
                               "amount_total": 500, "currency": "usd", "metadata": {},
                               "payment_intent": "pi_test_foreign"})
    r = post_event(api, foreign)
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert tx_count(api_sql) == before


def test_unpaid_then_async_success(api: Any, api_stripe: StripeStub, api_sql: Sql) -> None:
    checkout = buy(api, api_stripe, "xena")
    unpaid = api_stripe.complete_session(checkout["session_id"], paid=False)
    r = post_event(api, completed_event(unpaid, paid=False))
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert tx_count(api_sql, "xena") == 0
    paid = completed_event(api_stripe.complete_session(checkout["session_id"]))
    paid["type"] = "checkout.session.async_payment_succeeded"
    r = post_event(api, paid)
    assert r.json()["status"] == "credited"
    assert balance(api, "xena") == Decimal("100")


def _forged_session(user: str, package_id: str, credits: str, cents: int,
                    currency: str = "usd") -> dict[str, Any]:
    """A session as if made by something else on the same Stripe account (signed for real)."""
    sid = f"cs_test_{user}_{package_id}_{cents}"
    return {"id": sid, "object": "checkout.session", "amount_total": cents,
            "currency": currency, "payment_intent": f"pi_{sid}",
            "metadata": {"user_id": user, "package_id": package_id, "credits": credits}}


def test_credits_come_from_our_package_row(api: Any, api_sql: Sql) -> None:
    # Metadata claims far more credits than package 1 gives: our row wins.
    r = post_event(api, completed_event(_forged_session("yan", "1", "1000000", 1000)))
    assert r.json()["status"] == "credited" and r.json()["credits"] == "100.00000000"
    # Paid less than the package's price: the proportional share, rounded down.
    r = post_event(api, completed_event(_forged_session("yan", "1", "100", 333)))
    assert r.json()["credits"] == "33.30000000"
    assert balance(api, "yan") == Decimal("133.3")
    meta = api_sql("SELECT metadata FROM credit_transactions WHERE user_id = 'yan' ORDER BY id")
    assert meta[0][0]["metadata_credits"] == "1000000"
    assert meta[1][0]["prorated"] is True


def test_bad_checkout_payloads_are_400_and_write_nothing(api: Any, api_sql: Sql) -> None:
    before = tx_count(api_sql)
    cases = [
        _forged_session("zed", "999999", "100", 1000),      # no such package
        _forged_session("zed", "1", "100", 1000, "eur"),    # not our currency
        _forged_session("zed", "abc", "100", 1000),         # malformed package id
        _forged_session("z" * 300, "1", "100", 1000),       # user id too long
        _forged_session("zed", "1", "-5", 1000),            # malformed credits
    ]
    for session in cases:
        r = post_event(api, completed_event(session))
        assert r.status_code == 400, (session, r.text)
        assert error_of(r)["message"]
    # Valid signature over something that is not an event.
    body = json.dumps({"hello": "world"}).encode()
    r = post_raw(api, body, sign_payload(body, WEBHOOK_SECRET))
    assert r.status_code == 400
    assert tx_count(api_sql) == before
    assert balance(api, "zed") == 0


# --- configuration -----------------------------------------------------------------------


def test_missing_stripe_configuration_names_the_variable() -> None:
    from litellm_credits.billing.purchases import StripeNotConfigured, gateway_from_settings
    from litellm_credits.settings import Settings

    with pytest.raises(StripeNotConfigured) as caught:
        gateway_from_settings(Settings())
    assert caught.value.http_status == 503
    assert "CREDITS_STRIPE_API_KEY" in caught.value.message
    assert "CREDITS_STRIPE_WEBHOOK_SECRET" in caught.value.message
    with pytest.raises(StripeNotConfigured) as caught:
        gateway_from_settings(Settings(stripe_api_key="sk_test_x"))
    assert "CREDITS_STRIPE_WEBHOOK_SECRET" in caught.value.message
    assert "CREDITS_STRIPE_API_KEY" not in caught.value.message
    with pytest.raises(StripeNotConfigured) as caught:
        gateway_from_settings(Settings(stripe_api_key="sk_test_x", stripe_webhook_secret="whsec_x",
                                       stripe_api_base="http://stripe.example.com"))
    assert "api_base" in caught.value.message
    gateway = gateway_from_settings(
        Settings(stripe_api_key="sk_test_x", stripe_webhook_secret="whsec_x"))
    gateway.close()
