"""BYOK key names and provider names, the checks that run before the database."""

from __future__ import annotations

from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.byok.validate import check_key_name, normalize_provider


@pytest.mark.parametrize(("given", "expected"), [
    ("openai", "openai"), (" OpenAI ", "openai"), ("together", "together_ai"),
    ("together_ai", "together_ai"), ("open-router", "open-router"),
])
def test_normalize_provider(given: str, expected: str) -> None:
    assert normalize_provider(given) == expected


def test_configured_aliases_replace_the_built_in_ones() -> None:
    assert normalize_provider("together", {}) == "together"
    assert normalize_provider("oai", {"oai": "openai"}) == "openai"
    with pytest.raises(errors.ConfigError, match="maps to"):
        normalize_provider("bad", {"bad": "Not Valid!"})


@pytest.mark.parametrize(("given", "fragment"), [
    (None, "must be text"), ("", "provider is empty"), ("   ", "provider is empty"),
    ("open ai", "not a LiteLLM provider name"), ("x" * 200, "not a LiteLLM provider name"),
])
def test_bad_providers_are_refused(given: Any, fragment: str) -> None:
    with pytest.raises(errors.InvalidInput, match=fragment):
        normalize_provider(given)


def test_check_key_name() -> None:
    assert check_key_name("  default ") == "default"
    assert check_key_name("prod ü 1") == "prod ü 1"


@pytest.mark.parametrize(("given", "fragment"), [
    (3, "must be text"), ("", "key name is empty"), (" ", "key name is empty"),
    ("x" * 65, "the limit is 64"), ("a\u200bb", "U+200B"), ("a\x07b", "U+0007"),
])
def test_bad_key_names_are_refused(given: Any, fragment: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        check_key_name(given)
    assert fragment in caught.value.message
