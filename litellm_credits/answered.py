"""What LiteLLM knows about a response before it leaves the proxy, as a settlement's input.

LiteLLM's ``standard_logging_object`` exists only in the success event, which runs after the
response was sent. To settle before sending (:mod:`~litellm_credits.settlement.journal`), the
hook assembles the part of that object the settlement builder reads, from what the proxy hands
``async_post_call_success_hook`` (the response with its ``_hidden_params``: ``response_cost``,
``model_id``, ``api_base``) and ``async_post_call_streaming_iterator_hook`` (the chunks, the
final usage) plus the call's logging object (``request_data["litellm_logging_obj"]``: model,
provider, timings). The record is then built by the one builder,
:func:`litellm_credits.settlement.build.served`, so both paths price the same.

Costs come from LiteLLM's own engine in both cases: a non-streamed response carries the cost
LiteLLM computed for it (the same number its success event logs); a stream's final usage, and
the part of a cut stream the client received, are priced with the call's logging object
(``_response_cost_calculator``, the deployment's custom prices included), exactly as the
proxy prices streamed usage for its own ``include_cost_in_streaming_usage``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import litellm
from litellm.litellm_core_utils.core_helpers import reconstruct_model_name
from litellm.types.llms.anthropic import AnthropicResponse
from litellm.types.utils import (
    EmbeddingResponse,
    ModelResponse,
    ModelResponseStream,
    TextCompletionResponse,
)

from litellm_credits.context import metadata_of

log = logging.getLogger("litellm_credits.answered")

# Responses whose usage is token counts in OpenAI's shape and whose cost LiteLLM attached: the
# ones settled before sending, with Anthropic /v1/messages answers (priced here, see
# anthropic_message_event). Anything else (speech bytes, images, Responses API objects, ...)
# is settled from LiteLLM's success event, as before.
SETTLED_EARLY = (ModelResponse, TextCompletionResponse, EmbeddingResponse)


def _hidden(response: Any) -> Mapping[str, Any]:
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, Mapping):
        return hidden
    if hidden is not None and hasattr(hidden, "model_dump"):
        dumped: Mapping[str, Any] = hidden.model_dump()
        return dumped
    return {}


def _timestamp(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _usage_dict(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    if isinstance(usage, Mapping):
        return dict(usage)
    if hasattr(usage, "model_dump"):
        dumped: dict[str, Any] = usage.model_dump(exclude_none=True)
        return dumped
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def event_kwargs(data: Mapping[str, Any], usage: Mapping[str, Any], *, response_cost: float,
                 stream: bool, hidden: Mapping[str, Any], model: str | None = None,
                 finish_reason: str | None = None, partial: bool = False) -> dict[str, Any]:
    """The kwargs of a success event for this call, as far as settlement reads them."""
    logging_obj = data.get("litellm_logging_obj")
    details: Mapping[str, Any] = getattr(logging_obj, "model_call_details", None) or {}
    params = details.get("litellm_params") or {}
    info = params.get("model_info") or data.get("model_info") or {}
    metadata = metadata_of(data)
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    call_metadata = params.get("metadata")
    slo: dict[str, Any] = {
        # As LiteLLM names it in its own logging ("openai/gpt-4o" when the deployment says so).
        "model": reconstruct_model_name(
            str(details.get("model") or hidden.get("litellm_model_name") or model or ""),
            details.get("custom_llm_provider"),
            call_metadata if isinstance(call_metadata, dict) else {}) or None,
        "model_group": metadata.get("model_group"),
        "model_id": hidden.get("model_id") or (info.get("id") if isinstance(info, Mapping)
                                               else None),
        "custom_llm_provider": details.get("custom_llm_provider")
        or hidden.get("custom_llm_provider"),
        "api_base": hidden.get("api_base") or params.get("api_base"),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "metadata": {"usage_object": dict(usage)},
        "startTime": _timestamp(getattr(logging_obj, "start_time", None)),
        "endTime": time.time(),
        "completionStartTime": _timestamp(getattr(logging_obj, "completion_start_time", None)),
        "litellm_call_id": getattr(logging_obj, "litellm_call_id", None)
        or data.get("litellm_call_id"),
        "end_user": metadata.get("user_api_key_end_user_id") or data.get("user"),
        "stream": stream,
        "call_type": getattr(logging_obj, "call_type", None),
        "response_cost": response_cost,
        "cache_hit": bool(hidden.get("cache_hit") or details.get("cache_hit")),
        "error_str": "stream cut short by the provider" if partial else None,
        "hidden_params": {"additional_headers": hidden.get("additional_headers") or {}},
        # Only what zero-completion insurance reads of the response (never its content).
        "response": {"choices": [{"finish_reason": finish_reason}]},
        "settled_before_response": True,
    }
    return {
        "standard_logging_object": slo,
        "litellm_params": {"metadata": metadata,
                           "proxy_server_request": data.get("proxy_server_request") or {}},
    }


def response_event(data: Mapping[str, Any], response: Any) -> dict[str, Any] | None:
    """Success-event kwargs for a non-streamed response, or None to wait for the real event."""
    if not isinstance(response, SETTLED_EARLY):
        return anthropic_message_event(data, response)
    hidden = _hidden(response)
    cost = _number(hidden.get("response_cost"))
    usage = _usage_dict(getattr(response, "usage", None))
    if cost is None or usage is None:
        return None
    return event_kwargs(data, usage, response_cost=cost, stream=False, hidden=hidden,
                        model=getattr(response, "model", None),
                        finish_reason=finish_reason_of(response))


def anthropic_message_event(data: Mapping[str, Any], response: Any) -> dict[str, Any] | None:
    """Success-event kwargs for a non-streamed ``/v1/messages`` answer (a plain dict).

    LiteLLM attaches no cost to it: its success event turns the message into a
    ``ModelResponse`` with ``AnthropicConfig.transform_parsed_response`` and prices that with
    the call's cost calculator. The same two steps here give the same cost, before sending.
    """
    logging_obj = data.get("litellm_logging_obj")
    if (getattr(logging_obj, "call_type", None) != "anthropic_messages"
            or not isinstance(response, Mapping) or response.get("type") != "message"
            or not isinstance(response.get("usage"), Mapping)):
        return None
    try:
        parsed = AnthropicResponse.model_validate(response)
        model_response = litellm.AnthropicConfig().transform_parsed_response(
            completion_response=parsed.model_dump(),
            raw_response=httpx.Response(status_code=200, headers={}),
            model_response=ModelResponse(id=str(response.get("id") or "")),
            json_mode=None)
    except Exception:  # noqa: BLE001 - not a message LiteLLM can read: its success event settles it
        log.debug("could not read a /v1/messages answer before sending", exc_info=True)
        return None
    cost = _logged_cost(data, model_response)
    usage = _usage_dict(getattr(model_response, "usage", None))
    if cost is None or usage is None:
        return None
    model = response.get("model")
    return event_kwargs(data, usage, response_cost=cost, stream=False, hidden={},
                        model=model if isinstance(model, str) and model else None,
                        finish_reason=finish_reason_of(model_response))


def usage_of(response: Any) -> Any:
    """The usage object of a response: an attribute, or the ``usage`` key of a plain dict."""
    if isinstance(response, Mapping):
        return response.get("usage")
    return getattr(response, "usage", None)


def finish_reason_of(response: Any) -> str | None:
    for choice in getattr(response, "choices", None) or ():
        reason = getattr(choice, "finish_reason", None)
        if isinstance(reason, str) and reason:
            return reason
    return None


def stream_cost(data: Mapping[str, Any], usage: Any, model: str | None) -> float | None:
    """LiteLLM's cost of a stream's usage, priced as its success event prices it."""
    return _logged_cost(data, ModelResponse(model=model, usage=usage))


def _logged_cost(data: Mapping[str, Any], result: ModelResponse) -> float | None:
    """The call's own cost calculator on ``result``, leaving its logging object as it was."""
    logging_obj = data.get("litellm_logging_obj")
    calculate = getattr(logging_obj, "_response_cost_calculator", None)
    if calculate is None:
        return None
    # Pricing stamps cost_breakdown and a debug key onto the live logging object; put them
    # back, so this stays a read as far as the request's own logging is concerned.
    breakdown = getattr(logging_obj, "cost_breakdown", None)
    details = getattr(logging_obj, "model_call_details", None)
    debug_key = "response_cost_failure_debug_information"
    debug_before = details.get(debug_key, _MISSING) if isinstance(details, dict) else _MISSING
    try:
        return _number(calculate(result=result))
    except Exception:  # noqa: BLE001 - no early price: the success event settles it, as before
        log.debug("could not price the usage before sending", exc_info=True)
        return None
    finally:
        if logging_obj is not None and hasattr(logging_obj, "cost_breakdown"):
            logging_obj.cost_breakdown = breakdown
        if isinstance(details, dict):
            if debug_before is _MISSING:
                details.pop(debug_key, None)
            else:
                details[debug_key] = debug_before


_MISSING: Any = object()


def stream_event(data: Mapping[str, Any], last: ModelResponseStream,
                 finish_reason: str | None) -> tuple[dict[str, Any], Any] | None:
    """Success-event kwargs for a finished stream from its final chunk, and that usage."""
    usage = getattr(last, "usage", None) or _hidden(last).get("usage")
    usage_map = _usage_dict(usage)
    if usage is None or usage_map is None:
        return None
    cost = stream_cost(data, usage, getattr(last, "model", None))
    if cost is None:
        return None
    return (event_kwargs(data, usage_map, response_cost=cost, stream=True, hidden=_hidden(last),
                         model=getattr(last, "model", None),
                         finish_reason=finish_reason_of(last) or finish_reason), usage)


def partial_event(data: Mapping[str, Any], passed: Sequence[ModelResponseStream],
                  ) -> dict[str, Any] | None:
    """Success-event kwargs for the part of a cut stream that reached the client.

    The same rule LiteLLM applies when a client hangs up: the chunks are assembled with
    ``litellm.stream_chunk_builder`` (usage counted with LiteLLM's token counter for the
    model where the provider sent none) and priced by the call's own cost calculator.
    """
    messages = data.get("messages")
    built = litellm.stream_chunk_builder(chunks=list(passed),
                                         messages=messages if isinstance(messages, list) else None)
    usage = getattr(built, "usage", None)
    usage_map = _usage_dict(usage)
    if built is None or usage_map is None:
        return None
    model = getattr(passed[-1], "model", None) or getattr(built, "model", None)
    cost = stream_cost(data, usage, model)
    if cost is None:
        return None
    return event_kwargs(data, usage_map, response_cost=cost, stream=True,
                        hidden=_hidden(passed[-1]), model=model, partial=True)


def set_usage_cost(usage: Any, credits: Decimal) -> None:
    """OpenRouter's ``usage.cost``, in credits: a JSON number written from the exact Decimal.

    ``float(credits)`` prints (shortest repr) as the Decimal's own digits for up to 15
    significant digits, which covers every charge below 10^7 credits at 1e-8.
    """
    if usage is None:
        return
    if isinstance(usage, dict):
        usage["cost"] = float(credits)
    else:
        usage.cost = float(credits)


def cached_stream(response: Any) -> bool:
    """A stream LiteLLM replays from its cache (its wrapper names the provider so)."""
    return getattr(response, "custom_llm_provider", None) == "cached_response"


def is_chunk(chunk: Any) -> bool:
    """A chat stream chunk (other streams pass through and settle from the success event)."""
    return isinstance(chunk, ModelResponseStream)


def has_content(chunk: ModelResponseStream) -> bool:
    for choice in chunk.choices or ():
        delta = getattr(choice, "delta", None)
        if delta is not None and (getattr(delta, "content", None)
                                  or getattr(delta, "tool_calls", None)
                                  or getattr(delta, "function_call", None)):
            return True
    return False


def is_final(chunk: ModelResponseStream) -> bool:
    """A chunk that may be a stream's last: it carries a finish reason or the usage."""
    if getattr(chunk, "usage", None) is not None:
        return True
    return any(getattr(c, "finish_reason", None) for c in chunk.choices or ())
