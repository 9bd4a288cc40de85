"""Non-admin virtual keys from LiteLLM's database may reach /credits (and only that)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
from litellm.proxy.auth.route_checks import RouteChecks

from litellm_credits.api.app import allow_for_virtual_keys


def check(route: str) -> None:
    request = SimpleNamespace(method="GET", query_params={}, url=SimpleNamespace(path=route))
    RouteChecks.non_proxy_admin_allowed_routes_check(
        user_obj=None, _user_role=LitellmUserRoles.INTERNAL_USER.value, route=route,
        request=request,  # type: ignore[arg-type]
        valid_token=UserAPIKeyAuth(user_id="alice", user_role=LitellmUserRoles.INTERNAL_USER),
        request_data={},
    )


def test_credits_routes_are_self_managed_for_internal_users() -> None:
    allow_for_virtual_keys()
    allow_for_virtual_keys()  # idempotent
    for route in ("/credits/balance", "/credits/keys/openai/main/default", "/credits/purchase"):
        check(route)


def test_other_admin_routes_stay_closed() -> None:
    allow_for_virtual_keys()
    with pytest.raises(Exception, match="Only proxy admin"):
        check("/user/new")
