"""Unit tests for litellm_credits.byok.vault and the modules it is built from (master keys,
key text checks, row references): BYOK provider-key encryption."""

from __future__ import annotations

import base64
import copy
import os
import pickle
import re
import subprocess
import sys
import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import litellm_credits.byok.masterkeys as masterkeys_module
import litellm_credits.byok.refs as refs_module
import litellm_credits.byok.validate as validate_module
import litellm_credits.byok.vault as vault_module
from litellm_credits.byok.masterkeys import ENV_VAR, VaultConfigError, generate_key_entry
from litellm_credits.byok.refs import KeyRowRef
from litellm_credits.byok.validate import (
    MAX_PLAINTEXT_CHARS,
    InvalidProviderKey,
    key_hint,
    validate_plaintext,
)
from litellm_credits.byok.vault import (
    FORMAT_VERSION,
    MIN_BLOB_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    Vault,
    _aad,
)
from litellm_credits.errors import (
    ConfigError,
    CreditsError,
    InvalidInput,
    VaultDecryptError,
    VaultError,
    VaultNotConfigured,
)

# Fixed, recognisable test keys (distinct, not degenerate).
KEY_OLD = bytes(range(32))
KEY_NEW = bytes(range(100, 132))
KEY_OTHER = bytes(range(200, 232))
SECRET = "sk-proj-TESTSECRET-0123456789abcdefXYZW"
REF = KeyRowRef(user_id="user-1", provider="openai", key_name="default")


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def b64url(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def key_renderings(key: bytes) -> list[str]:
    """Every way key material could show up in a message."""
    return [
        b64(key),
        b64url(key),
        b64(key).rstrip("="),
        b64url(key).rstrip("="),
        key.hex(),
        repr(key),
        str(list(key)),
    ]


def assert_no_secrets(text: str, *secrets: bytes | str) -> None:
    for secret in secrets:
        if isinstance(secret, bytes):
            for rendering in key_renderings(secret):
                assert rendering not in text
            # also any long-enough chunk of the base64 form
            assert b64(secret)[:16] not in text
            assert b64url(secret)[:16] not in text
        else:
            assert secret not in text


@pytest.fixture
def vault() -> Vault:
    return Vault([("k1", KEY_OLD)])


# --- round trip / format --------------------------------------------------------


def test_round_trip(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    assert key_id == "k1"
    assert isinstance(blob, bytes)
    assert SECRET.encode() not in blob
    assert vault.decrypt(blob, key_id, REF) == SECRET


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.text(
        alphabet=st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
        min_size=1,
        max_size=200,
    ).filter(lambda s: s.strip() != ""),
    user_id=st.text(max_size=40),
    provider=st.text(max_size=20),
    key_name=st.text(max_size=20),
)
def test_round_trip_any_valid_input(
    plaintext: str, user_id: str, provider: str, key_name: str
) -> None:
    vault = Vault([("k1", KEY_OLD)])
    ref = KeyRowRef(user_id, provider, key_name)
    blob, key_id = vault.encrypt(plaintext, ref)
    assert vault.decrypt(blob, key_id, ref) == plaintext.strip()


def test_blob_layout(vault: Vault) -> None:
    blob, _ = vault.encrypt(SECRET, REF)
    assert blob[0] == FORMAT_VERSION == 1
    assert len(blob) == 1 + NONCE_BYTES + len(SECRET.encode()) + TAG_BYTES
    assert MIN_BLOB_BYTES == 1 + 12 + 16


def test_encrypt_strips_surrounding_whitespace(vault: Vault) -> None:
    blob, key_id = vault.encrypt(f"  {SECRET}\r\n", REF)
    assert vault.decrypt(blob, key_id, REF) == SECRET


def test_encrypt_refuses_invalid_plaintext_without_quoting_it(vault: Vault) -> None:
    with pytest.raises(InvalidProviderKey) as info:
        vault.encrypt(SECRET + "\x00TAILPART", REF)
    assert_no_secrets(str(info.value), SECRET, "TAILPART")


def test_decrypt_accepts_bytes_like(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    assert vault.decrypt(bytearray(blob), key_id, REF) == SECRET
    assert vault.decrypt(memoryview(blob), key_id, REF) == SECRET


def test_fresh_nonce_each_encryption(vault: Vault) -> None:
    blobs = [vault.encrypt(SECRET, REF)[0] for _ in range(20)]
    assert len(set(blobs)) == 20
    nonces = {blob[1 : 1 + NONCE_BYTES] for blob in blobs}
    assert len(nonces) == 20


# --- tampering ------------------------------------------------------------------


def test_tampering_any_single_byte_fails(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    for position in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(blob)
            tampered[position] ^= mask
            with pytest.raises(VaultDecryptError):
                vault.decrypt(bytes(tampered), key_id, REF)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_tampering_property(data: st.DataObject) -> None:
    vault = Vault([("k1", KEY_OLD)])
    plaintext = data.draw(st.text(alphabet="abcXYZ019-_", min_size=1, max_size=64))
    blob, key_id = vault.encrypt(plaintext, REF)
    position = data.draw(st.integers(0, len(blob) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(blob)
    tampered[position] ^= mask
    with pytest.raises(VaultDecryptError):
        vault.decrypt(bytes(tampered), key_id, REF)


def test_truncated_blob_fails_at_every_length(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    for length in range(len(blob)):
        with pytest.raises(VaultDecryptError):
            vault.decrypt(blob[:length], key_id, REF)


def test_truncated_blob_message(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    with pytest.raises(VaultDecryptError, match="too short"):
        vault.decrypt(blob[:10], key_id, REF)


def test_extended_blob_fails(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    with pytest.raises(VaultDecryptError):
        vault.decrypt(blob + b"\x00", key_id, REF)


def test_unknown_version_fails_with_clear_message(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    with pytest.raises(VaultDecryptError, match="unknown storage format version 2"):
        vault.decrypt(b"\x02" + blob[1:], key_id, REF)


# --- key ids --------------------------------------------------------------------


def test_wrong_key_id_fails() -> None:
    vault = Vault([("k2", KEY_NEW), ("k1", KEY_OLD)])
    blob, key_id = vault.encrypt(SECRET, REF)
    assert key_id == "k2"
    with pytest.raises(VaultDecryptError, match="'k1'"):
        vault.decrypt(blob, "k1", REF)


def test_key_id_is_bound_even_when_key_bytes_are_equal() -> None:
    # Same key material under two ids: only the associated data differs.
    vault = Vault([("a", KEY_OLD), ("b", KEY_OLD)])
    blob, key_id = vault.encrypt(SECRET, REF)
    assert vault.decrypt(blob, key_id, REF) == SECRET
    with pytest.raises(VaultDecryptError):
        vault.decrypt(blob, "b", REF)


def test_unknown_key_id_fails_with_clear_message(vault: Vault) -> None:
    blob, _ = vault.encrypt(SECRET, REF)
    with pytest.raises(VaultDecryptError) as info:
        vault.decrypt(blob, "gone", REF)
    message = str(info.value)
    assert "'gone'" in message
    assert "not configured" in message
    assert ENV_VAR in message
    assert "'k1'" in message  # lists the configured ids


def test_invalid_key_id_in_row_fails_without_echoing_it(vault: Vault) -> None:
    blob, _ = vault.encrypt(SECRET, REF)
    with pytest.raises(VaultDecryptError) as info:
        vault.decrypt(blob, "bad id with spaces", REF)
    assert "bad id with spaces" not in str(info.value)
    assert "not a valid key id" in str(info.value)


def test_different_master_key_same_id_fails() -> None:
    blob, key_id = Vault([("k1", KEY_OLD)]).encrypt(SECRET, REF)
    with pytest.raises(VaultDecryptError, match="master key 'k1' is wrong"):
        Vault([("k1", KEY_OTHER)]).decrypt(blob, key_id, REF)


# --- associated data ------------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        KeyRowRef("user-2", "openai", "default"),
        KeyRowRef("user-1", "anthropic", "default"),
        KeyRowRef("user-1", "openai", "backup"),
        KeyRowRef("User-1", "openai", "default"),
        KeyRowRef("user-1 ", "openai", "default"),
    ],
    ids=["user", "provider", "key_name", "user-case", "user-trailing-space"],
)
def test_wrong_associated_data_fails(vault: Vault, other: KeyRowRef) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    with pytest.raises(VaultDecryptError) as info:
        vault.decrypt(blob, key_id, other)
    message = str(info.value)
    assert repr(other.user_id) in message
    assert repr(other.provider) in message
    assert repr(other.key_name) in message
    assert "re-add" in message


def test_ciphertext_moved_to_another_users_row_fails(vault: Vault) -> None:
    alice = KeyRowRef("alice", "openai", "default")
    mallory = KeyRowRef("mallory", "openai", "default")
    alice_blob, alice_kid = vault.encrypt("sk-alice-secret-key-1234", alice)
    mallory_blob, mallory_kid = vault.encrypt("sk-mallory-own-key-5678", mallory)
    # Mallory's row now holds a copy of Alice's ciphertext.
    with pytest.raises(VaultDecryptError):
        vault.decrypt(alice_blob, alice_kid, mallory)
    assert vault.decrypt(mallory_blob, mallory_kid, mallory) == "sk-mallory-own-key-5678"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("ab", "c", "d"), ("a", "bc", "d")),
        (("a", "bc", "d"), ("a", "b", "cd")),
        (("a|b", "c", "d"), ("a", "b|c", "d")),
        (("a:b", "c", "d"), ("a", "b:c", "d")),
        (("a\x00b", "c", "d"), ("a", "b\x00c", "d")),
        (("", "ab", "c"), ("a", "b", "c")),
    ],
)
def test_boundary_shifts_do_not_collide(
    vault: Vault, first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    blob, key_id = vault.encrypt(SECRET, KeyRowRef(*first))
    with pytest.raises(VaultDecryptError):
        vault.decrypt(blob, key_id, KeyRowRef(*second))


@settings(max_examples=300, deadline=None)
@given(
    first=st.tuples(st.text(max_size=6), st.text(max_size=6), st.text(max_size=6)),
    second=st.tuples(st.text(max_size=6), st.text(max_size=6), st.text(max_size=6)),
    key_ids=st.tuples(st.sampled_from(["k", "k1", "1"]), st.sampled_from(["k", "k1", "1"])),
)
def test_aad_encoding_is_injective(
    first: tuple[str, str, str],
    second: tuple[str, str, str],
    key_ids: tuple[str, str],
) -> None:
    a = _aad(1, key_ids[0], KeyRowRef(*first))
    b = _aad(1, key_ids[1], KeyRowRef(*second))
    assert (a == b) == (first == second and key_ids[0] == key_ids[1])


def test_aad_binds_version() -> None:
    assert _aad(1, "k1", REF) != _aad(2, "k1", REF)


# --- rotation -------------------------------------------------------------------


def test_rotation_end_to_end() -> None:
    old_env = {ENV_VAR: f"old:{b64url(KEY_OLD)}"}
    old_vault = Vault.from_env(old_env)
    blob, key_id = old_vault.encrypt(SECRET, REF)
    assert key_id == "old"

    rotating_env = {ENV_VAR: f"new:{b64url(KEY_NEW)},old:{b64url(KEY_OLD)}"}
    rotating = Vault.from_env(rotating_env)
    assert rotating.active_key_id == "new"
    assert rotating.key_ids == ("new", "old")
    assert rotating.decrypt(blob, key_id, REF) == SECRET
    assert rotating.needs_rotation(key_id)

    new_blob, new_key_id = rotating.reencrypt(blob, key_id, REF)
    assert new_key_id == "new"
    assert not rotating.needs_rotation(new_key_id)
    assert rotating.decrypt(new_blob, new_key_id, REF) == SECRET

    new_only = Vault.from_env({ENV_VAR: f"new:{b64url(KEY_NEW)}"})
    assert new_only.decrypt(new_blob, new_key_id, REF) == SECRET
    # ...and the old row is no longer readable without the old key.
    with pytest.raises(VaultDecryptError, match="'old'"):
        new_only.decrypt(blob, key_id, REF)


def test_reencrypt_keeps_row_binding() -> None:
    vault = Vault([("new", KEY_NEW), ("old", KEY_OLD)])
    blob, key_id = Vault([("old", KEY_OLD)]).encrypt(SECRET, REF)
    new_blob, new_key_id = vault.reencrypt(blob, key_id, REF)
    with pytest.raises(VaultDecryptError):
        vault.decrypt(new_blob, new_key_id, KeyRowRef("user-2", "openai", "default"))


def test_reencrypt_refuses_foreign_ciphertext() -> None:
    vault = Vault([("new", KEY_NEW), ("old", KEY_OLD)])
    blob, key_id = vault.encrypt(SECRET, KeyRowRef("user-2", "openai", "default"))
    with pytest.raises(VaultDecryptError):
        vault.reencrypt(blob, key_id, REF)


def test_reencrypt_under_active_key_uses_fresh_nonce(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    new_blob, new_key_id = vault.reencrypt(blob, key_id, REF)
    assert new_key_id == key_id
    assert new_blob != blob
    assert vault.decrypt(new_blob, new_key_id, REF) == SECRET


def test_needs_rotation() -> None:
    vault = Vault([("new", KEY_NEW), ("old", KEY_OLD)])
    assert vault.needs_rotation("old") is True
    assert vault.needs_rotation("unknown") is True
    assert vault.needs_rotation("new") is False


# --- environment parsing --------------------------------------------------------


def test_from_env_accepts_standard_and_urlsafe_base64_with_or_without_padding() -> None:
    # This key's base64 contains '+' and '/' (urlsafe: '-' and '_').
    raw = bytes([0xFB, 0xFF, 0xBF] * 10 + [1, 2])
    assert "+" in b64(raw) and "/" in b64(raw)
    for encoded in (b64(raw), b64url(raw), b64(raw).rstrip("="), b64url(raw).rstrip("=")):
        vault = Vault.from_env({ENV_VAR: f"k1:{encoded}"})
        blob, key_id = vault.encrypt(SECRET, REF)
        # Same key bytes whatever the rendering.
        assert Vault([("k1", raw)]).decrypt(blob, key_id, REF) == SECRET


def test_from_env_tolerates_spaces_around_entries() -> None:
    vault = Vault.from_env({ENV_VAR: f"  a : {b64(KEY_NEW)} ,\n b:{b64(KEY_OLD)}\n"})
    assert vault.key_ids == ("a", "b")


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, f"envkey:{b64url(KEY_NEW)}")
    assert Vault.from_env().active_key_id == "envkey"
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(VaultNotConfigured):
        Vault.from_env()


GOOD = b64url(KEY_OLD)
SHORT_KEY = bytes(range(50, 66))  # 16 bytes
LONG_KEY = bytes(range(60, 108))  # 48 bytes


@pytest.mark.parametrize(
    ("value", "expected", "secrets"),
    [
        pytest.param(
            f"k1:{GOOD[:20]}!{GOOD[21:]}",
            r"#1 \('k1'\).*not valid base64",
            [KEY_OLD],
            id="bad-base64-char",
        ),
        pytest.param(f"k1:{GOOD} {GOOD}", r"not valid base64", [KEY_OLD], id="space-inside"),
        pytest.param(f"k1:{GOOD[:-5]}", r"not valid base64|decodes to", [KEY_OLD], id="truncated"),
        pytest.param(
            f"k1:{GOOD[:10]}={GOOD[11:]}",
            r"'=' may only appear at the end",
            [KEY_OLD],
            id="inner-padding",
        ),
        pytest.param(f"k1:{GOOD}==", r"padding", [KEY_OLD], id="bad-padding"),
        pytest.param(
            f"k1:{b64(SHORT_KEY)}", r"decodes to 16 bytes.*exactly 32", [SHORT_KEY], id="16-bytes"
        ),
        pytest.param(
            f"k1:{b64(LONG_KEY)}", r"decodes to 48 bytes.*exactly 32", [LONG_KEY], id="48-bytes"
        ),
        pytest.param(
            f"k1:{GOOD},k1:{b64(KEY_NEW)}",
            r"#2 \('k1'\).*more than once.*unique",
            [KEY_OLD, KEY_NEW],
            id="duplicate-id",
        ),
        pytest.param(
            f"k 1:{GOOD}",
            r"#1: key id has a character outside the allowed set "
            r"at position 2",
            [KEY_OLD],
            id="space-in-id",
        ),
        pytest.param(
            f"k.1:{GOOD}", r"outside the allowed set at position 2", [KEY_OLD], id="dot-in-id"
        ),
        pytest.param(f"k\u00e91:{GOOD}", r"outside the allowed set", [KEY_OLD], id="non-ascii-id"),
        pytest.param(f"{'k' * 33}:{GOOD}", r"33 characters long", [KEY_OLD], id="long-id"),
        pytest.param(f":{GOOD}", r"#1: key id is empty", [KEY_OLD], id="empty-id"),
        pytest.param(GOOD, r"#1 has no ':'", [KEY_OLD], id="no-colon"),
        pytest.param("k1:", r"nothing after ':'", [], id="no-key"),
        pytest.param(f"k1:{GOOD},", r"#2 is empty", [KEY_OLD], id="trailing-comma"),
        pytest.param(
            f"k1:{GOOD},,k2:{b64(KEY_NEW)}", r"#2 is empty", [KEY_OLD, KEY_NEW], id="double-comma"
        ),
        pytest.param(f"k1:{b64(bytes(32))}", r"not random", [], id="all-zero-key"),
        pytest.param(
            f"k1:{GOOD},k2:{b64(KEY_OLD)}",
            r"#2 \('k2'\).*same as the key of 'k1'",
            [KEY_OLD],
            id="same-key-two-ids",
        ),
        pytest.param(
            f"k1:{GOOD},k2:{b64(SHORT_KEY)}",
            r"#2 \('k2'\).*decodes to 16",
            [KEY_OLD, SHORT_KEY],
            id="second-entry-bad",
        ),
    ],
)
def test_env_parsing_errors_are_clear_and_safe(
    value: str, expected: str, secrets: list[bytes]
) -> None:
    with pytest.raises(VaultConfigError) as info:
        Vault.from_env({ENV_VAR: value})
    err = info.value
    message = str(err)
    assert re.search(expected, message), message
    assert ENV_VAR in message
    rendered = "".join(traceback.format_exception(err)) + repr(err) + repr(err.to_dict())
    assert_no_secrets(rendered, *secrets)
    # No 12-character run of any configured key text appears (covers garbled keys).
    for entry in value.split(","):
        key_text = entry.partition(":")[2] if ":" in entry else entry
        for start in range(len(key_text) - 11):
            assert key_text[start : start + 12] not in rendered
    assert err.__cause__ is None
    assert err.__context__ is None
    assert isinstance(err, VaultError)
    assert isinstance(err, ConfigError)


@pytest.mark.parametrize("value", [None, "", "   ", "\n"])
def test_not_configured_message_has_recipe(value: str | None) -> None:
    env = {} if value is None else {ENV_VAR: value}
    with pytest.raises(VaultNotConfigured) as info:
        Vault.from_env(env)
    message = str(info.value)
    assert f'export {ENV_VAR}="k1:$(python -c' in message
    assert "base64.urlsafe_b64encode(os.urandom(32))" in message
    assert isinstance(info.value, VaultError)


def test_not_configured_recipe_actually_works() -> None:
    with pytest.raises(VaultNotConfigured) as info:
        Vault.from_env({})
    match = re.search(r"python -c '([^']+)'", str(info.value))
    assert match is not None
    out = subprocess.run(
        [sys.executable, "-c", match.group(1)], capture_output=True, text=True, check=True
    ).stdout.strip()
    vault = Vault.from_env({ENV_VAR: f"k1:{out}"})
    blob, key_id = vault.encrypt(SECRET, REF)
    assert vault.decrypt(blob, key_id, REF) == SECRET


# --- constructor ----------------------------------------------------------------


def test_constructor_empty_is_not_configured() -> None:
    with pytest.raises(VaultNotConfigured, match="urlsafe_b64encode"):
        Vault([])


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ([("k1", KEY_OLD[:16])], r"'k1' is 16 bytes; it must be exactly 32"),
        ([("k1", KEY_OLD + b"x")], r"'k1' is 33 bytes"),
        ([("k1", b64(KEY_OLD))], r"'k1' must be bytes, not str"),
        ([("k1", KEY_OLD), ("k1", KEY_NEW)], r"'k1' appears more than once"),
        ([("k/1", KEY_OLD)], r"#1: key id has a character outside the allowed set"),
        ([("", KEY_OLD)], r"#1: key id is empty"),
        ([("k1", KEY_OLD), ("x" * 40, KEY_NEW)], r"#2: key id is 40 characters long"),
        ([("k1", KEY_OLD, "extra")], r"#1 must be a \(key_id, key_bytes\) tuple"),
    ],
)
def test_constructor_validation(keys: list[tuple[str, bytes]], expected: str) -> None:
    with pytest.raises(VaultConfigError, match=expected) as info:
        Vault(keys)
    assert_no_secrets(str(info.value), KEY_OLD, KEY_NEW)


def test_constructor_accepts_bytearray_and_does_not_alias_it() -> None:
    key = bytearray(KEY_OLD)
    vault = Vault([("k1", key)])  # type: ignore[list-item]
    blob, key_id = vault.encrypt(SECRET, REF)
    key[:] = bytes(32)
    assert vault.decrypt(blob, key_id, REF) == SECRET


# --- secret hygiene -------------------------------------------------------------


def test_vault_repr_and_str_show_ids_only() -> None:
    vault = Vault([("new", KEY_NEW), ("old", KEY_OLD)])
    expected = "Vault(active_key_id='new', decrypt_only_key_ids=['old'])"
    for text in (repr(vault), str(vault), f"{vault}", f"{vault!r}"):
        assert text == expected
        assert_no_secrets(text, KEY_NEW, KEY_OLD)
    assert not hasattr(vault, "__dict__")


def test_vault_holds_no_raw_key_bytes() -> None:
    vault = Vault([("new", KEY_NEW)])
    for name in Vault.__slots__:
        value = getattr(vault, name)
        assert value != KEY_NEW
        if isinstance(value, dict):
            assert KEY_NEW not in value.values()


def test_vault_is_immutable_and_not_picklable(vault: Vault) -> None:
    with pytest.raises(AttributeError):
        vault._active_key_id = "other"
    with pytest.raises(AttributeError):
        del vault._ciphers
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(vault)
    assert copy.copy(vault) is vault
    assert copy.deepcopy({"v": vault})["v"] is vault


def test_decrypt_error_is_safe() -> None:
    vault = Vault([("k1", KEY_OLD)])
    blob, key_id = vault.encrypt(SECRET, REF)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(VaultDecryptError) as info:
        vault.decrypt(tampered, key_id, REF)
    err = info.value
    rendered = "".join(traceback.format_exception(err)) + repr(err) + repr(err.to_dict())
    assert_no_secrets(rendered, KEY_OLD, SECRET, SECRET[-8:])
    assert tampered.hex() not in rendered
    assert repr(tampered) not in rendered
    assert tampered[1:13].hex() not in rendered
    assert err.__cause__ is None
    assert err.__context__ is None  # no InvalidTag chained
    assert "could not be decrypted" in err.message
    assert "'user-1'" in err.message and "'openai'" in err.message
    assert "'default'" in err.message and "'k1'" in err.message
    assert err.to_dict()["error"]["code"] == "byok_key_unusable"
    assert err.details == {"provider": "openai", "key_name": "default"}
    assert isinstance(err, VaultError) and isinstance(err, CreditsError)


def test_decrypt_message_truncates_huge_identifiers(vault: Vault) -> None:
    blob, key_id = vault.encrypt(SECRET, REF)
    with pytest.raises(VaultDecryptError) as info:
        vault.decrypt(blob, key_id, KeyRowRef("u" * 5000, "openai", "default"))
    assert len(str(info.value)) < 600


def test_type_errors() -> None:
    vault = Vault([("k1", KEY_OLD)])
    blob, key_id = vault.encrypt(SECRET, REF)
    with pytest.raises(TypeError):
        vault.encrypt(SECRET, ("user-1", "openai", "default"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vault.decrypt(blob.hex(), key_id, REF)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        KeyRowRef(1, "openai", "default")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="surrogate"):
        KeyRowRef("\ud800", "openai", "default")


# --- generate_key_entry ---------------------------------------------------------


def test_generate_key_entry() -> None:
    entry = generate_key_entry("k2026-01_a")
    key_id, _, encoded = entry.partition(":")
    assert key_id == "k2026-01_a"
    assert len(base64.urlsafe_b64decode(encoded)) == 32
    assert generate_key_entry("k2026-01_a") != entry
    vault = Vault.from_env({ENV_VAR: entry + "," + generate_key_entry("old")})
    assert vault.active_key_id == "k2026-01_a"


@pytest.mark.parametrize("bad", ["", "a b", "a:b", "x" * 33, "ключ"])
def test_generate_key_entry_refuses_bad_ids(bad: str) -> None:
    with pytest.raises(VaultConfigError, match="key id"):
        generate_key_entry(bad)


# --- key_hint -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plaintext", "hint"),
    [
        ("sk-abcdefghijklWXYZ", "…WXYZ"),
        ("abcdefghWXYZ", "…WXYZ"),  # 12 chars: last 4
        ("abcdefgXYZ", "…YZ"),  # 10 chars: last 2
        ("abcdefYZ", "…YZ"),  # 8 chars: last 2
        ("abcdefg", "…"),  # 7 chars: nothing
        ("a", "…"),
        ("", ""),
        ("  \n", ""),
        ("  abcdefghWXYZ\n", "…WXYZ"),  # hint of what is stored
    ],
)
def test_key_hint(plaintext: str, hint: str) -> None:
    assert key_hint(plaintext) == hint


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64))
def test_key_hint_never_reveals_much(plaintext: str) -> None:
    hint = key_hint(plaintext)
    text = plaintext.strip()
    revealed = hint.removeprefix("…")
    assert text.endswith(revealed)
    assert len(revealed) <= 4
    if len(text) < 12:
        assert len(revealed) <= 2
    if len(text) < 8:
        assert revealed == ""
    if text:
        assert len(revealed) * 3 <= len(text)


# --- validate_plaintext ---------------------------------------------------------


def test_validate_plaintext_strips() -> None:
    assert validate_plaintext("  sk-abc\r\n") == "sk-abc"
    assert validate_plaintext("\tsk-abc def ") == "sk-abc def"
    assert validate_plaintext("clé-ü") == "clé-ü"


def test_validate_plaintext_length_limit() -> None:
    assert validate_plaintext("a" * MAX_PLAINTEXT_CHARS) == "a" * MAX_PLAINTEXT_CHARS
    assert validate_plaintext(" " + "a" * MAX_PLAINTEXT_CHARS + "\n") == "a" * 4096
    with pytest.raises(
        InvalidProviderKey, match=r"too long \(4097 characters; the maximum is 4096"
    ):
        validate_plaintext("q" * (MAX_PLAINTEXT_CHARS + 1))


@pytest.mark.parametrize("value", ["", " ", "\n\t \r\n"])
def test_validate_plaintext_refuses_empty(value: str) -> None:
    with pytest.raises(InvalidProviderKey, match="empty"):
        validate_plaintext(value)


@pytest.mark.parametrize(
    ("value", "codepoint", "position"),
    [
        ("sk-SECRETPART\x00TAILPART", "U+0000", 14),
        ("sk-SECRETPART\nTAILPART", "U+000A", 14),
        ("sk-SECRETPART\tTAILPART", "U+0009", 14),
        ("sk-SECRETPART\x07TAILPART", "U+0007", 14),
        ("sk-SECRETPART\x7fTAILPART", "U+007F", 14),
        ("sk-SECRETPART\x85TAILPART", "U+0085", 14),
        ("sk-SECRETPART\u200bTAILPART", "U+200B", 14),
        ("\ufeffsk-SECRETPARTTAILPART", "U+FEFF", 1),
        ("sk-SECRETPART\u2028TAILPART", "U+2028", 14),
        ("sk-SECRETPART\ud800TAILPART", "U+D800", 14),
    ],
)
def test_validate_plaintext_refuses_control_chars_without_echo(
    value: str, codepoint: str, position: int
) -> None:
    with pytest.raises(InvalidProviderKey) as info:
        validate_plaintext(value)
    err = info.value
    message = str(err)
    assert codepoint in message
    assert f"position {position}" in message
    rendered = "".join(traceback.format_exception(err)) + repr(err) + repr(err.to_dict())
    assert "SECRETPART" not in rendered
    assert "TAILPART" not in rendered
    assert err.__cause__ is None and err.__context__ is None


def test_validate_plaintext_error_classes() -> None:
    with pytest.raises(InvalidProviderKey) as info:
        validate_plaintext("")
    assert isinstance(info.value, InvalidInput)
    assert isinstance(info.value, VaultError)
    assert info.value.http_status == 400
    with pytest.raises(InvalidProviderKey, match="must be a string"):
        validate_plaintext(b"sk-abc")  # type: ignore[arg-type]


def test_validation_error_does_not_leak_long_key() -> None:
    secret = "sk-" + "Z9" * 3000
    with pytest.raises(InvalidProviderKey) as info:
        validate_plaintext(secret)
    assert "Z9Z9" not in str(info.value)


def test_os_urandom_nonces_are_used(monkeypatch: pytest.MonkeyPatch, vault: Vault) -> None:
    """The nonce is exactly what os.urandom returned (no counter, no constant)."""
    calls: list[int] = []

    def fake_urandom(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    monkeypatch.setattr(os, "urandom", fake_urandom)
    blob1, _ = vault.encrypt(SECRET, REF)
    blob2, _ = vault.encrypt(SECRET, REF)
    assert calls == [NONCE_BYTES, NONCE_BYTES]
    assert blob1[1 : 1 + NONCE_BYTES] == b"\x01" * NONCE_BYTES
    assert blob2[1 : 1 + NONCE_BYTES] == b"\x02" * NONCE_BYTES


# The vault is split by concern; a secret may sit in a frame of any of its modules.
_VAULT_FILES = {
    module.__file__
    for module in (vault_module, masterkeys_module, validate_module, refs_module)
}


def _vault_frame_locals(err: BaseException) -> str:
    """repr of every local of the vault modules' frames on err's traceback."""
    rendered = []
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in _VAULT_FILES:
            rendered.append(repr(tb.tb_frame.f_locals))
        tb = tb.tb_next
    assert rendered, "expected a vault frame on the traceback"
    return "\n".join(rendered)


def test_from_env_error_frames_hold_no_key_material() -> None:
    value = f"k1:{b64url(KEY_OLD)},k2:{b64(SHORT_KEY)}"
    with pytest.raises(VaultConfigError) as info:
        Vault.from_env({ENV_VAR: value})
    locals_text = _vault_frame_locals(info.value)
    assert_no_secrets(locals_text, KEY_OLD, SHORT_KEY)


def test_plaintext_error_frames_hold_no_plaintext(vault: Vault) -> None:
    for call in (validate_plaintext, lambda p: vault.encrypt(p, REF)):
        with pytest.raises(InvalidProviderKey) as info:
            call("sk-SECRETPART\x00TAILPART")
        assert "SECRETPART" not in _vault_frame_locals(info.value)
