"""The /credits API on the real LiteLLM proxy, against a real PostgreSQL.

One proxy for the whole module (``api_proxy``). Users are told apart by their test keys:
``sk-user-<name>`` is internal_user ``<name>``, the master key is a proxy admin.
Every refusal is checked to have written nothing, by counting rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devtools.proxy import ProxyProcess

pytestmark = pytest.mark.e2e

Sql = Callable[..., list[tuple[Any, ...]]]
SECRET = "sk-e2e-SECRET-9f8e7d6c5b4a-do-not-leak"


def count(sql: Sql, table: str) -> int:
    return int(sql(f"SELECT count(*) FROM {table}")[0][0])


def snapshot(sql: Sql) -> tuple[int, ...]:
    """Row counts of every table an API call could write to."""
    return tuple(
        count(sql, t)
        for t in ("credit_transactions", "user_credits", "credit_packages", "user_provider_keys")
    ) + (int(sql("SELECT count(*) FROM credit_packages WHERE updated_by IS NOT NULL")[0][0]),)


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert "error" in body, body
    return body["error"]  # type: ignore[no-any-return]


# --- discovery ------------------------------------------------------------------------


def test_openapi_lists_the_credits_paths_under_the_credits_tag(api: Any) -> None:
    spec = api.get("/openapi.json").json()
    paths = {p: ops for p, ops in spec["paths"].items() if p.startswith("/credits/")}
    expected = {
        "/credits/balance": {"get"},
        "/credits/transactions": {"get"},
        "/credits/usage": {"get"},
        "/credits/packages": {"get"},
        "/credits/purchase": {"post"},
        "/credits/stripe/webhook": {"post"},
        "/credits/admin/grant": {"post"},
        "/credits/admin/users/{user_id}/power-level": {"put"},
        "/credits/admin/users/{user_id}/tier": {"put"},
        "/credits/admin/packages": {"post"},
        "/credits/admin/packages/{package_id}": {"patch", "delete"},
        "/credits/keys": {"get", "post"},
        "/credits/keys/{provider}/{name}": {"delete"},
        "/credits/keys/{provider}/{name}/default": {"put"},
    }
    for path, methods in expected.items():
        assert path in paths, f"{path} missing from /openapi.json"
        assert set(paths[path]) >= methods
        for method in methods:
            assert paths[path][method]["tags"] == ["credits"]
    grant = spec["components"]["schemas"]["GrantBody"]["properties"]["amount"]
    assert grant["type"] == "string"


# --- authentication and identity ----------------------------------------------------------


def test_bad_or_missing_key_is_401_and_writes_nothing(api: Any, api_sql: Sql) -> None:
    before = snapshot(api_sql)
    assert api.get("/credits/balance", key="sk-not-a-key").status_code == 401
    assert api.get("/credits/balance", key=None).status_code == 401
    r = api.post("/credits/admin/grant", key="sk-nope", json={"user_id": "x", "amount": "5"})
    assert r.status_code == 401
    r = api.post("/credits/keys", key=None,
                 json={"provider": "openai", "name": "k", "secret": SECRET})
    assert r.status_code == 401
    assert SECRET not in r.text
    assert snapshot(api_sql) == before


def test_balance_own_and_admin_view(api: Any) -> None:
    r = api.post("/credits/admin/grant", json={"user_id": "alice", "amount": "25.5"})
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == "25.50000000"

    mine = api.get("/credits/balance", key=api.user("alice"))
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["user_id"] == "alice"
    assert body["balance"] == "25.50000000"
    assert body["available"] == "25.50000000"
    assert body["held"] == "0"
    assert body["tier"] == "free"
    assert body["power_level"] == "balanced"
    assert "quota_used_pct" in body and "monthly_quota" in body
    assert isinstance(body["balance"], str)  # money is text, never a JSON number

    # The same key may name itself explicitly.
    assert api.get("/credits/balance", key=api.user("alice"),
                   params={"user_id": "alice"}).status_code == 200
    # An admin may read anyone's.
    admin = api.get("/credits/balance", params={"user_id": "alice"})
    assert admin.status_code == 200 and admin.json()["balance"] == "25.50000000"


def test_user_cannot_read_another_users_data(api: Any) -> None:
    api.post("/credits/admin/grant", json={"user_id": "bob", "amount": "7"})
    for path in ("/credits/balance", "/credits/transactions", "/credits/usage", "/credits/keys"):
        r = api.get(path, key=api.user("alice"), params={"user_id": "bob"})
        assert r.status_code == 403, (path, r.text)
        error = error_of(r)
        assert error["code"] == "forbidden"
        assert "bob" in error["message"] and "admin" in error["message"]
        assert "7.0000" not in r.text


def test_unknown_account_is_404(api: Any) -> None:
    r = api.get("/credits/balance", key=api.user("nobody-here"))
    assert r.status_code == 404
    assert error_of(r)["code"] == "no_credit_account"
    r = api.get("/credits/balance", params={"user_id": "also-nobody"})
    assert r.status_code == 404


def test_user_id_param_is_validated(api: Any) -> None:
    r = api.get("/credits/balance", params={"user_id": "x" * 256})
    assert r.status_code == 422
    r = api.get("/credits/balance", params={"user_id": "bad\x01id"})
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_user_id"


# --- transactions ---------------------------------------------------------------------------


def test_transactions_paginate_and_filter_by_date(api: Any) -> None:
    for i in range(5):
        r = api.post("/credits/admin/grant",
                     json={"user_id": "carol", "amount": f"{i + 1}", "description": f"g{i}"})
        assert r.status_code == 200, r.text
    page1 = api.get("/credits/transactions", key=api.user("carol"), params={"limit": 2})
    assert page1.status_code == 200, page1.text
    body = page1.json()
    assert body["user_id"] == "carol" and body["next_offset"] == 2
    txs = body["transactions"]
    assert [t["amount"] for t in txs] == ["5.00000000", "4.00000000"]  # newest first
    assert txs[0]["balance_after"] == "15.00000000"
    assert txs[0]["transaction_type"] == "admin_adjustment"
    assert txs[0]["created_by"] == "default_user_id"
    page3 = api.get("/credits/transactions", key=api.user("carol"),
                    params={"limit": 2, "offset": 4}).json()
    assert [t["amount"] for t in page3["transactions"]] == ["1.00000000"]
    assert page3["next_offset"] is None

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    earlier = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert api.get("/credits/transactions", key=api.user("carol"),
                   params={"since": later}).json()["transactions"] == []
    assert api.get("/credits/transactions", key=api.user("carol"),
                   params={"until": earlier}).json()["transactions"] == []
    both = api.get("/credits/transactions", key=api.user("carol"),
                   params={"since": earlier, "until": later}).json()
    assert len(both["transactions"]) == 5


def test_transactions_bad_query_is_refused(api: Any) -> None:
    key = api.user("carol")
    assert api.get("/credits/transactions", key=key, params={"limit": 0}).status_code == 422
    assert api.get("/credits/transactions", key=key, params={"limit": 5000}).status_code == 422
    assert api.get("/credits/transactions", key=key, params={"offset": -1}).status_code == 422
    assert api.get("/credits/transactions", key=key,
                   params={"since": "yesterday"}).status_code == 422
    now = datetime.now(UTC).isoformat()
    r = api.get("/credits/transactions", key=key, params={"since": now, "until": now})
    assert r.status_code == 400
    assert "since" in error_of(r)["message"]


# --- usage ------------------------------------------------------------------------------------


def _seed_usage(sql: Sql) -> None:
    rows = [
        ("req-u1", "dave", "gpt-4o", "openai", 10, 5, "0.0001", "0.25"),
        ("req-u2", "dave", "gpt-4o", "openai", 20, 10, "0.0002", "0.5"),
        ("req-u3", "dave", "claude", "anthropic", 30, 15, "0.0003", "0.75"),
        ("req-u4", "erin", "gpt-4o", "openai", 40, 20, "0.0004", "1"),
    ]
    for rid, user, model, provider, p, c, cost, credits in rows:
        sql(
            "INSERT INTO llm_usage_log (request_id, user_id, model, model_group, provider, "
            "prompt_tokens, completion_tokens, total_tokens, provider_cost_usd, credits_charged, "
            "success) VALUES (%s, %s, %s, 'test-model', %s, %s, %s, %s, %s, %s, true)",
            rid, user, model, provider, p, c, p + c, cost, credits,
        )


def test_usage_rows_and_daily_summary(api: Any, api_sql: Sql) -> None:
    _seed_usage(api_sql)
    r = api.get("/credits/usage", key=api.user("dave"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert {row["request_id"] for row in body["rows"]} == {"req-u1", "req-u2", "req-u3"}
    assert all(row["user_id"] == "dave" for row in body["rows"])
    assert body["daily_summary_source"] == "usage_daily_summary"
    assert body["daily_summary_refreshed_at"] is not None
    summary = {(s["model"], s["provider"]): s for s in body["daily_summary"]}
    assert set(summary) == {("gpt-4o", "openai"), ("claude", "anthropic")}
    assert summary[("gpt-4o", "openai")]["requests"] == 2
    assert summary[("gpt-4o", "openai")]["credits_charged"] == "0.75000000"
    assert summary[("gpt-4o", "openai")]["total_tokens"] == 45
    assert summary[("claude", "anthropic")]["provider_cost_usd"] == "0.0003000000"

    page = api.get("/credits/usage", key=api.user("dave"), params={"limit": 1}).json()
    assert len(page["rows"]) == 1 and page["next_offset"] == 1

    # Admin: one user, or everyone.
    erin = api.get("/credits/usage", params={"user_id": "erin"}).json()
    assert [row["request_id"] for row in erin["rows"]] == ["req-u4"]
    everyone = api.get("/credits/usage", params={"all_users": "true"}).json()
    assert {row["request_id"] for row in everyone["rows"]} >= {"req-u1", "req-u4"}
    assert everyone["user_id"] is None
    gpt = [s for s in everyone["daily_summary"] if s["model"] == "gpt-4o"]
    assert gpt[0]["requests"] == 3

    # A user cannot widen the view.
    assert api.get("/credits/usage", key=api.user("dave"),
                   params={"all_users": "true"}).status_code == 403
    assert api.get("/credits/usage", key=api.user("dave"),
                   params={"user_id": "erin"}).status_code == 403


# --- packages -----------------------------------------------------------------------------------


def test_packages_lists_the_active_ones(api: Any) -> None:
    r = api.get("/credits/packages", key=api.user("alice"))
    assert r.status_code == 200
    packages = r.json()["packages"]
    assert [p["name"] for p in packages[:4]] == [
        "Starter Pack", "Value Pack", "Pro Pack", "Enterprise Pack"]
    assert packages[0]["credits"] == "100.00000000" and packages[0]["price_usd"] == "10.00"
    assert api.get("/credits/packages", key=api.user("alice"),
                   params={"include_inactive": "true"}).status_code == 403
    assert api.get("/credits/packages", params={"include_inactive": "true"}).status_code == 200


def test_admin_package_lifecycle(api: Any, api_sql: Sql) -> None:
    r = api.post("/credits/admin/packages", json={
        "name": "Tiny Pack", "credits": "12.5", "price_usd": "1.99",
        "description": "for trying", "badge": "NEW", "sort_order": 10,
    })
    assert r.status_code == 201, r.text
    pkg = r.json()
    pid = pkg["id"]
    assert pkg["credits"] == "12.50000000" and pkg["price_usd"] == "1.99"
    assert pkg["updated_by"] == "default_user_id" and pkg["is_active"] is True
    listed = api.get("/credits/packages", key=api.user("alice")).json()["packages"]
    assert pid in [p["id"] for p in listed]

    r = api.patch(f"/credits/admin/packages/{pid}",
                  json={"price_usd": "2.49", "badge": None}, key="sk-admin-ops")
    assert r.status_code == 200, r.text
    assert r.json()["price_usd"] == "2.49" and r.json()["badge"] is None
    assert r.json()["name"] == "Tiny Pack" and r.json()["updated_by"] == "ops"

    r = api.delete(f"/credits/admin/packages/{pid}")
    assert r.status_code == 200 and r.json()["is_active"] is False
    listed = api.get("/credits/packages", key=api.user("alice")).json()["packages"]
    assert pid not in [p["id"] for p in listed]
    r = api.post("/credits/purchase", key=api.user("alice"), json={"package_id": pid})
    assert r.status_code == 409
    assert "no longer on sale" in error_of(r)["message"]

    row = api_sql("SELECT is_active, updated_by, price_usd::text FROM credit_packages "
                  "WHERE id = %s", pid)
    assert row == [(False, "default_user_id", "2.49")]


def test_admin_package_bad_input_writes_nothing(api: Any, api_sql: Sql) -> None:
    before = snapshot(api_sql)
    good = {"name": "X", "credits": "10", "price_usd": "1.00"}
    cases: list[tuple[dict[str, Any], int]] = [
        ({**good, "credits": 10.0}, 422),
        ({**good, "credits": 10}, 422),
        ({**good, "price_usd": 1.5}, 422),
        ({**good, "credits": "-5"}, 400),
        ({**good, "credits": "0"}, 400),
        ({**good, "credits": "NaN"}, 400),
        ({**good, "credits": "1e400"}, 400),
        ({**good, "credits": "99999999999"}, 400),
        ({**good, "price_usd": "1.001"}, 400),
        ({**good, "price_usd": "100000000"}, 400),
        ({**good, "discount_percentage": "100"}, 400),
        ({**good, "name": "x" * 256}, 422),
        ({**good, "name": "   "}, 400),
        ({**good, "description": "d" * 1001}, 422),
        ({**good, "unknown": 1}, 422),
        ({**good, "is_active": "yes"}, 422),
        ({**good, "sort_order": "1"}, 422),
        ({"credits": "10", "price_usd": "1.00"}, 422),
    ]
    for body, status in cases:
        r = api.post("/credits/admin/packages", json=body)
        assert r.status_code == status, (body, r.status_code, r.text)
        assert error_of(r)["message"]
    assert api.post("/credits/admin/packages", key=api.user("alice"),
                    json=good).status_code == 403
    assert api.patch("/credits/admin/packages/1", key=api.user("alice"),
                     json={"price_usd": "0.01"}).status_code == 403
    assert api.delete("/credits/admin/packages/1", key=api.user("alice")).status_code == 403
    assert api.patch("/credits/admin/packages/1", json={}).status_code == 400
    assert api.patch("/credits/admin/packages/1", json={"name": None}).status_code == 400
    assert api.patch("/credits/admin/packages/1", json={"credits": "-1"}).status_code == 400
    assert api.patch("/credits/admin/packages/999999", json={"name": "y"}).status_code == 404
    assert api.delete("/credits/admin/packages/999999").status_code == 404
    assert api.delete("/credits/admin/packages/0").status_code == 422
    assert snapshot(api_sql) == before
    assert api.get("/credits/packages").json()["packages"][0]["price_usd"] == "10.00"


# --- admin grant ----------------------------------------------------------------------------------


def test_grant_and_adjust(api: Any, api_sql: Sql) -> None:
    r = api.post("/credits/admin/grant", json={
        "user_id": "frank", "amount": "100", "description": "welcome", "idempotency_key": "g-1"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["amount"] == "100" and first["balance"] == "100.00000000"
    # The same idempotency key again moves nothing.
    again = api.post("/credits/admin/grant", json={
        "user_id": "frank", "amount": "100", "idempotency_key": "g-1"}).json()
    assert again["transaction_id"] == first["transaction_id"]
    assert again["balance"] == "100.00000000"

    r = api.post("/credits/admin/grant", key="sk-admin-ops",
                 json={"user_id": "frank", "amount": "-30.25"})
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == "69.75000000" and r.json()["amount"] == "-30.25"
    rows = api_sql("SELECT amount::text, created_by, description FROM credit_transactions "
                   "WHERE user_id = 'frank' ORDER BY id")
    assert rows == [("100.00000000", "default_user_id", "welcome"),
                    ("-30.25000000", "ops", "admin adjustment")]

    # Taking back more than the balance is refused, with nothing written.
    before = snapshot(api_sql)
    r = api.post("/credits/admin/grant", json={"user_id": "frank", "amount": "-1000"})
    assert r.status_code == 409
    assert "nothing was written" in error_of(r)["message"]
    r = api.post("/credits/admin/grant", json={"user_id": "no-such-user", "amount": "-1"})
    assert r.status_code == 404
    assert snapshot(api_sql) == before


def test_grant_bad_input_writes_nothing(api: Any, api_sql: Sql) -> None:
    before = snapshot(api_sql)
    cases: list[tuple[Any, int]] = [
        ({"user_id": "gina", "amount": 1.5}, 422),
        ({"user_id": "gina", "amount": 5}, 422),
        ({"user_id": "gina", "amount": None}, 422),
        ({"user_id": "gina", "amount": "0"}, 400),
        ({"user_id": "gina", "amount": "-0"}, 400),
        ({"user_id": "gina", "amount": "NaN"}, 400),
        ({"user_id": "gina", "amount": "Infinity"}, 400),
        ({"user_id": "gina", "amount": "-inf"}, 400),
        ({"user_id": "gina", "amount": "1e999999"}, 400),
        ({"user_id": "gina", "amount": "1000000000.00000001"}, 400),
        ({"user_id": "gina", "amount": "0.000000001"}, 400),
        ({"user_id": "gina", "amount": "ten"}, 400),
        ({"user_id": "gina", "amount": "--5"}, 400),
        ({"user_id": "gina", "amount": "9" * 65}, 422),
        ({"user_id": "x" * 256, "amount": "1"}, 422),
        ({"user_id": "", "amount": "1"}, 422),
        ({"user_id": "bad\nid", "amount": "1"}, 400),
        ({"user_id": "gina", "amount": "1", "description": "d" * 1001}, 422),
        ({"user_id": "gina", "amount": "1", "description": "nul\x00byte"}, 400),
        ({"user_id": "gina", "amount": "1", "idempotency_key": "k" * 256}, 422),
        ({"user_id": "gina", "amount": "1", "created_by": "me"}, 422),
        ({"user_id": 42, "amount": "1"}, 422),
        (["gina", "1"], 422),
        ({"amount": "1"}, 422),
    ]
    for body, status in cases:
        r = api.post("/credits/admin/grant", json=body)
        assert r.status_code == status, (body, r.status_code, r.text)
        assert error_of(r)["message"]
    r = api.post("/credits/admin/grant", content=b'{"user_id": "gina", "amount": ',
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in error_of(r)["message"]
    r = api.post("/credits/admin/grant", content=b'{"user_id": "gina", "amount": NaN}',
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    r = api.post("/credits/admin/grant", content=b"x" * 70_000,
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # A user cannot grant, not even to themselves.
    r = api.post("/credits/admin/grant", key=api.user("gina"),
                 json={"user_id": "gina", "amount": "1000"})
    assert r.status_code == 403
    assert "proxy admin" in error_of(r)["message"]
    assert snapshot(api_sql) == before
    assert api_sql("SELECT count(*) FROM user_credits WHERE user_id = 'gina'") == [(0,)]


def test_float_message_is_clear(api: Any) -> None:
    r = api.post("/credits/admin/grant", json={"user_id": "gina", "amount": 0.1})
    error = error_of(r)
    assert error["code"] == "invalid_request"
    assert "amount must be a decimal string" in error["message"]
    assert "0.1" not in r.text  # submitted values are not echoed


# --- power level and tier -------------------------------------------------------------------------


def test_admin_sets_power_level_and_tier(api: Any, api_sql: Sql) -> None:
    api.post("/credits/admin/grant", json={"user_id": "hank", "amount": "10"})
    r = api.put("/credits/admin/users/hank/power-level", json={"level": "precision"},
                key="sk-admin-ops")
    assert r.status_code == 200, r.text
    assert r.json()["power_level"] == "precision"
    r = api.put("/credits/admin/users/hank/tier", json={"tier": "pro"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tier"] == "pro"
    assert body["monthly_quota"] == "5000.00000000"
    assert body["low_balance_threshold"] == "50.00000000"
    assert api_sql("SELECT updated_by FROM user_credits WHERE user_id = 'hank'") == [
        ("default_user_id",)]
    mine = api.get("/credits/balance", key=api.user("hank")).json()
    assert mine["power_level"] == "precision" and mine["tier"] == "pro"


def test_power_level_and_tier_refusals(api: Any, api_sql: Sql) -> None:
    api.post("/credits/admin/grant", json={"user_id": "ivy", "amount": "10"})
    before = api_sql("SELECT power_level, tier, updated_at FROM user_credits "
                     "WHERE user_id = 'ivy'")
    put = api.put
    assert put("/credits/admin/users/ivy/power-level", json={"level": "turbo"}).status_code == 422
    assert put("/credits/admin/users/ivy/power-level", json={"level": 1}).status_code == 422
    assert put("/credits/admin/users/ivy/power-level", json={}).status_code == 422
    r = put("/credits/admin/users/ivy/tier", json={"tier": "platinum"})
    assert r.status_code == 400
    assert "free" in error_of(r)["message"] and "pro" in error_of(r)["message"]
    assert put("/credits/admin/users/ivy/tier", json={"tier": "t" * 65}).status_code == 422
    r = put("/credits/admin/users/ivy/power-level", key=api.user("ivy"), json={"level": "eco"})
    assert r.status_code == 403
    r = put("/credits/admin/users/ivy/tier", key=api.user("ivy"), json={"tier": "pro"})
    assert r.status_code == 403
    r = put("/credits/admin/users/ghost/power-level", json={"level": "eco"})
    assert r.status_code == 404
    r = put("/credits/admin/users/ghost/tier", json={"tier": "pro"})
    assert r.status_code == 404
    assert api_sql("SELECT power_level, tier, updated_at FROM user_credits "
                   "WHERE user_id = 'ivy'") == before
    assert api_sql("SELECT count(*) FROM user_credits WHERE user_id = 'ghost'") == [(0,)]


# --- purchase (the Stripe side is in test_stripe_flow.py) -------------------------------


def test_purchase_refusals_write_nothing(api: Any, api_sql: Sql) -> None:
    before = snapshot(api_sql)
    key = api.user("jack")
    r = api.post("/credits/purchase", key=key, json={"package_id": 999999})
    assert r.status_code == 404 and "no credit package" in error_of(r)["message"]
    assert api.post("/credits/purchase", key=key, json={"package_id": "1"}).status_code == 422
    assert api.post("/credits/purchase", key=key, json={"package_id": 1.0}).status_code == 422
    assert api.post("/credits/purchase", key=key, json={"package_id": 0}).status_code == 422
    assert api.post("/credits/purchase", key=key, json={}).status_code == 422
    assert api.post("/credits/purchase", key=key,
                    json={"package_id": 1, "nonce": "has space"}).status_code == 422
    r = api.post("/credits/purchase", key=key, json={"package_id": 1},
                 params={"user_id": "alice"})
    assert r.status_code == 403
    assert snapshot(api_sql) == before


# --- BYOK keys -------------------------------------------------------------------------


def test_keys_lifecycle_over_http(api: Any, api_sql: Sql, api_proxy: ProxyProcess) -> None:
    key = api.user("kate")
    seen: list[str] = []

    def call(method: str, path: str, **kwargs: Any) -> Any:
        r = api.request(method, path, **kwargs)
        seen.append(r.text)
        return r

    r = call("POST", "/credits/keys", key=key,
             json={"provider": "openai", "name": "main", "secret": SECRET})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["hint"] == "…leak" and info["is_default"] is True and info["user_id"] == "kate"
    r = call("POST", "/credits/keys", key=key, json={
        "provider": "openai", "name": "backup", "secret": SECRET + "-2", "default": False})
    assert r.status_code == 201 and r.json()["is_default"] is False

    listed = call("GET", "/credits/keys", key=key).json()
    assert {(k["provider"], k["name"], k["is_default"]) for k in listed["keys"]} == {
        ("openai", "main", True), ("openai", "backup", False)}
    r = call("PUT", "/credits/keys/openai/backup/default", key=key)
    assert r.status_code == 200 and r.json()["is_default"] is True
    r = call("DELETE", "/credits/keys/openai/main", key=key)
    assert r.status_code == 200, r.text
    assert r.json()["is_active"] is False and r.json()["remaining_active"] == ["backup"]

    # An admin manages anyone's keys; another user cannot touch them.
    assert call("GET", "/credits/keys", params={"user_id": "kate"}).json()["keys"]
    other = api.user("leo")
    assert call("GET", "/credits/keys", key=other,
                params={"user_id": "kate"}).status_code == 403
    assert call("DELETE", "/credits/keys/openai/backup", key=other,
                params={"user_id": "kate"}).status_code == 403
    assert call("PUT", "/credits/keys/openai/backup/default", key=other,
                params={"user_id": "kate"}).status_code == 403
    r = call("POST", "/credits/keys", key=other, params={"user_id": "kate"},
             json={"provider": "openai", "name": "evil", "secret": SECRET})
    assert r.status_code == 403
    assert call("GET", "/credits/keys", key=other).json()["keys"] == []
    assert api_sql("SELECT key_name, is_active FROM user_provider_keys WHERE user_id = 'kate' "
                   "ORDER BY key_name") == [("backup", True), ("main", False)]
    r = call("DELETE", "/credits/keys/openai/backup", params={"user_id": "kate"})
    assert r.status_code == 200 and r.json()["is_active"] is False

    # Refusals: the secret never comes back, whatever else was wrong.
    before = snapshot(api_sql)
    bad_bodies: list[Any] = [
        {"provider": "openai", "secret": SECRET},                       # name missing
        {"provider": "openai", "name": "n", "secret": SECRET, "x": 1},  # unknown field
        {"provider": "open ai!", "name": "n", "secret": SECRET},       # bad provider
        {"provider": "openai", "name": "n" * 65, "secret": SECRET},    # name too long
        {"provider": "openai", "name": "n", "secret": SECRET, "default": "yes"},
        {"provider": "openai", "name": "n", "secret": 12345},
        {"provider": "openai", "name": "n", "secret": ""},
        {"provider": "openai", "name": "n", "secret": SECRET + "\n" + SECRET},
        {"provider": "openai", "name": "n", "secret": "s" * 5000},
    ]
    for body in bad_bodies:
        r = call("POST", "/credits/keys", key=key, json=body)
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert error_of(r)["message"]
    r = call("POST", "/credits/keys", key=key,
             content=b'{"provider": "openai", "secret": "' + SECRET.encode() + b'"',
             headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    # An active name cannot be added twice.
    r = call("POST", "/credits/keys", key=key,
             json={"provider": "openai", "name": "x1", "secret": SECRET})
    assert r.status_code == 201
    before = snapshot(api_sql)
    r = call("POST", "/credits/keys", key=key,
             json={"provider": "openai", "name": "x1", "secret": SECRET})
    assert r.status_code == 409
    assert call("DELETE", "/credits/keys/openai/nope", key=key).status_code == 404
    assert call("PUT", "/credits/keys/openai/nope/default", key=key).status_code == 404
    assert snapshot(api_sql) == before

    for text in seen:
        assert SECRET not in text
    assert SECRET not in api_proxy.log_text()
    stored = api_sql("SELECT encrypted_key, key_hint FROM user_provider_keys")
    for blob, hint in stored:
        assert SECRET.encode() not in bytes(blob) and SECRET not in hint


# --- mounting (no proxy needed; the authorization rule is tests/unit/test_api_auth.py) ------


def test_mount_is_idempotent() -> None:
    from fastapi import FastAPI

    from litellm_credits.api import app as credits_api

    app = FastAPI()
    credits_api.mount(app)
    credits_api.mount(app)
    assert sum(credits_api._is_ours(r) for r in app.router.routes) == 1
    other = FastAPI()
    other.include_router(credits_api.router)
    credits_api.mount(other)  # included by someone else already: not added twice
    assert sum(credits_api._is_ours(r) for r in other.router.routes) == 1
    assert "/credits/balance" in app.openapi()["paths"]
