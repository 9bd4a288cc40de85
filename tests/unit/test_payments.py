"""Unit tests for litellm_credits.billing.stripe, .events, .amounts and .signature:
signatures, event mapping, money arithmetic.

No network: gateways here either never send a request or point at a closed loopback port.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import pytest
import stripe
from hypothesis import assume, given
from hypothesis import strategies as st

from devtools.stripe_stub import sign_payload
from litellm_credits.billing.amounts import refund_credits, to_cents
from litellm_credits.billing.events import ChargeRefunded, CheckoutCompleted, IgnoredEvent
from litellm_credits.billing.stripe import PaymentProviderError, StripeGateway
from litellm_credits.errors import PaymentError, WebhookSignatureError

SECRET = "whsec_unit_test_secret"
NOW = 1_800_000_000
# Nothing listens here; a request that slips past validation fails with a provider error.
CLOSED_BASE = "http://127.0.0.1:57099"


def make_gateway(**kwargs: Any) -> StripeGateway:
    options: dict[str, Any] = {
        "api_key": "sk_test_unit",
        "webhook_secret": SECRET,
        "api_base": CLOSED_BASE,
        "clock": lambda: float(NOW),
        "max_network_retries": 0,
        "timeout_seconds": 2.0,
    }
    options.update(kwargs)
    return StripeGateway(**options)


@pytest.fixture
def gateway() -> StripeGateway:
    return make_gateway()


def event(event_type: str, obj: dict[str, Any], event_id: str = "evt_1") -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": NOW,
        "type": event_type,
        "data": {"object": obj},
        "livemode": False,
    }


def session(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "cs_test_1",
        "object": "checkout.session",
        "amount_total": 999,
        "currency": "usd",
        "metadata": {"user_id": "alice", "package_id": "7", "credits": "1000.5"},
        "mode": "payment",
        "payment_intent": "pi_1",
        "payment_status": "paid",
        "status": "complete",
    }
    obj.update(overrides)
    return obj


def charge(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "ch_1",
        "object": "charge",
        "amount": 1000,
        "amount_refunded": 250,
        "currency": "usd",
        "payment_intent": "pi_1",
        "refunded": False,
    }
    obj.update(overrides)
    return obj


def signed(obj: dict[str, Any], *, secret: str = SECRET, ts: int = NOW) -> tuple[bytes, str]:
    body = json.dumps(obj).encode()
    return body, sign_payload(body, secret, ts)


def parse(gateway: StripeGateway, obj: dict[str, Any]) -> Any:
    return gateway.parse_event(*signed(obj))


# --- signatures ---------------------------------------------------------------------------


def test_good_signature_is_accepted(gateway: StripeGateway) -> None:
    result = parse(gateway, event("checkout.session.completed", session()))
    assert isinstance(result, CheckoutCompleted)


def test_sign_payload_matches_stripe_library() -> None:
    body = b'{"id": "evt_1", "note": "caf\xc3\xa9"}'
    ours = sign_payload(body, SECRET, 1234567890)
    theirs = stripe.WebhookSignature.generate_signature_header(
        body.decode("utf-8"), SECRET, 1234567890
    )
    assert ours == theirs
    assert ours.startswith("t=1234567890,v1=")


def test_signature_from_stripe_library_is_accepted(gateway: StripeGateway) -> None:
    body = json.dumps(event("invoice.paid", {"id": "in_1"})).encode()
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET, NOW)
    assert gateway.parse_event(body, header) == IgnoredEvent("evt_1", "invoice.paid")


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_signature(gateway: StripeGateway, header: str | None) -> None:
    body, _ = signed(event("checkout.session.completed", session()))
    with pytest.raises(WebhookSignatureError, match="missing Stripe-Signature"):
        gateway.parse_event(body, header)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "t=abc,v1=deadbeef",
        "v1=deadbeef",
        "t=,v1=deadbeef",
        f"t={NOW},t={NOW},v1=deadbeef",
        f"t=-{NOW},v1=deadbeef",
    ],
)
def test_malformed_header_names_the_timestamp(gateway: StripeGateway, header: str) -> None:
    body, _ = signed(event("checkout.session.completed", session()))
    with pytest.raises(WebhookSignatureError, match="malformed Stripe-Signature header.*'t="):
        gateway.parse_event(body, header)


@pytest.mark.parametrize("header", [f"t={NOW}", f"t={NOW},v0=abc", f"t={NOW},v1="])
def test_header_without_v1_signature(gateway: StripeGateway, header: str) -> None:
    body, _ = signed(event("checkout.session.completed", session()))
    with pytest.raises(WebhookSignatureError, match="no 'v1=' signature"):
        gateway.parse_event(body, header)


def test_wrong_secret(gateway: StripeGateway) -> None:
    body, header = signed(event("checkout.session.completed", session()), secret="whsec_other")
    with pytest.raises(WebhookSignatureError, match="bad webhook signature"):
        gateway.parse_event(body, header)


def test_tampered_body(gateway: StripeGateway) -> None:
    body, header = signed(event("checkout.session.completed", session()))
    tampered = body.replace(b'"credits": "1000.5"', b'"credits": "9000.5"')
    assert tampered != body
    with pytest.raises(WebhookSignatureError, match="bad webhook signature"):
        gateway.parse_event(tampered, header)


def test_signature_over_reserialised_json_fails(gateway: StripeGateway) -> None:
    body, header = signed(event("checkout.session.completed", session()))
    reserialised = json.dumps(json.loads(body), separators=(",", ":")).encode()
    with pytest.raises(WebhookSignatureError):
        gateway.parse_event(reserialised, header)


def test_rotated_secret_any_matching_v1_is_accepted(gateway: StripeGateway) -> None:
    body = json.dumps(event("invoice.paid", {"id": "in_1"})).encode()
    old = sign_payload(body, "whsec_old", NOW).split(",")[1]
    new = sign_payload(body, SECRET, NOW).split(",")[1]
    header = f"t={NOW},{old},{new}"
    assert isinstance(gateway.parse_event(body, header), IgnoredEvent)


def test_stale_signature(gateway: StripeGateway) -> None:
    body, header = signed(event("checkout.session.completed", session()), ts=NOW - 301)
    with pytest.raises(WebhookSignatureError, match=r"outside tolerance: signed 301 s ago"):
        gateway.parse_event(body, header)


def test_signature_at_the_tolerance_edge_is_accepted(gateway: StripeGateway) -> None:
    for ts in (NOW - 300, NOW + 300):
        body, header = signed(event("invoice.paid", {"id": "in_1"}), ts=ts)
        assert isinstance(gateway.parse_event(body, header), IgnoredEvent)


def test_future_signature_is_refused(gateway: StripeGateway) -> None:
    body, header = signed(event("checkout.session.completed", session()), ts=NOW + 301)
    with pytest.raises(WebhookSignatureError, match="in the future"):
        gateway.parse_event(body, header)


def test_tolerance_is_configurable() -> None:
    gw = make_gateway(tolerance_seconds=10)
    body, header = signed(event("invoice.paid", {"id": "in_1"}), ts=NOW - 11)
    with pytest.raises(WebhookSignatureError, match="tolerance is 10 s"):
        gw.parse_event(body, header)


def test_stale_and_wrong_reports_the_signature(gateway: StripeGateway) -> None:
    body, header = signed(event("invoice.paid", {}), secret="whsec_other", ts=NOW - 9999)
    with pytest.raises(WebhookSignatureError, match="bad webhook signature"):
        gateway.parse_event(body, header)


def test_non_utf8_payload_is_a_signature_error(gateway: StripeGateway) -> None:
    body = b'{"id": "\xff"}'
    with pytest.raises(WebhookSignatureError, match="UTF-8"):
        gateway.parse_event(body, sign_payload(body, SECRET, NOW))


def test_payload_must_be_bytes(gateway: StripeGateway) -> None:
    with pytest.raises(PaymentError, match="bytes"):
        gateway.parse_event("{}", sign_payload(b"{}", SECRET, NOW))  # type: ignore[arg-type]


def test_signature_error_is_a_payment_error_with_its_own_code(gateway: StripeGateway) -> None:
    with pytest.raises(PaymentError) as info:
        gateway.parse_event(b"{}", None)
    assert isinstance(info.value, WebhookSignatureError)
    assert info.value.code == "bad_webhook_signature"
    assert info.value.http_status == 400
    assert SECRET not in str(info.value)


# --- payload shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[1, 2", b'{"id": NaN}', b'{"id": Infinity}'],
)
def test_malformed_json_is_a_payment_error(gateway: StripeGateway, body: bytes) -> None:
    with pytest.raises(PaymentError, match="not valid JSON") as info:
        gateway.parse_event(body, sign_payload(body, SECRET, NOW))
    assert not isinstance(info.value, WebhookSignatureError)


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2],
        {"id": "evt_1", "type": "x", "data": {"object": {}}},  # no object=event
        {"object": "v2.core.event", "id": "evt_1", "type": "x"},
        {"object": "event", "type": "charge.refunded", "data": {"object": {}}},  # no id
        {"object": "event", "id": "evt_1", "data": {"object": {}}},  # no type
        {"object": "event", "id": "evt_1", "type": "charge.refunded"},  # no data
        {"object": "event", "id": "evt_1", "type": "x", "data": {"object": "ch_1"}},
    ],
)
def test_not_an_event(gateway: StripeGateway, obj: Any) -> None:
    body = json.dumps(obj).encode()
    with pytest.raises(PaymentError) as info:
        gateway.parse_event(body, sign_payload(body, SECRET, NOW))
    assert not isinstance(info.value, WebhookSignatureError)


# --- checkout mapping ----------------------------------------------------------------------


def test_checkout_completed_mapping(gateway: StripeGateway) -> None:
    result = parse(gateway, event("checkout.session.completed", session(), "evt_42"))
    assert result == CheckoutCompleted(
        event_id="evt_42",
        session_id="cs_test_1",
        payment_intent_id="pi_1",
        charge_id=None,
        user_id="alice",
        package_id=7,
        credits=Decimal("1000.5"),
        amount_total_cents=999,
        currency="usd",
        payment_status="paid",
        event_type="checkout.session.completed",
    )
    assert result.is_paid
    assert type(result.credits) is Decimal
    assert type(result.amount_total_cents) is int


def test_checkout_unpaid_keeps_status(gateway: StripeGateway) -> None:
    result = parse(gateway, event("checkout.session.completed", session(payment_status="unpaid")))
    assert isinstance(result, CheckoutCompleted)
    assert result.payment_status == "unpaid"
    assert not result.is_paid


def test_async_payment_succeeded_maps_to_checkout_completed(gateway: StripeGateway) -> None:
    obj = event("checkout.session.async_payment_succeeded", session())
    result = parse(gateway, obj)
    assert isinstance(result, CheckoutCompleted)
    assert result.event_type == "checkout.session.async_payment_succeeded"
    assert result.session_id == "cs_test_1"


def test_async_payment_failed_is_ignored(gateway: StripeGateway) -> None:
    result = parse(gateway, event("checkout.session.async_payment_failed", session()))
    assert result == IgnoredEvent("evt_1", "checkout.session.async_payment_failed")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("pi_9", "pi_9"), ({"id": "pi_x", "object": "payment_intent"}, "pi_x"), (None, None)],
)
def test_payment_intent_forms(gateway: StripeGateway, value: Any, expected: str | None) -> None:
    result = parse(gateway, event("checkout.session.completed", session(payment_intent=value)))
    assert isinstance(result, CheckoutCompleted)
    assert result.payment_intent_id == expected


def test_credits_stay_exact_decimals(gateway: StripeGateway) -> None:
    meta = {"user_id": "u", "package_id": "1", "credits": "0.1"}
    result = parse(gateway, event("checkout.session.completed", session(metadata=meta)))
    assert isinstance(result, CheckoutCompleted)
    assert result.credits == Decimal("0.1")
    assert result.credits * 3 == Decimal("0.3")  # would fail with a float


def test_float_amount_total_is_refused(gateway: StripeGateway) -> None:
    with pytest.raises(PaymentError, match="amount_total must be an integer"):
        parse(gateway, event("checkout.session.completed", session(amount_total=9.99)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount_total", -1, "amount_total"),
        ("amount_total", None, "amount_total"),
        ("amount_total", True, "amount_total"),
        ("currency", "USD", "currency"),
        ("currency", None, "currency"),
        ("id", "", "id"),
        ("payment_status", None, "payment_status"),
        ("payment_intent", 5, "payment_intent"),
        ("metadata", "user_id=alice", "metadata"),
    ],
)
def test_checkout_field_validation(
    gateway: StripeGateway, field: str, value: Any, message: str
) -> None:
    with pytest.raises(PaymentError, match=message):
        parse(gateway, event("checkout.session.completed", session(**{field: value})))


def test_session_without_our_metadata_is_ignored(gateway: StripeGateway) -> None:
    for metadata in ({}, None, {"order": "someone-else"}):
        result = parse(gateway, event("checkout.session.completed", session(metadata=metadata)))
        assert isinstance(result, IgnoredEvent)
        assert result.type == "checkout.session.completed"
        assert "metadata" in result.reason


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"package_id": "7", "credits": "10"}, "user_id is missing"),
        ({"user_id": "alice", "credits": "10"}, "package_id is missing"),
        ({"user_id": "alice", "package_id": "7"}, "credits is missing"),
        ({"user_id": "", "package_id": "7", "credits": "10"}, "user_id must be a non-empty"),
        ({"user_id": "x" * 256, "package_id": "7", "credits": "10"}, "256 characters"),
        ({"user_id": "alice", "package_id": "abc", "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": "1.5", "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": "-1", "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": "0", "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": "07", "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": " 7", "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": "1_000", "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": "\u0667", "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": "9" * 20, "credits": "10"}, "package_id"),
        ({"user_id": "alice", "package_id": "7", "credits": "ten"}, "credits"),
        ({"user_id": "alice", "package_id": "7", "credits": "-5"}, "credits"),
        ({"user_id": "alice", "package_id": "7", "credits": "0"}, "credits"),
        ({"user_id": "alice", "package_id": "7", "credits": "NaN"}, "credits"),
        ({"user_id": "alice", "package_id": "7", "credits": "Infinity"}, "credits"),
    ],
)
def test_metadata_validation(
    gateway: StripeGateway, metadata: dict[str, str], message: str
) -> None:
    with pytest.raises(PaymentError, match=message) as info:
        parse(gateway, event("checkout.session.completed", session(metadata=metadata)))
    assert "metadata" in str(info.value)


def test_user_id_of_255_characters_is_accepted(gateway: StripeGateway) -> None:
    meta = {"user_id": "x" * 255, "package_id": "9223372036854775807", "credits": "1"}
    result = parse(gateway, event("checkout.session.completed", session(metadata=meta)))
    assert isinstance(result, CheckoutCompleted)
    assert result.user_id == "x" * 255
    assert result.package_id == 2**63 - 1


# --- refund mapping ------------------------------------------------------------------------


def test_charge_refunded_mapping(gateway: StripeGateway) -> None:
    refunds = {"object": "list", "data": [{"id": "re_1"}, {"id": "re_2"}], "has_more": False}
    result = parse(gateway, event("charge.refunded", charge(refunds=refunds), "evt_9"))
    assert result == ChargeRefunded(
        event_id="evt_9",
        charge_id="ch_1",
        payment_intent_id="pi_1",
        amount_cents=1000,
        amount_refunded_cents=250,
        currency="usd",
        refund_ids=("re_1", "re_2"),
    )
    assert not result.fully_refunded


def test_charge_refunded_without_refund_list(gateway: StripeGateway) -> None:
    result = parse(gateway, event("charge.refunded", charge(amount_refunded=1000)))
    assert isinstance(result, ChargeRefunded)
    assert result.refund_ids == ()
    assert result.fully_refunded


def test_charge_refunded_without_payment_intent(gateway: StripeGateway) -> None:
    result = parse(gateway, event("charge.refunded", charge(payment_intent=None)))
    assert isinstance(result, ChargeRefunded)
    assert result.payment_intent_id is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount_refunded", 1001, "exceeds"),
        ("amount_refunded", -1, "amount_refunded"),
        ("amount_refunded", 2.5, "amount_refunded"),
        ("amount", 0, "amount"),
        ("amount", "1000", "amount"),
        ("id", None, "id"),
        ("currency", "us", "currency"),
    ],
)
def test_charge_field_validation(
    gateway: StripeGateway, field: str, value: Any, message: str
) -> None:
    with pytest.raises(PaymentError, match=message):
        parse(gateway, event("charge.refunded", charge(**{field: value})))


def test_other_events_are_ignored(gateway: StripeGateway) -> None:
    result = parse(gateway, event("payment_intent.succeeded", {"id": "pi_1"}, "evt_7"))
    assert result == IgnoredEvent("evt_7", "payment_intent.succeeded")


def test_values_are_frozen(gateway: StripeGateway) -> None:
    result = parse(gateway, event("checkout.session.completed", session()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.credits = Decimal("1e9")


# --- refund arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purchased", "amount", "refunded", "expected"),
    [
        ("1000", 1000, 250, "250.00000000"),
        ("100", 300, 100, "33.33333333"),
        ("100", 300, 200, "66.66666667"),
        ("0.00000001", 2, 1, "0.00000000"),  # 0.000000005 -> even (0)
        ("0.00000003", 2, 1, "0.00000002"),  # 0.000000015 -> even (2)
        ("0.00000005", 2, 1, "0.00000002"),  # 0.000000025 -> even (2), not 3
        ("1000", 999, 0, "0"),
        ("0", 999, 500, "0"),
    ],
)
def test_refund_credits_examples(purchased: str, amount: int, refunded: int, expected: str) -> None:
    assert refund_credits(Decimal(purchased), amount, refunded) == Decimal(expected)


def test_full_refund_returns_purchased_exactly() -> None:
    for purchased in ("1000", "0.123456789", "7.10", "1E+30"):
        result = refund_credits(Decimal(purchased), 4999, 4999)
        assert result == Decimal(purchased)
        assert str(result) == purchased


def test_partial_refund_never_exceeds_purchased_with_extra_precision() -> None:
    purchased = Decimal("0.123456789")  # more places than the result keeps
    # 0.123456789 * (1 - 1e-8) = 0.12345678776... would round up to 0.12345679 > purchased
    result = refund_credits(purchased, 100_000_000, 99_999_999)
    assert result == purchased


def test_refund_credits_of_huge_values_is_exact() -> None:
    purchased = Decimal("12345678901234567890123456789.12345678")
    assert refund_credits(purchased, 2, 1) == Decimal("6172839450617283945061728394.56172839")


@pytest.mark.parametrize(
    ("purchased", "amount", "refunded", "message"),
    [
        (Decimal("-1"), 100, 10, "purchased_credits"),
        (Decimal("NaN"), 100, 10, "purchased_credits"),
        (Decimal("Infinity"), 100, 10, "purchased_credits"),
        (10.0, 100, 10, "purchased_credits"),
        (Decimal("10"), 0, 0, "amount_cents"),
        (Decimal("10"), -5, 0, "amount_cents"),
        (Decimal("10"), 100, 101, "amount_refunded_cents"),
        (Decimal("10"), 100, -1, "amount_refunded_cents"),
        (Decimal("10"), True, 0, "amount_cents"),
        (Decimal("10"), 100, 10.0, "amount_refunded_cents"),
    ],
)
def test_refund_credits_validation(
    purchased: Any, amount: Any, refunded: Any, message: str
) -> None:
    with pytest.raises(PaymentError, match=message):
        refund_credits(purchased, amount, refunded)


purchased_credits = st.decimals(
    min_value=0, max_value=10**12, places=8, allow_nan=False, allow_infinity=False
)


@st.composite
def refund_case(draw: st.DrawFn) -> tuple[Decimal, int, int, int]:
    purchased = draw(purchased_credits)
    amount = draw(st.integers(min_value=1, max_value=99_999_999))
    a = draw(st.integers(min_value=0, max_value=amount))
    b = draw(st.integers(min_value=0, max_value=amount))
    return purchased, amount, min(a, b), max(a, b)


@given(refund_case())
def test_refund_credits_bounds_and_monotone(case: tuple[Decimal, int, int, int]) -> None:
    purchased, amount, low, high = case
    at_low = refund_credits(purchased, amount, low)
    at_high = refund_credits(purchased, amount, high)
    assert Decimal(0) <= at_low <= at_high <= purchased
    assert refund_credits(purchased, amount, amount) == purchased


@given(refund_case())
def test_refund_credits_matches_half_even_oracle(case: tuple[Decimal, int, int, int]) -> None:
    purchased, amount, refunded, _ = case
    assume(refunded < amount)
    with localcontext() as ctx:
        ctx.prec = 200
        exact = purchased * refunded / amount
        oracle = exact.quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN)
    assert refund_credits(purchased, amount, refunded) == oracle


@given(
    purchased_credits,
    st.integers(min_value=1, max_value=100_000),
    st.lists(st.integers(min_value=0, max_value=100_000), min_size=1, max_size=6),
)
def test_cumulative_refunds_are_idempotent_in_any_order(
    purchased: Decimal, amount: int, cumulative: list[int]
) -> None:
    """The ledger contract: take back max(0, refund_credits(cumulative) - taken)."""
    values = [min(c, amount) for c in cumulative]
    expected = refund_credits(purchased, amount, max(values))
    for order in itertools.islice(itertools.permutations(values * 2), 24):
        taken = Decimal(0)
        for value in order:  # replays included: every value appears twice
            taken += max(Decimal(0), refund_credits(purchased, amount, value) - taken)
        assert taken == expected


# --- cents -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "cents"),
    [
        ("9.99", 999),
        ("10", 1000),
        ("0.01", 1),
        ("9.990", 999),
        ("1E+2", 10000),
        ("999999.99", 99999999),
    ],
)
def test_to_cents(price: str, cents: int) -> None:
    assert to_cents(Decimal(price)) == cents


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (Decimal("9.999"), "fraction of the smallest currency unit"),
        (Decimal("0.001"), "fraction"),
        (Decimal("0"), "positive"),
        (Decimal("-1"), "positive"),
        (Decimal("NaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (Decimal("1000000"), "maximum"),
        (Decimal("1E+40"), "too large"),
        (9.99, "Decimal"),
        (999, "Decimal"),
    ],
)
def test_to_cents_refusals(price: Any, message: str) -> None:
    with pytest.raises(PaymentError, match=message):
        to_cents(price)


@given(st.integers(min_value=1, max_value=99_999_999))
def test_to_cents_round_trips(cents: int) -> None:
    assert to_cents(Decimal(cents).scaleb(-2)) == cents
    with pytest.raises(PaymentError):
        to_cents(Decimal(cents).scaleb(-2) + Decimal("0.001"))


# --- gateway configuration and checkout validation -------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_key": ""}, "api_key"),
        ({"webhook_secret": " "}, "webhook_secret"),
        ({"tolerance_seconds": 0}, "tolerance_seconds"),
        ({"tolerance_seconds": -5}, "tolerance_seconds"),
        ({"tolerance_seconds": True}, "tolerance_seconds"),
        ({"api_base": "http://api.example.com"}, "loopback"),
        ({"api_base": "ftp://127.0.0.1"}, "http"),
        ({"api_base": "http://127.0.0.1:57001/v1"}, "scheme://host"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_gateway_configuration_is_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PaymentError, match=message):
        make_gateway(**kwargs)


@pytest.mark.parametrize(
    ("base", "normalised"),
    [
        ("http://127.0.0.1:57001/", "http://127.0.0.1:57001"),
        ("http://localhost:57001", "http://localhost:57001"),
        ("http://[::1]:57001", "http://[::1]:57001"),
        ("https://stripe-proxy.internal", "https://stripe-proxy.internal"),
    ],
)
def test_gateway_api_base(base: str, normalised: str) -> None:
    assert make_gateway(api_base=base).api_base == normalised


def test_gateway_repr_hides_secrets() -> None:
    text = repr(make_gateway(api_key="sk_test_secret_key"))
    assert "sk_test_secret_key" not in text
    assert SECRET not in text


def test_gateway_does_not_touch_stripe_globals() -> None:
    before = (stripe.api_key, stripe.api_base)
    make_gateway(api_key="sk_test_global_check")
    assert (stripe.api_key, stripe.api_base) == before


CHECKOUT: dict[str, Any] = {
    "user_id": "alice",
    "package_id": 7,
    "package_name": "Starter pack",
    "credits": Decimal("1000"),
    "price_usd": Decimal("9.99"),
    "success_url": "https://app.example/ok?session={CHECKOUT_SESSION_ID}",
    "cancel_url": "https://app.example/cancel",
    "idempotency_key": "purchase-1",
}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"price_usd": Decimal("9.999")}, "fraction"),
        ({"price_usd": 9.99}, "Decimal"),
        ({"price_usd": Decimal("0")}, "positive"),
        ({"credits": Decimal("0")}, "credits"),
        ({"credits": Decimal("NaN")}, "credits"),
        ({"credits": 10.5}, "credits"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u" * 256}, "user_id"),
        ({"package_id": "7"}, "package_id"),
        ({"package_id": True}, "package_id"),
        ({"package_id": 0}, "package_id"),
        ({"package_name": " "}, "package_name"),
        ({"success_url": "/relative"}, "success_url"),
        ({"cancel_url": "javascript:alert(1)"}, "cancel_url"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
    ],
)
async def test_checkout_arguments_are_validated_before_any_request(
    override: dict[str, Any], message: str
) -> None:
    gw = make_gateway()
    try:
        with pytest.raises(PaymentError, match=message) as info:
            await gw.create_checkout_session_async(**{**CHECKOUT, **override})
        assert not isinstance(info.value, PaymentProviderError)  # no request was attempted
    finally:
        await gw.aclose()


async def test_checkout_params_sent_to_stripe(monkeypatch: pytest.MonkeyPatch) -> None:
    gw = make_gateway()
    calls: list[tuple[Any, Any]] = []

    async def fake_create(params: Any = None, options: Any = None) -> Any:
        calls.append((params, options))
        return stripe.checkout.Session.construct_from(
            {"id": "cs_test_x", "object": "checkout.session", "url": "https://pay/x"}, "sk"
        )

    monkeypatch.setattr(gw._client.v1.checkout.sessions, "create_async", fake_create)
    result = await gw.create_checkout_session_async(**{**CHECKOUT, "credits": Decimal("1E+3")})
    assert (result.id, result.url) == ("cs_test_x", "https://pay/x")
    (params, options) = calls[0]
    metadata = {"user_id": "alice", "package_id": "7", "credits": "1000"}
    assert params == {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 999,
                    "product_data": {"name": "Starter pack"},
                },
            }
        ],
        "success_url": CHECKOUT["success_url"],
        "cancel_url": CHECKOUT["cancel_url"],
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
    }
    assert options == {"idempotency_key": "purchase-1"}


async def test_checkout_without_url_is_a_provider_error(monkeypatch: pytest.MonkeyPatch) -> None:
    gw = make_gateway()

    async def fake_create(params: Any = None, options: Any = None) -> Any:
        return stripe.checkout.Session.construct_from(
            {"id": "cs_test_x", "object": "checkout.session", "url": None}, "sk"
        )

    monkeypatch.setattr(gw._client.v1.checkout.sessions, "create_async", fake_create)
    with pytest.raises(PaymentProviderError, match="without an id or url"):
        await gw.create_checkout_session_async(**CHECKOUT)


async def test_unreachable_stripe_is_a_provider_error() -> None:
    gw = make_gateway()  # CLOSED_BASE: nothing listens
    with pytest.raises(PaymentProviderError, match="checkout session creation failed") as info:
        await gw.create_checkout_session_async(**CHECKOUT)
    assert info.value.http_status == 502
    assert "sk_test_unit" not in str(info.value)
    await gw.aclose()
