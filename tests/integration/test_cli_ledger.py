"""The ``litellm-credits`` console script end to end, as a subprocess against a real
PostgreSQL: grant, balance, history, set-level, set-tier, usage, and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest

CLI = str(Path(sys.executable).with_name("litellm-credits"))
D = Decimal


def cli(*args: str, url: str | None, config: Path | None = None,
        env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDITS_DATABASE_URL", "DATABASE_URL", "CREDITS_CONFIG")}
    if url is not None:
        env["CREDITS_DATABASE_URL"] = url
    if config is not None:
        env["CREDITS_CONFIG"] = str(config)
    env.update(env_extra or {})
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def ok_json(*args: str, url: str, **kwargs: Any) -> Any:
    proc = cli(*args, "--json", url=url, **kwargs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


def refused(*args: str, url: str | None, code: int = 1, **kwargs: Any) -> str:
    proc = cli(*args, url=url, **kwargs)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one clear line, no traceback
    assert lines[0].startswith("error: ")
    return lines[0]


def state(url: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM user_credits), "
            "(SELECT count(*) FROM credit_transactions), "
            "(SELECT coalesce(sum(balance), 0) FROM user_credits), "
            "(SELECT max(updated_at) FROM user_credits)").fetchone()
        assert row is not None
        return tuple(row)


@pytest.fixture
def tiers_config(tmp_path: Path) -> Path:
    path = tmp_path / "credits.yaml"
    path.write_text(
        "credits_per_usd: '100'\n"
        "tiers:\n"
        "  free: {}\n"
        "  pro:\n"
        "    monthly_quota: '5000'\n"
        "    low_balance_threshold: '25.5'\n")
    return path


def test_grant_balance_history_end_to_end(db_url: str) -> None:
    first = ok_json("grant", "alice", "100", "--description", "welcome", url=db_url)
    assert first == {"user_id": "alice", "new_balance": "100.00000000", "transaction_id": 1}
    bonus = ok_json("grant", "alice", "2.5", "--type", "bonus", "--key", "promo-1", url=db_url)
    assert (bonus["new_balance"], bonus["transaction_id"]) == ("102.50000000", 2)
    # The same idempotency key again moves nothing.
    assert ok_json("grant", "alice", "2.5", "--type", "bonus", "--key", "promo-1",
                   url=db_url) == bonus
    taken = ok_json("grant", "alice", "-0.5", url=db_url)
    assert taken["new_balance"] == "102.00000000"

    assert ok_json("balance", "alice", url=db_url) == {
        "user_id": "alice", "balance": "102.00000000", "held": "0", "available": "102.00000000",
        "tier": "free", "power_level": "balanced", "level_override_allowed": True,
        "monthly_quota": None, "quota_used_pct": "0", "low_balance_threshold": None,
    }
    history = ok_json("history", "alice", url=db_url)
    assert [(h["transaction_type"], h["amount"], h["balance_after"]) for h in history] == [
        ("admin_adjustment", "-0.50000000", "102.00000000"),
        ("bonus", "2.50000000", "102.50000000"),
        ("admin_adjustment", "100.00000000", "100.00000000"),
    ]
    assert history[2]["description"] == "welcome"
    assert all(h["created_by"].startswith("cli:") for h in history)
    assert len(ok_json("history", "alice", "--limit", "1", url=db_url)) == 1

    # The human table has a header row and one row per transaction.
    table = cli("history", "alice", url=db_url)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "transaction_type", "amount"]
    assert len(lines) == 2 + 3

    # A correction larger than the balance is refused and writes nothing.
    before = state(db_url)
    line = refused("grant", "alice", "-102.00000001", url=db_url)
    assert "too low for that adjustment; nothing was written" in line
    assert state(db_url) == before


def test_set_level_set_tier_and_usage(db_url: str, tiers_config: Path) -> None:
    ok_json("grant", "bob", "50", url=db_url)
    assert ok_json("set-level", "bob", "precision", url=db_url) == {
        "user_id": "bob", "power_level": "precision"}
    assert ok_json("set-tier", "bob", "pro", url=db_url, config=tiers_config) == {
        "user_id": "bob", "tier": "pro", "monthly_quota": "5000", "low_balance_threshold": "25.5"}
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT power_level, tier, monthly_quota, low_balance_threshold, updated_by "
            "LIKE 'cli:%%' FROM user_credits WHERE user_id = 'bob'").fetchone() == (
            "precision", "pro", D("5000"), D("25.5"), True)
        conn.execute("SELECT * FROM settle_usage(%s::jsonb)", (json.dumps([
            {"request_id": "u-1", "user_id": "bob", "model": "gpt-4o", "provider": "openai",
             "total_tokens": 100, "provider_cost_usd": "0.001", "credits_charged": "1.5",
             "success": True},
            {"request_id": "u-2", "user_id": "bob", "model": "gpt-4o", "provider": "openai",
             "total_tokens": 40, "provider_cost_usd": "0.0004", "credits_charged": "0.5",
             "success": True},
            {"request_id": "u-3", "user_id": "bob", "model": "gpt-4o", "provider": "openai",
             "success": False},
            {"request_id": "u-4", "user_id": "carl", "model": "claude", "provider": "anthropic",
             "total_tokens": 10, "credits_charged": "3", "success": True},
        ]),))
        conn.commit()
    balance = ok_json("balance", "bob", url=db_url)
    assert (balance["balance"], balance["tier"], balance["power_level"],
            balance["monthly_quota"], balance["quota_used_pct"]) == (
        "48.00000000", "pro", "precision", "5000.00000000", "0.04")

    rows = ok_json("usage", "--user", "bob", url=db_url)
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["provider"], row["requests"], row["successes"],
            row["total_tokens"], D(row["credits_charged"]), D(row["provider_cost_usd"])) == (
        "gpt-4o", "openai", 3, 2, 140, D("2"), D("0.0014"))
    everyone = ok_json("usage", url=db_url)
    assert sorted((r["model"], r["requests"]) for r in everyone) == [
        ("claude", 1), ("gpt-4o", 3)]
    assert ok_json("usage", "--since", "2999-01-01", url=db_url) == []


def test_refusals_are_one_clear_line(db_url: str, tiers_config: Path) -> None:
    ok_json("grant", "dora", "10", url=db_url)
    before = state(db_url)

    line = refused("balance", "nobody", url=db_url)
    assert line == ("error: no credit account for user nobody; grant credits first: "
                    "litellm-credits grant USER AMOUNT")
    assert "no credit account for user ghost" in refused("set-level", "ghost", "eco", url=db_url)
    assert "no credit account for user ghost" in refused("set-tier", "ghost", "pro",
                                                         url=db_url, config=tiers_config)

    assert refused("grant", "dora", "abc", url=db_url) == "error: amount 'abc' is not a number"
    assert "must be positive" in refused("grant", "dora", "0", url=db_url)
    assert "more than 8 decimal places" in refused("grant", "dora", "0.000000001", url=db_url)
    assert "too large" in refused("grant", "dora", "1e12", url=db_url)
    assert "not a finite number" in refused("grant", "dora", "NaN", url=db_url)
    assert refused("set-level", "dora", "turbo", url=db_url) == (
        "error: unknown power level 'turbo'; use eco, balanced or precision")
    assert refused("grant", "", "5", url=db_url) == (
        "error: user id is empty; pass the LiteLLM user id")
    assert "255" in refused("balance", "u" * 256, url=db_url)
    assert "255" in refused("usage", "--user", "u" * 256, url=db_url)
    # An unknown tier is bad input like a bad level: exit 1, naming the configured tiers.
    line = refused("set-tier", "dora", "platinum", url=db_url, config=tiers_config, code=1)
    assert line == "error: unknown tier 'platinum'; configured tiers: free, pro"
    assert state(db_url) == before


def test_history_of_an_unknown_user_is_empty(db_url: str) -> None:
    assert ok_json("history", "nobody", url=db_url) == []


def test_no_database_url_exits_2_naming_the_variable(db_url: str) -> None:
    for args in (("balance", "x"), ("grant", "x", "1"), ("migrate",), ("verify",)):
        line = refused(*args, url=None, code=2)
        assert "CREDITS_DATABASE_URL" in line, line
    # DATABASE_URL is the documented fallback.
    line = refused("balance", "nobody", url=None, env_extra={"DATABASE_URL": db_url})
    assert "no credit account for user nobody" in line


def test_an_unreachable_database_is_one_clear_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # Keep the test fast: cap the pool's start-up wait at 1 s (the bug is the same at 30 s).
    original = psycopg_pool.AsyncConnectionPool.open

    async def quick_open(self: Any, wait: bool = False, timeout: float = 30.0) -> None:
        await original(self, wait=wait, timeout=min(timeout, 1.0))

    monkeypatch.setattr(psycopg_pool.AsyncConnectionPool, "open", quick_open)
    monkeypatch.delenv("CREDITS_CONFIG", raising=False)
    monkeypatch.setenv("CREDITS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    from litellm_credits.cli import main as cli_module

    assert cli_module.main(["balance", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "database" in err[-1]


def test_usage_errors_from_argparse_exit_2(db_url: str) -> None:
    proc = cli("usage", "--since", "yesterday", url=db_url)
    assert proc.returncode == 2
    assert "'yesterday' is not a date like 2026-11-01" in proc.stderr
