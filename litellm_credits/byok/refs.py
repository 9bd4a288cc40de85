"""Which ``user_provider_keys`` row a sealed provider key belongs to.

A :class:`KeyRowRef` names the row by ``(user_id, provider, key_name)``. The
vault binds all three into each ciphertext, so one user's ciphertext cannot be
replayed as another user's key (invariant I6); :func:`describe_row` is how
messages name the row (identifiers only, shortened, never key material).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeyRowRef", "describe_row"]


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


def _short(text: str, limit: int = 64) -> str:
    """``repr`` of a non-secret identifier, shortened for messages."""
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)


def describe_row(ref: KeyRowRef) -> str:
    """The row as messages name it: user, provider and key name, each shortened."""
    return (
        f"stored key for user {_short(ref.user_id)} provider {_short(ref.provider)} "
        f"name {_short(ref.key_name)}"
    )
