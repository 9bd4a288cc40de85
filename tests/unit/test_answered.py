"""Settlement input built from LiteLLM's own response objects, before the response leaves.

Responses and chunks are real ``litellm`` objects (``ModelResponse``,
``ModelResponseStream``, ...). Streams are priced with a real LiteLLM ``Logging`` object
(its cost calculator and the local cost map), or with a small stand-in where a test
needs the calculator to fail or to scribble on the logging object.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import litellm
import pytest
from litellm.litellm_core_utils.litellm_logging import Logging
from litellm.types.utils import (
    EmbeddingResponse,
    ModelResponse,
    ModelResponseStream,
    TextCompletionResponse,
    Usage,
)

from litellm_credits import answered

D = Decimal
CONTENT = "the answer is 42, a private detail"
MESSAGES = [{"role": "user", "content": "what is the answer?"}]
START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def logging_obj(model: str = "gpt-4o", *, deployment: str | None = None) -> Logging:
    obj = Logging(model=model, messages=MESSAGES, stream=True, call_type="acompletion",
                  start_time=START, litellm_call_id="call-1", function_id="f")
    metadata = {"deployment": deployment} if deployment else {}
    obj.update_environment_variables(
        litellm_params={"metadata": metadata, "api_base": "https://params.example/v1",
                        "model_info": {"id": "dep-from-params"}},
        optional_params={}, model=model, user=None, custom_llm_provider="openai")
    return obj


def request_data(**extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "litellm_logging_obj": logging_obj(),
            "metadata": {"model_group": "chat", "user_api_key_end_user_id": "end-7",
                         "credits_request_id": "r1"},
            "proxy_server_request": {"url": "/chat/completions"}, **extra}


def response(*, cost: Any = 0.00123, usage: Usage | None = None, **hidden: Any) -> ModelResponse:
    r = ModelResponse(
        model="gpt-4o-2024-08-06",
        choices=[{"index": 0, "finish_reason": "length",
                  "message": {"role": "assistant", "content": CONTENT}}],
        usage=usage or Usage(prompt_tokens=11, completion_tokens=22, total_tokens=33))
    r._hidden_params = {"response_cost": cost, "model_id": "dep-1",
                        "api_base": "https://api.example/v1", **hidden}
    return r


def chunk(content: str | None = None, *, finish: str | None = None,
          usage: Usage | None = None, model: str = "gpt-4o") -> ModelResponseStream:
    delta = {"content": content} if content is not None else {}
    kwargs: dict[str, Any] = {"usage": usage} if usage is not None else {}
    return ModelResponseStream(model=model, choices=[
        {"index": 0, "delta": delta, "finish_reason": finish}], **kwargs)


def openai_cost(model: str, prompt: int, completion: int) -> float:
    return litellm.completion_cost(
        completion_response=ModelResponse(model=model, usage=Usage(
            prompt_tokens=prompt, completion_tokens=completion,
            total_tokens=prompt + completion)),
        model=model, custom_llm_provider="openai")


# -- a non-streamed response ---------------------------------------------------------------

def test_a_response_becomes_the_success_event_fields_settlement_reads() -> None:
    data = request_data()
    kwargs = answered.response_event(data, response())
    assert kwargs is not None
    slo = kwargs["standard_logging_object"]
    assert slo["response_cost"] == 0.00123  # the cost LiteLLM computed, untouched
    assert (slo["prompt_tokens"], slo["completion_tokens"], slo["total_tokens"]) == (11, 22, 33)
    assert slo["model"] == "gpt-4o"  # the logging object's model, as LiteLLM logs it
    assert slo["model_group"] == "chat"
    assert slo["model_id"] == "dep-1"  # the deployment that answered, from the response
    assert slo["api_base"] == "https://api.example/v1"
    assert slo["custom_llm_provider"] == "openai"
    assert slo["stream"] is False and slo["cache_hit"] is False
    assert slo["error_str"] is None
    assert slo["response"] == {"choices": [{"finish_reason": "length"}]}
    assert slo["litellm_call_id"] == "call-1"
    assert slo["startTime"] == START.timestamp()
    assert slo["end_user"] == "end-7"
    assert slo["call_type"] == "acompletion"
    assert slo["settled_before_response"] is True
    assert slo["metadata"]["usage_object"]["prompt_tokens"] == 11
    assert kwargs["litellm_params"]["metadata"] is data["metadata"]
    assert kwargs["litellm_params"]["proxy_server_request"] == {"url": "/chat/completions"}


def test_the_event_never_carries_the_responses_content() -> None:
    kwargs = answered.response_event(request_data(), response())
    assert CONTENT not in json.dumps(kwargs, default=str)


@pytest.mark.parametrize("cost", [None, "0.1", float("nan"), float("inf"), True, D("0.1")])
def test_without_a_usable_cost_the_real_success_event_settles(cost: Any) -> None:
    assert answered.response_event(request_data(), response(cost=cost)) is None


def test_an_integer_cost_is_usable() -> None:
    kwargs = answered.response_event(request_data(), response(cost=0))
    assert kwargs is not None and kwargs["standard_logging_object"]["response_cost"] == 0.0


def test_without_usage_the_real_success_event_settles() -> None:
    r = ModelResponse(model="gpt-4o")
    r._hidden_params = {"response_cost": 0.5}
    assert getattr(r, "usage", None) is None
    assert answered.response_event(request_data(), r) is None


@pytest.mark.parametrize("other", [{"type": "message", "usage": {"input_tokens": 3}},
                                   b"speech bytes", None, "text"])
def test_responses_of_other_shapes_wait_for_the_success_event(other: Any) -> None:
    assert answered.response_event(request_data(), other) is None


def test_embedding_and_text_completion_responses_are_settled_early() -> None:
    emb = EmbeddingResponse(model="text-embedding-3-small",
                            usage=Usage(prompt_tokens=5, total_tokens=5))
    emb._hidden_params = {"response_cost": 1e-7}
    slo = answered.response_event(request_data(), emb)["standard_logging_object"]  # type: ignore[index]
    assert (slo["prompt_tokens"], slo["completion_tokens"], slo["total_tokens"]) == (5, 0, 5)
    assert slo["response"] == {"choices": [{"finish_reason": None}]}

    text = TextCompletionResponse(model="gpt-3.5-turbo-instruct")
    # Its hidden params are a pydantic model, not a dict.
    text._hidden_params.response_cost = 0.25
    text._hidden_params.model_id = "dep-text"
    slo = answered.response_event(request_data(), text)["standard_logging_object"]  # type: ignore[index]
    assert slo["response_cost"] == 0.25 and slo["model_id"] == "dep-text"


def test_missing_totals_and_counts_are_filled_in() -> None:
    kwargs = answered.event_kwargs({}, {"prompt_tokens": 4, "completion_tokens": None},
                                   response_cost=0.1, stream=False, hidden={})
    slo = kwargs["standard_logging_object"]
    assert (slo["prompt_tokens"], slo["completion_tokens"], slo["total_tokens"]) == (4, 0, 4)
    # Nothing known about the call: no invented model, deployment or timings.
    assert slo["model"] is None and slo["model_id"] is None and slo["startTime"] is None
    assert slo["end_user"] is None and slo["litellm_call_id"] is None
    assert kwargs["litellm_params"] == {"metadata": {}, "proxy_server_request": {}}


def test_fallbacks_when_the_response_says_less() -> None:
    data = request_data(litellm_call_id="call-data", user="openai-user")
    data["metadata"] = {"model_group": "chat"}
    del data["litellm_logging_obj"]
    data["model_info"] = {"id": "dep-from-data"}
    r = response(model_id=None, api_base=None, custom_llm_provider="azure",
                 litellm_model_name="azure/gpt-4o", cache_hit=True)
    slo = answered.response_event(data, r)["standard_logging_object"]  # type: ignore[index]
    assert slo["model_id"] == "dep-from-data"
    assert slo["model"] == "azure/gpt-4o"
    assert slo["custom_llm_provider"] == "azure"
    assert slo["api_base"] is None
    assert slo["end_user"] == "openai-user"
    assert slo["litellm_call_id"] == "call-data"
    assert slo["cache_hit"] is True


def test_the_deployment_name_with_its_provider_prefix_is_the_logged_model() -> None:
    data = request_data(litellm_logging_obj=logging_obj(deployment="openai/gpt-4o"))
    slo = answered.response_event(data, response())["standard_logging_object"]  # type: ignore[index]
    assert slo["model"] == "openai/gpt-4o"


def test_litellm_metadata_routes_are_read_too() -> None:
    data = request_data()
    data["litellm_metadata"] = {"model_group": "messages-group"}
    slo = answered.response_event(data, response())["standard_logging_object"]  # type: ignore[index]
    assert slo["model_group"] == "messages-group"


# -- streams ---------------------------------------------------------------------------------

def test_a_finished_stream_is_priced_by_the_calls_own_calculator() -> None:
    data = request_data()
    usage = Usage(prompt_tokens=100, completion_tokens=50, total_tokens=150)
    last = chunk(finish="stop", usage=usage)
    found = answered.stream_event(data, last, None)
    assert found is not None
    kwargs, returned_usage = found
    assert returned_usage is last.usage  # the caller writes usage.cost into the chunk's own
    slo = kwargs["standard_logging_object"]
    assert slo["response_cost"] == pytest.approx(openai_cost("gpt-4o", 100, 50), rel=1e-12)
    assert slo["response_cost"] > 0
    assert slo["stream"] is True and slo["error_str"] is None
    assert (slo["prompt_tokens"], slo["completion_tokens"]) == (100, 50)
    assert slo["response"] == {"choices": [{"finish_reason": "stop"}]}


def test_a_stream_whose_last_chunk_has_no_finish_reason_keeps_the_one_seen_before() -> None:
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    kwargs, _ = answered.stream_event(request_data(), chunk(usage=usage), "length") or ({}, None)
    assert kwargs["standard_logging_object"]["response"] == {
        "choices": [{"finish_reason": "length"}]}


def test_a_stream_without_usage_or_without_a_calculator_waits_for_the_success_event() -> None:
    assert answered.stream_event(request_data(), chunk(finish="stop"), "stop") is None
    data = request_data()
    data["litellm_logging_obj"] = None
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    assert answered.stream_event(data, chunk(usage=usage), "stop") is None


class ScribblingLogger:
    """A logging object whose calculator writes onto it, as LiteLLM's does, then answers."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.cost_breakdown: Any = {"before": 1}
        self.model_call_details: dict[str, Any] = {"model": "gpt-4o"}
        self.priced: list[Any] = []

    def _response_cost_calculator(self, *, result: Any) -> Any:
        self.priced.append(result)
        self.cost_breakdown = {"scribbled": True}
        self.model_call_details["response_cost_failure_debug_information"] = {"x": 1}
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("answer", [0.5, RuntimeError("no price for this model"),
                                    float("nan"), None])
def test_pricing_a_stream_leaves_the_logging_object_as_it_was(answer: Any) -> None:
    obj = ScribblingLogger(answer)
    usage = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    cost = answered.stream_cost({"litellm_logging_obj": obj}, usage, "gpt-4o")
    assert cost == (0.5 if answer == 0.5 else None)
    assert obj.cost_breakdown == {"before": 1}
    assert "response_cost_failure_debug_information" not in obj.model_call_details
    (priced,) = obj.priced
    assert isinstance(priced, ModelResponse)
    assert (priced.usage.prompt_tokens, priced.usage.completion_tokens) == (3, 4)
    assert priced.model == "gpt-4o"


def test_a_debug_note_already_on_the_logging_object_is_put_back() -> None:
    obj = ScribblingLogger(0.5)
    obj.model_call_details["response_cost_failure_debug_information"] = {"earlier": True}
    answered.stream_cost({"litellm_logging_obj": obj}, Usage(), "gpt-4o")
    assert obj.model_call_details["response_cost_failure_debug_information"] == {"earlier": True}


def test_the_received_part_of_a_cut_stream_is_counted_and_priced() -> None:
    data = request_data()
    passed = [chunk("The answer "), chunk("is forty-two.")]
    kwargs = answered.partial_event(data, passed)
    assert kwargs is not None
    slo = kwargs["standard_logging_object"]
    prompt = litellm.token_counter(model="gpt-4o", messages=MESSAGES)
    assert slo["prompt_tokens"] == prompt > 0
    assert slo["completion_tokens"] > 0
    assert slo["total_tokens"] == slo["prompt_tokens"] + slo["completion_tokens"]
    assert slo["response_cost"] == pytest.approx(
        openai_cost("gpt-4o", prompt, slo["completion_tokens"]), rel=1e-12)
    assert slo["error_str"] == "stream cut short by the provider"
    assert slo["stream"] is True


def test_a_cut_stream_without_a_calculator_waits_for_the_success_event() -> None:
    data = request_data()
    data["litellm_logging_obj"] = None
    assert answered.partial_event(data, [chunk("partial")]) is None


# -- the charge written back, and chunk helpers ----------------------------------------------

@pytest.mark.parametrize("credits", ["0.12345678", "123.5", "9999999.99999999", "0"])
def test_usage_cost_is_the_charge_as_a_json_number_with_the_same_digits(credits: str) -> None:
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    answered.set_usage_cost(usage, D(credits))
    as_dict: dict[str, Any] = {"prompt_tokens": 1}
    answered.set_usage_cost(as_dict, D(credits))
    for cost in (usage.cost, as_dict["cost"]):  # type: ignore[attr-defined]
        assert isinstance(cost, float) and math.isfinite(cost)
        assert D(json.dumps(cost)) == D(credits)


def test_usage_cost_on_no_usage_is_a_no_op() -> None:
    answered.set_usage_cost(None, D("1"))


def test_chunk_helpers() -> None:
    text, empty, final = chunk("hi"), chunk(), chunk(finish="stop")
    with_usage = chunk(usage=Usage(prompt_tokens=1, completion_tokens=0, total_tokens=1))
    tool = ModelResponseStream(model="gpt-4o", choices=[{"index": 0, "delta": {"tool_calls": [
        {"id": "c1", "type": "function", "index": 0,
         "function": {"name": "f", "arguments": "{}"}}]}}])
    assert [answered.has_content(c) for c in (text, empty, final, tool)] == [
        True, False, False, True]
    assert [answered.is_final(c) for c in (text, empty, final, with_usage)] == [
        False, False, True, True]
    assert answered.is_chunk(text) and not answered.is_chunk({"choices": []})
    assert not answered.is_chunk(response())
    assert answered.finish_reason_of(final) == "stop"
    assert answered.finish_reason_of(text) is None
    assert answered.finish_reason_of(None) is None


def test_a_stream_replayed_from_the_cache_is_recognised() -> None:
    class Wrapper:
        def __init__(self, provider: str | None) -> None:
            self.custom_llm_provider = provider

    assert answered.cached_stream(Wrapper("cached_response"))
    assert not answered.cached_stream(Wrapper("openai"))
    assert not answered.cached_stream(object())


CLAUDE = "claude-sonnet-4-20250514"


def anthropic_request(call_type: str = "anthropic_messages") -> dict[str, Any]:
    obj = Logging(model=CLAUDE, messages=MESSAGES, stream=False, call_type=call_type,
                  start_time=START, litellm_call_id="call-2", function_id="f")
    obj.update_environment_variables(
        litellm_params={"metadata": {}, "api_base": "https://api.anthropic.example",
                        "model_info": {"id": "claude-dep"}},
        optional_params={}, model=CLAUDE, user=None, custom_llm_provider="anthropic")
    return {"messages": MESSAGES, "litellm_logging_obj": obj,
            "litellm_metadata": {"model_group": "claude"}}


def anthropic_message(**usage: int) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE,
            "content": [{"type": "text", "text": CONTENT}], "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 600, "output_tokens": 200,
                      "cache_creation_input_tokens": 300, "cache_read_input_tokens": 400,
                      **usage}}


def test_an_anthropic_message_is_priced_before_sending_as_its_success_event_prices_it() -> None:
    kwargs = answered.response_event(anthropic_request(), anthropic_message())
    assert kwargs is not None
    slo = kwargs["standard_logging_object"]
    sheet = {k: D(repr(v)) for k, v in litellm.model_cost[CLAUDE].items()
             if isinstance(v, float)}
    want = (600 * sheet["input_cost_per_token"] + 400 * sheet["cache_read_input_token_cost"]
            + 300 * sheet["cache_creation_input_token_cost"]
            + 200 * sheet["output_cost_per_token"])
    assert abs(D(repr(slo["response_cost"])) - want) < D("1e-12")
    # LiteLLM's usage: cache reads and writes counted into the prompt, as its event logs it.
    assert (slo["prompt_tokens"], slo["completion_tokens"]) == (1300, 200)
    assert slo["metadata"]["usage_object"]["prompt_tokens_details"]["cached_tokens"] == 400
    assert slo["model_id"] == "claude-dep" and slo["stream"] is False
    assert CONTENT not in json.dumps(kwargs, default=str)


@pytest.mark.parametrize("case", ["not anthropic_messages", "not a message", "no usage",
                                  "unreadable"])
def test_other_dicts_wait_for_the_success_event(case: str) -> None:
    data = anthropic_request("acompletion" if case == "not anthropic_messages" else
                             "anthropic_messages")
    message: dict[str, Any] = anthropic_message()
    if case == "not a message":
        message["type"] = "error"
    elif case == "no usage":
        del message["usage"]
    elif case == "unreadable":
        message["content"] = "not a list of blocks"
    assert answered.response_event(data, message) is None


def test_the_charge_goes_into_a_plain_dict_usage_too() -> None:
    message = anthropic_message()
    answered.set_usage_cost(answered.usage_of(message), D("0.01234567"))
    assert message["usage"]["cost"] == 0.01234567
    assert answered.usage_of(response()) is not None
