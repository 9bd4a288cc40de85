"""Unit tests for litellm_credits.api.auth: who may act for whom (no proxy needed)."""

from __future__ import annotations

import pytest
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from litellm_credits import errors
from litellm_credits.api import auth as credits_api


def test_subject_rules() -> None:
    def auth(user_id: str | None, role: LitellmUserRoles) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(api_key="sk-x", user_id=user_id, user_role=role)

    subject = credits_api.subject
    user = auth("ann", LitellmUserRoles.INTERNAL_USER)
    admin = auth("root", LitellmUserRoles.PROXY_ADMIN)
    viewer = auth("eve", LitellmUserRoles.PROXY_ADMIN_VIEW_ONLY)
    keyless_admin = auth(None, LitellmUserRoles.PROXY_ADMIN)
    keyless_user = auth(None, LitellmUserRoles.INTERNAL_USER)

    assert subject(user, None, write=False) == "ann"
    assert subject(user, "ann", write=True) == "ann"
    for write in (False, True):
        with pytest.raises(errors.Forbidden):
            subject(user, "bob", write=write)
        with pytest.raises(errors.Forbidden):
            subject(keyless_user, None, write=write)
        assert subject(admin, "bob", write=write) == "bob"
        assert subject(admin, None, write=write) == "root"
        with pytest.raises(errors.InvalidUserId):
            subject(keyless_admin, None, write=write)
    # A proxy_admin_viewer reads anyone's data but changes only its own.
    assert subject(viewer, "bob", write=False) == "bob"
    with pytest.raises(errors.Forbidden):
        subject(viewer, "bob", write=True)
    assert credits_api.is_admin(admin) and not credits_api.is_admin(viewer)
    with pytest.raises(errors.Forbidden):
        credits_api.require_admin(viewer)
    assert credits_api.identity(admin) == "root"
    assert credits_api.identity(keyless_admin).startswith("key:")
    assert "sk-x" not in credits_api.identity(keyless_admin)
