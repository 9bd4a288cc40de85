"""The ``/credits`` HTTP API on the LiteLLM proxy, and the Stripe webhook.

:func:`mount` adds :data:`router` to the proxy's own FastAPI app (the callback
module calls it when LiteLLM loads the callback), so the API is served on the
proxy's port and listed in its ``/openapi.json`` under the ``credits`` tag.

Authentication is LiteLLM's own key auth (``Depends(user_api_key_auth)``).
Authorization is decided here, by :func:`subject`:

* a **proxy admin** key (role ``proxy_admin``; the master key resolves to it)
  may name any user with ``?user_id=`` (or in the path of the admin routes);
  without it, it acts on its own ``user_id``;
* a ``proxy_admin_viewer`` key may *read* any user's data, and change only its own;
* any other key acts on its own ``user_id`` only. Naming another user is
  refused with 403 and nothing is read or written. A key without a
  ``user_id`` has no credits: 403.

The admin routes (``/credits/admin/...``) need ``proxy_admin``.

The webhook (``POST /credits/stripe/webhook``) has no LiteLLM auth: the
``Stripe-Signature`` header is the authentication. A bad, missing or stale
signature is 400 and nothing is written.

Errors: every refusal is a :class:`~litellm_credits.errors.CreditsError`
rendered as ``{"error": {"code": ..., "message": ...}}`` with its HTTP status
(by a route class, so it works on an app that is already running). Validation
errors (malformed JSON, wrong types, oversized fields) are 422 in the same
shape; they never echo the submitted values, so a BYOK secret sent with a
mistake elsewhere in the body does not come back in the answer. Money is
always a string (``"12.50000000"``), never a JSON number, in and out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from litellm_credits import errors
from litellm_credits.billing.stripe import (
    ChargeRefunded,
    CheckoutCompleted,
    PaymentError,
    StripeGateway,
    refund_credits,
    to_cents,
)
from litellm_credits.byok.keys import KeyStore
from litellm_credits.byok.vault import Vault
from litellm_credits.identity import check_person_id
from litellm_credits.ledger import check_user_id, money, parse_amount
from litellm_credits.runtime import Runtime, get_runtime
from litellm_credits.settings import Settings
from litellm_credits.store.db import Database, Row

__all__ = ["mount", "router", "subject"]

log = logging.getLogger("litellm_credits.api.app")

#: Largest JSON body accepted on the authenticated routes, in bytes.
MAX_BODY_BYTES = 64 * 1024
#: Largest webhook body accepted (Stripe events are a few KiB).
MAX_WEBHOOK_BYTES = 1024 * 1024
#: The daily summary view is refreshed at most this often per process.
SUMMARY_MAX_AGE_SECONDS = 60.0
#: Rows of the daily summary returned at most.
SUMMARY_MAX_ROWS = 1000
#: How long the webhook waits for Stripe to name a payment's charge.
CHARGE_LOOKUP_SECONDS = 5.0
CURRENCY = "usd"
_MAX_INT4 = 2**31 - 1
_MOUNTED = "litellm_credits_api_mounted"
_ADMIN = LitellmUserRoles.PROXY_ADMIN.value
_VIEWER = LitellmUserRoles.PROXY_ADMIN_VIEW_ONLY.value


# --- errors ------------------------------------------------------------------------


class PayloadTooLarge(errors.InvalidInput):
    http_status = 413
    code = "payload_too_large"


class ServiceNotConfigured(errors.ConfigError):
    http_status = 503
    code = "not_configured"


def _status(exc: errors.CreditsError) -> int:
    if isinstance(exc, errors.AccountNotFound):
        return 404  # on the API a missing account is a missing resource, not "pay first"
    if isinstance(exc, errors.VaultNotConfigured | errors.ConfigError):
        return 503
    return exc.http_status


def error_response(exc: errors.CreditsError) -> JSONResponse:
    return JSONResponse(status_code=_status(exc), content=exc.to_dict())


_MONEY_FIELDS = frozenset({"amount", "credits", "price_usd", "discount_percentage"})


def _validation_message(err: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    kind = str(err.get("type", ""))
    if kind == "json_invalid":
        return "the request body is not valid JSON"
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where} is not a known field"
    if loc and loc[-1] in _MONEY_FIELDS and kind in ("string_type", "str_type"):
        return (
            f"{where} must be a decimal string such as \"10.50\"; JSON numbers are refused "
            "so that money stays exact"
        )
    return f"{where}: {err.get('msg', 'invalid value')}"


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """422 in our error shape. Submitted values (``input``, ``ctx``) are never echoed."""
    details: list[dict[str, Any]] = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "type": str(e.get("type", "")),
            "message": _validation_message(e),
        }
        for e in exc.errors()
    ]
    message = "; ".join(str(d["message"]) for d in details[:5]) or "invalid request"
    return JSONResponse(
        status_code=422,
        content={"error": {"code": "invalid_request", "message": message, "errors": details}},
    )


class CreditsRoute(APIRoute):
    """Renders :class:`CreditsError` and validation errors itself, and caps body size.

    Exception handlers added to an app after it started are not used (Starlette
    builds its middleware stack once); a route class works whenever it is mounted.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        limit = MAX_WEBHOOK_BYTES if self.path.endswith("/stripe/webhook") else MAX_BODY_BYTES
        takes_json = self.body_field is not None

        async def handler(request: Request) -> Response:
            try:
                _check_length(request, limit)
                if takes_json:
                    await _require_json_object(request)
                return await original(request)
            except errors.CreditsError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                return validation_response(exc)

        return handler


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise errors.InvalidInput("the Content-Length header is not a number") from None
    if size > limit:
        raise PayloadTooLarge(f"the request body is {size} bytes; the limit is {limit}")


async def _require_json_object(request: Request) -> None:
    """Refuse a JSON body that is not an object before LiteLLM's auth sees it.

    LiteLLM 1.102.4's ``user_api_key_auth`` calls ``.get`` on the parsed body and
    answers a JSON array or string with HTTP 500. Malformed JSON is left to FastAPI
    (422). The body read here is cached on the request and reused.
    """
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return
    if not isinstance(parsed, dict):
        raise RequestValidationError(
            [{"type": "model_attributes_type", "loc": ("body",),
              "msg": "the request body must be a JSON object"}]
        )


router = APIRouter(prefix="/credits", tags=["credits"], route_class=CreditsRoute)


def _is_ours(route: Any) -> bool:
    # FastAPI 0.165 keeps an included router as one entry (``original_router``);
    # older versions copy its routes into the app.
    return (
        getattr(route, "original_router", None) is router
        or getattr(route, "path", None) == "/credits/balance"
    )


def mount(app: FastAPI) -> None:
    """Serve :data:`router` on ``app`` (the proxy's). Mounting twice does nothing."""
    if getattr(app.state, _MOUNTED, False):
        return
    if any(_is_ours(r) for r in app.router.routes):
        setattr(app.state, _MOUNTED, True)
        return
    app.include_router(router)
    allow_for_virtual_keys()
    setattr(app.state, _MOUNTED, True)
    app.openapi_schema = None  # rebuilt with our paths on the next /openapi.json


SELF_MANAGED_PATTERN = "/credits/*"


def allow_for_virtual_keys() -> None:
    """Let non-admin virtual keys reach /credits.

    LiteLLM refuses routes it does not know to non-admin keys stored in its
    database (``RouteChecks.non_proxy_admin_allowed_routes_check``) unless the
    route is "self-managed": one whose handler checks access itself. Every
    /credits handler does (users see only their own data, /admin needs a
    proxy admin), so the routes are registered there.
    """
    from litellm.proxy._types import LiteLLMRoutes

    routes = LiteLLMRoutes.self_managed_routes.value
    if SELF_MANAGED_PATTERN not in routes:
        routes.append(SELF_MANAGED_PATTERN)


# --- who is asking, and for whom ----------------------------------------------------

Auth = Annotated[UserAPIKeyAuth, Depends(user_api_key_auth)]
UserIdQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=255,
        description="The user to act on. Only proxy admins may name another user.",
    ),
]


def _role(auth: UserAPIKeyAuth) -> str:
    role = auth.user_role
    return str(getattr(role, "value", role) or "")


def is_admin(auth: UserAPIKeyAuth) -> bool:
    return _role(auth) == _ADMIN


def identity(auth: UserAPIKeyAuth) -> str:
    """Who made a change, for ``created_by`` / ``updated_by``. Never the key itself."""
    if auth.user_id:
        return str(auth.user_id)[:255]
    if auth.key_alias:
        return f"key_alias:{str(auth.key_alias)[:200]}"
    if auth.token:
        return f"key:{str(auth.token)[:16]}"
    return "unknown-admin"


def _shown(value: str) -> str:
    return repr(value[:40] + ("…" if len(value) > 40 else ""))


def subject(auth: UserAPIKeyAuth, requested: str | None, *, write: bool) -> str:
    """The user a request acts on, or a refusal (see the module docstring)."""
    own = auth.user_id or None
    privileged = is_admin(auth) or (not write and _role(auth) == _VIEWER)
    if requested is not None:
        requested = check_user_id(requested)
        if requested != own and not privileged:
            raise errors.Forbidden(
                f"this key may only use its own credits (user {_shown(own or '')}); "
                f"user_id={_shown(requested)} needs a proxy admin key"
            )
        return requested
    if own:
        return check_person_id(own, "this key's user id")  # never a team:<id> account
    if privileged:
        raise errors.InvalidUserId(
            "this admin key has no user_id of its own; name the user with ?user_id=..."
        )
    raise errors.Forbidden(
        "this API key has no user_id, so it has no credits; use a key created for a user "
        "(LiteLLM /key/generate with user_id)"
    )


def require_admin(auth: UserAPIKeyAuth) -> str:
    if not is_admin(auth):
        raise errors.Forbidden(
            f"this route needs a proxy admin key (role {_ADMIN}); this key's role is "
            f"{_role(auth) or 'none'}"
        )
    return identity(auth)


async def _runtime() -> Runtime:
    runtime = get_runtime()
    await runtime.ensure_started()
    return runtime


# --- JSON shaping -------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A database row for JSON: Decimal as exact text, times as ISO 8601."""
    return {key: _plain(value) for key, value in row.items()}


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # a time without an offset is UTC


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, ...]:
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since >= until:
        raise errors.InvalidInput("since must be earlier than until")
    return since, until


# --- request bodies -----------------------------------------------------------------


class StrictBody(BaseModel):
    """Strict types (no "5" for 5, no 5 for "5"), unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", str_max_length=4096)


Id255 = Annotated[str, Field(min_length=1, max_length=255)]
Text1000 = Annotated[str, Field(max_length=1000)]
MoneyText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="A decimal number written as a JSON string, e.g. \"10.50\".",
        examples=["100", "-2.5"],
    ),
]


class PurchaseBody(StrictBody):
    package_id: int = Field(ge=1, le=_MAX_INT4)
    nonce: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description=(
            "Makes retries idempotent: the same user, package and nonce return the same "
            "Checkout Session. Omitted: a fresh session each time."
        ),
    )


class GrantBody(StrictBody):
    user_id: Id255
    amount: MoneyText
    description: Text1000 | None = None
    idempotency_key: Id255 | None = None


class PowerLevelBody(StrictBody):
    level: Literal["eco", "balanced", "precision"]


class TierBody(StrictBody):
    tier: str = Field(min_length=1, max_length=64)


class PackageCreateBody(StrictBody):
    name: Id255
    credits: MoneyText
    price_usd: MoneyText
    description: Text1000 | None = None
    discount_percentage: MoneyText = "0"
    badge: str | None = Field(default=None, max_length=64)
    stripe_price_id: Id255 | None = None
    is_active: bool = True
    sort_order: int = Field(default=0, ge=-_MAX_INT4, le=_MAX_INT4)


class PackageUpdateBody(StrictBody):
    name: Id255 | None = None
    credits: MoneyText | None = None
    price_usd: MoneyText | None = None
    description: Text1000 | None = None
    discount_percentage: MoneyText | None = None
    badge: str | None = Field(default=None, max_length=64)
    stripe_price_id: Id255 | None = None
    is_active: bool | None = None
    sort_order: int | None = Field(default=None, ge=-_MAX_INT4, le=_MAX_INT4)


class KeyAddBody(StrictBody):
    provider: str = Field(min_length=1, max_length=64, examples=["openai"])
    name: str = Field(min_length=1, max_length=64, examples=["default"])
    secret: SecretStr = Field(
        min_length=1,
        max_length=4096,
        description="The provider API key. Stored encrypted; never returned or logged.",
    )
    default: bool = False
    fallback_to_platform: bool = False


# --- read endpoints -----------------------------------------------------------------


@router.get("/balance", summary="Balance, held credits, tier, power level and quota use")
async def get_balance(auth: Auth, user_id: UserIdQuery = None) -> dict[str, Any]:
    runtime = await _runtime()
    who = subject(auth, user_id, write=False)
    account = await runtime.ledger.account(who)
    return account.to_dict()


@router.get("/transactions", summary="The credit ledger, newest first")
async def get_transactions(
    auth: Auth,
    user_id: UserIdQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601")] = None,
) -> dict[str, Any]:
    runtime = await _runtime()
    who = subject(auth, user_id, write=False)
    since, until = _window(since, until)
    rows = await runtime.ledger.transactions(
        who, limit=limit, offset=offset, since=since, until=until
    )
    return {
        "user_id": who,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
        "transactions": [jsonable(r) for r in rows],
    }


class _SummaryRefresher:
    """Refreshes ``usage_daily_summary`` at most once a minute in this process."""

    def __init__(self) -> None:
        self.last_attempt: float | None = None
        self.refreshed_at: datetime | None = None
        self._lock = asyncio.Lock()

    async def maybe_refresh(self, db: Database) -> None:
        now = time.monotonic()
        if self.last_attempt is not None and now - self.last_attempt < SUMMARY_MAX_AGE_SECONDS:
            return
        if self._lock.locked():
            return  # another request is refreshing; serve what the view holds
        async with self._lock:
            self.last_attempt = now
            try:
                await db.execute("refresh_usage_summary")
            except errors.CreditsError as exc:
                log.warning("usage summary not refreshed, serving the previous one: %s",
                            exc.message)
                return
            self.refreshed_at = datetime.now(UTC)


_summary = _SummaryRefresher()


@router.get("/usage", summary="Usage rows, and a daily summary per model and provider")
async def get_usage(
    auth: Auth,
    user_id: UserIdQuery = None,
    all_users: Annotated[bool, Query(description="admins: everyone's usage")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601")] = None,
) -> dict[str, Any]:
    runtime = await _runtime()
    who: str | None
    if all_users:
        if not (is_admin(auth) or _role(auth) == _VIEWER):
            raise errors.Forbidden("all_users=true needs a proxy admin key")
        if user_id is not None:
            raise errors.InvalidInput("give either user_id or all_users=true, not both")
        who = None
    else:
        who = subject(auth, user_id, write=False)
    since, until = _window(since, until)
    rows = await runtime.db.fetchall(
        "usage_rows",
        {"user_id": who, "limit": limit, "offset": offset, "since": since, "until": until},
    )
    await _summary.maybe_refresh(runtime.db)
    summary = await runtime.db.fetchall(
        "api_usage_daily",
        {
            "user_id": who,
            "since": since.astimezone(UTC).date() if since else None,
            "until": until.astimezone(UTC).date() if until else None,
            "limit": SUMMARY_MAX_ROWS + 1,
        },
    )
    return {
        "user_id": who,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
        "rows": [jsonable(r) for r in rows],
        "daily_summary": [jsonable(r) for r in summary[:SUMMARY_MAX_ROWS]],
        "daily_summary_truncated": len(summary) > SUMMARY_MAX_ROWS,
        "daily_summary_source": "usage_daily_summary",
        "daily_summary_refreshed_at": _plain(_summary.refreshed_at),
    }


@router.get("/packages", summary="The credit packages on sale")
async def get_packages(
    auth: Auth,
    include_inactive: Annotated[bool, Query(description="admins: deactivated ones too")] = False,
) -> dict[str, Any]:
    runtime = await _runtime()
    if include_inactive:
        require_admin(auth)
        rows = await runtime.db.fetchall("packages_all")
    else:
        rows = await runtime.db.fetchall("packages_active")
    return {"packages": [jsonable(r) for r in rows]}


# --- Stripe ---------------------------------------------------------------------------


class _Gateways:
    """One :class:`StripeGateway` per process, built on first use from settings."""

    def __init__(self) -> None:
        self._gateway: StripeGateway | None = None
        self._settings: Settings | None = None

    def get(self, settings: Settings) -> StripeGateway:
        if self._gateway is not None and self._settings is settings:
            return self._gateway
        missing = [
            name
            for name, value in (
                ("CREDITS_STRIPE_API_KEY", settings.stripe_api_key),
                ("CREDITS_STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secret),
            )
            if not value
        ]
        if missing:
            raise ServiceNotConfigured(
                f"Stripe is not configured on this proxy: set {' and '.join(missing)} "
                "(and stripe.api_base in CREDITS_CONFIG or CREDITS_STRIPE_API_BASE for a "
                "stand-in)"
            )
        assert settings.stripe_api_key and settings.stripe_webhook_secret
        try:
            gateway = StripeGateway(
                settings.stripe_api_key,
                settings.stripe_webhook_secret,
                api_base=settings.stripe_api_base,
            )
        except PaymentError as exc:
            raise ServiceNotConfigured(f"Stripe is misconfigured: {exc.message}") from None
        self._gateway, self._settings = gateway, settings
        return gateway


_gateways = _Gateways()


def checkout_idempotency_key(user_id: str, package_id: int, nonce: str) -> str:
    digest = hashlib.sha256(f"{user_id}\x00{package_id}\x00{nonce}".encode()).hexdigest()
    return f"litellm-credits-checkout-{digest}"


@router.post("/purchase", summary="Start a Stripe Checkout for a package")
async def post_purchase(
    body: PurchaseBody, auth: Auth, user_id: UserIdQuery = None
) -> dict[str, Any]:
    runtime = await _runtime()
    who = subject(auth, user_id, write=True)
    return await start_checkout(runtime, who, body)


async def start_checkout(runtime: Runtime, who: str, body: PurchaseBody) -> dict[str, Any]:
    """A Stripe Checkout that credits account ``who`` (a user, or ``team:<id>``: api/teams)."""
    package = await runtime.db.fetchone("api_package", {"id": body.package_id})
    if package is None:
        raise errors.NotFound(
            f"there is no credit package {body.package_id}; see GET /credits/packages"
        )
    if not package["is_active"]:
        raise errors.Conflict(
            f"credit package {body.package_id} is no longer on sale; see GET /credits/packages"
        )
    gateway = _gateways.get(runtime.settings)
    nonce = body.nonce or secrets.token_urlsafe(16)
    session = await gateway.create_checkout_session_async(
        user_id=who,
        package_id=int(package["id"]),
        package_name=str(package["name"]),
        credits=package["credits"],
        price_usd=package["price_usd"],
        currency=CURRENCY,
        success_url=runtime.settings.stripe_success_url,
        cancel_url=runtime.settings.stripe_cancel_url,
        idempotency_key=checkout_idempotency_key(who, int(package["id"]), nonce),
    )
    return {
        "checkout_url": session.url,
        "session_id": session.id,
        "user_id": who,
        "package_id": int(package["id"]),
        "credits": money(package["credits"]),
        "price_usd": money(package["price_usd"]),
        "currency": CURRENCY,
        "nonce": nonce,
    }


def _credits_for_payment(
    package: Row, event: CheckoutCompleted
) -> tuple[Decimal, dict[str, Any]]:
    """Credits for a paid checkout: from OUR package row, checked against the money.

    The session's metadata says which package and how many credits were offered;
    the package row says what the package gives now. The smaller of the two is
    credited when the payment covers the package's price; a payment below the
    price gets the proportional share, rounded down. Never more than either.
    """
    if event.currency != CURRENCY:
        raise PaymentError(
            f"checkout session {event.session_id} was paid in {event.currency.upper()}; "
            f"packages are sold in {CURRENCY.upper()}"
        )
    expected = to_cents(package["price_usd"])
    offered: Decimal = min(package["credits"], event.credits)
    paid = event.amount_total_cents
    notes: dict[str, Any] = {
        "checkout_session_id": event.session_id,
        "event_type": event.event_type,
        "paid_cents": paid,
        "price_cents": expected,
    }
    if event.credits != package["credits"]:
        notes["metadata_credits"] = money(event.credits)
        notes["package_credits"] = money(package["credits"])
        log.warning(
            "checkout %s: session offered %s credits but package %s now gives %s; "
            "crediting the smaller", event.session_id, event.credits, package["id"],
            package["credits"],
        )
    if paid >= expected:
        return offered, notes
    # Exact integer arithmetic on hundred-millionths, rounded down.
    share = Decimal((int(offered.scaleb(8)) * paid) // expected).scaleb(-8)
    notes["prorated"] = True
    log.warning(
        "checkout %s: paid %d cents for package %s priced %d cents; crediting %s of %s",
        event.session_id, paid, package["id"], expected, share, offered,
    )
    return share, notes


async def _charge_id(gateway: StripeGateway, payment_intent_id: str) -> str | None:
    try:
        return await asyncio.wait_for(
            gateway.fetch_charge_id_async(payment_intent_id), CHARGE_LOOKUP_SECONDS
        )
    except (PaymentError, TimeoutError) as exc:
        log.warning("charge id of %s not fetched (stored later by a refund): %s",
                    payment_intent_id, getattr(exc, "message", type(exc).__name__))
        return None


async def _on_checkout(
    runtime: Runtime, gateway: StripeGateway, event: CheckoutCompleted
) -> dict[str, Any]:
    base = {"received": True, "event_id": event.event_id, "type": event.event_type}
    if event.payment_status == "no_payment_required":
        return {**base, "status": "ignored", "reason": "nothing was paid"}
    if not event.is_paid:
        return {**base, "status": "pending", "reason": "payment not completed yet"}
    if event.payment_intent_id is None:
        return {**base, "status": "ignored", "reason": "no payment intent (nothing was paid)"}
    db = runtime.db
    key = {"payment_intent_id": event.payment_intent_id}
    done = await db.fetchone("purchase_by_payment_intent", key)
    if done is not None:
        return {**base, "status": "duplicate", "transaction_id": done["id"]}
    package = await db.fetchone("api_package", {"id": event.package_id})
    if package is None:
        raise PaymentError(
            f"checkout session {event.session_id} names credit package {event.package_id}, "
            "which does not exist in the credits database; nothing was credited"
        )
    credits, notes = _credits_for_payment(package, event)
    if credits <= 0:
        return {**base, "status": "ignored", "reason": "nothing was paid"}
    result = await runtime.ledger.add_credits(
        event.user_id,
        credits,
        type="purchase",
        payment_id=event.payment_intent_id,
        package_id=int(package["id"]),
        amount_usd=Decimal(event.amount_total_cents).scaleb(-2),
        stripe_event_id=event.event_id,
        charge_id=await _charge_id(gateway, event.payment_intent_id),
        description=f"Stripe purchase: {package['name']}"[:1000],
        created_by="stripe",
        metadata=notes,
    )
    log.info("credited %s credits to %r for payment %s (event %s)", credits, event.user_id,
             event.payment_intent_id, event.event_id)
    return {
        **base,
        "status": "credited",
        "user_id": event.user_id,
        "credits": money(credits),
        "transaction_id": result.transaction_id,
        "balance": money(result.new_balance),
    }


async def _on_refund(runtime: Runtime, event: ChargeRefunded) -> dict[str, Any]:
    base = {"received": True, "event_id": event.event_id, "type": "charge.refunded"}
    if event.payment_intent_id is None:
        return {**base, "status": "ignored", "reason": "charge has no payment intent"}
    db = runtime.db
    key = {"payment_intent_id": event.payment_intent_id}
    purchase = await db.fetchone("purchase_by_payment_intent", key)
    if purchase is None:
        log.warning("refund of %s: no purchase recorded for that payment; ignored",
                    event.payment_intent_id)
        return {**base, "status": "ignored", "reason": "no purchase recorded for this payment"}
    if event.currency != CURRENCY:
        raise PaymentError(f"refund of {event.payment_intent_id} is in {event.currency.upper()}")
    target = refund_credits(purchase["amount"], event.amount_cents, event.amount_refunded_cents)
    done = await db.fetchone("api_refunded_usd", key)
    refunded_usd = Decimal(event.amount_refunded_cents).scaleb(-2)
    share_usd = refunded_usd - (done["refunded_usd"] if done else Decimal(0))
    result, taken = await runtime.ledger.refund_purchase(
        event.payment_intent_id,
        target,
        charge_id=event.charge_id,
        stripe_event_id=event.event_id,
        amount_usd=share_usd if share_usd > 0 else None,
    )
    if taken <= 0:
        return {**base, "status": "duplicate", "credits_taken_back_total": money(target)}
    log.info("refund of %s: took back %s credits from %r", event.payment_intent_id, taken,
             purchase["user_id"])
    return {
        **base,
        "status": "refunded",
        "user_id": purchase["user_id"],
        "credits_taken_back": money(taken),
        "credits_taken_back_total": money(target),
        "transaction_id": result.transaction_id,
        "balance": money(result.new_balance),
    }


@router.post(
    "/stripe/webhook",
    summary="Stripe webhook (authenticated by the Stripe-Signature header, not a key)",
)
async def stripe_webhook(request: Request) -> dict[str, Any]:
    runtime = await _runtime()
    gateway = _gateways.get(runtime.settings)
    payload = await request.body()
    if len(payload) > MAX_WEBHOOK_BYTES:
        raise PayloadTooLarge(f"webhook body is over {MAX_WEBHOOK_BYTES} bytes")
    event = gateway.parse_event(payload, request.headers.get("stripe-signature"))
    if isinstance(event, CheckoutCompleted):
        return await _on_checkout(runtime, gateway, event)
    if isinstance(event, ChargeRefunded):
        return await _on_refund(runtime, event)
    return {
        "received": True,
        "event_id": event.event_id,
        "type": event.type,
        "status": "ignored",
        "reason": event.reason,
    }


# --- admin ----------------------------------------------------------------------------


@router.post("/admin/grant", summary="Admin: grant (positive) or take back (negative) credits")
async def admin_grant(body: GrantBody, auth: Auth) -> dict[str, Any]:
    runtime = await _runtime()
    by = require_admin(auth)
    who = check_user_id(body.user_id)
    text = body.amount.strip()
    negative = text.startswith("-")
    amount = parse_amount(text[1:] if negative else text)  # refuses before anything is written
    result = await runtime.ledger.adjust(
        who,
        f"-{amount}" if negative else amount,
        created_by=by,
        description=body.description or ("admin adjustment" if negative else "admin grant"),
        idempotency_key=body.idempotency_key,
    )
    if not result.success:
        raise errors.Conflict(
            f"user {_shown(who)} has {money(result.new_balance)} credits, less than the "
            f"{money(amount)} to take back; nothing was written",
            balance=money(result.new_balance),
        )
    return {
        "user_id": who,
        "amount": money(-amount if negative else amount),
        "transaction_id": result.transaction_id,
        "balance": money(result.new_balance),
        "created_by": by,
    }


AdminUserPath = Annotated[str, Path(min_length=1, max_length=255)]


@router.put("/admin/users/{user_id}/power-level", summary="Admin: set a user's power level")
async def admin_power_level(
    user_id: AdminUserPath, body: PowerLevelBody, auth: Auth
) -> dict[str, Any]:
    runtime = await _runtime()
    by = require_admin(auth)
    who = check_user_id(user_id)
    await runtime.ledger.set_power_level(who, body.level, by=by)
    return (await runtime.ledger.account(who)).to_dict()


@router.put("/admin/users/{user_id}/tier", summary="Admin: set a user's tier")
async def admin_tier(user_id: AdminUserPath, body: TierBody, auth: Auth) -> dict[str, Any]:
    runtime = await _runtime()
    by = require_admin(auth)
    who = check_user_id(user_id)
    tiers = runtime.settings.tiers
    if body.tier not in tiers:
        raise errors.InvalidInput(
            f"unknown tier {_shown(body.tier)}; configured tiers: {', '.join(sorted(tiers))}"
        )
    tier = tiers[body.tier]
    await runtime.ledger.set_tier(
        who, body.tier, monthly_quota=tier.monthly_quota,
        low_balance_threshold=tier.low_balance_threshold, by=by,
    )
    return (await runtime.ledger.account(who)).to_dict()


def _package_credits(text: str) -> Decimal:
    try:
        return parse_amount(text)
    except errors.InvalidAmount as exc:
        raise errors.InvalidAmount(f"credits: {exc.message}") from None


def _package_price(text: str) -> Decimal:
    try:
        price = parse_amount(text)
        to_cents(price)  # whole cents, within Stripe's limit
    except (errors.InvalidAmount, PaymentError) as exc:
        raise errors.InvalidAmount(f"price_usd: {exc.message}") from None
    return price


def _discount(text: str) -> Decimal:
    try:
        value = parse_amount(text, allow_zero=True)
    except errors.InvalidAmount as exc:
        raise errors.InvalidAmount(f"discount_percentage: {exc.message}") from None
    if value >= 100 or value != value.quantize(Decimal("0.01")):
        raise errors.InvalidAmount(
            f"discount_percentage must be 0 to 99.99 with at most 2 decimals, got {value}"
        )
    return value


def _text(what: str, value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise errors.InvalidInput(f"{what} contains a NUL byte")
    return value


def _name(value: str) -> str:
    name = value.strip()
    if not name:
        raise errors.InvalidInput("name is empty")
    _text("name", name)
    return name


PackagePath = Annotated[int, Path(ge=1, le=_MAX_INT4)]


@router.post("/admin/packages", status_code=201, summary="Admin: create a credit package")
async def admin_create_package(body: PackageCreateBody, auth: Auth) -> dict[str, Any]:
    runtime = await _runtime()
    by = require_admin(auth)
    row = await runtime.db.fetchone(
        "api_package_insert",
        {
            "name": _name(body.name),
            "description": _text("description", body.description),
            "credits": _package_credits(body.credits),
            "price_usd": _package_price(body.price_usd),
            "discount_percentage": _discount(body.discount_percentage),
            "badge": _text("badge", body.badge),
            "stripe_price_id": _text("stripe_price_id", body.stripe_price_id),
            "is_active": body.is_active,
            "sort_order": body.sort_order,
            "by": by,
        },
    )
    assert row is not None
    return jsonable(row)


_REQUIRED_PACKAGE_FIELDS = ("name", "credits", "price_usd", "discount_percentage", "is_active",
                            "sort_order")


@router.patch("/admin/packages/{package_id}", summary="Admin: change a credit package")
async def admin_update_package(
    package_id: PackagePath, body: PackageUpdateBody, auth: Auth
) -> dict[str, Any]:
    runtime = await _runtime()
    by = require_admin(auth)
    given = body.model_fields_set
    if not given:
        raise errors.InvalidInput(
            "nothing to change: give at least one of " + ", ".join(PackageUpdateBody.model_fields)
        )
    for name in _REQUIRED_PACKAGE_FIELDS:
        if name in given and getattr(body, name) is None:
            raise errors.InvalidInput(f"{name} cannot be null")
    fields = PackageUpdateBody.model_fields
    params: dict[str, Any] = {f"set_{name}": name in given for name in fields}
    params.update(
        id=package_id,
        by=by,
        name=_name(body.name) if body.name is not None else None,
        description=_text("description", body.description),
        credits=_package_credits(body.credits) if body.credits is not None else None,
        price_usd=_package_price(body.price_usd) if body.price_usd is not None else None,
        discount_percentage=(
            _discount(body.discount_percentage) if body.discount_percentage is not None else None
        ),
        badge=_text("badge", body.badge),
        stripe_price_id=_text("stripe_price_id", body.stripe_price_id),
        is_active=body.is_active,
        sort_order=body.sort_order,
    )
    row = await runtime.db.fetchone("api_package_update", params)
    if row is None:
        raise errors.NotFound(f"there is no credit package {package_id}")
    return jsonable(row)


@router.delete("/admin/packages/{package_id}", summary="Admin: stop selling a package")
async def admin_deactivate_package(package_id: PackagePath, auth: Auth) -> dict[str, Any]:
    runtime = await _runtime()
    by = require_admin(auth)
    row = await runtime.db.fetchone("api_package_deactivate", {"id": package_id, "by": by})
    if row is None:
        raise errors.NotFound(f"there is no credit package {package_id}")
    return jsonable(row)


# --- BYOK keys ---------------------------------------------------------------------------


class _KeyStores:
    """A :class:`KeyStore` per runtime; the vault comes from CREDITS_ENCRYPTION_KEYS."""

    def __init__(self) -> None:
        self._store: KeyStore | None = None
        self._runtime: Runtime | None = None

    def get(self, runtime: Runtime) -> KeyStore:
        if self._store is not None and self._runtime is runtime:
            return self._store
        vault = getattr(runtime, "vault", None)
        if not isinstance(vault, Vault):
            try:
                vault = Vault.from_env()
            except errors.VaultNotConfigured:
                vault = None  # listing and revoking still work; adding says how to fix it
        self._store = KeyStore(runtime.db, vault, aliases=runtime.settings.provider_aliases)
        self._runtime = runtime
        return self._store


_key_stores = _KeyStores()
ProviderPath = Annotated[str, Path(min_length=1, max_length=64)]
KeyNamePath = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/keys", summary="BYOK provider keys (hints only, never the secrets)")
async def list_keys(auth: Auth, user_id: UserIdQuery = None) -> dict[str, Any]:
    runtime = await _runtime()
    who = subject(auth, user_id, write=False)
    keys = await _key_stores.get(runtime).list(who)
    return {"user_id": who, "keys": [k.to_dict() for k in keys]}


@router.post("/keys", status_code=201, summary="Store a BYOK provider key (encrypted)")
async def add_key(body: KeyAddBody, auth: Auth, user_id: UserIdQuery = None) -> dict[str, Any]:
    runtime = await _runtime()
    who = subject(auth, user_id, write=True)
    info = await _key_stores.get(runtime).add(
        who,
        body.provider,
        body.name,
        body.secret.get_secret_value(),
        default=body.default,
        fallback_to_platform=body.fallback_to_platform,
        created_by=identity(auth),
    )
    return info.to_dict()


@router.delete("/keys/{provider}/{name}", summary="Revoke a BYOK provider key")
async def revoke_key(
    provider: ProviderPath, name: KeyNamePath, auth: Auth, user_id: UserIdQuery = None
) -> dict[str, Any]:
    runtime = await _runtime()
    who = subject(auth, user_id, write=True)
    result = await _key_stores.get(runtime).revoke(who, provider, name, by=identity(auth))
    return result.to_dict()


@router.put("/keys/{provider}/{name}/default", summary="Make a key the provider's default")
async def default_key(
    provider: ProviderPath, name: KeyNamePath, auth: Auth, user_id: UserIdQuery = None
) -> dict[str, Any]:
    runtime = await _runtime()
    who = subject(auth, user_id, write=True)
    info = await _key_stores.get(runtime).set_default(who, provider, name, by=identity(auth))
    return info.to_dict()
