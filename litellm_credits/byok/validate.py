"""What a user submits about a provider key, checked and normalised before any use.

* **Provider** (:func:`normalize_provider`): LiteLLM's provider name
  (``openai``, ``anthropic``, ``openrouter``, ``together_ai``, ...): surrounding
  spaces removed, lower-cased, 1-64 characters from ``a-z 0-9 _ -``, and a
  configured alias mapped to LiteLLM's name (``together`` -> ``together_ai``,
  see ``Settings.provider_aliases``).
* **Key name** (:func:`check_key_name`): 1-64 characters after surrounding
  spaces are removed, with no control or invisible characters.
* **Key text** (:func:`validate_plaintext`): the provider API key itself,
  stripped; refused when empty, longer than ``MAX_PLAINTEXT_CHARS`` or holding
  control or invisible characters. :func:`key_hint` is the only part of it
  ever shown.

Invalid input is refused before anything is written (invariant I8). Messages
about key text never quote it, and the functions drop the secret-holding
locals before raising, so that error reporters that capture frame locals do
not see them either.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from litellm_credits import errors
from litellm_credits.config_schema import DEFAULT_PROVIDER_ALIASES
from litellm_credits.errors import InvalidInput, VaultError

__all__ = [
    "MAX_NAME_CHARS",
    "MAX_PLAINTEXT_CHARS",
    "MAX_PROVIDER_CHARS",
    "InvalidProviderKey",
    "check_key_name",
    "key_hint",
    "normalize_plaintext",
    "normalize_provider",
    "shown",
    "validate_plaintext",
]

MAX_NAME_CHARS = 64
MAX_PROVIDER_CHARS = 64
MAX_PLAINTEXT_CHARS = 4096

_PROVIDER_RE = re.compile(r"[a-z0-9_-]{1,64}")
# Unicode categories refused inside a key name or a provider key: controls
# (incl. NUL, tab, newline, DEL), invisible format characters (zero-width
# space, BOM, bidi overrides), lone surrogates, and line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class InvalidProviderKey(VaultError, InvalidInput):
    """A provider API key submitted for storage is unusable (empty, too long, control chars)."""

    http_status = 400
    code = "invalid_provider_key"


def shown(text: str, limit: int = 40) -> str:
    """``repr`` of a (non-secret) identifier, shortened for messages."""
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


# --- names -----------------------------------------------------------------------


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
            f"provider {shown(name)} is not a LiteLLM provider name: use 1-{MAX_PROVIDER_CHARS} "
            "characters from a-z, 0-9, '_' and '-' (e.g. openai, anthropic, openrouter, "
            "together_ai)"
        )
    mapped = (DEFAULT_PROVIDER_ALIASES if aliases is None else aliases).get(name, name)
    if not _PROVIDER_RE.fullmatch(mapped):
        raise errors.ConfigError(
            f"provider alias {name!r} maps to {shown(mapped)}, which is not a valid provider name"
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


# --- key text ----------------------------------------------------------------------


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


def normalize_plaintext(plaintext: str) -> tuple[str, str | None]:
    """(stripped text, problem or None); returns instead of raising, for the caller to
    drop the text before it raises."""
    if not isinstance(plaintext, str):
        return "", f"provider API key must be a string, not {type(plaintext).__name__}"
    text = plaintext.strip()
    return text, _plaintext_problem(text)


def validate_plaintext(plaintext: str) -> str:
    """Return the provider key with surrounding whitespace removed, or refuse it.

    Refuses (with :class:`InvalidProviderKey`, whose message never contains the
    key) an empty key, one longer than ``MAX_PLAINTEXT_CHARS`` characters, and
    one containing control characters (NUL, tab, newline, DEL, ...), invisible
    format characters or line separators.
    """
    text, problem = normalize_plaintext(plaintext)
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
