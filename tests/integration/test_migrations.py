"""Migrations against a real PostgreSQL: from empty, re-run, checksum refusal,
concurrent runs, the CLI (migrate --dry-run, verify), and the schema the seed report binds."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from litellm_credits import errors
from litellm_credits.store import verify
from litellm_credits.store.migrate import load_migrations, migrate, pending

CLI = str(Path(sys.executable).with_name("litellm-credits"))

SPEC_TABLES = {
    "user_credits": (14, 5),
    "credit_transactions": (21, 6),
    "credit_packages": (13, 3),
    "power_level_configs": (10, 2),
    "user_provider_keys": (14, 6),
    "llm_usage_log": (27, 11),
}
# Every shipped migration, which must start with the three of the schema report.
EXPECTED_FILES = [(m.version, m.name) for m in load_migrations()]
FILENAMES = [m.filename for m in load_migrations()]
assert EXPECTED_FILES[:3] == [(1, "schema"), (2, "ledger"), (3, "settlement")]


def run_cli(*args: str, url: str | None, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDITS_DATABASE_URL", "DATABASE_URL", "CREDITS_CONFIG")}
    if url is not None:
        env["CREDITS_DATABASE_URL"] = url
    env.update(extra_env)
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def user_tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


# --- applying ----------------------------------------------------------------------


def test_load_migrations_finds_the_three_shipped_files() -> None:
    found = load_migrations()
    assert [(m.version, m.name) for m in found] == EXPECTED_FILES
    for m in found:
        assert m.checksum == hashlib.sha256(m.sql.encode("utf-8")).hexdigest()
        assert m.filename == f"{m.version:04d}_{m.name}.sql"


def test_migrate_from_empty_records_each_file_then_applies_nothing(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert user_tables(conn) == set()
        before = conn.execute("SELECT now()").fetchone()[0]

    assert [m.filename for m in pending(empty_db_url)] == FILENAMES
    applied = migrate(empty_db_url)
    assert [(m.version, m.name) for m in applied] == EXPECTED_FILES

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()
        after = conn.execute("SELECT now()").fetchone()[0]
        assert [(v, n) for v, n, _, _ in rows] == EXPECTED_FILES
        by_version = {m.version: m for m in load_migrations()}
        for version, _name, checksum, applied_at in rows:
            assert checksum == by_version[version].checksum
            assert len(checksum) == 64
            assert before <= applied_at <= after
        assert set(SPEC_TABLES) | {"schema_migrations", "credit_holds", "credit_settings"} \
            <= user_tables(conn)

    # A second run applies nothing and changes nothing.
    assert migrate(empty_db_url) == []
    assert pending(empty_db_url) == []
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        again = conn.execute(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()
        assert again == rows
        assert conn.execute("SELECT count(*) FROM credit_packages").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM power_level_configs").fetchone() == (3,)


def test_changed_checksum_is_refused_and_nothing_is_applied(empty_db_url: str) -> None:
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 2")
        # Pretend 0003 is still pending: a run that ignored the mismatch would try it.
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
        snapshot = conn.execute(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()

    with pytest.raises(errors.ChecksumMismatch) as info:
        migrate(empty_db_url)
    message = str(info.value)
    assert "0002_ledger.sql" in message
    assert "changed after it was applied" in message
    assert "new numbered migration" in message
    assert info.value.code == "migration_checksum_mismatch"

    with pytest.raises(errors.ChecksumMismatch):
        pending(empty_db_url)

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall() == snapshot

    # The CLI refuses the same way: one clear line, exit 1.
    proc = run_cli("migrate", url=empty_db_url)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: migration 0002_ledger.sql was changed")
    assert "Traceback" not in proc.stderr


def test_two_concurrent_migrations_apply_each_file_once(empty_db_url: str) -> None:
    results: list[list[str]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            results.append([m.filename for m in migrate(empty_db_url)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert len(results) == 2
    # Between them the two runs applied every file exactly once.
    assert sorted(results[0] + results[1]) == FILENAMES
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version"
        ).fetchall() == [(version, 1) for version, _ in EXPECTED_FILES]
        assert conn.execute("SELECT count(*) FROM credit_packages").fetchone() == (4,)


# --- CLI ---------------------------------------------------------------------------


def test_cli_migrate_dry_run_prints_sql_and_creates_nothing(empty_db_url: str) -> None:
    proc = run_cli("migrate", "--dry-run", url=empty_db_url)
    assert proc.returncode == 0, proc.stderr
    for m in load_migrations():
        assert f"-- {m.filename} (checksum {m.checksum[:12]})" in proc.stdout
    assert "CREATE TABLE user_credits" in proc.stdout
    assert "CREATE FUNCTION settle_usage" in proc.stdout
    assert f"{len(FILENAMES)} pending migration(s); nothing was run" in proc.stderr
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert user_tables(conn) == set()

    proc = run_cli("migrate", url=empty_db_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"applied {name}" for name in FILENAMES]

    proc = run_cli("migrate", "--dry-run", url=empty_db_url)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert "0 pending migration(s)" in proc.stderr

    proc = run_cli("migrate", url=empty_db_url)
    assert proc.returncode == 0
    assert proc.stdout.strip() == "database is up to date; nothing to apply"


def test_cli_verify_json_passes_then_fails_without_a_trigger(db_url: str) -> None:
    proc = run_cli("verify", "--json", url=db_url)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert report["checks"] == [
        {"component": "Tables", "count": 6, "expected": "6", "status": "PASS"},
        {"component": "Indexes", "count": 33, "expected": "30+", "status": "PASS"},
        {"component": "Seed Data", "count": 7, "expected": "7", "status": "PASS"},
        {"component": "Triggers", "count": 2, "expected": "2", "status": "PASS"},
        {"component": "Functions", "count": 3, "expected": "3", "status": "PASS"},
    ]
    assert report["support_tables"] == {
        "schema_migrations": True, "credit_holds": True, "credit_settings": True}

    human = run_cli("verify", url=db_url)
    assert human.returncode == 0
    assert "Support tables: schema_migrations (present)" in human.stdout
    assert "FAIL" not in human.stdout

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER trigger_user_credits_updated_at ON user_credits")
    proc = run_cli("verify", "--json", url=db_url)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    triggers = next(c for c in report["checks"] if c["component"] == "Triggers")
    assert triggers == {"component": "Triggers", "count": 1, "expected": "2", "status": "FAIL"}
    others = [c["status"] for c in report["checks"] if c["component"] != "Triggers"]
    assert others == ["PASS"] * 4


def test_verify_fails_on_a_changed_seed_row(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE credit_packages SET badge = 'HOT' WHERE name = 'Pro Pack'")
    checks, _ = verify.run_checks(db_url)
    seed = next(c for c in checks if c.component == "Seed Data")
    assert (seed.count, seed.ok) == (6, False)


def test_verify_run_checks_on_a_fresh_database(db_url: str) -> None:
    checks, support = verify.run_checks(db_url)
    assert [(c.component, c.count, c.ok) for c in checks] == [
        ("Tables", 6, True), ("Indexes", 33, True), ("Seed Data", 7, True),
        ("Triggers", 2, True), ("Functions", 3, True)]
    assert support == {"schema_migrations": True, "credit_holds": True, "credit_settings": True}


def test_verify_on_an_empty_database_fails_every_row(empty_db_url: str) -> None:
    checks, support = verify.run_checks(empty_db_url)
    assert [(c.component, c.count, c.ok) for c in checks] == [
        ("Tables", 0, False), ("Indexes", 0, False), ("Seed Data", 0, False),
        ("Triggers", 0, False), ("Functions", 0, False)]
    assert support == {"schema_migrations": False, "credit_holds": False,
                       "credit_settings": False}


# --- the schema from the catalog -------------------------------------------------------


def test_column_and_index_counts_per_table(db_conn: psycopg.Connection) -> None:
    columns = dict(db_conn.execute(
        "SELECT table_name, count(*) FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = ANY(%s) GROUP BY table_name",
        (list(SPEC_TABLES),)).fetchall())
    indexes = dict(db_conn.execute(
        "SELECT tablename, count(*) FROM pg_indexes "
        "WHERE schemaname = 'public' AND tablename = ANY(%s) GROUP BY tablename",
        (list(SPEC_TABLES),)).fetchall())
    assert columns == {t: c for t, (c, _) in SPEC_TABLES.items()}
    assert indexes == {t: i for t, (_, i) in SPEC_TABLES.items()}
    assert sum(indexes.values()) == 33


def test_unique_constraints_and_the_power_level_check(db_conn: psycopg.Connection) -> None:
    uniques = db_conn.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint "
        "WHERE contype = 'u' AND connamespace = 'public'::regnamespace ORDER BY 2").fetchall()
    assert uniques == [
        ("llm_usage_log", "llm_usage_log_request_id_key"),
        ("power_level_configs", "power_level_configs_power_level_key"),
        ("user_credits", "user_credits_user_id_key"),
        ("user_provider_keys", "user_provider_keys_user_provider_name_key"),
    ]
    check = db_conn.execute(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'c' AND conname = 'valid_power_level_config'").fetchall()
    assert len(check) == 1
    assert check[0][0] == "power_level_configs"
    for level in ("eco", "balanced", "precision"):
        assert f"'{level}'" in check[0][1]
    with pytest.raises(psycopg.errors.CheckViolation, match="valid_power_level_config"):
        db_conn.execute(
            "INSERT INTO power_level_configs (power_level, display_name, cost_multiplier, "
            "max_latency_ms, min_quality_score) VALUES ('turbo', 'Turbo', 2, 100, 0.5)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        db_conn.execute(
            "INSERT INTO power_level_configs (power_level, display_name, cost_multiplier, "
            "max_latency_ms, min_quality_score) VALUES ('eco', 'Eco 2', 2, 100, 0.5)")


def test_jsonb_where_the_seed_says_jsonb(db_conn: psycopg.Connection) -> None:
    rows = db_conn.execute(
        "SELECT table_name || '.' || column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND data_type = 'jsonb' AND table_name = ANY(%s) "
        "ORDER BY 1", (list(SPEC_TABLES),)).fetchall()
    assert [r[0] for r in rows] == [
        "credit_transactions.metadata",
        "llm_usage_log.request_metadata",
        "llm_usage_log.response_metadata",
        "power_level_configs.preferred_providers",
    ]


def test_money_columns_are_numeric_and_user_ids_text(db_conn: psycopg.Connection) -> None:
    rows = db_conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = ANY(%s) "
        "AND column_name IN ('balance', 'amount', 'balance_before', 'balance_after', "
        "'credits', 'price_usd', 'credits_charged', 'provider_cost_usd', 'user_id')",
        (list(SPEC_TABLES),)).fetchall()
    for table, column, data_type in rows:
        expected = "text" if column == "user_id" else "numeric"
        assert data_type == expected, (table, column)
    assert len(rows) == 12


def test_seed_rows_exactly_as_the_report(db_conn: psycopg.Connection) -> None:
    packages = db_conn.execute(
        "SELECT name, credits, price_usd, discount_percentage, badge, is_active "
        "FROM credit_packages ORDER BY sort_order").fetchall()
    assert packages == [
        ("Starter Pack", Decimal("100"), Decimal("10.00"), Decimal("0"), None, True),
        ("Value Pack", Decimal("500"), Decimal("45.00"), Decimal("10"), "MOST POPULAR", True),
        ("Pro Pack", Decimal("1000"), Decimal("80.00"), Decimal("20"), "BEST VALUE", True),
        ("Enterprise Pack", Decimal("5000"), Decimal("350.00"), Decimal("30"), None, True),
    ]
    levels = db_conn.execute(
        "SELECT power_level, display_name, cost_multiplier, max_latency_ms, "
        "min_quality_score, preferred_providers FROM power_level_configs ORDER BY id").fetchall()
    assert levels == [
        ("eco", "Eco Mode", Decimal("0.7"), 5000, Decimal("0.70"),
         ["openrouter", "together", "deepinfra"]),
        ("balanced", "Balanced Mode", Decimal("1.0"), 3000, Decimal("0.85"),
         ["openai", "anthropic", "openrouter"]),
        ("precision", "Precision Mode", Decimal("1.5"), 2000, Decimal("0.95"),
         ["anthropic", "openai"]),
    ]
    # The serial sequences continue after the seed ids.
    assert db_conn.execute(
        "INSERT INTO credit_packages (name, credits, price_usd) VALUES ('X', 1, 1) "
        "RETURNING id").fetchone() == (5,)


@pytest.mark.parametrize(
    ("table", "insert", "update", "key"),
    [
        ("user_credits", "INSERT INTO user_credits (user_id) VALUES ('trig')",
         "UPDATE user_credits SET tier = 'pro' WHERE user_id = 'trig'", "user_id = 'trig'"),
        ("credit_packages", None,
         "UPDATE credit_packages SET sort_order = 9 WHERE id = 1", "id = 1"),
    ],
)
def test_updated_at_triggers_bump_on_update(
    db_conn: psycopg.Connection, table: str, insert: str | None, update: str, key: str,
) -> None:
    if insert:
        db_conn.execute(insert)
    created = db_conn.execute(f"SELECT updated_at FROM {table} WHERE {key}").fetchone()[0]
    with db_conn.transaction():
        now = db_conn.execute("SELECT now()").fetchone()[0]
        db_conn.execute(update)
        bumped = db_conn.execute(f"SELECT updated_at FROM {table} WHERE {key}").fetchone()[0]
    assert bumped == now
    assert bumped > created
    # Even an explicit old value is overwritten: the trigger owns the column.
    db_conn.execute(f"UPDATE {table} SET updated_at = '2000-01-01' WHERE {key}")
    forced = db_conn.execute(f"SELECT updated_at FROM {table} WHERE {key}").fetchone()[0]
    assert forced > bumped
