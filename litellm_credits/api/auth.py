"""Who is asking, and for whom: the authorization rule of the ``/credits`` API.

Authentication is LiteLLM's own key auth (``Depends(user_api_key_auth)``).
Authorization is decided here, by :func:`subject`:

* a **proxy admin** key (role ``proxy_admin``; the master key resolves to it)
  may name any user with ``?user_id=`` (or in the path of the admin routes);
  without it, it acts on its own ``user_id``;
* a ``proxy_admin_viewer`` key may *read* any user's data, and change only its own;
* any other key acts on its own ``user_id`` only. Naming another user is
  refused with 403 and nothing is read or written. A key without a
  ``user_id`` has no credits: 403.

The admin routes (``/credits/admin/...``) need ``proxy_admin``
(:func:`require_admin`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth

from litellm_credits import errors
from litellm_credits.values import check_person_id, check_user_id

__all__ = [
    "Auth",
    "UserIdQuery",
    "can_read_all",
    "identity",
    "is_admin",
    "require_admin",
    "shown",
    "subject",
]

ADMIN = LitellmUserRoles.PROXY_ADMIN.value
VIEWER = LitellmUserRoles.PROXY_ADMIN_VIEW_ONLY.value

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
    return _role(auth) == ADMIN


def can_read_all(auth: UserAPIKeyAuth) -> bool:
    """A proxy admin or a proxy admin viewer: may read anyone's data."""
    return is_admin(auth) or _role(auth) == VIEWER


def identity(auth: UserAPIKeyAuth) -> str:
    """Who made a change, for ``created_by`` / ``updated_by``. Never the key itself."""
    if auth.user_id:
        return str(auth.user_id)[:255]
    if auth.key_alias:
        return f"key_alias:{str(auth.key_alias)[:200]}"
    if auth.token:
        return f"key:{str(auth.token)[:16]}"
    return "unknown-admin"


def shown(value: str) -> str:
    """A user-supplied value for an error message: quoted, at most 40 characters."""
    return repr(value[:40] + ("…" if len(value) > 40 else ""))


def subject(auth: UserAPIKeyAuth, requested: str | None, *, write: bool) -> str:
    """The user a request acts on, or a refusal (see the module docstring)."""
    own = auth.user_id or None
    privileged = is_admin(auth) or (not write and _role(auth) == VIEWER)
    if requested is not None:
        requested = check_user_id(requested)
        if requested != own and not privileged:
            raise errors.Forbidden(
                f"this key may only use its own credits (user {shown(own or '')}); "
                f"user_id={shown(requested)} needs a proxy admin key"
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
    """The admin's identity, or 403 unless the key is a proxy admin."""
    if not is_admin(auth):
        raise errors.Forbidden(
            f"this route needs a proxy admin key (role {ADMIN}); this key's role is "
            f"{_role(auth) or 'none'}"
        )
    return identity(auth)
