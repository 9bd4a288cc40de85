"""The BYOK vault: AES-256-GCM sealing and opening of users' provider keys.

:class:`Vault` holds one AES-GCM cipher per master key (parsed and checked by
:mod:`litellm_credits.byok.masterkeys`); the first is active and seals every
new key, the others only open rows sealed before a rotation (see
:meth:`Vault.needs_rotation` and :meth:`Vault.reencrypt`). Key text is checked
by :mod:`litellm_credits.byok.validate` before it is sealed.

Stored form, one database row per provider key::

    encrypted_key      BYTEA  = version (1 byte, 0x01) || nonce (12 bytes) || ciphertext || tag (16)
    encryption_key_id  TEXT   = id of the master key that encrypted it

The GCM associated data binds each ciphertext to its row
(:class:`~litellm_credits.byok.refs.KeyRowRef`): the format version, the master
key id, and the row's ``(user_id, provider, key_name)``, each length-prefixed
so that no two different rows share an encoding. A ciphertext copied to
another user's row, another provider or another key name, or relabelled with
another master key id, fails to decrypt.

Secret hygiene: this module logs nothing; ``repr()``/``str()`` of a
:class:`Vault` and of every error it raises name key *ids* only, never key
bytes, plaintexts or ciphertexts; errors are raised without an exception
chain, and functions drop their secret-holding locals before raising, so that
error reporters that capture frame locals do not see them either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from litellm_credits.byok.masterkeys import (
    ENV_VAR,
    NOT_CONFIGURED_MESSAGE,
    VaultConfigError,
    key_id_problem,
    keys_problem,
    parse_env_value,
)
from litellm_credits.byok.refs import KeyRowRef, describe_row
from litellm_credits.byok.validate import InvalidProviderKey, normalize_plaintext
from litellm_credits.errors import VaultDecryptError, VaultNotConfigured

__all__ = [
    "FORMAT_VERSION",
    "MIN_BLOB_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "Vault",
]

FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
#: Shortest blob that can be valid: version byte, nonce and tag.
MIN_BLOB_BYTES = 1 + NONCE_BYTES + TAG_BYTES

_AAD_LABEL = b"litellm-credits/byok-vault"


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
        parsed = parse_env_value(value)
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
        problem = keys_problem(items)
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

        The key is normalized with
        :func:`~litellm_credits.byok.validate.validate_plaintext` first (surrounding
        whitespace removed; invalid keys refused with :class:`InvalidProviderKey`).
        """
        if not isinstance(ref, KeyRowRef):
            raise TypeError(f"ref must be a KeyRowRef, not {type(ref).__name__}")
        text, problem = normalize_plaintext(plaintext)
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
        row = describe_row(ref)
        details = {"provider": ref.provider, "key_name": ref.key_name}

        if key_id_problem(key_id) is not None:
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
