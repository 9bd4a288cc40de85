"""The HTTP plumbing under the Stripe gateway: which host it talks to, and with what.

:func:`validate_api_base` accepts ``scheme://host[:port]`` only, and plain
http only for a loopback host (a local stand-in such as
:mod:`devtools.stripe_stub`), so the API key never travels unencrypted.
:func:`make_client` builds one :class:`stripe.StripeClient` per gateway on its
own httpx client, so nothing is read from or written to the ``stripe`` module
globals.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import stripe

from litellm_credits.errors import PaymentError

__all__ = ["HttpxClient", "make_client", "validate_api_base", "validate_url"]


class HttpxClient(stripe.HTTPXClient):
    """stripe's httpx client, sending the form body as ``content=``.

    stripe 16.1.0 passes its already-encoded body as ``data=<str>``, which
    httpx 0.28 deprecates (one DeprecationWarning per request).
    """

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> Any:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.pop("data", None)
        if isinstance(data, str):
            kwargs["content"] = data.encode("utf-8")
        elif isinstance(data, bytes):
            kwargs["content"] = data
        elif data:
            kwargs["data"] = data
        return [args, kwargs]


def validate_api_base(api_base: str) -> str:
    parts = urlsplit(api_base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PaymentError(f"api_base must be an http(s) URL, got {api_base!r}")
    if parts.path.rstrip("/") or parts.query or parts.fragment:
        raise PaymentError(
            f"api_base must be scheme://host[:port] only (the client adds /v1/...), "
            f"got {api_base!r}"
        )
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise PaymentError(
                "api_base may use plain http only for a loopback host (a local stand-in); "
                f"the API key would travel unencrypted to {host!r}"
            )
    return api_base.rstrip("/")


def validate_url(url: object, what: str) -> str:
    """A redirect URL Stripe sends the user to: absolute http(s)."""
    if not isinstance(url, str):
        raise PaymentError(f"{what} must be a string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PaymentError(f"{what} must be an absolute http(s) URL, got {url!r}")
    return url


def make_client(
    api_key: str, api_base: str | None, *, max_network_retries: int, timeout_seconds: float
) -> tuple[HttpxClient, stripe.StripeClient]:
    """The httpx client (to close later) and the Stripe client that uses it."""
    http = HttpxClient(timeout=timeout_seconds, allow_sync_methods=True)
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=max_network_retries,
        http_client=http,
    )
    return http, client
