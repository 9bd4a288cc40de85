"""BYOK provider keys: list (hints only), add (encrypted), revoke, make default.

The vault comes from ``CREDITS_ENCRYPTION_KEYS``; without it, listing and
revoking still work and adding says how to configure it. Secrets are never
returned or logged (invariant I6).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from litellm_credits.api.auth import Auth, UserIdQuery, identity, subject
from litellm_credits.api.bodies import KeyAddBody
from litellm_credits.api.route import new_router
from litellm_credits.api.services import current

__all__ = ["router"]

router = new_router()

ProviderPath = Annotated[str, Path(min_length=1, max_length=64)]
KeyNamePath = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/keys", summary="BYOK provider keys (hints only, never the secrets)")
async def list_keys(auth: Auth, user_id: UserIdQuery = None) -> dict[str, Any]:
    store = (await current()).keys
    who = subject(auth, user_id, write=False)
    keys = await store.list(who)
    return {"user_id": who, "keys": [k.to_dict() for k in keys]}


@router.post("/keys", status_code=201, summary="Store a BYOK provider key (encrypted)")
async def add_key(body: KeyAddBody, auth: Auth, user_id: UserIdQuery = None) -> dict[str, Any]:
    store = (await current()).keys
    who = subject(auth, user_id, write=True)
    info = await store.add(
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
    store = (await current()).keys
    who = subject(auth, user_id, write=True)
    result = await store.revoke(who, provider, name, by=identity(auth))
    return result.to_dict()


@router.put("/keys/{provider}/{name}/default", summary="Make a key the provider's default")
async def default_key(
    provider: ProviderPath, name: KeyNamePath, auth: Auth, user_id: UserIdQuery = None
) -> dict[str, Any]:
    store = (await current()).keys
    who = subject(auth, user_id, write=True)
    info = await store.set_default(who, provider, name, by=identity(auth))
    return info.to_dict()
