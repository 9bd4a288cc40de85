"""Alert webhooks on the wire: body, signature (both sides), retry delay, one POST.

The POST goes through a real ``httpx.AsyncClient`` over ``httpx.MockTransport``, which
records each request and answers as the test says; the outbox and the schedule around
it are tested with PostgreSQL in the integration suite.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from litellm_credits.observe import alert_webhook as wh

D = Decimal
SECRET = "whsec_test"
T0 = 1_800_000_000

ROW: dict[str, Any] = {
    "id": 42,
    "kind": "low_balance",
    "user_id": "ann",
    "balance": D("4.5"),
    "threshold": D("5"),
    "tier": "pro",
    "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "episode": datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC),
    "attempts": 3,
}


# -- signature ---------------------------------------------------------------------------

def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), f"{T0}.".encode() + body, hashlib.sha256).hexdigest()
    assert wh.sign(SECRET, body, T0) == f"t={T0},v1={expected}"


def test_sign_without_a_timestamp_uses_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wh.time, "time", lambda: T0 + 0.9)
    assert wh.sign(SECRET, b"x").startswith(f"t={T0},v1=")


def test_a_fresh_signature_verifies() -> None:
    body = wh.build_payload(ROW)
    header = wh.sign(SECRET, body, T0)
    assert wh.verify_signature(SECRET, body, header, now=T0)
    assert wh.verify_signature(SECRET, body, header, now=T0 + wh.DEFAULT_TOLERANCE_SECONDS)


@pytest.mark.parametrize("change", ["body", "secret", "digest"])
def test_a_changed_body_secret_or_digest_does_not_verify(change: str) -> None:
    body = b'{"balance":"4.50000000"}'
    header = wh.sign(SECRET, body, T0)
    if change == "body":
        body = b'{"balance":"9.50000000"}'
    secret = "other" if change == "secret" else SECRET
    if change == "digest":
        header = header[:-1] + ("0" if header[-1] != "0" else "1")
    assert not wh.verify_signature(secret, body, header, now=T0)


def test_stale_or_future_signatures_are_refused_outside_the_tolerance() -> None:
    body = b"{}"
    header = wh.sign(SECRET, body, T0)
    tol = wh.DEFAULT_TOLERANCE_SECONDS
    assert not wh.verify_signature(SECRET, body, header, now=T0 + tol + 1)
    assert not wh.verify_signature(SECRET, body, header, now=T0 - tol - 1)
    assert wh.verify_signature(SECRET, body, header, now=T0 + 50, tolerance=50)
    assert not wh.verify_signature(SECRET, body, header, now=T0 + 51, tolerance=50)


@pytest.mark.parametrize("header", [
    None, "", "garbage", "v1=abc", "t=,v1=abc", "t=soon,v1=abc", f"t={T0}", f"t={T0},v1=",
    f"t={T0};v1=abc",
])
def test_missing_or_malformed_headers_do_not_verify(header: str | None) -> None:
    assert not wh.verify_signature(SECRET, b"{}", header, now=T0)


def test_any_of_several_v1_values_may_match_and_order_and_spaces_do_not_matter() -> None:
    body = b"{}"
    good = wh.sign(SECRET, body, T0).split("v1=", 1)[1]
    header = f"v1={'0' * 64}, t={T0} , v1={good}"
    assert wh.verify_signature(SECRET, body, header, now=T0)


def test_a_signature_for_another_timestamp_does_not_verify() -> None:
    body = b"{}"
    digest = wh.sign(SECRET, body, T0).split("v1=", 1)[1]
    assert not wh.verify_signature(SECRET, body, f"t={T0 + 1},v1={digest}", now=T0)


def test_a_non_ascii_signature_is_refused_not_an_error() -> None:
    assert not wh.verify_signature(SECRET, b"{}", f"t={T0},v1=\u00e9", now=T0)


# -- body --------------------------------------------------------------------------------

def test_the_body_is_compact_sorted_json_with_money_as_exact_text() -> None:
    body = wh.build_payload(ROW)
    assert body == json.dumps(json.loads(body), separators=(",", ":"), sort_keys=True).encode()
    assert json.loads(body) == {
        "id": "cra_42",
        "type": "credits.low_balance",
        "created": "2026-01-02T03:04:05+00:00",
        "data": {
            "user_id": "ann",
            "kind": "low_balance",
            "balance": "4.50000000",
            "threshold": "5.00000000",
            "tier": "pro",
            "episode_started_at": "2026-01-02T03:00:00+00:00",
        },
    }


def test_money_never_goes_out_as_a_json_number_or_in_exponent_form() -> None:
    body = wh.build_payload(ROW | {"balance": D("0E-8"), "threshold": D("1E+3")})
    data = json.loads(body, parse_float=lambda s: pytest.fail(f"float in body: {s}"))["data"]
    assert data["balance"] == "0.00000000"
    assert data["threshold"] == "1000.00000000"


def test_money_is_quantized_to_credit_places() -> None:
    data = json.loads(wh.build_payload(ROW | {"balance": D("1.123456785"),
                                              "threshold": "2"}))["data"]
    assert data["balance"] == "1.12345678"  # half-even at 1e-8
    assert data["threshold"] == "2.00000000"


def test_zero_balance_type_unknown_kinds_and_missing_optionals() -> None:
    row = {"id": 1, "kind": "zero_balance", "user_id": "bob", "balance": D("0"),
           "threshold": None}
    body = json.loads(wh.build_payload(row))
    assert body["type"] == "credits.zero_balance"
    assert body["created"] is None
    assert body["data"]["threshold"] is None and body["data"]["tier"] is None
    assert body["data"]["episode_started_at"] is None
    assert json.loads(wh.build_payload(row | {"kind": "quota"}))["type"] == "credits.quota"


def test_a_row_with_a_non_numeric_balance_is_refused() -> None:
    with pytest.raises(ArithmeticError):
        wh.build_payload(ROW | {"balance": "lots"})


# -- backoff -----------------------------------------------------------------------------

def test_backoff_doubles_from_the_base_and_is_capped() -> None:
    assert [wh.backoff_seconds(n, jitter=1.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert wh.backoff_seconds(0, jitter=1.0) == wh.BASE_DELAY_SECONDS
    assert wh.backoff_seconds(-3, jitter=1.0) == wh.BASE_DELAY_SECONDS
    assert wh.backoff_seconds(50, jitter=1.0) == wh.MAX_DELAY_SECONDS
    assert wh.backoff_seconds(1024, jitter=1.0) == wh.MAX_DELAY_SECONDS
    assert wh.backoff_seconds(3, base=1.0, cap=3.0, jitter=0.5) == 1.5


def test_backoff_after_very_many_attempts_is_the_cap() -> None:
    assert wh.backoff_seconds(5000, jitter=1.0) == wh.MAX_DELAY_SECONDS


def test_backoff_jitter_stays_between_half_and_all_of_the_delay() -> None:
    delays = [wh.backoff_seconds(3) for _ in range(200)]
    assert all(10.0 <= d <= 20.0 for d in delays)
    assert len(set(delays)) > 1  # it is jittered


def test_backoff_is_never_negative() -> None:
    assert wh.backoff_seconds(2, jitter=-1.0) == 0.0


# -- one POST ----------------------------------------------------------------------------

def client(answer: Any, seen: list[httpx.Request]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_post_sends_the_signed_body_with_its_event_id_and_attempt() -> None:
    seen: list[httpx.Request] = []
    async with client(204, seen) as http:
        result = await wh.post(http, "https://hooks.example/alerts", SECRET, ROW)
    assert result == wh.DeliveryResult(42, True, 204, None)
    (request,) = seen
    assert request.method == "POST" and str(request.url) == "https://hooks.example/alerts"
    assert request.content == wh.build_payload(ROW)
    assert request.headers["content-type"] == "application/json"
    assert request.headers[wh.EVENT_ID_HEADER] == "cra_42"
    assert request.headers[wh.ATTEMPT_HEADER] == "3"
    assert wh.verify_signature(SECRET, request.content, request.headers[wh.SIGNATURE_HEADER])
    assert not wh.verify_signature("other", request.content,
                                   request.headers[wh.SIGNATURE_HEADER])


async def test_post_without_attempts_says_first_attempt() -> None:
    seen: list[httpx.Request] = []
    row = {k: v for k, v in ROW.items() if k != "attempts"}
    async with client(200, seen) as http:
        assert (await wh.post(http, "https://h.example", SECRET, row)).ok
    assert seen[0].headers[wh.ATTEMPT_HEADER] == "1"


@pytest.mark.parametrize("status", [199, 300, 400, 410, 500, 503])
async def test_a_non_2xx_answer_is_a_failed_delivery(status: int) -> None:
    async with client(status, []) as http:
        result = await wh.post(http, "https://h.example", SECRET, ROW)
    assert result == wh.DeliveryResult(42, False, status, f"HTTP {status}")


async def test_a_transport_error_is_reported_not_raised() -> None:
    async with client(httpx.ConnectError("connection refused " + "x" * 500), []) as http:
        result = await wh.post(http, "https://h.example", SECRET, ROW)
    assert not result.ok and result.status is None and result.alert_id == 42
    assert result.error is not None and result.error.startswith("ConnectError: connection refused")
    assert len(result.error) <= len("ConnectError: ") + 200  # bounded for the outbox row


async def test_a_timeout_is_reported_not_raised() -> None:
    async with client(httpx.ReadTimeout("read timed out"), []) as http:
        result = await wh.post(http, "https://h.example", SECRET, ROW)
    assert result == wh.DeliveryResult(42, False, None, "ReadTimeout: read timed out")
