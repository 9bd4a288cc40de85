"""KeyStore against a real PostgreSQL: add, list, revoke, defaults, rotation, no leaks."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from litellm_credits import errors
from litellm_credits.byok.keys import KeyStore
from litellm_credits.byok.masterkeys import ENV_VAR, generate_key_entry
from litellm_credits.byok.refs import KeyRowRef
from litellm_credits.byok.rotation import RotationReport
from litellm_credits.byok.validate import InvalidProviderKey
from litellm_credits.byok.vault import Vault
from litellm_credits.ledger import Ledger
from litellm_credits.store.db import Database

SECRET = "sk-proj-ZEBRA-q8Vt3LmN0pXw7YcR5sJ2-unmistakable-4f1e"
SECRET_B = "sk-ant-OKAPI-b7Hd2Kq9Rm4Tz1Wx-distinctive-88c3"
K1 = generate_key_entry("k1")
K2 = generate_key_entry("k2")


def vault_of(*entries: str) -> Vault:
    return Vault.from_env({ENV_VAR: ",".join(entries)})


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, min_size=1, max_size=6, timeout=10.0)
    await database.open(wait=True)
    yield database
    await database.close()


@pytest.fixture
def store(db: Database) -> KeyStore:
    return KeyStore(db, vault_of(K1))


def rows(db_conn: psycopg.Connection[Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return db_conn.execute(sql, params).fetchall()


def reserve_keys(db_conn: psycopg.Connection[Any], user: str, request_id: str) -> list[Any]:
    row = db_conn.execute(
        "SELECT status, byok_keys FROM reserve_credits(%s, %s, 1, NULL, 60)", (user, request_id)
    ).fetchone()
    assert row is not None and row[0] == "placed", row
    return list(row[1])


def grant(db_conn: psycopg.Connection[Any], user: str) -> None:
    db_conn.execute(
        "SELECT * FROM add_user_credits(%s, 100, 'admin_adjustment', NULL, 'test grant')", (user,)
    )


def pg_dump(db_url: str) -> str:
    binary = "/usr/lib/postgresql/15/bin/pg_dump"
    if not os.path.exists(binary):
        binary = shutil.which("pg_dump") or "pg_dump"
    done = subprocess.run([binary, "--no-owner", db_url], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "user_provider_keys" in done.stdout
    return done.stdout


# --- add / list -------------------------------------------------------------------


async def test_add_then_list_shows_hint_and_flags(store: KeyStore) -> None:
    info = await store.add("alice", "openai", "main", SECRET, created_by="test")
    assert info.provider == "openai" and info.name == "main"
    assert info.hint == "…" + SECRET[-4:]
    assert info.is_active and info.is_default  # first key for the provider
    assert not info.fallback_to_platform
    assert info.usage_count == 0 and info.last_used_at is None and info.revoked_at is None
    assert info.encryption_key_id == "k1"

    listed = await store.list("alice")
    assert [k.to_dict() for k in listed] == [info.to_dict()]
    assert await store.list("bob") == []


async def test_stored_ciphertext_decrypts_to_the_key_for_its_row_only(
    store: KeyStore, db_conn: psycopg.Connection[Any]
) -> None:
    await store.add("alice", "openai", "main", "  " + SECRET + "\n", created_by="test")
    [(blob, key_id)] = rows(
        db_conn, "SELECT encrypted_key, encryption_key_id FROM user_provider_keys"
    )
    assert store.vault is not None
    assert store.vault.decrypt(blob, key_id, KeyRowRef("alice", "openai", "main")) == SECRET
    with pytest.raises(errors.VaultDecryptError):
        store.vault.decrypt(blob, key_id, KeyRowRef("alice", "openai", "other"))


async def test_list_and_dump_never_contain_the_secret(
    store: KeyStore, db_url: str, db_conn: psycopg.Connection[Any]
) -> None:
    grant(db_conn, "alice")
    await store.add("alice", "openai", "main", SECRET, created_by="test")
    await store.add("alice", "anthropic", "main", SECRET_B, created_by="test")
    await store.revoke("alice", "anthropic", "main")
    reserve_keys(db_conn, "alice", "req-dump")

    listed = json.dumps([k.to_dict() for k in await store.list("alice")], ensure_ascii=False)
    dump = pg_dump(db_url)
    for secret in (SECRET, SECRET_B):
        middle = secret[8:-6]
        for text in (listed, dump):
            assert secret not in text
            assert middle not in text
            assert secret.encode().hex() not in text  # not stored as raw bytea either
    assert "…" + SECRET[-4:] in listed
    assert "encrypted_key" not in listed and "blob" not in listed


async def test_provider_alias_and_case_are_normalized(store: KeyStore) -> None:
    info = await store.add("alice", " Together ", "main", SECRET, created_by="test")
    assert info.provider == "together_ai"
    again = await store.get("alice", "together_ai", "main")
    assert again.id == info.id
    custom = KeyStore(store.db, store.vault, aliases={"oai": "openai"})
    assert (await custom.add("alice", "OAI", "x", SECRET, created_by="t")).provider == "openai"


@pytest.mark.parametrize(
    ("user", "provider", "name", "secret", "error", "words"),
    [
        ("", "openai", "main", SECRET, errors.InvalidUserId, "user id is empty"),
        ("al\x00ice", "openai", "main", SECRET, errors.InvalidUserId, "control"),
        ("alice", "open ai", "main", SECRET, errors.InvalidInput, "provider"),
        ("alice", "openai/../x", "main", SECRET, errors.InvalidInput, "provider"),
        ("alice", "", "main", SECRET, errors.InvalidInput, "provider is empty"),
        ("alice", "x" * 65, "main", SECRET, errors.InvalidInput, "provider"),
        ("alice", "openai", "", SECRET, errors.InvalidInput, "key name is empty"),
        ("alice", "openai", "n" * 65, SECRET, errors.InvalidInput, "65 characters"),
        ("alice", "openai", "bad\nname", SECRET, errors.InvalidInput, "U+000A"),
        ("alice", "openai", "zw\u200bsp", SECRET, errors.InvalidInput, "U+200B"),
        ("alice", "openai", "main", "   ", InvalidProviderKey, "empty"),
        ("alice", "openai", "main", "sk-abc\x00def-" + SECRET, InvalidProviderKey, "U+0000"),
        ("alice", "openai", "main", "x" * 5000, InvalidProviderKey, "too long"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    store: KeyStore, db_conn: psycopg.Connection[Any],
    user: str, provider: str, name: str, secret: str, error: type[Exception], words: str,
) -> None:
    with pytest.raises(error) as caught:
        await store.add(user, provider, name, secret, created_by="test")
    message = str(caught.value)
    assert words in message
    assert SECRET not in message and "sk-abc" not in message
    assert rows(db_conn, "SELECT count(*) FROM user_provider_keys") == [(0,)]


async def test_duplicate_active_name_is_a_conflict(
    store: KeyStore, db_conn: psycopg.Connection[Any]
) -> None:
    first = await store.add("alice", "openai", "main", SECRET, created_by="test")
    with pytest.raises(errors.Conflict) as caught:
        await store.add("alice", "openai", "main", SECRET_B, created_by="test")
    assert "already exists and is active" in caught.value.message
    assert "revoke it first" in caught.value.message
    assert SECRET_B not in caught.value.message
    # The first key is untouched and still decrypts to the first secret.
    [(blob, key_id, hint)] = rows(
        db_conn, "SELECT encrypted_key, encryption_key_id, key_hint FROM user_provider_keys"
    )
    assert hint == first.hint
    assert store.vault is not None
    assert store.vault.decrypt(blob, key_id, KeyRowRef("alice", "openai", "main")) == SECRET
    # The same name for another provider or user is fine.
    await store.add("alice", "anthropic", "main", SECRET_B, created_by="test")
    await store.add("bob", "openai", "main", SECRET_B, created_by="test")


async def test_without_a_vault_add_and_rotate_refuse_but_reads_work(db: Database) -> None:
    seeded = KeyStore(db, vault_of(K1))
    await seeded.add("alice", "openai", "main", SECRET, created_by="test")
    store = KeyStore(db, None)
    with pytest.raises(errors.VaultNotConfigured) as caught:
        await store.add("alice", "openai", "second", SECRET_B, created_by="test")
    assert ENV_VAR in caught.value.message and "export" in caught.value.message
    with pytest.raises(errors.VaultNotConfigured):
        await store.rotate()
    assert [k.name for k in await store.list("alice")] == ["main"]
    assert (await store.revoke("alice", "openai", "main")).revoked_now


# --- defaults -----------------------------------------------------------------------


def defaults(db_conn: psycopg.Connection[Any], user: str, provider: str) -> list[str]:
    return [r[0] for r in rows(
        db_conn,
        "SELECT key_name FROM user_provider_keys WHERE user_id = %s AND provider = %s "
        "AND is_default AND is_active ORDER BY key_name", user, provider,
    )]


async def test_one_default_per_provider(store: KeyStore, db_conn: psycopg.Connection[Any]) -> None:
    a = await store.add("alice", "openai", "a", SECRET, created_by="test")
    b = await store.add("alice", "openai", "b", SECRET_B, created_by="test")
    assert a.is_default and not b.is_default
    assert defaults(db_conn, "alice", "openai") == ["a"]

    c = await store.add("alice", "openai", "c", SECRET, default=True, created_by="test")
    assert c.is_default
    assert defaults(db_conn, "alice", "openai") == ["c"]

    await store.set_default("alice", "openai", "b")
    assert defaults(db_conn, "alice", "openai") == ["b"]
    await store.set_default("alice", "openai", "b")  # idempotent
    assert defaults(db_conn, "alice", "openai") == ["b"]

    # Another provider and another user have their own defaults.
    assert (await store.add("alice", "anthropic", "x", SECRET, created_by="t")).is_default
    assert (await store.add("bob", "openai", "a", SECRET, created_by="t")).is_default
    assert defaults(db_conn, "alice", "openai") == ["b"]
    flags = {(k.provider, k.name): k.is_default for k in await store.list("alice")}
    assert flags == {("openai", "a"): False, ("openai", "b"): True, ("openai", "c"): False,
                     ("anthropic", "x"): True}


async def test_concurrent_first_adds_make_exactly_one_default(
    db_url: str, db_conn: psycopg.Connection[Any]
) -> None:
    database = Database(db_url, min_size=8, max_size=8, timeout=10.0)
    await database.open(wait=True)
    try:
        store = KeyStore(database, vault_of(K1))
        for round_ in range(5):
            provider = f"provider{round_}"
            await asyncio.gather(*(
                store.add("alice", provider, f"k{i}", SECRET, created_by="test")
                for i in range(8)
            ))
            assert len(defaults(db_conn, "alice", provider)) == 1
    finally:
        await database.close()


async def test_set_default_unknown_or_revoked(store: KeyStore) -> None:
    await store.add("alice", "openai", "a", SECRET, created_by="test")
    await store.add("alice", "openai", "b", SECRET, created_by="test")
    with pytest.raises(errors.NotFound) as caught:
        await store.set_default("alice", "openai", "nope")
    assert "'nope'" in caught.value.message
    await store.revoke("alice", "openai", "b")
    with pytest.raises(errors.Conflict, match="is revoked"):
        await store.set_default("alice", "openai", "b")
    # The failed attempt cleared nothing.
    assert (await store.get("alice", "openai", "a")).is_default


async def test_set_fallback(store: KeyStore) -> None:
    await store.add("alice", "openai", "a", SECRET, fallback_to_platform=True, created_by="t")
    assert (await store.get("alice", "openai", "a")).fallback_to_platform
    info = await store.set_fallback("alice", "openai", "a", False)
    assert not info.fallback_to_platform
    with pytest.raises(errors.NotFound):
        await store.set_fallback("alice", "openai", "zzz", True)


# --- revoke -------------------------------------------------------------------------


async def test_revoke_deactivates_and_reports(
    store: KeyStore, db_conn: psycopg.Connection[Any]
) -> None:
    await store.add("alice", "openai", "a", SECRET, created_by="test")
    await store.add("alice", "openai", "b", SECRET_B, created_by="test")
    result = await store.revoke("alice", "openai", "a", by="test")
    assert result.revoked_now and result.was_default
    assert result.remaining_active == ("b",)
    assert not result.key.is_active and not result.key.is_default
    assert result.key.revoked_at is not None
    # No other key is promoted: the user chooses the next default.
    assert defaults(db_conn, "alice", "openai") == []

    again = await store.revoke("alice", "openai", "a")
    assert not again.revoked_now and again.key.revoked_at == result.key.revoked_at

    with pytest.raises(errors.NotFound) as caught:
        await store.revoke("alice", "openai", "never-added")
    assert "does not exist" in caught.value.message
    with pytest.raises(errors.NotFound):
        await store.revoke("carol", "openai", "a")


async def test_revoked_key_is_not_returned_by_reserve_credits(
    store: KeyStore, db_conn: psycopg.Connection[Any]
) -> None:
    grant(db_conn, "alice")
    a = await store.add("alice", "openai", "a", SECRET, created_by="test")
    b = await store.add("alice", "anthropic", "b", SECRET_B, created_by="test")
    before = reserve_keys(db_conn, "alice", "req-1")
    assert sorted(k["id"] for k in before) == sorted([a.id, b.id])

    await store.revoke("alice", "openai", "a")
    after = reserve_keys(db_conn, "alice", "req-2")
    assert [k["id"] for k in after] == [b.id]
    assert all(SECRET not in json.dumps(k) for k in after)


async def test_readding_a_revoked_name_reuses_the_row_with_the_new_secret(
    store: KeyStore, db_conn: psycopg.Connection[Any]
) -> None:
    grant(db_conn, "alice")
    old = await store.add("alice", "openai", "main", SECRET, created_by="test")
    db_conn.execute("UPDATE user_provider_keys SET usage_count = 7, last_used_at = now()")
    await store.revoke("alice", "openai", "main")
    new = await store.add("alice", "openai", "main", SECRET_B, created_by="test")
    assert new.id == old.id
    assert new.is_active and new.is_default and new.revoked_at is None
    assert new.usage_count == 0 and new.last_used_at is None
    assert new.hint == "…" + SECRET_B[-4:]
    [key] = reserve_keys(db_conn, "alice", "req-3")
    assert store.vault is not None
    opened = store.vault.decrypt(
        base64.b64decode(key["blob"]), key["key_id"], KeyRowRef("alice", "openai", "main")
    )
    assert opened == SECRET_B


# --- bound ciphertexts (I6) -----------------------------------------------------------


async def test_swapped_ciphertext_fails_to_decrypt_without_naming_a_secret(
    store: KeyStore, db_conn: psycopg.Connection[Any], db: Database
) -> None:
    grant(db_conn, "mallory")
    await store.add("alice", "openai", "main", SECRET, created_by="test")
    await store.add("mallory", "openai", "main", SECRET_B, created_by="test")
    db_conn.execute(
        "UPDATE user_provider_keys m SET encrypted_key = a.encrypted_key, "
        "encryption_key_id = a.encryption_key_id FROM user_provider_keys a "
        "WHERE m.user_id = 'mallory' AND a.user_id = 'alice'"
    )
    # The hot path's view of Mallory's key: Alice's ciphertext in Mallory's row.
    reservation = await Ledger(db).reserve("mallory", "req-swap", Decimal(1), None, 60)
    [key] = reservation.byok_keys
    assert store.vault is not None
    with pytest.raises(errors.VaultDecryptError) as caught:
        store.vault.decrypt(key.blob, key.key_id, KeyRowRef("mallory", key.provider,
                                                             key.key_name))
    message = caught.value.message
    assert "mallory" in message and "could not be decrypted" in message
    for secret in (SECRET, SECRET_B):
        assert secret not in message and secret[8:-6] not in message
        assert secret not in repr(caught.value.to_dict())
    assert key.blob.hex() not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None


# --- rotation -----------------------------------------------------------------------


async def add_many(store: KeyStore, n: int, users: int = 5) -> dict[tuple[str, str], str]:
    added: dict[tuple[str, str], str] = {}
    for i in range(n):
        user, name = f"user{i % users}", f"key{i}"
        secret = f"sk-rot-{i:04d}-" + "Q" * 12 + f"-{i}"
        await store.add(user, "openai", name, secret, created_by="test")
        added[(user, name)] = secret
    return added


def assert_all_decrypt(
    db_conn: psycopg.Connection[Any], vault: Vault, expected: dict[tuple[str, str], str],
    key_id: str | None = None,
) -> None:
    found = rows(db_conn, "SELECT user_id, provider, key_name, encrypted_key, encryption_key_id"
                          " FROM user_provider_keys")
    assert len(found) == len(expected)
    for user, provider, name, blob, kid in found:
        if key_id is not None:
            assert kid == key_id
        assert vault.decrypt(blob, kid, KeyRowRef(user, provider, name)) == expected[(user, name)]


async def test_rotation_moves_every_row_to_the_new_key(
    db: Database, db_conn: psycopg.Connection[Any]
) -> None:
    expected = await add_many(KeyStore(db, vault_of(K1)), 12)
    await KeyStore(db, vault_of(K1)).revoke("user0", "openai", "key0")
    new_vault = vault_of(K2, K1)
    report = await KeyStore(db, new_vault).rotate(batch_size=5)
    assert (report.rotated, report.already_current, report.failed, report.busy,
            report.remaining) == (12, 0, [], [], 0)
    assert report.complete
    # Every row, revoked ones included, is now under k2 and readable with k2 alone.
    assert_all_decrypt(db_conn, vault_of(K2), expected, key_id="k2")

    again = await KeyStore(db, new_vault).rotate()
    assert (again.rotated, again.already_current, again.remaining) == (0, 12, 0)


async def test_interrupted_rotation_completes_when_run_again(
    db: Database, db_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = await add_many(KeyStore(db, vault_of(K1)), 10)
    new_vault = vault_of(K2, K1)

    # A run that stops after one batch (as an operator spreading the work would).
    first = await KeyStore(db, new_vault).rotate(batch_size=3, max_rows=3)
    assert first.rotated == 3 and first.remaining == 7 and not first.complete

    # A run that dies half way (process killed mid-batch).
    calls = 0
    original = Vault.reencrypt

    def dying(self: Vault, blob: bytes, key_id: str, ref: KeyRowRef) -> tuple[bytes, str]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return original(self, blob, key_id, ref)

    monkeypatch.setattr(Vault, "reencrypt", dying)
    with pytest.raises(KeyboardInterrupt):
        await KeyStore(db, new_vault).rotate(batch_size=4)
    monkeypatch.undo()
    under = dict(rows(db_conn, "SELECT encryption_key_id, count(*) FROM user_provider_keys "
                               "GROUP BY 1"))
    assert under == {"k2": 5, "k1": 5}  # every row whole: old or new, readable either way
    assert_all_decrypt(db_conn, new_vault, expected)

    last = await KeyStore(db, new_vault).rotate(batch_size=4)
    assert (last.rotated, last.already_current, last.remaining) == (5, 5, 0)
    assert_all_decrypt(db_conn, vault_of(K2), expected, key_id="k2")


async def test_rotation_reports_rows_it_cannot_decrypt_and_goes_on(
    db: Database, db_conn: psycopg.Connection[Any]
) -> None:
    expected = await add_many(KeyStore(db, vault_of(K1)), 6)
    [(bad_id,)] = rows(db_conn, "SELECT id FROM user_provider_keys WHERE key_name = 'key2'")
    [(gone_id,)] = rows(db_conn, "SELECT id FROM user_provider_keys WHERE key_name = 'key4'")
    db_conn.execute("UPDATE user_provider_keys SET encrypted_key = set_byte(encrypted_key, 20, "
                    "255 - get_byte(encrypted_key, 20)) WHERE id = %s", (bad_id,))
    db_conn.execute("UPDATE user_provider_keys SET encryption_key_id = 'k0' WHERE id = %s",
                    (gone_id,))
    report = await KeyStore(db, vault_of(K2, K1)).rotate(batch_size=2)
    assert report.rotated == 4
    assert sorted(report.failed) == sorted([bad_id, gone_id])
    assert report.remaining == 2 and not report.complete
    assert "altered" in report.errors[bad_id]
    assert "'k0'" in report.errors[gone_id] and "not configured" in report.errors[gone_id]
    text = json.dumps(report.to_dict())
    assert all(secret not in text for secret in expected.values())
    # Nothing was written for the failed rows.
    assert rows(db_conn, "SELECT encryption_key_id FROM user_provider_keys WHERE id = %s",
                bad_id) == [("k1",)]


async def test_rotation_skips_a_locked_row_then_finishes_it_on_the_next_run(
    db: Database, db_url: str
) -> None:
    await add_many(KeyStore(db, vault_of(K1)), 4)
    new_vault = vault_of(K2, K1)
    with psycopg.connect(db_url) as locker:  # not autocommit: holds the row lock
        [(locked_id,)] = locker.execute(
            "SELECT id FROM user_provider_keys WHERE key_name = 'key1' FOR UPDATE"
        ).fetchall()
        report = await asyncio.wait_for(KeyStore(db, new_vault).rotate(), timeout=20)
        assert report.busy == [locked_id] and report.rotated == 3
        assert report.remaining == 1 and not report.complete
        locker.rollback()
    report = await KeyStore(db, new_vault).rotate()
    assert (report.rotated, report.already_current, report.complete) == (1, 3, True)


async def test_rotation_while_proxies_read_and_users_add_keys(
    db: Database, db_conn: psycopg.Connection[Any]
) -> None:
    users = 5
    expected = await add_many(KeyStore(db, vault_of(K1)), 150, users=users)
    for u in range(users):
        grant(db_conn, f"user{u}")
    proxy_vault = vault_of(K2, K1)  # proxies restarted with k2 first, k1 still present
    ledger = Ledger(db)
    stop = asyncio.Event()
    reads = 0

    async def proxy() -> None:
        nonlocal reads
        n = 0
        while not stop.is_set():
            user = f"user{n % users}"
            res = await ledger.reserve(user, f"req-{n}", Decimal("0.01"), None, 60)
            assert res.ok
            for key in res.byok_keys:
                plain = proxy_vault.decrypt(key.blob, key.key_id,
                                            KeyRowRef(user, key.provider, key.key_name))
                if key.key_name.startswith("key"):
                    assert plain == expected[(user, key.key_name)]
            await ledger.release(f"req-{n}")
            n += 1
            reads += 1

    async def adder() -> None:
        store = KeyStore(db, proxy_vault)
        for i in range(20):
            secret = f"sk-new-{i:03d}-" + "W" * 12
            await store.add(f"user{i % users}", "anthropic", f"new{i}", secret, created_by="t")
            expected[(f"user{i % users}", f"new{i}")] = secret
            await asyncio.sleep(0)

    readers = [asyncio.create_task(proxy()) for _ in range(3)]
    try:
        report, _ = await asyncio.gather(
            KeyStore(db, proxy_vault).rotate(batch_size=10), adder()
        )
    finally:
        stop.set()
        await asyncio.gather(*readers)
    assert isinstance(report, RotationReport)
    assert report.rotated == 150 and report.failed == [] and report.remaining == 0
    assert reads > 0
    assert_all_decrypt(db_conn, vault_of(K2), expected, key_id="k2")


async def test_two_rotations_at_once_each_row_rotated_once(
    db: Database, db_conn: psycopg.Connection[Any]
) -> None:
    expected = await add_many(KeyStore(db, vault_of(K1)), 60)
    new_vault = vault_of(K2, K1)
    a, b = await asyncio.gather(
        KeyStore(db, new_vault).rotate(batch_size=7), KeyStore(db, new_vault).rotate(batch_size=7)
    )
    assert a.rotated + b.rotated == 60
    assert a.failed == b.failed == []
    assert a.remaining == 0 or b.remaining == 0
    assert_all_decrypt(db_conn, vault_of(K2), expected, key_id="k2")


async def test_rotate_refuses_bad_batch_size(store: KeyStore) -> None:
    for bad in (0, -1, 10_001):
        with pytest.raises(errors.InvalidInput, match="batch size"):
            await store.rotate(batch_size=bad)


async def test_refusal_tracebacks_hold_no_frame_with_the_key(store: KeyStore) -> None:
    secret = SECRET + "\x00"
    with pytest.raises(InvalidProviderKey) as caught:
        await store.add("alice", "openai", "main", secret, created_by="test")
    del secret
    tb = caught.value.__traceback__
    while tb is not None:
        assert all(
            not (isinstance(v, str) and SECRET in v) for v in tb.tb_frame.f_locals.values()
        ), tb.tb_frame.f_code.co_name
        tb = tb.tb_next
