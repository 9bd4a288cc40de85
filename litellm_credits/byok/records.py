"""What the BYOK key store hands back: a stored key as people see it, and a revoke.

:class:`KeyInfo` carries the hint (``…WXYZ``) and the master key's *id*, never
the plaintext or the ciphertext; :class:`RevokeResult` says what a revoke did.
Both turn into JSON-ready dicts for the CLI and the ``/credits`` API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litellm_credits.store.db import Row

__all__ = ["KeyInfo", "RevokeResult"]


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
    """What :meth:`~litellm_credits.byok.keys.KeyStore.revoke` did."""

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
