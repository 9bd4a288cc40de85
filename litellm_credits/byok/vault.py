"""The BYOK vault: encryption of users' own provider API keys.

Users may store their own provider keys ("bring your own key"). They are kept
in the database encrypted with AES-256-GCM under a *master key* that only the
proxy holds, taken from the environment variable ``CREDITS_ENCRYPTION_KEYS``::

    CREDITS_ENCRYPTION_KEYS="k2:<base64 of 32 random bytes>,k1:<base64 ...>"

The first entry is the *active* key (every new encryption uses it); the others
are kept only so that rows encrypted under them can still be read while they
are rotated (see :meth:`Vault.needs_rotation` and :meth:`Vault.reencrypt`).

Stored form, one database row per provider key::

    encrypted_key      BYTEA  = version (1 byte, 0x01) || nonce (12 bytes) || ciphertext || tag (16)
    encryption_key_id  TEXT   = id of the master key that encrypted it

The GCM associated data binds each ciphertext to its row: the format version,
the master key id, and the row's ``(user_id, provider, key_name)``, each
length-prefixed so that no two different rows share an encoding. A ciphertext
copied to another user's row, another provider or another key name, or
relabelled with another master key id, fails to decrypt.

Secret hygiene: this module logs nothing; ``repr()``/``str()`` of a
:class:`Vault` and of every error it raises name key *ids* only, never key
bytes, plaintexts or ciphertexts; errors are raised without an exception
chain, and functions drop their secret-holding locals before raising, so that
error reporters that capture frame locals do not see them either.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from litellm_credits.errors import (
    ConfigError,
    InvalidInput,
    VaultDecryptError,
    VaultError,
    VaultNotConfigured,
)

__all__ = [
    "ENV_VAR",
    "FORMAT_VERSION",
    "MAX_PLAINTEXT_CHARS",
    "InvalidProviderKey",
    "KeyRowRef",
    "Vault",
    "VaultConfigError",
    "generate_key_entry",
    "key_hint",
    "validate_plaintext",
]

ENV_VAR = "CREDITS_ENCRYPTION_KEYS"
FORMAT_VERSION = 1
MAX_PLAINTEXT_CHARS = 4096

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: Shortest blob that can be valid: version byte, nonce and tag.
MIN_BLOB_BYTES = 1 + NONCE_BYTES + TAG_BYTES

_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_KEY_ID_RULE = "1-32 characters from A-Z, a-z, 0-9, '_' and '-'"
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")
_AAD_LABEL = b"litellm-credits/byok-vault"
# Unicode categories refused inside a provider key: controls (incl. NUL, tab,
# newline, DEL), invisible format characters (zero-width space, BOM, bidi
# overrides), lone surrogates, and line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

GENERATE_COMMAND = (
    f'export {ENV_VAR}="k1:$(python -c '
    "'import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())')\""
)

NOT_CONFIGURED_MESSAGE = (
    f"{ENV_VAR} is not set, so users' own provider keys (BYOK) cannot be stored or used. "
    "Generate a master key and set it before starting the proxy, for example:\n"
    f"    {GENERATE_COMMAND}\n"
    "Keep this value secret and backed up: without it, stored provider keys cannot be "
    "decrypted. Format: a comma-separated list of KEYID:BASE64KEY entries, the first "
    "one active (see docs/vault.md)."
)


class VaultConfigError(VaultError, ConfigError):
    """``CREDITS_ENCRYPTION_KEYS`` (or the keys given to :class:`Vault`) is malformed."""

    http_status = 500
    code = "vault_config_error"


class InvalidProviderKey(VaultError, InvalidInput):
    """A provider API key submitted for storage is unusable (empty, too long, control chars)."""

    http_status = 400
    code = "invalid_provider_key"


@dataclass(frozen=True)
class KeyRowRef:
    """Identity of the database row a provider key is stored in.

    All three values are bound into the ciphertext; they must be exactly the
    values of the row (renaming a key or moving it to another user means
    decrypting and encrypting again).
    """

    user_id: str
    provider: str
    key_name: str

    def __post_init__(self) -> None:
        for field in ("user_id", "provider", "key_name"):
            value = getattr(self, field)
            if not isinstance(value, str):
                raise TypeError(f"KeyRowRef.{field} must be str, not {type(value).__name__}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"KeyRowRef.{field} is not valid text (contains a lone surrogate)"
                ) from None


# --- helpers ---------------------------------------------------------------------


def _short(text: str, limit: int = 64) -> str:
    """``repr`` of a non-secret identifier, shortened for messages."""
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)


def _row(ref: KeyRowRef) -> str:
    return (
        f"stored key for user {_short(ref.user_id)} provider {_short(ref.provider)} "
        f"name {_short(ref.key_name)}"
    )


def _aad(version: int, key_id: str, ref: KeyRowRef) -> bytes:
    """Associated data: every field length-prefixed (4-byte big-endian), so injective."""
    parts = (
        _AAD_LABEL,
        bytes([version]),
        key_id.encode("utf-8"),
        ref.user_id.encode("utf-8"),
        ref.provider.encode("utf-8"),
        ref.key_name.encode("utf-8"),
    )
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _key_id_problem(key_id: object) -> str | None:
    """Why ``key_id`` is not a valid key id, without echoing it; None if valid."""
    if not isinstance(key_id, str):
        return f"key id must be a string, not {type(key_id).__name__}"
    if _KEY_ID_RE.fullmatch(key_id):
        return None
    if not key_id:
        return f"key id is empty; it must be {_KEY_ID_RULE}"
    if len(key_id) > 32:
        return f"key id is {len(key_id)} characters long; it must be {_KEY_ID_RULE}"
    for position, char in enumerate(key_id, start=1):
        if not _KEY_ID_RE.fullmatch(char):
            return (
                f"key id has a character outside the allowed set at position {position}; "
                f"it must be {_KEY_ID_RULE}"
            )
    return f"key id must be {_KEY_ID_RULE}"  # pragma: no cover - unreachable


def _keys_problem(keys: Sequence[tuple[str, bytes]]) -> str | None:
    """Why a list of (key id, key bytes) cannot be used; None if it can."""
    seen: set[str] = set()
    for index, item in enumerate(keys, start=1):
        if not (isinstance(item, tuple) and len(item) == 2):
            return f"master key #{index} must be a (key_id, key_bytes) tuple"
        key_id, key = item
        problem = _key_id_problem(key_id)
        if problem is not None:
            return f"master key #{index}: {problem}"
        if key_id in seen:
            return f"master key id {key_id!r} appears more than once; key ids must be unique"
        seen.add(key_id)
        if not isinstance(key, (bytes, bytearray)):
            return f"master key {key_id!r} must be bytes, not {type(key).__name__}"
        if len(key) != KEY_BYTES:
            return (
                f"master key {key_id!r} is {len(key)} bytes; it must be exactly "
                f"{KEY_BYTES} bytes (AES-256)"
            )
    return None


def _decode_key(text: str) -> bytes | str:
    """Decode standard or urlsafe base64 (padding optional); an error message on failure."""
    if not text:
        return "has nothing after ':'; expected KEYID:BASE64KEY"
    if not set(text) <= _B64_CHARS:
        return (
            "is not valid base64: it contains characters outside the base64 alphabet "
            "(spaces, quotes or line breaks inside the value?)"
        )
    body = text.rstrip("=")
    padding = len(text) - len(body)
    if "=" in body:
        return "is not valid base64: '=' may only appear at the end"
    if len(body) % 4 == 1:
        return "is not valid base64: its length is impossible for base64 (truncated?)"
    needed = -len(body) % 4
    if padding not in (0, needed):
        return "is not valid base64: wrong number of '=' padding characters"
    normalized = body.replace("-", "+").replace("_", "/") + "=" * needed
    try:
        raw = base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        return "is not valid base64"  # pragma: no cover - excluded by the checks above
    if len(raw) != KEY_BYTES:
        return (
            f"decodes to {len(raw)} bytes, but a master key must be exactly {KEY_BYTES} "
            f"random bytes (AES-256); generate one with: {GENERATE_COMMAND}"
        )
    return raw


def _parse_env_value(value: str) -> list[tuple[str, bytes]] | str:
    """Parse ``CREDITS_ENCRYPTION_KEYS``; a message naming the problem on failure.

    Returns instead of raising so that no frame holding the value is on the
    traceback of the error that is finally raised.
    """
    keys: list[tuple[str, bytes]] = []
    for index, raw_entry in enumerate(value.split(","), start=1):
        entry = raw_entry.strip()
        where = f"{ENV_VAR} entry #{index}"
        if not entry:
            return f"{where} is empty (a stray or doubled comma?); expected KEYID:BASE64KEY"
        if ":" not in entry:
            return f"{where} has no ':'; each entry must look like KEYID:BASE64KEY"
        key_id, _, key_text = entry.partition(":")
        key_id = key_id.strip()
        problem = _key_id_problem(key_id)
        if problem is not None:
            return f"{where}: {problem}"
        where = f"{where} ({key_id!r})"
        if any(key_id == known for known, _ in keys):
            return f"{where}: key id {key_id!r} appears more than once; key ids must be unique"
        decoded = _decode_key(key_text.strip())
        if isinstance(decoded, str):
            return f"{where}: the key {decoded}"
        if decoded.count(decoded[0]) == len(decoded):
            return (
                f"{where}: the key is not random (all its bytes are equal); "
                f"generate one with: {GENERATE_COMMAND}"
            )
        for known_id, known_key in keys:
            if known_key == decoded:
                return (
                    f"{where}: the key is the same as the key of {known_id!r}; every key id "
                    "needs its own key (to rotate, generate a new key)"
                )
        keys.append((key_id, decoded))
    return keys


def _plaintext_problem(text: str) -> str | None:
    """Why a stripped provider key cannot be stored, never quoting it; None if it can."""
    if not text:
        return "provider API key is empty"
    if len(text) > MAX_PLAINTEXT_CHARS:
        return (
            f"provider API key is too long ({len(text)} characters; the maximum is "
            f"{MAX_PLAINTEXT_CHARS})"
        )
    for position, char in enumerate(text, start=1):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return (
                f"provider API key contains a control or invisible character "
                f"(U+{ord(char):04X}) at position {position}; paste the key again without it"
            )
    return None


def _normalize_plaintext(plaintext: str) -> tuple[str, str | None]:
    """(stripped text, problem or None)."""
    if not isinstance(plaintext, str):
        return "", f"provider API key must be a string, not {type(plaintext).__name__}"
    text = plaintext.strip()
    return text, _plaintext_problem(text)


# --- public functions ------------------------------------------------------------


def validate_plaintext(plaintext: str) -> str:
    """Return the provider key with surrounding whitespace removed, or refuse it.

    Refuses (with :class:`InvalidProviderKey`, whose message never contains the
    key) an empty key, one longer than ``MAX_PLAINTEXT_CHARS`` characters, and
    one containing control characters (NUL, tab, newline, DEL, ...), invisible
    format characters or line separators.
    """
    text, problem = _normalize_plaintext(plaintext)
    if problem is not None:
        del plaintext, text
        raise InvalidProviderKey(problem)
    return text


def key_hint(plaintext: str) -> str:
    """A short, safe hint identifying a key: ``"…WXYZ"`` (its last 4 characters).

    Keys shorter than 12 characters show only their last 2 characters, and
    keys shorter than 8 none at all (``"…"``), so a short secret is never
    half revealed. An empty key gives ``""``.
    """
    text = plaintext.strip()
    if not text:
        return ""
    if len(text) >= 12:
        return "…" + text[-4:]
    if len(text) >= 8:
        return "…" + text[-2:]
    return "…"


def generate_key_entry(key_id: str) -> str:
    """A fresh ``KEYID:BASE64KEY`` entry (32 random bytes, urlsafe base64)."""
    problem = _key_id_problem(key_id)
    if problem is not None:
        raise VaultConfigError(f"cannot generate a master key: {problem}")
    return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode('ascii')}"


# --- the vault -------------------------------------------------------------------


class Vault:
    """Encrypts and decrypts provider keys under the configured master keys.

    Holds only ``AESGCM`` objects, never the raw key bytes; cannot be pickled.
    Thread-safe (it has no mutable state).
    """

    __slots__ = ("_active_key_id", "_ciphers")

    _active_key_id: str
    _ciphers: dict[str, AESGCM]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Vault:
        """Build a vault from ``CREDITS_ENCRYPTION_KEYS`` in ``env`` (default ``os.environ``).

        Raises :class:`VaultNotConfigured` (with instructions to make a key)
        when the variable is unset or blank, and :class:`VaultConfigError`
        naming the offending entry when it is malformed.
        """
        source: Mapping[str, str] = os.environ if env is None else env
        value = source.get(ENV_VAR)
        del source, env
        if value is None or not value.strip():
            raise VaultNotConfigured(NOT_CONFIGURED_MESSAGE)
        parsed = _parse_env_value(value)
        del value
        if isinstance(parsed, str):
            raise VaultConfigError(parsed)
        return cls(parsed)

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        """``keys``: (key id, 32 key bytes) pairs; the first is the active key."""
        items = list(keys)
        del keys
        if not items:
            raise VaultNotConfigured(NOT_CONFIGURED_MESSAGE)
        problem = _keys_problem(items)
        if problem is not None:
            del items
            raise VaultConfigError(problem)
        object.__setattr__(self, "_active_key_id", items[0][0])
        object.__setattr__(self, "_ciphers", {key_id: AESGCM(bytes(key)) for key_id, key in items})

    # -- introspection (ids only) --

    @property
    def active_key_id(self) -> str:
        """Id of the master key new encryptions use."""
        return self._active_key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of every configured master key, the active one first."""
        return tuple(self._ciphers)

    def needs_rotation(self, key_id: str) -> bool:
        """True when a row encrypted under ``key_id`` should be re-encrypted."""
        return key_id != self._active_key_id

    def __repr__(self) -> str:
        others = [key_id for key_id in self._ciphers if key_id != self._active_key_id]
        return f"Vault(active_key_id={self._active_key_id!r}, decrypt_only_key_ids={others!r})"

    __str__ = __repr__

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Vault is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Vault is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Vault cannot be pickled; build it with Vault.from_env()")

    def __copy__(self) -> Vault:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Vault:
        return self

    # -- operations --

    def encrypt(self, plaintext: str, ref: KeyRowRef) -> tuple[bytes, str]:
        """Encrypt a provider key for the row ``ref``: ``(encrypted_key, encryption_key_id)``.

        The key is normalized with :func:`validate_plaintext` first (surrounding
        whitespace removed; invalid keys refused with :class:`InvalidProviderKey`).
        """
        if not isinstance(ref, KeyRowRef):
            raise TypeError(f"ref must be a KeyRowRef, not {type(ref).__name__}")
        text, problem = _normalize_plaintext(plaintext)
        del plaintext
        if problem is not None:
            del text
            raise InvalidProviderKey(problem)
        key_id = self._active_key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce, text.encode("utf-8"), _aad(FORMAT_VERSION, key_id, ref)
        )
        return bytes([FORMAT_VERSION]) + nonce + sealed, key_id

    def decrypt(self, blob: bytes | bytearray | memoryview, key_id: str, ref: KeyRowRef) -> str:
        """Decrypt the ``encrypted_key`` of row ``ref`` stored with ``encryption_key_id``.

        Raises :class:`VaultDecryptError` (never quoting the blob or any key)
        when the value was not encrypted for this row, was altered or
        truncated, uses an unknown format version, or its master key is wrong
        or not configured.
        """
        if not isinstance(ref, KeyRowRef):
            raise TypeError(f"ref must be a KeyRowRef, not {type(ref).__name__}")
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError(f"blob must be bytes, not {type(blob).__name__}")
        data = bytes(blob)
        del blob
        row = _row(ref)
        details = {"provider": ref.provider, "key_name": ref.key_name}

        if _key_id_problem(key_id) is not None:
            self._fail(
                f"{row} could not be decrypted: its master key id is not a valid key id "
                "(the row is corrupt); re-add the provider key",
                details,
            )
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            configured = ", ".join(repr(k) for k in self._ciphers)
            self._fail(
                f"{row} could not be decrypted: it was encrypted with master key {key_id!r}, "
                f"which is not configured in {ENV_VAR} (configured: {configured}); put that "
                "master key back (after the active one) or re-add the provider key",
                details,
            )
        if len(data) < MIN_BLOB_BYTES:
            self._fail(
                f"{row} could not be decrypted: the stored value is {len(data)} bytes, too "
                f"short to be an encrypted key (at least {MIN_BLOB_BYTES}); re-add the key",
                details,
            )
        version = data[0]
        if version != FORMAT_VERSION:
            self._fail(
                f"{row} could not be decrypted: unknown storage format version {version} "
                f"(this version of litellm-credits reads version {FORMAT_VERSION}); upgrade "
                "litellm-credits or re-add the key",
                details,
            )
        nonce = data[1 : 1 + NONCE_BYTES]
        sealed = data[1 + NONCE_BYTES :]
        try:
            opened: bytes | None = cipher.decrypt(nonce, sealed, _aad(version, key_id, ref))
        except InvalidTag:
            opened = None
        # Raised outside the ``except`` block: no __context__ chain at all.
        if opened is None:
            self._fail(
                f"{row} could not be decrypted: it was not encrypted for this row, it was "
                f"altered, or master key {key_id!r} is wrong; re-add the key",
                details,
            )
        try:
            text: str | None = opened.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        del opened
        if text is None:  # pragma: no cover - authentic data is always valid UTF-8
            self._fail(f"{row} could not be decrypted: it is not valid text", details)
        return text

    def reencrypt(
        self, blob: bytes | bytearray | memoryview, key_id: str, ref: KeyRowRef
    ) -> tuple[bytes, str]:
        """Decrypt a row and encrypt it again under the active key (fresh nonce).

        Always re-encrypts; call :meth:`needs_rotation` first to skip rows
        that are already under the active key.
        """
        plaintext = self.decrypt(blob, key_id, ref)
        try:
            return self.encrypt(plaintext, ref)
        finally:
            del plaintext

    @staticmethod
    def _fail(message: str, details: dict[str, str]) -> NoReturn:
        raise VaultDecryptError(message, **details)
