"""Who pays for a request.

The payer is the LiteLLM key's ``user_id``. Only a proxy admin (the master key
or an admin virtual key) may name someone else, through LiteLLM's end-user id
(``x-litellm-end-user-id`` header or the body's ``user``). LiteLLM fills
``end_user_id`` for every key, so a non-admin's end-user id is ignored for
billing: the key's own user pays. No payer at all is a 401, never a free
request.
"""

from __future__ import annotations

from typing import Any

from litellm_credits import errors
from litellm_credits.values import check_user_id

ADMIN_ROLES = frozenset({"proxy_admin"})
# LiteLLM's placeholder user id for the master key; it names nobody.
PLACEHOLDER_USER_IDS = frozenset({"default_user_id", "litellm-proxy-master-key"})


def role_of(auth: Any) -> str:
    role = getattr(auth, "user_role", None)
    return str(getattr(role, "value", role) or "")


def is_admin(auth: Any) -> bool:
    return role_of(auth) in ADMIN_ROLES


def _clean(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    return None


def payer(auth: Any, data: dict[str, Any]) -> str:
    """The user id to bill, or a CreditsError saying why there is none."""
    own = _clean(getattr(auth, "user_id", None))
    if own in PLACEHOLDER_USER_IDS:
        own = None
    if is_admin(auth):
        named = _clean(getattr(auth, "end_user_id", None)) or _clean(data.get("user"))
        if named is not None:
            try:
                return check_user_id(named)
            except errors.InvalidUserId as exc:
                raise errors.InvalidUserId(f"end-user id refused: {exc.message}") from None
    if own is None:
        raise errors.NotAuthenticated(
            "no payer for this request: use a key that belongs to a user, or, with an "
            "admin key, name the user in the x-litellm-end-user-id header or the body's "
            "'user' field"
        )
    return check_user_id(own)
