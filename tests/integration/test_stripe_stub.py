"""StripeGateway against the local Stripe stand-in (devtools.stripe_stub): real HTTP on
127.0.0.1, the real stripe library encoding requests, nothing leaves the machine."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import stripe

from devtools.stripe_stub import (
    FormError,
    StripeStub,
    completed_event,
    parse_form,
    refunded_event,
    sign_event,
)
from litellm_credits.billing.amounts import refund_credits
from litellm_credits.billing.events import ChargeRefunded, CheckoutCompleted
from litellm_credits.billing.stripe import PaymentProviderError, StripeGateway

API_KEY = "sk_test_integration"
SECRET = "whsec_integration"

CHECKOUT: dict[str, Any] = {
    "user_id": "user-ä-42",
    "package_id": 3,
    "package_name": "Starter & friends",
    "credits": Decimal("1000.5"),
    "price_usd": Decimal("9.99"),
    "success_url": "https://app.example/ok?session={CHECKOUT_SESSION_ID}",
    "cancel_url": "https://app.example/cancel",
    "idempotency_key": "purchase-0001",
}


@pytest.fixture(scope="module")
def stub() -> Iterator[StripeStub]:
    with StripeStub(api_key=API_KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(stub: StripeStub) -> None:
    stub.reset()
    stub.webhook_url = stub.webhook_secret = None


@pytest.fixture
async def gateway(stub: StripeStub) -> AsyncIterator[StripeGateway]:
    gw = StripeGateway(API_KEY, SECRET, api_base=stub.base_url, max_network_retries=0)
    yield gw
    await gw.aclose()


@pytest.fixture
async def agateway(stub: StripeStub) -> AsyncIterator[StripeGateway]:
    gw = StripeGateway(API_KEY, SECRET, api_base=stub.base_url, max_network_retries=0)
    yield gw
    await gw.aclose()


def assert_recorded_checkout(stub: StripeStub, session_id: str, url: str) -> None:
    (request,) = stub.checkout_requests()
    assert request.status == 200
    assert request.idempotency_key == "purchase-0001"
    assert request.api_key == API_KEY
    assert request.stripe_version  # the library pins an API version
    form = request.form
    expected_meta = {"user_id": "user-ä-42", "package_id": "3", "credits": "1000.5"}
    assert form["metadata"] == expected_meta
    assert form["payment_intent_data"] == {"metadata": expected_meta}
    assert form["mode"] == "payment"
    assert form["line_items"] == [
        {
            "quantity": "1",
            "price_data": {
                "currency": "usd",
                "unit_amount": "999",
                "product_data": {"name": "Starter & friends"},
            },
        }
    ]
    assert form["success_url"] == CHECKOUT["success_url"]
    session = stub.session(session_id)
    assert session["url"] == url == f"{stub.base_url}/c/pay/{session_id}"
    assert session["amount_total"] == 999
    assert session["metadata"] == expected_meta
    assert stub.payment_intent(session["payment_intent"])["metadata"] == expected_meta


async def test_create_checkout_session(stub: StripeStub, agateway: StripeGateway) -> None:
    result = await agateway.create_checkout_session_async(**CHECKOUT)
    assert result.id.startswith("cs_test_")
    assert_recorded_checkout(stub, result.id, result.url)


async def test_create_checkout_session_async(stub: StripeStub, agateway: StripeGateway) -> None:
    result = await agateway.create_checkout_session_async(**CHECKOUT)
    assert result.id.startswith("cs_test_")
    assert_recorded_checkout(stub, result.id, result.url)


async def test_no_deprecation_warnings_from_the_http_client(agateway: StripeGateway) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await agateway.create_checkout_session_async(**CHECKOUT)
        await agateway.create_checkout_session_async(**CHECKOUT)


async def test_same_idempotency_key_returns_the_same_session(
    stub: StripeStub, gateway: StripeGateway
) -> None:
    first = await gateway.create_checkout_session_async(**CHECKOUT)
    second = await gateway.create_checkout_session_async(**CHECKOUT)
    assert first == second
    assert len(stub.sessions) == 1
    assert [r.replayed for r in stub.checkout_requests()] == [False, True]


async def test_same_idempotency_key_other_arguments_is_refused(
    stub: StripeStub, gateway: StripeGateway
) -> None:
    await gateway.create_checkout_session_async(**CHECKOUT)
    with pytest.raises(PaymentProviderError, match="same parameters") as info:
        await gateway.create_checkout_session_async(**{**CHECKOUT, "package_id": 4})
    assert info.value.http_status == 502
    assert len(stub.sessions) == 1


async def test_stripe_error_becomes_provider_error(
    stub: StripeStub, gateway: StripeGateway
) -> None:
    stub.fail_next(400, "Invalid currency: xyz", "invalid_request_error")
    with pytest.raises(PaymentProviderError, match=r"HTTP 400.*Invalid currency") as info:
        await gateway.create_checkout_session_async(**CHECKOUT)
    assert API_KEY not in str(info.value)
    assert stub.sessions == {}


async def test_server_error_is_retried_with_the_same_idempotency_key(stub: StripeStub) -> None:
    gw = StripeGateway(API_KEY, SECRET, api_base=stub.base_url, max_network_retries=2)
    try:
        stub.fail_next(500)
        result = await gw.create_checkout_session_async(**CHECKOUT)
    finally:
        await gw.aclose()
    requests = stub.checkout_requests()
    assert [r.status for r in requests] == [500, 200]
    assert {r.idempotency_key for r in requests} == {"purchase-0001"}
    assert list(stub.sessions) == [result.id]


async def test_wrong_api_key_is_refused(stub: StripeStub) -> None:
    gw = StripeGateway("sk_test_wrong", SECRET, api_base=stub.base_url, max_network_retries=0)
    try:
        with pytest.raises(PaymentProviderError, match="HTTP 401"):
            await gw.create_checkout_session_async(**CHECKOUT)
    finally:
        await gw.aclose()


async def test_two_gateways_do_not_share_configuration() -> None:
    before = (stripe.api_key, stripe.api_base)
    with (
        StripeStub(api_key="sk_test_one") as one,
        StripeStub(api_key="sk_test_two") as two,
    ):
        gw1 = StripeGateway("sk_test_one", SECRET, api_base=one.base_url)
        gw2 = StripeGateway("sk_test_two", SECRET, api_base=two.base_url)
        try:
            s1 = await gw1.create_checkout_session_async(**CHECKOUT)
            s2 = await gw2.create_checkout_session_async(**{**CHECKOUT, "user_id": "bob"})
        finally:
            await gw1.aclose()
            await gw2.aclose()
        assert list(one.sessions) == [s1.id]
        assert list(two.sessions) == [s2.id]
        assert two.session(s2.id)["metadata"]["user_id"] == "bob"
    assert (stripe.api_key, stripe.api_base) == before


async def test_stopped_stub_is_a_provider_error() -> None:
    server = StripeStub().start()
    base = server.base_url
    server.stop()
    gw = StripeGateway(API_KEY, SECRET, api_base=base, max_network_retries=0)
    try:
        with pytest.raises(PaymentProviderError, match="failed"):
            await gw.create_checkout_session_async(**CHECKOUT)
    finally:
        await gw.aclose()


async def test_fetch_charge_id(stub: StripeStub, agateway: StripeGateway) -> None:
    created = await agateway.create_checkout_session_async(**CHECKOUT)
    intent = stub.session(created.id)["payment_intent"]
    assert await agateway.fetch_charge_id_async(intent) is None
    stub.complete_session(created.id)
    charge = stub.payment_intent(intent)["latest_charge"]
    assert charge.startswith("ch_test_")
    assert await agateway.fetch_charge_id_async(intent) == charge
    with pytest.raises(PaymentProviderError, match="No such payment_intent"):
        await agateway.fetch_charge_id_async("pi_missing")


async def test_retrieve_session_over_http(stub: StripeStub, gateway: StripeGateway) -> None:
    created = await gateway.create_checkout_session_async(**CHECKOUT)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{stub.base_url}/v1/checkout/sessions/{created.id}"
    response = httpx.get(url, headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "checkout.session"
    assert body["id"] == created.id
    assert body["status"] == "open"
    assert body["payment_status"] == "unpaid"
    assert body["payment_intent"].startswith("pi_")
    missing = httpx.get(f"{stub.base_url}/v1/checkout/sessions/cs_test_nope", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_missing"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, auth=(API_KEY, "")).status_code == 200  # curl -u sk_...:
    assert httpx.get(url, auth=("sk_test_other", "")).status_code == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("success_url=https://a/b&line_items[0][quantity]=1", "mode=payment"),
        ("mode=payment&success_url=https://a/b", "line_items"),
        ("mode=payment&line_items[0][quantity]=1", "success_url"),
        (
            "mode=payment&success_url=https://a/b&line_items[0][quantity]=1"
            "&line_items[0][price_data][unit_amount]=5&line_items[0][price_data][currency]=usd",
            "product_data",
        ),
        (
            "mode=payment&success_url=https://a/b&line_items[0][quantity]=1"
            "&line_items[0][price_data][unit_amount]=5&line_items[0][price_data][currency]=usd"
            "&line_items[0][price_data][product_data][name]=x&metadata[" + "k" * 41 + "]=v",
            "metadata",
        ),
    ],
)
def test_stub_validates_session_requests(stub: StripeStub, body: str, message: str) -> None:
    response = httpx.post(
        f"{stub.base_url}/v1/checkout/sessions",
        content=body,
        headers={
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert stub.sessions == {}


def test_parse_form() -> None:
    assert parse_form("a=1&m[k]=v&m[e]=&l[0][x]=1&l[1][x]=2&l[0][y][0]=z&n[1]=b&n[0]=a") == {
        "a": "1",
        "m": {"k": "v", "e": ""},
        "l": [{"x": "1", "y": ["z"]}, {"x": "2"}],
        "n": ["a", "b"],
    }
    assert parse_form("") == {}
    for bad in ("l[0]=a&l[2]=b", "a=1&a[b]=2", "a=1&a=2", "[x]=1"):
        with pytest.raises(FormError):
            parse_form(bad)


# --- events built by the stub, verified by the gateway -----------------------------------


async def test_completed_event_round_trip(stub: StripeStub, gateway: StripeGateway) -> None:
    created = await gateway.create_checkout_session_async(**CHECKOUT)
    session = stub.complete_session(created.id)
    body, signature = sign_event(completed_event(session), SECRET)
    result = gateway.parse_event(body, signature)
    assert isinstance(result, CheckoutCompleted)
    assert result.session_id == created.id
    assert result.payment_intent_id == session["payment_intent"]
    assert (result.user_id, result.package_id, result.credits) == (
        "user-ä-42",
        3,
        Decimal("1000.5"),
    )
    assert (result.amount_total_cents, result.currency) == (999, "usd")
    assert result.is_paid


async def test_completed_event_unpaid(stub: StripeStub, gateway: StripeGateway) -> None:
    created = await gateway.create_checkout_session_async(**CHECKOUT)
    event = completed_event(stub.session(created.id), paid=False)
    result = gateway.parse_event(*sign_event(event, SECRET))
    assert isinstance(result, CheckoutCompleted)
    assert result.payment_status == "unpaid"


async def test_refund_events_are_cumulative(stub: StripeStub, gateway: StripeGateway) -> None:
    created = await gateway.create_checkout_session_async(**CHECKOUT)
    intent = stub.complete_session(created.id)["payment_intent"]
    first = gateway.parse_event(*sign_event(stub.refund(intent, 333), SECRET))
    second = gateway.parse_event(*sign_event(stub.refund(intent), SECRET))
    assert isinstance(first, ChargeRefunded)
    assert isinstance(second, ChargeRefunded)
    assert first.payment_intent_id == second.payment_intent_id == intent
    assert first.charge_id == second.charge_id == stub.payment_intent(intent)["latest_charge"]
    assert (first.amount_refunded_cents, second.amount_refunded_cents) == (333, 999)
    assert len(second.refund_ids) == 2
    purchased = Decimal("1000.5")
    assert refund_credits(purchased, 999, first.amount_refunded_cents) == Decimal("333.50000000")
    assert refund_credits(purchased, 999, second.amount_refunded_cents) == purchased
    with pytest.raises(ValueError, match="refund amount"):
        stub.refund(intent, 1)


def test_refunded_event_helper_shape() -> None:
    event = refunded_event("pi_1", "ch_1", 1000, 250)
    assert event["type"] == "charge.refunded"
    assert event["object"] == "event"
    charge = event["data"]["object"]
    assert (charge["amount"], charge["amount_refunded"], charge["refunded"]) == (1000, 250, False)
    assert "refunds" not in charge  # as on API versions since 2022-11-15


class _Receiver:
    """A webhook endpoint in a thread: verifies with the gateway, 200 or 400."""

    def __init__(self, gateway: StripeGateway) -> None:
        self.received: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    receiver.received.append(
                        gateway.parse_event(body, self.headers.get("Stripe-Signature"))
                    )
                    status = 200
                except Exception as exc:
                    receiver.received.append(exc)
                    status = 400
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        for port in range(57099, 57049, -1):  # the stub scans upwards from 57000
            try:
                self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
                break
            except OSError:
                continue
        else:
            raise RuntimeError("no free port for the webhook receiver")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


async def test_checkout_page_pays_and_delivers_the_webhook(
    stub: StripeStub, gateway: StripeGateway
) -> None:
    receiver = _Receiver(gateway)
    try:
        stub.webhook_url, stub.webhook_secret = receiver.url, SECRET
        created = await gateway.create_checkout_session_async(**CHECKOUT)
        page = httpx.get(created.url)
        assert page.status_code == 200
        assert "Pay" in page.text and "9.99 USD" in page.text
        paid = httpx.post(created.url, follow_redirects=False)
        assert paid.status_code == 303
        assert paid.headers["Location"] == f"https://app.example/ok?session={created.id}"
        (event,) = receiver.received
        assert isinstance(event, CheckoutCompleted)
        assert (event.session_id, event.user_id, event.is_paid) == (created.id, "user-ä-42", True)
        assert stub.deliveries == [("checkout.session.completed", 200)]
        stub.webhook_secret = "whsec_wrong"
        assert stub.deliver(completed_event(stub.session(created.id))) == 400
        assert "bad webhook signature" in str(receiver.received[-1])
    finally:
        receiver.close()


def test_deliver_to_nowhere_reports_minus_one(stub: StripeStub) -> None:
    stub.webhook_url, stub.webhook_secret = "http://127.0.0.1:57098/none", SECRET
    probe = urllib.request.Request(stub.webhook_url, method="POST", data=b"")
    try:
        urllib.request.urlopen(probe, timeout=2)  # noqa: S310
        pytest.skip("something listens on 57098")
    except urllib.error.HTTPError:
        pytest.skip("something listens on 57098")
    except OSError:
        pass
    assert stub.deliver(refunded_event("pi_1", "ch_1", 100, 100)) == -1


def test_checkout_page_for_unknown_session(stub: StripeStub) -> None:
    assert httpx.get(f"{stub.base_url}/c/pay/cs_test_unknown").status_code == 404


def test_stub_event_json_is_what_gets_signed() -> None:
    event = completed_event({"id": "cs_test_1", "metadata": {}})
    body, signature = sign_event(event, SECRET, 1_700_000_000)
    assert json.loads(body) == event
    assert signature.startswith("t=1700000000,v1=")
    assert event["data"]["object"]["payment_intent"] == "pi_cs_test_1"
