"""The BYOK master keys: ``CREDITS_ENCRYPTION_KEYS`` parsed, checked and generated.

Users' provider keys are sealed under a *master key* that only the proxy
holds, taken from the environment variable ``CREDITS_ENCRYPTION_KEYS``::

    CREDITS_ENCRYPTION_KEYS="k2:<base64 of 32 random bytes>,k1:<base64 ...>"

The first entry is the *active* key (every new encryption uses it); the others
are kept only so that rows encrypted under them can still be read while they
are rotated. This module turns that value (or a list of ``(key id, key
bytes)`` pairs) into checked pairs, or into a :class:`VaultConfigError` naming
the offending entry; :class:`~litellm_credits.byok.vault.Vault` builds its
ciphers from them.

Secret hygiene: the parsers *return* a message instead of raising, so no frame
holding the value is on the traceback of the error finally raised, and no
message quotes key bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence

from litellm_credits.errors import ConfigError, VaultError

__all__ = [
    "ENV_VAR",
    "GENERATE_COMMAND",
    "KEY_BYTES",
    "NOT_CONFIGURED_MESSAGE",
    "VaultConfigError",
    "generate_key_entry",
    "key_id_problem",
    "keys_problem",
    "parse_env_value",
]

ENV_VAR = "CREDITS_ENCRYPTION_KEYS"
KEY_BYTES = 32

_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_KEY_ID_RULE = "1-32 characters from A-Z, a-z, 0-9, '_' and '-'"
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")

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
    """``CREDITS_ENCRYPTION_KEYS`` (or the keys given to :class:`Vault`) is malformed.

    503 like :class:`~litellm_credits.errors.VaultNotConfigured`, on chat and on
    ``/credits`` alike: the proxy's configuration is wrong, the request is fine.
    """

    http_status = 503
    code = "vault_config_error"


def key_id_problem(key_id: object) -> str | None:
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


def keys_problem(keys: Sequence[tuple[str, bytes]]) -> str | None:
    """Why a list of (key id, key bytes) cannot be used; None if it can."""
    seen: set[str] = set()
    for index, item in enumerate(keys, start=1):
        if not (isinstance(item, tuple) and len(item) == 2):
            return f"master key #{index} must be a (key_id, key_bytes) tuple"
        key_id, key = item
        problem = key_id_problem(key_id)
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


def parse_env_value(value: str) -> list[tuple[str, bytes]] | str:
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
        problem = key_id_problem(key_id)
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


def generate_key_entry(key_id: str) -> str:
    """A fresh ``KEYID:BASE64KEY`` entry (32 random bytes, urlsafe base64)."""
    problem = key_id_problem(key_id)
    if problem is not None:
        raise VaultConfigError(f"cannot generate a master key: {problem}")
    return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode('ascii')}"
