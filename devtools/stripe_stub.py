"""A local stand-in for the Stripe API, for tests and the demo. Nothing here talks to Stripe.

:class:`StripeStub` is a small HTTP server on ``127.0.0.1`` (in a background thread) that
speaks the few endpoints litellm-credits uses, the way the ``stripe`` library calls them
(form-encoded bodies with ``a[b][0][c]`` keys, ``Authorization: Bearer sk_...``,
``Idempotency-Key``):

* ``POST /v1/checkout/sessions``: validates like Stripe does for our use (``mode=payment``,
  ``line_items[].price_data``, URLs, metadata limits), honours ``Idempotency-Key`` (same key and
  body: replay with ``Idempotent-Replayed: true``; same key, other body: 400
  ``idempotency_error``), records the request and returns a Session (``cs_test_...``, ``url`` on
  the stub, ``payment_intent`` ``pi_...``, ``amount_total``, ``metadata``, ``status=open``);
* ``GET /v1/checkout/sessions/{id}`` and ``GET /v1/payment_intents/{id}``;
* ``GET /c/pay/{id}``: a tiny "hosted checkout" page whose button ``POST``s to the same path,
  which completes the session (see :meth:`StripeStub.complete_session`), delivers the signed
  ``checkout.session.completed`` event to ``webhook_url`` when one is configured, and redirects
  to the session's ``success_url`` -- enough for a click-through demo.

Point a gateway at it with ``StripeGateway(api_key, webhook_secret, api_base=stub.base_url)``.

Differences from real Stripe worth knowing: real Stripe leaves ``payment_intent`` null until a
session completes (API versions since 2022-08-01), and its charges no longer embed the refund
list; production code must take the PaymentIntent id from the completion *event*, never from
the create response (:class:`litellm_credits.billing.stripe.CheckoutSession` only exposes ``id`` and
``url`` for that reason).

Event builders (pure functions): :func:`completed_event`, :func:`refunded_event`,
:func:`make_event`, and :func:`sign_event` to get the exact body bytes plus ``Stripe-Signature``.

By default the server binds the first free port in 57000-57099 (this project's range for the
stub); pass ``port=`` to choose. Command line::

    python -m devtools.stripe_stub [--port P] [--webhook-url URL --webhook-secret whsec_...]

prints ``{"base_url": ...}`` once listening and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import copy
import dataclasses
import decimal
import hashlib
import hmac
import html
import json
import re
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A valid ``Stripe-Signature`` header value for ``payload``: ``t=<ts>,v1=<hex>``
    where ``v1`` is HMAC-SHA256 of ``b"<ts>." + payload`` keyed with ``secret``.

    What Stripe sends; tests and demos sign their events with it. ``timestamp``
    defaults to now.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode("utf-8"), f"{ts}.".encode() + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


__all__ = [
    "API_VERSION",
    "DEFAULT_PORTS",
    "RecordedRequest",
    "StripeStub",
    "completed_event",
    "make_event",
    "parse_form",
    "refunded_event",
    "sign_event",
    "sign_payload",
]

HOST = "127.0.0.1"
DEFAULT_PORTS = range(57000, 57100)
API_VERSION = "2026-10-28.endive"  # what stripe 16.1.0 sends as Stripe-Version

_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_BRACKET_RE = re.compile(r"\[([^\[\]]*)\]")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --- form decoding ---------------------------------------------------------------------


class FormError(ValueError):
    pass


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            indexes = sorted(int(k) for k in node)
            if indexes != list(range(len(indexes))):
                raise FormError(f"array indexes must be 0..n-1, got {indexes}")
            return [node[str(i)] for i in indexes]
    return node


def parse_form(body: str) -> dict[str, Any]:
    """Decode Stripe's form encoding (``a[b][0][c]=v``) into nested dicts and lists."""
    root: dict[str, Any] = {}
    try:
        pairs = parse_qsl(body, keep_blank_values=True, strict_parsing=bool(body))
    except ValueError as exc:
        raise FormError(f"malformed form body: {exc}") from None
    for key, value in pairs:
        match = _KEY_RE.fullmatch(key)
        if match is None:
            raise FormError(f"malformed parameter name {key!r}")
        parts = [match.group(1), *_BRACKET_RE.findall(match.group(2))]
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormError(f"parameter {key!r} conflicts with a scalar value")
            node = child
        if parts[-1] in node:
            raise FormError(f"parameter {key!r} given twice")
        node[parts[-1]] = value
    result = _listify(root)
    assert isinstance(result, dict)
    return result


# --- events --------------------------------------------------------------------------------


def make_event(
    event_type: str, obj: Mapping[str, Any], *, created: int | None = None
) -> dict[str, Any]:
    """A snapshot (v1) event as Stripe posts it to a webhook endpoint."""
    return {
        "id": _new_id("evt_test"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()) if created is None else created,
        "data": {"object": copy.deepcopy(dict(obj))},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def completed_event(session: Mapping[str, Any], paid: bool = True) -> dict[str, Any]:
    """``checkout.session.completed`` for ``session`` (a Session dict, e.g. from the stub).

    ``paid=False`` gives ``payment_status="unpaid"``, as Stripe sends for delayed payment
    methods before the money arrives.
    """
    obj = copy.deepcopy(dict(session))
    obj["status"] = "complete"
    obj["payment_status"] = "paid" if paid else "unpaid"
    if not obj.get("payment_intent"):
        obj["payment_intent"] = "pi_" + str(obj.get("id", _new_id("cs")))
    return make_event("checkout.session.completed", obj)


def refunded_event(
    payment_intent: str | None,
    charge_id: str,
    amount: int,
    amount_refunded: int,
    *,
    currency: str = "usd",
    refund_ids: Iterable[str] = (),
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``charge.refunded``; ``amount_refunded`` is cumulative, as in Stripe."""
    refunds = list(refund_ids)
    charge: dict[str, Any] = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "captured": True,
        "currency": currency,
        "livemode": False,
        "metadata": dict(metadata or {}),
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }
    if refunds:
        charge["refunds"] = {
            "object": "list",
            "data": [{"id": r, "object": "refund"} for r in refunds],
            "has_more": False,
            "url": f"/v1/charges/{charge_id}/refunds",
        }
    return make_event("charge.refunded", charge)


def sign_event(
    event: Mapping[str, Any], secret: str, timestamp: int | None = None
) -> tuple[bytes, str]:
    """The exact body bytes of ``event`` and a valid ``Stripe-Signature`` for them."""
    body = json.dumps(event, indent=2).encode("utf-8")
    return body, sign_payload(body, secret, timestamp)


# --- the server --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: str
    form: dict[str, Any]
    status: int
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def replayed(self) -> bool:
        """True when the stub answered from its idempotency cache."""
        return self.response_headers.get("Idempotent-Replayed") == "true"

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def api_key(self) -> str | None:
        return _api_key_of(self.headers.get("authorization", ""))

    @property
    def stripe_version(self) -> str | None:
        return self.headers.get("stripe-version")


class _ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, type_: str = "invalid_request_error", **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **extra}}


class StripeStub:
    """The stand-in server. Use as a context manager or call :meth:`start`/:meth:`stop`.

    ``api_key``: if set, only that key is accepted (401 otherwise); any ``Bearer`` key is
    accepted by default. ``webhook_url``/``webhook_secret``: where :meth:`deliver` (and the
    checkout page's pay button) posts signed events.
    """

    def __init__(
        self,
        host: str = HOST,
        port: int | None = None,
        *,
        api_key: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.api_key = api_key
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()  # makes idempotent creation atomic
        self._requests: list[RecordedRequest] = []
        self._sessions: dict[str, dict[str, Any]] = {}
        self._intents: dict[str, dict[str, Any]] = {}
        self._charges: dict[str, dict[str, Any]] = {}
        self._idempotency: dict[str, tuple[str, int, bytes]] = {}
        self._failures: list[tuple[int, dict[str, Any]]] = []
        self.deliveries: list[tuple[str, int]] = []  # (event type, HTTP status or -1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def _bind(self) -> ThreadingHTTPServer:
        handler = _make_handler(self)
        ports: Iterable[int] = DEFAULT_PORTS if self._port is None else (self._port,)
        last: OSError | None = None
        for port in ports:
            try:
                return ThreadingHTTPServer((self.host, port), handler)
            except OSError as exc:
                last = exc
        raise OSError(f"stripe stub: no free port to bind on {self.host} ({last})")

    def start(self) -> StripeStub:
        if self._server is not None:
            return self
        server = self._bind()
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="stripe-stub",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> StripeStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("stripe stub is not running; call start()")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` -- pass as ``api_base`` (the client adds ``/v1/...``)."""
        return f"http://{self.host}:{self.port}"

    # -- inspection --

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def checkout_requests(self) -> list[RecordedRequest]:
        """Recorded ``POST /v1/checkout/sessions`` requests, oldest first (incl. refused ones)."""
        return [
            r for r in self.requests if r.method == "POST" and r.path == "/v1/checkout/sessions"
        ]

    @property
    def sessions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._sessions)

    def session(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._sessions[session_id])

    def payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._intents[payment_intent_id])

    @property
    def last_session(self) -> dict[str, Any]:
        with self._lock:
            if not self._sessions:
                raise LookupError("no checkout session has been created")
            return copy.deepcopy(list(self._sessions.values())[-1])

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._sessions.clear()
            self._intents.clear()
            self._charges.clear()
            self._idempotency.clear()
            self._failures.clear()
            self.deliveries.clear()

    def fail_next(
        self, status: int = 500, message: str = "stub failure", type_: str = "api_error"
    ) -> None:
        """Make the next API request (any ``/v1`` path) fail with ``status``."""
        with self._lock:
            self._failures.append((status, {"error": {"type": type_, "message": message}}))

    # -- simulated customer / dashboard actions --

    def complete_session(self, session_id: str, *, paid: bool = True) -> dict[str, Any]:
        """The customer paid (or, with ``paid=False``, started a delayed payment).

        Marks the session ``complete``; when paid, the PaymentIntent succeeds with a new
        charge ``ch_...`` (its ``latest_charge``). Returns the updated session.
        """
        with self._lock:
            session = self._sessions[session_id]
            session["status"] = "complete"
            session["payment_status"] = "paid" if paid else "unpaid"
            intent = self._intents[session["payment_intent"]]
            if paid and intent["latest_charge"] is None:
                charge_id = _new_id("ch_test")
                intent["status"] = "succeeded"
                intent["latest_charge"] = charge_id
                self._charges[charge_id] = {
                    "id": charge_id,
                    "amount": intent["amount"],
                    "amount_refunded": 0,
                    "currency": intent["currency"],
                    "payment_intent": intent["id"],
                    "metadata": dict(intent["metadata"]),
                    "refund_ids": [],
                }
            elif not paid:
                intent["status"] = "processing"
            return copy.deepcopy(session)

    def refund(self, payment_intent_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund ``amount`` (default: the rest) of the PaymentIntent's charge.

        Returns the ``charge.refunded`` event (cumulative ``amount_refunded``); it is not
        delivered -- call :meth:`deliver` for that.
        """
        with self._lock:
            charge_id = self._intents[payment_intent_id]["latest_charge"]
            if charge_id is None:
                raise LookupError(f"{payment_intent_id} has no charge to refund")
            charge = self._charges[charge_id]
            rest = charge["amount"] - charge["amount_refunded"]
            amount = rest if amount is None else amount
            if not 0 < amount <= rest:
                raise ValueError(f"refund amount must be in 1..{rest}, got {amount}")
            charge["amount_refunded"] += amount
            charge["refund_ids"].append(_new_id("re_test"))
            charge_copy = copy.deepcopy(charge)
        return refunded_event(
            payment_intent_id,
            charge_id,
            charge_copy["amount"],
            charge_copy["amount_refunded"],
            currency=charge_copy["currency"],
            refund_ids=charge_copy["refund_ids"],
            metadata=charge_copy["metadata"],
        )

    def deliver(self, event: Mapping[str, Any], *, timeout: float = 10.0) -> int:
        """POST ``event``, signed with ``webhook_secret``, to ``webhook_url``; the HTTP status.

        Returns -1 if the endpoint could not be reached.
        """
        if not self.webhook_url or not self.webhook_secret:
            raise RuntimeError("stripe stub: webhook_url and webhook_secret are not configured")
        body, signature = sign_event(event, self.webhook_secret)
        if urlsplit(self.webhook_url).scheme not in ("http", "https"):
            raise ValueError(f"webhook_url must be http(s), got {self.webhook_url!r}")
        request = urllib.request.Request(  # noqa: S310 (scheme checked above)
            self.webhook_url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = -1
        with self._lock:
            self.deliveries.append((str(event.get("type")), status))
        return status

    # -- API behaviour (called from handler threads) --

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        key = _api_key_of(headers.get("authorization", ""))
        if not key:
            raise _ApiError(
                401,
                "You did not provide an API key. Provide it in the Authorization header "
                "(Authorization: Bearer YOUR_SECRET_KEY).",
            )
        if self.api_key is not None and key != self.api_key:
            raise _ApiError(401, "Invalid API Key provided.", code="api_key_invalid")

    def _take_failure(self) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _create_session(self, form: Mapping[str, Any]) -> dict[str, Any]:
        if form.get("mode") != "payment":
            raise _ApiError(400, "The stub supports mode=payment only.", param="mode")
        for param in ("success_url", "cancel_url"):
            url = form.get(param)
            if url is None and param == "cancel_url":
                continue
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
                raise _ApiError(400, f"Not a valid URL: {param}", param=param, code="url_invalid")
        items = form.get("line_items")
        if not isinstance(items, list) or not items:
            raise _ApiError(400, "line_items is required in payment mode.", param="line_items")
        currency: str | None = None
        total = 0
        for i, item in enumerate(items):
            where = f"line_items[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("price_data"), dict):
                raise _ApiError(400, f"{where}[price_data] is required.", param=where)
            price = item["price_data"]
            try:
                unit = int(price.get("unit_amount", ""))
                quantity = int(item.get("quantity", ""))
            except ValueError:
                raise _ApiError(
                    400, f"{where}: unit_amount and quantity must be integers.", param=where
                ) from None
            if unit < 0 or quantity < 1:
                raise _ApiError(400, f"{where}: invalid unit_amount or quantity.", param=where)
            product = price.get("product_data")
            if not isinstance(product, dict) or not product.get("name"):
                raise _ApiError(
                    400, f"{where}[price_data][product_data][name] is required.", param=where
                )
            item_currency = price.get("currency")
            if not isinstance(item_currency, str) or not re.fullmatch(r"[a-z]{3}", item_currency):
                raise _ApiError(400, f"{where}: invalid currency.", param=where)
            if currency is not None and item_currency != currency:
                raise _ApiError(400, "All line items must use the same currency.", param=where)
            currency = item_currency
            total += unit * quantity
        metadata = _metadata(form.get("metadata"), "metadata")
        pi_data = form.get("payment_intent_data", {})
        pi_metadata = _metadata(
            pi_data.get("metadata") if isinstance(pi_data, dict) else None,
            "payment_intent_data[metadata]",
        )
        assert currency is not None
        session_id = _new_id("cs_test")
        intent_id = _new_id("pi_test")
        created = int(time.time())
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": total,
            "amount_total": total,
            "cancel_url": form.get("cancel_url"),
            "client_reference_id": form.get("client_reference_id"),
            "created": created,
            "currency": currency,
            "customer": None,
            "customer_email": form.get("customer_email"),
            "expires_at": created + 24 * 3600,
            "livemode": False,
            "metadata": metadata,
            "mode": "payment",
            "payment_intent": intent_id,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": form.get("success_url"),
            "ui_mode": "hosted",
            "url": f"{self.base_url}/c/pay/{session_id}",
        }
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": total,
            "currency": currency,
            "latest_charge": None,
            "livemode": False,
            "metadata": pi_metadata,
            "status": "requires_payment_method",
        }
        with self._lock:
            self._sessions[session_id] = session
            self._intents[intent_id] = intent
            return copy.deepcopy(session)

    def _get(self, table: str, object_id: str, kind: str) -> dict[str, Any]:
        with self._lock:
            store = self._sessions if table == "sessions" else self._intents
            if object_id not in store:
                raise _ApiError(
                    404, f"No such {kind}: '{object_id}'", code="resource_missing", param="id"
                )
            return copy.deepcopy(store[object_id])


def _api_key_of(authorization: str) -> str | None:
    """The key from ``Bearer <key>`` or HTTP Basic ``<key>:`` (``curl -u sk_test_...:``)."""
    scheme, _, value = authorization.partition(" ")
    if scheme == "Bearer":
        return value.strip() or None
    if scheme == "Basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def _metadata(value: Any, param: str) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _ApiError(400, f"Invalid object: {param}", param=param)
    if len(value) > 50:
        raise _ApiError(400, f"{param}: at most 50 keys.", param=param)
    for key, item in value.items():
        if len(key) > 40 or not isinstance(item, str) or len(item) > 500:
            raise _ApiError(
                400, f"{param}[{key}]: keys up to 40 and values up to 500 characters.", param=param
            )
    return dict(value)


_SESSION_PATH = re.compile(r"/v1/checkout/sessions/([A-Za-z0-9_]+)")
_INTENT_PATH = re.compile(r"/v1/payment_intents/([A-Za-z0-9_]+)")
_PAY_PATH = re.compile(r"/c/pay/([A-Za-z0-9_]+)")


def _make_handler(stub: StripeStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "stripe-stub/1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            extra: Mapping[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Request-Id", _new_id("req"))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _read_body(self) -> str:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length).decode("utf-8", "replace") if length else ""

        def _handle(self, method: str) -> None:
            split = urlsplit(self.path)
            path, query = split.path, split.query
            headers = {k.lower(): v for k, v in self.headers.items()}
            body = self._read_body()
            if path.startswith("/c/pay/"):
                self._checkout_page(method, path)
                return
            status, payload, extra = self._api(method, path, headers, body)
            try:
                form = parse_form(body) if body else {}
            except FormError:
                form = {}
            stub._record(
                RecordedRequest(method, path, query, headers, body, form, status, dict(extra))
            )
            self._send(status, payload, "application/json", extra)

        def _api(
            self, method: str, path: str, headers: Mapping[str, str], body: str
        ) -> tuple[int, bytes, dict[str, str]]:
            try:
                stub._authenticate(headers)
                failure = stub._take_failure()
                if failure is not None:
                    return failure[0], json.dumps(failure[1]).encode(), {}
                if method == "POST" and path == "/v1/checkout/sessions":
                    return self._create(headers, body)
                if method == "GET" and (m := _SESSION_PATH.fullmatch(path)):
                    obj = stub._get("sessions", m.group(1), "checkout.session")
                    return 200, json.dumps(obj).encode(), {}
                if method == "GET" and (m := _INTENT_PATH.fullmatch(path)):
                    obj = stub._get("intents", m.group(1), "payment_intent")
                    return 200, json.dumps(obj).encode(), {}
                raise _ApiError(404, f"Unrecognized request URL ({method}: {path}).")
            except _ApiError as exc:
                return exc.status, json.dumps(exc.body).encode(), {}

        def _create(
            self, headers: Mapping[str, str], body: str
        ) -> tuple[int, bytes, dict[str, str]]:
            with stub._create_lock:
                return self._create_locked(headers, body)

        def _create_locked(
            self, headers: Mapping[str, str], body: str
        ) -> tuple[int, bytes, dict[str, str]]:
            key = headers.get("idempotency-key")
            digest = hashlib.sha256(body.encode()).hexdigest()
            if key is not None:
                with stub._lock:
                    seen = stub._idempotency.get(key)
                if seen is not None:
                    if seen[0] != digest:
                        raise _ApiError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with.",
                            type_="idempotency_error",
                        )
                    return seen[1], seen[2], {"Idempotent-Replayed": "true"}
            try:
                form = parse_form(body)
            except FormError as exc:
                raise _ApiError(400, f"Invalid request body: {exc}") from None
            session = stub._create_session(form)
            payload = json.dumps(session).encode()
            if key is not None:
                with stub._lock:
                    stub._idempotency[key] = (digest, 200, payload)
            return 200, payload, {}

        def _checkout_page(self, method: str, path: str) -> None:
            match = _PAY_PATH.fullmatch(path)
            sessions = stub.sessions
            if match is None or match.group(1) not in sessions:
                self._send(404, b"no such checkout session\n", "text/plain")
                return
            session_id = match.group(1)
            session = sessions[session_id]
            if method == "POST":
                completed = stub.complete_session(session_id)
                if stub.webhook_url and stub.webhook_secret:
                    stub.deliver(completed_event(completed))
                target = str(session["success_url"]).replace(
                    "{CHECKOUT_SESSION_ID}", quote(session_id)
                )
                self._send(303, b"", "text/plain", {"Location": target})
                return
            amount = decimal.Decimal(session["amount_total"]).scaleb(-2)
            page = (
                "<!doctype html><title>Stub checkout</title>"
                f"<h1>Stub checkout {html.escape(session_id)}</h1>"
                f"<p>{amount:.2f} {html.escape(str(session['currency']).upper())} "
                f"({html.escape(json.dumps(session['metadata']))})</p>"
                f'<form method="post"><button>Pay (test)</button></form>'
                f'<p><a href="{html.escape(str(session["cancel_url"]))}">Cancel</a></p>'
            )
            self._send(200, page.encode(), "text/html; charset=utf-8")

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--webhook-secret", default=None)
    args = parser.parse_args(argv)
    stub = StripeStub(
        port=args.port,
        api_key=args.api_key,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
    ).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(json.dumps({"base_url": stub.base_url}), flush=True)
    while not done.wait(0.5):
        pass
    stub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
