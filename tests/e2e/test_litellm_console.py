"""The admin console (``/credits/ui/console``) in Debian's Chromium, on LiteLLM's own database.

The proxy is the session's one on LiteLLM's database (``litellm_proxy``). Seeded: a user who
bought credits through the Stripe stand-in and got part of it refunded, a team wallet, and a
low-balance alert webhook that gave up. The admin opens the console with the master key,
finds the user, sees balance/holds/level/tier/ledger as the database has them, takes credits
back with a reason, sets level and tier, and sees the refund and the failed webhook. A user
key is refused. The screenshot goes to ``docs/console.png`` with CREDITS_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devtools.proxy import MASTER_KEY
from devtools.stripe_stub import completed_event
from tests.e2e.litellm_db import LiteLLMEnv
from tests.e2e.test_ui_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
SCREENSHOT = (Path(__file__).resolve().parents[2] / "docs" / "console.png"
              if os.environ.get("CREDITS_UPDATE_SCREENSHOT") == "1"
              else Path(tempfile.gettempdir()) / f"credits-console-{os.getpid()}.png")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()


def ok(env: LiteLLMEnv, method: str, path: str, key: str = MASTER_KEY, **kw: Any) -> Any:
    resp = env.http(method, path, key=key, **kw)
    assert resp.status_code < 300, (path, resp.status_code, resp.text)
    return resp.json()


@pytest.fixture(scope="module")
def seeded(litellm_proxy: LiteLLMEnv) -> dict[str, str]:
    env = litellm_proxy
    tag = uuid.uuid4().hex[:6]
    user = env.new_user(f"console-{tag}", credits=None)
    key = env.new_key(user_id=user)
    package = ok(env, "POST", "/credits/admin/packages",
                 json={"name": f"c-{tag}", "credits": "200", "price_usd": "20"})["id"]
    checkout = ok(env, "POST", "/credits/purchase", key=key, json={"package_id": package})
    assert env.stripe is not None
    session = env.stripe.complete_session(checkout["session_id"])
    assert env.stripe.deliver(completed_event(session)) == 200
    assert env.stripe.deliver(env.stripe.refund(session["payment_intent"], 500)) == 200
    team = env.new_team(f"console-{tag}")
    ok(env, "POST", "/credits/admin/grant", json={"user_id": f"team:{team}", "amount": "70"})
    env.sql("INSERT INTO credit_alerts (user_id, kind, episode, balance, threshold, status,"
            " attempts, last_error) VALUES (%s, 'low_balance', now(), 1, 5, 'failed', 8,"
            " 'HTTP 503 from the alert webhook')", user)
    return {"user": user, "key": key, "team": team, "tag": tag}


def db_account(env: LiteLLMEnv, user: str) -> dict[str, Any]:
    [row] = env.dict_rows("SELECT balance, power_level, tier FROM user_credits WHERE user_id = %s",
                          user)
    return row


def sign_in(page: Any, env: LiteLLMEnv, key: str) -> None:
    page.goto(env.proxy.url("/credits/ui/console"))
    page.fill("#key", key)
    page.click("#signin")


def test_admin_finds_an_account_and_changes_it(
    litellm_proxy: LiteLLMEnv, seeded: dict[str, str], page: Any,
) -> None:
    env, user = litellm_proxy, seeded["user"]
    sign_in(page, env, MASTER_KEY)
    page.wait_for_selector("body[data-loaded]", state="attached", timeout=20_000)
    page.fill("#q", seeded["tag"])
    page.click("#search")
    page.wait_for_selector(f"tr[data-account='{user}']")
    page.wait_for_selector(f"tr[data-account='team:{seeded['team']}']")
    page.click(f"tr[data-account='{user}']")
    page.wait_for_selector(f"body[data-account='{user}']", state="attached")
    before = db_account(env, user)
    assert before["balance"] == Decimal(150)  # 200 bought, a quarter refunded
    assert Decimal(page.inner_text("#d-balance")) == before["balance"]
    assert Decimal(page.inner_text("#d-held")) == 0
    assert page.inner_text("#d-level") == before["power_level"]
    assert page.inner_text("#d-tier") == before["tier"]
    ledger = page.inner_text("#ledger")
    assert "purchase" in ledger and "refund" in ledger
    assert user in page.inner_text("#refunds") and "-50.00000000" in page.inner_text("#refunds")
    assert "HTTP 503 from the alert webhook" in page.inner_text("#webhooks")

    # Take back 5 credits with a reason; without a reason nothing is sent.
    page.fill("#amount", "-5")
    page.click("#grant")
    page.wait_for_selector(".notice.error")
    assert db_account(env, user)["balance"] == Decimal(150)
    page.fill("#reason", "duplicate promo")
    page.click("#grant")
    page.wait_for_selector(".notice.ok:text('credits changed')")
    assert db_account(env, user)["balance"] == Decimal(145)
    assert page.inner_text("#d-balance") == "145.00000000"
    assert env.one("SELECT description FROM credit_transactions WHERE user_id = %s"
                   " ORDER BY id DESC LIMIT 1", user) == "duplicate promo"

    # Each change re-reads the account before it says so; wait for that before the next.
    page.select_option("#level", "eco")
    page.click("#set-level")
    page.wait_for_selector(".notice.ok:text('level set')")
    assert db_account(env, user)["power_level"] == "eco"
    assert page.inner_text("#d-level") == "eco"
    page.select_option("#tier", "pro")
    page.click("#set-tier")
    page.wait_for_selector(".notice.ok:text('tier set')")
    assert db_account(env, user)["tier"] == "pro"
    assert page.inner_text("#d-tier") == "pro"
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert page.errors == []


def test_a_user_key_is_refused(
    litellm_proxy: LiteLLMEnv, seeded: dict[str, str], page: Any,
) -> None:
    sign_in(page, litellm_proxy, seeded["key"])
    page.wait_for_selector(".notice.error")
    assert "proxy admin" in page.inner_text("#notice")
    assert page.is_hidden("#app")
    resp = litellm_proxy.http("GET", "/credits/admin/accounts", key=seeded["key"])
    assert resp.status_code == 403
