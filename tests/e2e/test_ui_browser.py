"""The credits page in a real headless Chromium against the real proxy and the Stripe stand-in.

Debian's ``chromium`` is driven by Playwright (``executable_path``; Playwright's own browser
downloads are never used). Without ``/usr/bin/chromium`` (or ``CREDITS_CHROMIUM``) or the
``playwright`` package the module is skipped with the reason.

The run: a user with real usage (requests through the proxy, spread over the last weeks by
moving their timestamps), a BYOK key and a few transactions opens ``/credits/ui``, pastes the
key, and the numbers on screen are compared with the database; "Buy" must produce a
checkout URL from the Stripe stand-in. An admin key gets the user picker. The screenshot is
saved to ``docs/credits-ui.png`` when CREDITS_UPDATE_SCREENSHOT=1 (else a temp file).
Port and wiring knobs: see ``tests/e2e/test_metrics.py``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devtools.pg import PgCluster
from devtools.proxy import MASTER_KEY, DeploymentSpec, user_key
from devtools.stripe_stub import StripeStub
from tests.e2e.plugin_env import PluginEnv, chat, chat_deployment, credits_config, plugin_env
from tests.e2e.test_metrics import free_port, ports_for, scratch_wiring

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CREDITS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The README's screenshot is refreshed only on request, so a test run leaves the tree clean.
SCREENSHOT = (Path(__file__).resolve().parents[2] / "docs" / "credits-ui.png"
              if os.environ.get("CREDITS_UPDATE_SCREENSHOT") == "1"
              else Path(tempfile.gettempdir()) / f"credits-ui-{os.getpid()}.png")
STRIPE_KEY = "sk_test_ui_e2e"
STRIPE_SECRET = "whsec_ui_e2e"
ALICE, BOB = "ui-alice", "ui-bob"

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CREDITS_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright package is not installed (pip install playwright)")


# --- the world ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(pg_cluster: PgCluster) -> Iterator[tuple[PluginEnv, StripeStub]]:
    with contextlib.ExitStack() as stack:
        _, _, extra = stack.enter_context(ports_for(1))
        callbacks, wiring_env = stack.enter_context(scratch_wiring())
        stub = stack.enter_context(StripeStub(port=free_port(extra), api_key=STRIPE_KEY,
                                              webhook_secret=STRIPE_SECRET))
        env = {
            "CREDITS_STRIPE_API_KEY": STRIPE_KEY,
            "CREDITS_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
            "CREDITS_STRIPE_API_BASE": stub.base_url,
            "CREDITS_ENCRYPTION_KEYS": "ui1:" + base64.b64encode(os.urandom(32)).decode(),
            **wiring_env,
        }
        config = credits_config(
            byok_fee_percent="10",
            tiers={"free": {"low_balance_threshold": "25"}},
            stripe={"success_url": "http://localhost/credits/ui?purchase=success",
                    "cancel_url": "http://localhost/credits/ui?purchase=cancelled"},
        )

        def edit(cfg: dict[str, Any]) -> None:
            cfg["litellm_settings"]["callbacks"] += callbacks

        models: dict[str, list[str | DeploymentSpec]] = {
            "gpt-4o": [chat_deployment("openai", "gpt-4o", model="gpt-4o")],
            "claude-sonnet": [chat_deployment("anthropic", "claude-sonnet",
                                              model="claude-sonnet")],
            "llama-70b": [chat_deployment("together_ai", "llama-70b", model="llama-70b")],
        }
        penv = stack.enter_context(plugin_env(
            pg_cluster, models, providers=("openai", "anthropic", "together_ai"), config=config,
            extra_env=env, label="ui", edit_config=edit))
        stub.webhook_url = penv.proxy.url("/credits/stripe/webhook")
        for server in penv.ups:  # bigger answers, so the chart shows credits, not dust
            server.configure(prompt_tokens=12000, completion_tokens=3000)
        seed(penv)
        yield penv, stub


def api(env: PluginEnv, method: str, path: str, key: str = MASTER_KEY, **kw: Any) -> Any:
    r = env.http(method, path, key=key, **kw)
    assert r.status_code < 300, (path, r.status_code, r.text)
    return r.json()


def seed(env: PluginEnv) -> None:
    """Alice: grants, a BYOK key, ~30 requests over three models spread over 3 weeks."""
    api(env, "POST", "/credits/admin/grant", json={"user_id": ALICE, "amount": "500"})
    api(env, "POST", "/credits/admin/grant", json={"user_id": BOB, "amount": "42.5"})
    api(env, "PUT", f"/credits/admin/users/{ALICE}/power-level", json={"level": "precision"})
    # Setting the tier copies its low-balance threshold onto the account.
    api(env, "PUT", f"/credits/admin/users/{ALICE}/tier", json={"tier": "free"})
    api(env, "POST", "/credits/keys", key=user_key(ALICE),
        json={"provider": "anthropic", "name": "personal", "secret": "sk-ant-test-0123456789abcd",
              "default": True})
    client = env.user_client(ALICE)
    plan = (["gpt-4o", "gpt-4o", "claude-sonnet", "llama-70b", "gpt-4o", "llama-70b"] * 6)
    for i, model in enumerate(plan):
        chat(client, model=model, content=f"question {i}", max_tokens=3000)
    env.wait_for(lambda: len(env.usage_rows(ALICE)) == len(plan) and env.holds(ALICE) == 0,
                 timeout=30, what="alice's requests settled")
    # Spread the requests over the last three weeks (row and its debit move together, so
    # the ledger's order and amounts are untouched).
    # Older requests move further back, so the ledger's order stays the time order.
    ids = [r["request_id"] for r in env.usage_rows(ALICE)]
    for n, request_id in enumerate(ids):
        hours = (len(ids) - 1 - n) * 20 * 24 // len(ids) + (n * 5) % 7
        for table in ("llm_usage_log", "credit_transactions"):
            env.sql(f"UPDATE {table} SET created_at = created_at - make_interval(hours => %s) "
                    "WHERE request_id = %s", hours, request_id)
    chat(env.user_client(BOB), model="llama-70b", max_tokens=3000)
    env.wait_for(lambda: len(env.usage_rows(BOB)) == 1 and env.holds(BOB) == 0, timeout=30,
                 what="bob's request settled")


# --- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  device_scale_factor=1)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    # The page learns whether a key is an admin's by asking an admin-only listing, so a
    # user key's 403 there (and a bad key's 401) is expected; any other error is not.
    expected = ("status of 401", "status of 403")
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and not any(e in msg.text for e in expected) else None)
    page.problems = problems
    yield page
    context.close()


def sign_in(page: Any, env: PluginEnv, key: str) -> None:
    page.goto(env.proxy.url("/credits/ui"))
    page.fill("#key", key)
    page.click("#signin")


def wait_loaded(page: Any) -> None:
    # Selectors only: the page's CSP forbids eval, which wait_for_function(str) needs.
    page.wait_for_selector("body[data-loaded]", state="attached", timeout=20_000)


def number(page: Any, selector: str) -> Decimal:
    return Decimal(page.inner_text(selector).replace(",", "").replace("+", ""))


def db_account(env: PluginEnv, user: str) -> dict[str, Any]:
    [row] = env.dict_rows(
        "SELECT u.balance, u.power_level, u.tier, coalesce((SELECT sum(amount) FROM credit_holds h "
        "WHERE h.user_id = u.user_id AND h.expires_at > now()), 0) AS held "
        "FROM user_credits u WHERE u.user_id = %s", user)
    return row


def test_user_sees_their_numbers_and_buys(world: tuple[PluginEnv, StripeStub], page: Any) -> None:
    env, stub = world
    response = page.goto(env.proxy.url("/credits/ui"))
    csp = response.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    sign_in(page, env, user_key(ALICE))
    wait_loaded(page)
    assert page.is_hidden("#admin")  # a user key gets no user picker

    # Balance, held, available and the power level, exactly as the database has them.
    account = db_account(env, ALICE)
    assert number(page, "#balance") == account["balance"]
    assert number(page, "#held") == account["held"] == 0
    assert number(page, "#available") == account["balance"] - account["held"]
    assert page.text_content("#power-level") == account["power_level"] == "precision"
    assert "tier free" in page.inner_text("#tier")
    assert "25" in page.inner_text("#threshold")

    # The chart: 30 days, by model, with the totals of the usage log.
    usage = env.dict_rows(
        "SELECT model, sum(credits_charged) AS credits FROM llm_usage_log WHERE user_id = %s "
        "AND created_at >= (now() AT TIME ZONE 'UTC')::date - 29 GROUP BY 1", ALICE)
    assert len(usage) == 3
    assert Decimal(page.get_attribute("#chart-total", "data-value")) == sum(
        r["credits"] for r in usage)
    bars = page.eval_on_selector_all(
        "#usage-chart rect",
        "els => els.map(e => [e.dataset.model, e.dataset.value, e.dataset.day])")
    per_model: dict[str, Decimal] = {}
    for model, value, _day in bars:
        per_model[model] = per_model.get(model, Decimal(0)) + Decimal(value.replace(",", ""))
    assert per_model == {r["model"]: r["credits"] for r in usage if r["credits"] > 0}
    assert len({day for _, _, day in bars}) >= 3  # spread over several days

    # Recent transactions: the newest ten, newest first.
    txs = env.dict_rows("SELECT id, amount, balance_after FROM credit_transactions "
                        "WHERE user_id = %s ORDER BY id DESC LIMIT 10", ALICE)
    rows = page.eval_on_selector_all(
        "#transactions tbody tr",
        "els => els.map(e => [e.dataset.id, e.cells[2].dataset.value, e.cells[3].dataset.value])")
    assert [(int(i), Decimal(a), Decimal(b)) for i, a, b in rows] == [
        (t["id"], t["amount"], t["balance_after"]) for t in txs]

    # BYOK keys as hints only.
    hint = env.one("SELECT key_hint FROM user_provider_keys WHERE user_id = %s", ALICE)
    keys_text = page.inner_text("#keys")
    assert "anthropic" in keys_text and hint in keys_text and "personal" in keys_text
    assert "sk-ant-test-0123456789abcd" not in page.content()

    # Packages, and Buy gives a checkout URL from the Stripe stand-in.
    packages = env.dict_rows("SELECT id, name FROM credit_packages WHERE is_active ORDER BY id")
    shown = page.eval_on_selector_all(".pkg", "els => els.map(e => Number(e.dataset.package))")
    assert sorted(shown) == [p["id"] for p in packages]
    before = len(stub.checkout_requests())
    page.click('button[data-package="2"]')
    link = page.wait_for_selector("#checkout-url", timeout=20_000)
    url = link.get_attribute("href")
    assert url and url.startswith(stub.base_url + "/c/pay/cs_test_")
    assert len(stub.checkout_requests()) == before + 1
    session = stub.last_session
    assert session["metadata"]["user_id"] == ALICE
    assert session["metadata"]["package_id"] == "2"
    assert session["url"] == url

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 20_000
    assert page.problems == []


def test_admin_picks_a_user(world: tuple[PluginEnv, StripeStub], page: Any) -> None:
    env, _ = world
    sign_in(page, env, MASTER_KEY)
    page.wait_for_selector("#admin:not(.hidden)", timeout=20_000)
    options = page.eval_on_selector_all("#user-list option", "els => els.map(e => e.value)")
    assert ALICE in options and BOB in options
    page.fill("#user-pick", BOB)
    page.click("#user-go")
    page.wait_for_selector(f'#account-user:has-text("{BOB}")', timeout=20_000)
    account = db_account(env, BOB)
    assert number(page, "#balance") == account["balance"]
    assert number(page, "#available") == account["balance"] - account["held"]
    assert page.text_content("#power-level") == account["power_level"]
    assert page.problems == []


def test_a_bad_key_is_told_so(world: tuple[PluginEnv, StripeStub], page: Any) -> None:
    env, _ = world
    sign_in(page, env, "sk-not-a-real-key")
    page.wait_for_selector("#notice.error", timeout=20_000)
    assert "not accepted" in page.inner_text("#notice")
    assert page.is_hidden("#dash")
