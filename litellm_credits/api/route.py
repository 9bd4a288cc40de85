"""How every ``/credits`` route answers: the route class and the error shape.

Every refusal is a :class:`~litellm_credits.errors.CreditsError` rendered as
``{"error": {"code": ..., "message": ...}}`` with its HTTP status. Validation
errors (malformed JSON, wrong types, oversized fields) are 422 in the same
shape; they never echo the submitted values, so a BYOK secret sent with a
mistake elsewhere in the body does not come back in the answer.

This is done by a route class (:class:`CreditsRoute`), not by exception
handlers: handlers added to an app after it started are not used (Starlette
builds its middleware stack once), and the proxy's app is running when the
callback mounts the API. Every router of :mod:`litellm_credits.api` uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from litellm_credits import errors
from litellm_credits.api.bodies import (
    MAX_BODY_BYTES,
    MAX_WEBHOOK_BYTES,
    read_capped,
    require_json_object,
)

__all__ = ["CreditsRoute", "error_response", "new_router", "validation_response"]

_MONEY_FIELDS = frozenset({"amount", "credits", "price_usd", "discount_percentage"})


def _status(exc: errors.CreditsError) -> int:
    if isinstance(exc, errors.AccountNotFound):
        return 404  # on the API a missing account is a missing resource, not "pay first"
    if isinstance(exc, errors.ConfigError):
        return 503  # the proxy is misconfigured; the request may succeed once it is fixed
    return exc.http_status


def error_response(exc: errors.CreditsError) -> JSONResponse:
    return JSONResponse(status_code=_status(exc), content=exc.to_dict())


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
    """Renders :class:`CreditsError` and validation errors itself, and caps body size."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        limit = MAX_WEBHOOK_BYTES if self.path.endswith("/stripe/webhook") else MAX_BODY_BYTES
        takes_json = self.body_field is not None

        async def handler(request: Request) -> Response:
            try:
                body = await read_capped(request, limit)
                if takes_json:
                    require_json_object(body)
                return await original(request)
            except errors.CreditsError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                return validation_response(exc)

        return handler


def new_router() -> APIRouter:
    """A router for one part of the API; :mod:`~litellm_credits.api.app` adds the prefix."""
    return APIRouter(route_class=CreditsRoute)
