"""Re-encrypting stored provider keys under the active master key.

:func:`rotate_keys` (reached as :meth:`litellm_credits.byok.keys.KeyStore.rotate`
and ``litellm-credits keys rotate``) re-encrypts every row (active or revoked)
that is not sealed with the active master key. It pages through candidate ids
in batches and re-encrypts each row in its own short transaction: ``SELECT
... FOR UPDATE SKIP LOCKED`` on the row *and* a re-check that it is still
under an old key id, then an ``UPDATE`` guarded by the old key id. So:

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from litellm_credits import errors
from litellm_credits.byok.refs import KeyRowRef
from litellm_credits.byok.vault import Vault
from litellm_credits.store.db import Database, run

__all__ = ["MAX_BATCH_SIZE", "RotationReport", "rotate_keys"]

# The key store's logger: rotation is one of its operations.
log = logging.getLogger("litellm_credits.byok.keys")

MAX_BATCH_SIZE = 10_000
# Pauses before retrying rows another transaction held locked during a rotation.
_BUSY_RETRY_DELAYS = (0.05, 0.2, 0.5)


@dataclass
class RotationReport:
    """Outcome of :func:`rotate_keys`. Ids only; never key material."""

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


async def rotate_keys(
    db: Database,
    vault: Vault,
    batch_size: int = 100,
    *,
    max_rows: int | None = None,
    progress: Callable[[RotationReport], None] | None = None,
) -> RotationReport:
    """Re-encrypt every row not sealed with the active master key (see module docs).

    ``max_rows`` stops after examining that many candidate rows (to spread
    the work over several runs); ``progress`` is called after each batch.
    """
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
        batch = await db.fetchall(
            "keys_rotation_batch",
            {"active_key_id": active, "after_id": after_id, "limit": limit},
        )
        if not batch:
            break
        for candidate in batch:
            row_id = int(candidate["id"])
            outcome = await _rotate_row(db, vault, row_id, report)
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
            outcome = await _rotate_row(db, vault, row_id, report)
            if outcome == "busy":
                still_busy.append(row_id)
        busy = still_busy
    report.busy = busy

    current = await db.fetchone("keys_count_under", {"key_id": active})
    total_current = int(current["n"]) if current else 0
    report.already_current = max(0, total_current - report.rotated)
    left = await db.fetchone("keys_rotation_count_remaining", {"active_key_id": active})
    report.remaining = int(left["n"]) if left else 0
    log.info(
        "byok rotation to master key %s: rotated=%d already_current=%d failed=%d busy=%d "
        "remaining=%d",
        active, report.rotated, report.already_current, len(report.failed),
        len(report.busy), report.remaining,
    )
    return report


async def _rotate_row(
    db: Database, vault: Vault, row_id: int, report: RotationReport
) -> _Outcome:
    active = vault.active_key_id
    async with db.transaction() as conn:
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
