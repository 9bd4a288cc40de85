"""Who pays: the key's user; only admins may name an end user; nobody means 401."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pytest

from litellm_credits import errors
from litellm_credits.identity import is_admin, payer


class Role(Enum):
    PROXY_ADMIN = "proxy_admin"
    INTERNAL_USER = "internal_user"


@dataclass
class Auth:
    user_id: str | None = None
    user_role: object = None
    end_user_id: str | None = None


def test_the_keys_user_pays() -> None:
    assert payer(Auth(user_id="alice", user_role="internal_user"), {}) == "alice"


def test_a_non_admin_cannot_bill_someone_else() -> None:
    auth = Auth(user_id="alice", user_role=Role.INTERNAL_USER, end_user_id="bob")
    assert payer(auth, {"user": "bob"}) == "alice"


@pytest.mark.parametrize("role", ["proxy_admin", Role.PROXY_ADMIN])
def test_an_admin_names_the_end_user(role: object) -> None:
    assert payer(Auth(user_id="default_user_id", user_role=role, end_user_id="bob"), {}) == "bob"
    assert payer(Auth(user_id="default_user_id", user_role=role), {"user": "carol"}) == "carol"
    assert is_admin(Auth(user_role=role))


def test_an_admin_key_with_its_own_user_pays_itself_without_an_end_user() -> None:
    assert payer(Auth(user_id="ops", user_role="proxy_admin"), {}) == "ops"


@pytest.mark.parametrize("auth", [
    Auth(user_id=None, user_role="internal_user"),
    Auth(user_id="", user_role="internal_user"),
    Auth(user_id="default_user_id", user_role="proxy_admin"),
])
def test_no_payer_is_a_401(auth: Auth) -> None:
    with pytest.raises(errors.NotAuthenticated) as info:
        payer(auth, {})
    assert info.value.http_status == 401
    assert "x-litellm-end-user-id" in info.value.message


@pytest.mark.parametrize("bad", ["x" * 256, "bob\x00", "bob\n"])
def test_a_malformed_end_user_is_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidUserId):
        payer(Auth(user_id="default_user_id", user_role="proxy_admin", end_user_id=bad), {})
