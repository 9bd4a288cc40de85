"""The BYOK key store: users' own provider keys in ``user_provider_keys``.

:class:`KeyStore` adds, lists, revokes and re-flags keys in the database, and
hands re-encryption under the active master key to
:mod:`litellm_credits.byok.rotation` (:meth:`KeyStore.rotate`). Input is checked
by :mod:`litellm_credits.byok.validate`, sealed by
:mod:`litellm_credits.byok.vault`, and returned as
:mod:`litellm_credits.byok.records`; SQL is ``queries/keys.sql``. The hot path
does not come through here: it reads the active keys (still sealed) in the one
``reserve_credits`` round trip and decrypts them with the vault.

Rules
-----
* **Names.** A key is identified by ``(user_id, provider, key_name)``;
  ``provider`` is LiteLLM's provider name (an alias is mapped to it) and both
  are normalised as :mod:`~litellm_credits.byok.validate` says. Invalid input
  is refused before anything is written (invariant I8).
* **The first key is the default.** A key added while the user has no active
  default key for that provider becomes the default, whether or not
  ``default=True`` was asked for. ``default=True`` makes the new key the
  default and clears the flag on the user's other keys for that provider, in
  the same transaction. There is at most one active default per user and
  provider (a partial unique index enforces it too).
* **Revoking** sets ``is_active = false``, ``is_default = false`` and
  ``revoked_at``. The hot path stops using the key as soon as the revoke
  commits (``reserve_credits`` returns active keys only). Revoking the default
  does *not* promote another key: a key the user did not choose as default is
  never used implicitly. Until they pick one (``set_default``), requests for
  that provider use platform keys unless the request names a key.
  :class:`~litellm_credits.byok.records.RevokeResult` says when this happened
  and which keys remain. Revoking a key that is already revoked changes
  nothing and is not an error.
* **Re-adding a revoked name** reuses its row: new ciphertext under the active
  master key, new hint, active again, ``usage_count`` 0, ``last_used_at``
  empty, ``created_at`` now, ``revoked_at`` cleared. The row id stays, so
  usage rows written before the revoke still point at it (their timestamps
  predate the new ``created_at``). Adding a name that is *active* is refused
  with :class:`~litellm_credits.errors.Conflict`; revoke it first.
* **Secrets.** The plaintext is validated, hinted and encrypted, then
  dropped; it is never written, logged, returned or put in an error.
  :class:`~litellm_credits.byok.records.KeyInfo` carries the hint (``…WXYZ``)
  and never the ciphertext. ``created_by`` / ``by`` go to the
  ``litellm_credits.byok.keys`` logger (the table has no column for them);
  those log lines name the user, provider and key name only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from litellm_credits import errors
from litellm_credits.byok.masterkeys import NOT_CONFIGURED_MESSAGE
from litellm_credits.byok.records import KeyInfo, RevokeResult
from litellm_credits.byok.refs import KeyRowRef
from litellm_credits.byok.rotation import RotationReport, rotate_keys
from litellm_credits.byok.validate import (
    check_key_name,
    key_hint,
    normalize_provider,
    shown,
    validate_plaintext,
)
from litellm_credits.byok.vault import Vault
from litellm_credits.config_schema import DEFAULT_PROVIDER_ALIASES
from litellm_credits.store.db import Database, Row, run
from litellm_credits.values import check_text, check_user_id

__all__ = ["KeyStore"]

log = logging.getLogger("litellm_credits.byok.keys")


class KeyStore:
    """Users' provider keys. ``vault`` may be None for the operations that need no
    encryption (list, revoke, set_default, set_fallback); the others then raise
    :class:`~litellm_credits.errors.VaultNotConfigured` saying how to make a key."""

    def __init__(
        self,
        db: Database,
        vault: Vault | None,
        *,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.db = db
        self.vault = vault
        self.aliases: Mapping[str, str] = dict(
            DEFAULT_PROVIDER_ALIASES if aliases is None else aliases
        )

    def _require_vault(self) -> Vault:
        if self.vault is None:
            raise errors.VaultNotConfigured(NOT_CONFIGURED_MESSAGE)
        return self.vault

    def _ident(self, user_id: Any, provider: Any, key_name: Any) -> dict[str, str]:
        return {
            "user_id": check_user_id(user_id),
            "provider": normalize_provider(provider, self.aliases),
            "key_name": check_key_name(key_name),
        }

    @staticmethod
    def _what(ident: Mapping[str, str]) -> str:
        return (
            f"user {shown(ident['user_id'])} {ident['provider']} key "
            f"{shown(ident['key_name'])}"
        )

    # -- adding ------------------------------------------------------------------

    async def add(
        self,
        user_id: str,
        provider: str,
        key_name: str,
        secret: str,
        *,
        default: bool = False,
        fallback_to_platform: bool = False,
        created_by: str | None,
    ) -> KeyInfo:
        """Store ``secret`` (encrypted) as the user's key ``key_name`` for ``provider``.

        The key becomes the default if ``default`` is true or the user has no
        active default for the provider. A revoked key of the same name is
        replaced; an active one is a :class:`~litellm_credits.errors.Conflict`.
        """
        ident = self._ident(user_id, provider, key_name)
        check_text("created_by", created_by, 255)
        vault = self._require_vault()
        ref = KeyRowRef(ident["user_id"], ident["provider"], ident["key_name"])
        # ``del`` in ``finally``: no frame on an error's traceback holds the key.
        try:
            plaintext = validate_plaintext(secret)
        finally:
            del secret
        try:
            hint = key_hint(plaintext)
            blob, master_key_id = vault.encrypt(plaintext, ref)
        finally:
            del plaintext

        async with self.db.transaction() as conn:
            await run(conn, "keys_lock_user_provider", ident)
            existing = await run(conn, "keys_find_for_update", ident)
            if existing and existing[0]["is_active"]:
                raise errors.Conflict(
                    f"{self._what(ident)} already exists and is active; revoke it first "
                    "(keys revoke) or choose another name",
                    provider=ident["provider"], key_name=ident["key_name"],
                )
            has_default = (await run(conn, "keys_has_active_default", ident))[0]["has_default"]
            make_default = bool(default) or not has_default
            if make_default:
                await run(conn, "keys_clear_defaults", ident)
            params: dict[str, Any] = {
                **ident,
                "encrypted_key": blob,
                "encryption_key_id": master_key_id,
                "key_hint": hint,
                "is_default": make_default,
                "fallback_to_platform": bool(fallback_to_platform),
            }
            if existing:
                rows = await run(conn, "keys_reactivate", {**params, "id": existing[0]["id"]})
            else:
                rows = await run(conn, "keys_insert", params)
        info = KeyInfo.from_row(rows[0])
        log.info(
            "byok key %s: user=%r provider=%s name=%r id=%d default=%s by=%r",
            "re-added" if existing else "added", info.user_id, info.provider, info.name,
            info.id, info.is_default, created_by,
        )
        return info

    # -- reading -----------------------------------------------------------------

    async def list(self, user_id: str) -> list[KeyInfo]:
        """Every key of the user, active and revoked, by provider; hints only."""
        rows = await self.db.fetchall("keys_list", {"user_id": check_user_id(user_id)})
        return [KeyInfo.from_row(row) for row in rows]

    async def get(self, user_id: str, provider: str, key_name: str) -> KeyInfo:
        ident = self._ident(user_id, provider, key_name)
        row = await self.db.fetchone("keys_get", ident)
        if row is None:
            raise self._not_found(ident)
        return KeyInfo.from_row(row)

    def _not_found(self, ident: Mapping[str, str]) -> errors.NotFound:
        return errors.NotFound(
            f"{self._what(ident)} does not exist; see the user's keys with: "
            "litellm-credits keys list USER",
            provider=ident["provider"], key_name=ident["key_name"],
        )

    # -- changing ----------------------------------------------------------------

    async def revoke(
        self, user_id: str, provider: str, key_name: str, *, by: str | None = None
    ) -> RevokeResult:
        """Deactivate a key (takes effect on the next request of every proxy)."""
        ident = self._ident(user_id, provider, key_name)
        async with self.db.transaction() as conn:
            await run(conn, "keys_lock_user_provider", ident)
            before = await run(conn, "keys_find_for_update", ident)
            if not before:
                raise self._not_found(ident)
            was_default = bool(before[0]["is_active"] and before[0]["is_default"])
            rows = await run(conn, "keys_revoke", ident)
            revoked_now = bool(rows)
            if not rows:
                rows = await run(conn, "keys_get", ident)
            remaining = await run(conn, "keys_active_names", ident)
        result = RevokeResult(
            key=KeyInfo.from_row(rows[0]),
            revoked_now=revoked_now,
            was_default=was_default,
            remaining_active=tuple(r["key_name"] for r in remaining),
        )
        if revoked_now:
            log.info(
                "byok key revoked: user=%r provider=%s name=%r id=%d by=%r",
                result.key.user_id, result.key.provider, result.key.name, result.key.id, by,
            )
        return result

    async def set_default(
        self, user_id: str, provider: str, key_name: str, *, by: str | None = None
    ) -> KeyInfo:
        """Make an active key the user's default for its provider (clearing the old one)."""
        ident = self._ident(user_id, provider, key_name)
        async with self.db.transaction() as conn:
            await run(conn, "keys_lock_user_provider", ident)
            await self._require_active(conn, ident)
            await run(conn, "keys_clear_defaults", ident)
            rows = await run(conn, "keys_mark_default", ident)
        info = KeyInfo.from_row(rows[0])
        log.info(
            "byok default key set: user=%r provider=%s name=%r id=%d by=%r",
            info.user_id, info.provider, info.name, info.id, by,
        )
        return info

    async def set_fallback(
        self,
        user_id: str,
        provider: str,
        key_name: str,
        fallback_to_platform: bool,
        *,
        by: str | None = None,
    ) -> KeyInfo:
        """Whether requests fall back to platform keys when the provider rejects this key."""
        ident = self._ident(user_id, provider, key_name)
        async with self.db.transaction() as conn:
            await run(conn, "keys_lock_user_provider", ident)
            await self._require_active(conn, ident)
            rows = await run(
                conn, "keys_set_fallback",
                {**ident, "fallback_to_platform": bool(fallback_to_platform)},
            )
        info = KeyInfo.from_row(rows[0])
        log.info(
            "byok key fallback_to_platform=%s: user=%r provider=%s name=%r id=%d by=%r",
            info.fallback_to_platform, info.user_id, info.provider, info.name, info.id, by,
        )
        return info

    async def _require_active(
        self, conn: psycopg.AsyncConnection[Row], ident: Mapping[str, str]
    ) -> None:
        rows = await run(conn, "keys_find_for_update", ident)
        if not rows:
            raise self._not_found(ident)
        if not rows[0]["is_active"]:
            raise errors.Conflict(
                f"{self._what(ident)} is revoked; add it again with keys add",
                provider=ident["provider"], key_name=ident["key_name"],
            )

    # -- rotation ----------------------------------------------------------------

    async def rotate(
        self,
        batch_size: int = 100,
        *,
        max_rows: int | None = None,
        progress: Callable[[RotationReport], None] | None = None,
    ) -> RotationReport:
        """Re-encrypt every row not sealed with the active master key
        (see :mod:`litellm_credits.byok.rotation`)."""
        vault = self._require_vault()
        return await rotate_keys(
            self.db, vault, batch_size, max_rows=max_rows, progress=progress
        )
