"""litellm-credits: prepaid credits, power-level routing and a BYOK vault for the LiteLLM proxy.

Load it in a LiteLLM config with ``litellm_settings: callbacks: litellm_credits.handler``.
The handler is built lazily by :mod:`litellm_credits.plugin` (the composition
root), so that importing the package (for the CLI, or for tests) neither
imports the LiteLLM proxy nor creates or mounts anything.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "handler":
        from litellm_credits import plugin

        return plugin.handler()
    raise AttributeError(name)
