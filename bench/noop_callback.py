"""A callback that does nothing, for the benchmark's diagnostic third arm.

Loaded as ``litellm_settings: callbacks: bench.noop_callback.handler``, it shows
what LiteLLM itself spends on a proxy that has *any* custom callback (building
the standard logging payload, dispatching events), apart from what the credits
plugin's own code costs. ``python -m bench.run --diagnose`` runs it.
"""

from __future__ import annotations

from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class NoopLogger(CustomLogger):
    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        return None


handler = NoopLogger()
