"""The BYOK key store: users' own provider keys in ``user_provider_keys``.

:class:`KeyStore` adds, lists, revokes and re-flags keys, and re-encrypts them
under the active master key (:meth:`KeyStore.rotate`). Encryption itself is
:mod:`litellm_credits.byok.vault`; SQL is ``sql/keys.sql``. The hot path does not
come through here: it reads the active keys (still sealed) in the one
``reserve_credits`` round trip and decrypts them with the vault.

Rules
-----
* **Names.** A key is identified by ``(user_id, provider, key_name)``.
  ``provider`` is LiteLLM's provider name (``openai``, ``anthropic``,
  ``openrouter``, ``together_ai``, ...): surrounding spaces are removed, it is
  lower-cased, must be 1-64 characters from ``a-z 0-9 _ -``, and a configured
  alias is mapped to LiteLLM's name (``together`` -> ``together_ai``, see
  ``Settings.provider_aliases``). ``key_name`` is 1-64 characters after
  surrounding spaces are removed, with no control or invisible characters.
  Invalid input is refused before anything is written (invariant I8).
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
  :class:`RevokeResult` says when this happened and which keys remain.
  Revoking a key that is already revoked changes nothing and is not an error.
* **Re-adding a revoked name** reuses its row: new ciphertext under the active
  master key, new hint, active again, ``usage_count`` 0, ``last_used_at``
  empty, ``created_at`` now, ``revoked_at`` cleared. The row id stays, so
  usage rows written before the revoke still point at it (their timestamps
  predate the new ``created_at``). Adding a name that is *active* is refused
  with :class:`~litellm_credits.errors.Conflict`; revoke it first.
* **Secrets.** The plaintext is validated, hinted and encrypted, then
  dropped; it is never written, logged, returned or put in an error.
  :class:`KeyInfo` carries the hint (``…WXYZ``) and never the ciphertext.
  ``created_by`` / ``by`` go to the ``litellm_credits.byok.keys`` logger (the table
  has no column for them); those log lines name the user, provider and key
  name only.

Rotation
--------
:meth:`KeyStore.rotate` re-encrypts every row (active or revoked) that is not
sealed with the active master key. It pages through candidate ids in batches
and re-encrypts each row in its own short transaction: ``SELECT ... FOR UPDATE
SKIP LOCKED`` on the row *and* a re-check that it is still under an old key
id, then an ``UPDATE`` guarded by the old key id. So:

* proxies keep serving: readers never wait (MVCC), and a proxy configured
  with both master keys decrypts the row before and after;
* an interrupted run leaves every row either old or new, never torn, and a
  re-run picks up what is left (it is idempotent: rows already current are
  counted, not touched);
* two rotations at once do not fight: a row one has locked is skipped and
  retried by the other, and found current;
* a row that cannot be decrypted (corrupt, swapped, or sealed with a master
  key that is not configured) is reported by id with the vault's message,
  and the run goes on. Nothing is written for it.

Every proxy must run with the new key *first* before rotating, or it keeps
sealing new keys with the old one; :attr:`RotationReport.remaining` counts
the rows still not under the active key when the run ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg

from litellm_credits import errors
from litellm_credits.byok.vault import (
    NOT_CONFIGURED_MESSAGE,
    KeyRowRef,
    Vault,
    key_hint,
    validate_plaintext,
)
from litellm_credits.settings import DEFAULT_PROVIDER_ALIASES
from litellm_credits.store.db import Database, Row, run
from litellm_credits.values import check_text, check_user_id

__all__ = [
    "KeyInfo",
    "KeyStore",
    "RevokeResult",
    "RotationReport",
    "check_key_name",
    "normalize_provider",
]

log = logging.getLogger("litellm_credits.byok.keys")

MAX_NAME_CHARS = 64
MAX_PROVIDER_CHARS = 64
MAX_BATCH_SIZE = 10_000
_PROVIDER_RE = re.compile(r"[a-z0-9_-]{1,64}")
# Controls, invisible format characters, lone surrogates, line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Pauses before retrying rows another transaction held locked during a rotation.
_BUSY_RETRY_DELAYS = (0.05, 0.2, 0.5)


def _shown(text: str, limit: int = 40) -> str:
    """``repr`` of a (non-secret) identifier, shortened for messages."""
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def normalize_provider(provider: Any, aliases: Mapping[str, str] | None = None) -> str:
    """LiteLLM's provider name for user input, or :class:`InvalidInput` naming the problem."""
    if not isinstance(provider, str):
        raise errors.InvalidInput(f"provider must be text, not {type(provider).__name__}")
    name = provider.strip().lower()
    if not name:
        raise errors.InvalidInput(
            "provider is empty; use LiteLLM's provider name, e.g. openai or anthropic"
        )
    if not _PROVIDER_RE.fullmatch(name):
        raise errors.InvalidInput(
            f"provider {_shown(name)} is not a LiteLLM provider name: use 1-{MAX_PROVIDER_CHARS} "
            "characters from a-z, 0-9, '_' and '-' (e.g. openai, anthropic, openrouter, "
            "together_ai)"
        )
    mapped = (DEFAULT_PROVIDER_ALIASES if aliases is None else aliases).get(name, name)
    if not _PROVIDER_RE.fullmatch(mapped):
        raise errors.ConfigError(
            f"provider alias {name!r} maps to {_shown(mapped)}, which is not a valid provider name"
        )
    return mapped


def check_key_name(key_name: Any) -> str:
    """A key's name with surrounding spaces removed, or :class:`InvalidInput`."""
    if not isinstance(key_name, str):
        raise errors.InvalidInput(f"key name must be text, not {type(key_name).__name__}")
    name = key_name.strip()
    if not name:
        raise errors.InvalidInput("key name is empty; give the key a name such as 'default'")
    if len(name) > MAX_NAME_CHARS:
        raise errors.InvalidInput(
            f"key name is {len(name)} characters long; the limit is {MAX_NAME_CHARS}"
        )
    for position, char in enumerate(name, start=1):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise errors.InvalidInput(
                f"key name contains a control or invisible character (U+{ord(char):04X}) "
                f"at position {position}"
            )
    return name


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True)
class KeyInfo:
    """A stored provider key as people and APIs see it: the hint, never the secret."""

    id: int
    user_id: str
    provider: str
    name: str
    hint: str
    is_default: bool
    is_active: bool
    fallback_to_platform: bool
    usage_count: int
    last_used_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None
    encryption_key_id: str

    @classmethod
    def from_row(cls, row: Row) -> KeyInfo:
        return cls(
            id=int(row["id"]),
            user_id=row["user_id"],
            provider=row["provider"],
            name=row["key_name"],
            hint=row["key_hint"],
            is_default=bool(row["is_default"]),
            is_active=bool(row["is_active"]),
            fallback_to_platform=bool(row["fallback_to_platform"]),
            usage_count=int(row["usage_count"]),
            last_used_at=row["last_used_at"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            encryption_key_id=row["encryption_key_id"],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``encryption_key_id`` is the master key's id, not key material."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "provider": self.provider,
            "name": self.name,
            "hint": self.hint,
            "is_default": self.is_default,
            "is_active": self.is_active,
            "fallback_to_platform": self.fallback_to_platform,
            "usage_count": self.usage_count,
            "last_used_at": _iso(self.last_used_at),
            "created_at": _iso(self.created_at),
            "revoked_at": _iso(self.revoked_at),
            "encryption_key_id": self.encryption_key_id,
        }


@dataclass(frozen=True)
class RevokeResult:
    """What :meth:`KeyStore.revoke` did."""

    key: KeyInfo
    #: False when the key was already revoked (nothing changed).
    revoked_now: bool
    #: The key was the provider's default, so the provider now has none.
    was_default: bool
    #: Names of the user's keys for the provider that are still active.
    remaining_active: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.key.to_dict(),
            "revoked_now": self.revoked_now,
            "was_default": self.was_default,
            "remaining_active": list(self.remaining_active),
        }


@dataclass
class RotationReport:
    """Outcome of :meth:`KeyStore.rotate`. Ids only; never key material."""

    active_key_id: str
    #: Rows this run re-encrypted under the active key.
    rotated: int = 0
    #: Rows under the active key that this run did not touch.
    already_current: int = 0
    #: Ids of rows that could not be decrypted; nothing was written for them.
    failed: list[int] = field(default_factory=list)
    #: The vault's message for each failed id (names user, provider, key name, key id).
    errors: dict[int, str] = field(default_factory=dict)
    #: Ids still locked by another transaction after the retries; run again.
    busy: list[int] = field(default_factory=list)
    #: Rows not under the active key when the run ended (failed, busy, or
    #: sealed meanwhile by a proxy still configured with an old key first).
    remaining: int = 0

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and not self.failed and not self.busy

    def to_dict(self) -> dict[str, Any]:
        return {
            "active_key_id": self.active_key_id,
            "rotated": self.rotated,
            "already_current": self.already_current,
            "failed": list(self.failed),
            "errors": {str(k): v for k, v in self.errors.items()},
            "busy": list(self.busy),
            "remaining": self.remaining,
            "complete": self.complete,
        }


_Outcome = Literal["rotated", "current", "busy", "failed"]


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
            f"user {_shown(ident['user_id'])} {ident['provider']} key "
            f"{_shown(ident['key_name'])}"
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
        """Re-encrypt every row not sealed with the active master key (see module docs).

        ``max_rows`` stops after examining that many candidate rows (to spread
        the work over several runs); ``progress`` is called after each batch.
        """
        vault = self._require_vault()
        if isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise errors.InvalidInput(f"batch size must be 1 to {MAX_BATCH_SIZE}")
        if max_rows is not None and (isinstance(max_rows, bool) or max_rows < 0):
            raise errors.InvalidInput("max_rows must be 0 or more")
        active = vault.active_key_id
        report = RotationReport(active_key_id=active)
        touched_current = 0
        busy: list[int] = []
        after_id = 0
        examined = 0
        while True:
            limit = batch_size if max_rows is None else min(batch_size, max_rows - examined)
            if limit <= 0:
                break
            batch = await self.db.fetchall(
                "keys_rotation_batch",
                {"active_key_id": active, "after_id": after_id, "limit": limit},
            )
            if not batch:
                break
            for candidate in batch:
                row_id = int(candidate["id"])
                outcome = await self._rotate_row(vault, row_id, report)
                if outcome == "busy":
                    busy.append(row_id)
                elif outcome == "current":
                    touched_current += 1
            after_id = int(batch[-1]["id"])
            examined += len(batch)
            if progress is not None:
                progress(report)

        for delay in _BUSY_RETRY_DELAYS:
            if not busy:
                break
            await asyncio.sleep(delay)
            still_busy: list[int] = []
            for row_id in busy:
                outcome = await self._rotate_row(vault, row_id, report)
                if outcome == "busy":
                    still_busy.append(row_id)
            busy = still_busy
        report.busy = busy

        current = await self.db.fetchone("keys_count_under", {"key_id": active})
        total_current = int(current["n"]) if current else 0
        report.already_current = max(0, total_current - report.rotated)
        left = await self.db.fetchone(
            "keys_rotation_count_remaining", {"active_key_id": active}
        )
        report.remaining = int(left["n"]) if left else 0
        log.info(
            "byok rotation to master key %s: rotated=%d already_current=%d failed=%d busy=%d "
            "remaining=%d",
            active, report.rotated, report.already_current, len(report.failed),
            len(report.busy), report.remaining,
        )
        return report

    async def _rotate_row(self, vault: Vault, row_id: int, report: RotationReport) -> _Outcome:
        active = vault.active_key_id
        async with self.db.transaction() as conn:
            rows = await run(conn, "keys_rotation_lock", {"id": row_id, "active_key_id": active})
            if not rows:
                state = await run(conn, "keys_rotation_state", {"id": row_id})
                if not state or state[0]["encryption_key_id"] == active:
                    return "current"
                return "busy"
            row = rows[0]
            ref = KeyRowRef(row["user_id"], row["provider"], row["key_name"])
            try:
                blob, new_key_id = vault.reencrypt(
                    row["encrypted_key"], row["encryption_key_id"], ref
                )
            except errors.VaultDecryptError as exc:
                message = exc.message
            else:
                stored = await run(
                    conn, "keys_rotation_store",
                    {"id": row_id, "encrypted_key": blob, "encryption_key_id": new_key_id,
                     "old_key_id": row["encryption_key_id"]},
                )
                if not stored:  # pragma: no cover - the row lock rules this out
                    return "current"
                report.rotated += 1
                return "rotated"
        if row_id not in report.errors:
            report.failed.append(row_id)
        report.errors[row_id] = message
        return "failed"
