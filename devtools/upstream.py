"""Stand-in LLM providers for tests, the demo and the benchmark.

This module owns the fake upstreams that the LiteLLM proxy talks to instead of real providers:

* one aiohttp server per provider name (``openai``, ``anthropic``, ``openrouter``, ...), each
  on its own ``127.0.0.1`` port, all served by ONE event loop (a background thread in tests, or
  a separate process for the benchmark so the stand-ins do not steal CPU from the load generator);
* the OpenAI wire protocol (``POST .../chat/completions``, ``POST .../completions``,
  ``POST .../responses``, ``GET .../models``) on every server, plus the Anthropic Messages protocol
  (``POST .../v1/messages``) so that a LiteLLM deployment ``anthropic/<model>`` pointed at a
  stand-in is genuinely reported as provider ``anthropic``;
* deterministic ``usage`` so tests know the exact cost of a request;
* fault injection (fail N / always with a status, delay or hang, require one API key);
* a record of every request, readable in-process (``server.requests``) or over HTTP
  (``GET /_recorded``, ``POST /_reset``, ``POST /_configure``) for the out-of-process mode.

Token accounting (the contract tests rely on):

* ``completion_tokens`` = ``settings.completion_tokens`` if set, else the request's
  ``max_tokens`` / ``max_completion_tokens`` if given, else 10.  (LiteLLM always sends
  ``max_tokens`` to Anthropic, defaulting it to a model limit, so anthropic tests should pass
  ``max_tokens`` or configure ``completion_tokens``.)
* ``prompt_tokens`` = ``settings.prompt_tokens`` if set, else :func:`estimate_prompt_tokens`
  (ceil(characters of message text / 4), at least 1).
* ``prompt_tokens_details.cached_tokens`` = ``settings.cached_tokens`` (capped at prompt_tokens).
  On the Anthropic protocol this is sent as ``cache_read_input_tokens`` and ``input_tokens`` is
  the uncached rest, so LiteLLM reconstructs the same ``prompt_tokens``.

Command line (benchmark / demo)::

    python -m devtools.upstream --providers openai,anthropic --base-port 56100

prints one JSON line ``{"openai": "http://127.0.0.1:56100/v1", ...}`` once every server
listens, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from devtools import upstream_media

__all__ = [
    "RecordedRequest",
    "RemoteUpstream",
    "UpstreamGroup",
    "UpstreamProcess",
    "UpstreamServer",
    "UpstreamSettings",
    "estimate_prompt_tokens",
    "find_free_ports",
]

HOST = "127.0.0.1"
DEFAULT_COMPLETION_TOKENS = 10
# Control endpoints live outside /v1 so they can never collide with a provider route.
CONTROL_PREFIX = "/_"

# Status -> (OpenAI error type, OpenAI error code, Anthropic error type). The types mirror
# what the real providers send, so LiteLLM maps them to the same exception classes it would
# in production (AuthenticationError, RateLimitError, ...).
_ERROR_KINDS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "bad_request", "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key", "authentication_error"),
    403: ("invalid_request_error", "permission_denied", "permission_error"),
    404: ("invalid_request_error", "model_not_found", "not_found_error"),
    408: ("timeout", "timeout", "api_error"),
    429: ("requests", "rate_limit_exceeded", "rate_limit_error"),
    500: ("server_error", "internal_error", "api_error"),
    502: ("server_error", "bad_gateway", "api_error"),
    503: ("server_error", "service_unavailable", "overloaded_error"),
    529: ("server_error", "overloaded", "overloaded_error"),
}


@dataclasses.dataclass
class UpstreamSettings:
    """Behaviour knobs of one stand-in server; every field can be changed at run time.

    In-process: assign attributes on ``server.settings`` (or the shortcuts on the server).
    Out-of-process: ``POST /_configure`` with a JSON object of the fields to change.
    """

    prompt_tokens: int | None = None  # None: estimate from the message text
    completion_tokens: int | None = None  # None: max_tokens if given, else 10
    cached_tokens: int = 0
    fail_next: int = 0  # the next N model requests fail with fail_status
    fail_status: int = 500
    fail_always: bool = False
    fail_message: str | None = None
    retry_after: float | None = None  # sent as Retry-After on failures when set
    delay_ms: float = 0.0  # before the response (or first chunk); large value = hang
    chunk_delay_ms: float = 0.0  # between streamed chunks
    stream_chunks: int = 3  # content chunks in a streamed answer
    require_api_key: str | None = None  # any other key gets 401
    record: bool = True  # the benchmark turns this off to keep memory flat
    models: list[str] = dataclasses.field(default_factory=lambda: ["stand-in-model"])
    reply: str | None = None  # fixed answer text; default "<name>:" + " ok" * tokens

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (field name -> value), rejecting unknown names loudly."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown upstream setting(s): {sorted(unknown)}")
        for key, value in changes.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RecordedRequest:
    """One request as the stand-in saw it (control endpoints are not recorded)."""

    server: str
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when the body was empty / not JSON
    time: float  # time.time() at arrival
    status: int | None = None  # filled in when the response is decided

    @property
    def api_key(self) -> str | None:
        """The key the caller presented: ``Authorization: Bearer`` or Anthropic ``x-api-key``."""
        auth = self.headers.get("authorization")
        if auth:
            return auth[7:] if auth.lower().startswith("bearer ") else auth
        return self.headers.get("x-api-key")

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordedRequest:
        fields: dict[str, Any] = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**fields)


def _text_of(content: Any) -> str:
    """Concatenate the text in an OpenAI or Anthropic content value (str or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text_of(part) for part in content)
    if isinstance(content, dict):
        # {"type": "text", "text": ...}; tool results nest their own content.
        return _text_of(content.get("text")) + _text_of(content.get("content"))
    return ""


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Deterministic prompt token count: ceil(characters of all message text / 4), min 1.

    Counts ``messages[*].content``, an Anthropic top-level ``system``, Responses-API
    ``instructions`` / ``input`` and a text-completion ``prompt``. Tests that need an exact
    figure should rather set ``prompt_tokens``, because LiteLLM may rewrite messages on the way
    (e.g. moving a system message for Anthropic, or a minimum of 16 output tokens on the
    Responses API).
    """
    chars = len(_text_of(body.get("system")))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            chars += len(_text_of(message.get("content")))
    # Responses API: "instructions" plus "input" (a string or a list of messages / parts).
    chars += len(_text_of(body.get("instructions")))
    chars += len(_text_of(body.get("input")))
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        chars += sum(len(p) for p in prompt if isinstance(p, str))
    elif isinstance(prompt, str):
        chars += len(prompt)
    return max(1, math.ceil(chars / 4))


@dataclasses.dataclass(frozen=True)
class _Usage:
    prompt: int
    completion: int
    cached: int

    def openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    def anthropic(self, output_tokens: int | None = None) -> dict[str, Any]:
        # Anthropic's input_tokens excludes cache reads; LiteLLM adds them back.
        return {
            "input_tokens": self.prompt - self.cached,
            "output_tokens": self.completion if output_tokens is None else output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cached,
        }


def _split(text: str, parts: int) -> list[str]:
    """Split ``text`` into ``parts`` contiguous non-empty-ish pieces (for streaming)."""
    parts = max(1, parts)
    size = max(1, math.ceil(len(text) / parts)) if text else 1
    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    return pieces


class UpstreamServer:
    """One stand-in provider: an aiohttp application plus its settings and request record.

    Handlers run on the group's event loop; tests read ``requests`` and change ``settings``
    from another thread. That is safe enough for test use because list appends and attribute
    stores are atomic under the GIL.
    """

    def __init__(self, name: str, port: int = 0, host: str = HOST) -> None:
        self.name = name
        self.host = host
        self.port = port  # 0 until started when an ephemeral port was asked for
        self.settings = UpstreamSettings()
        self.requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        # One catch-all route dispatching on the path suffix, so LiteLLM's URL building per
        # provider (".../v1/chat/completions", ".../chat/completions", "/v1/messages") all land.
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    # -- convenience accessors -------------------------------------------------------------
    @property
    def root_url(self) -> str:
        """``http://host:port`` (Anthropic-style api_base: LiteLLM appends ``/v1/messages``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1`` (OpenAI-style api_base)."""
        return f"{self.root_url}/v1"

    @property
    def last_request(self) -> RecordedRequest:
        if not self.requests:
            raise LookupError(f"stand-in {self.name!r} has received no request")
        return self.requests[-1]

    def model_requests(self) -> list[RecordedRequest]:
        """Recorded requests to model endpoints only (not GET /v1/models)."""
        return [r for r in self.requests if r.method == "POST"]

    def configure(self, **changes: Any) -> UpstreamSettings:
        self.settings.update(changes)
        return self.settings

    def clear(self) -> None:
        """Forget recorded requests, keep settings."""
        self.requests.clear()

    def reset(self) -> None:
        """Forget recorded requests and restore default settings."""
        self.requests.clear()
        self.settings = UpstreamSettings()
        upstream_media.reset_media(self)

    # -- lifecycle (on the serving loop) ---------------------------------------------------
    async def start(self) -> None:
        # access_log=None: per-request logging would cost more than the handler itself.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=1024)
        await site.start()
        if self.port == 0:
            server = site._server  # noqa: SLF001 - aiohttp offers no public accessor
            assert server is not None and hasattr(server, "sockets")
            self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- request handling ------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            return await self._control(request)
        body: Any = None
        raw = b""
        if request.body_exists:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
        record = RecordedRequest(
            server=self.name,
            method=request.method,
            path=path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            time=time.time(),
        )
        settings = self.settings  # one snapshot per request; tests may swap it mid-flight
        if settings.record:
            self.requests.append(record)
        # Images, audio, rerank and special chat usages live in devtools/upstream_media.py.
        handled = await upstream_media.dispatch(self, request, record, raw, settings)
        if handled is not None:
            return handled

        anthropic = path.endswith("/messages")
        responses_api = path.endswith("/responses")
        if request.method == "GET" and path.endswith("/models"):
            record.status = 200
            return web.json_response(self._models_body(settings))
        if request.method != "POST" or not (
            anthropic or responses_api or path.endswith("/completions")
        ):
            record.status = 404
            return self._error(
                404, f"stand-in {self.name}: no route {request.method} {path}", anthropic
            )
        if not isinstance(body, dict):
            record.status = 400
            return self._error(400, "request body must be a JSON object", anthropic)

        if settings.require_api_key is not None and record.api_key != settings.require_api_key:
            record.status = 401
            return self._error(
                401, f"Incorrect API key provided to stand-in {self.name}.", anthropic
            )
        if settings.delay_ms > 0:
            await asyncio.sleep(settings.delay_ms / 1000)
        if settings.fail_always or settings.fail_next > 0:
            if not settings.fail_always:
                settings.fail_next -= 1
            record.status = settings.fail_status
            message = settings.fail_message or (
                f"stand-in {self.name} told to fail with {settings.fail_status}"
            )
            return self._error(settings.fail_status, message, anthropic, settings.retry_after)

        usage = self._usage(body, settings)
        record.status = 200
        model = str(body.get("model") or "stand-in-model")
        text = (
            settings.reply
            if settings.reply is not None
            else (f"{self.name}:" + " ok" * usage.completion)
        )
        stream = bool(body.get("stream"))
        if responses_api:
            if stream:
                return await self._stream_responses(request, model, text, usage, settings, body)
            return web.json_response(self._responses_body(model, text, usage, body, "completed"))
        if anthropic:
            if stream:
                stop = "max_tokens" if self._finish_reason(body, usage) == "length" else "end_turn"
                return await self._stream_anthropic(request, model, text, usage, settings, stop)
            return web.json_response(self._anthropic_body(model, text, usage, body))
        chat = path.endswith("/chat/completions")
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream_openai(
                request,
                model,
                text,
                usage,
                settings,
                chat,
                include_usage,
                self._finish_reason(body, usage),
            )
        return web.json_response(self._openai_body(model, text, usage, body, chat))

    @staticmethod
    def _asked_max(body: Mapping[str, Any]) -> Any:
        return (
            body.get("max_completion_tokens")
            or body.get("max_tokens")
            or body.get("max_output_tokens")
        )

    def _usage(self, body: Mapping[str, Any], settings: UpstreamSettings) -> _Usage:
        completion = settings.completion_tokens
        if completion is None:
            asked = self._asked_max(body)
            completion = int(asked) if asked else DEFAULT_COMPLETION_TOKENS
        prompt = settings.prompt_tokens
        if prompt is None:
            prompt = estimate_prompt_tokens(body)
        return _Usage(
            prompt=prompt, completion=completion, cached=min(settings.cached_tokens, prompt)
        )

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.name}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"

    def _models_body(self, settings: UpstreamSettings) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": self.name}
                for m in settings.models
            ],
        }

    def _finish_reason(self, body: Mapping[str, Any], usage: _Usage) -> str:
        asked = self._asked_max(body)
        return "length" if asked and usage.completion >= int(asked) else "stop"

    def _openai_body(
        self, model: str, text: str, usage: _Usage, body: Mapping[str, Any], chat: bool
    ) -> dict[str, Any]:
        finish = self._finish_reason(body, usage)
        choice: dict[str, Any]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": self._new_id("chatcmpl" if chat else "cmpl"),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": f"fp_{self.name}",
            "choices": [choice],
            "usage": usage.openai(),
        }

    def _anthropic_body(
        self, model: str, text: str, usage: _Usage, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        stop = "max_tokens" if self._finish_reason(body, usage) == "length" else "end_turn"
        return {
            "id": self._new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage.anthropic(),
        }

    def _responses_body(
        self,
        model: str,
        text: str,
        usage: _Usage,
        body: Mapping[str, Any],
        status: str,
        item_id: str | None = None,
        response_id: str | None = None,
    ) -> dict[str, Any]:
        """An OpenAI Responses-API object (LiteLLM uses this API for openai/ deployments
        behind the proxy's /v1/responses and, in 1.102.4, /v1/messages routes; seen)."""
        done = status == "completed"
        output: list[dict[str, Any]] = []
        if done:
            output = [
                {
                    "type": "message",
                    "id": item_id or self._new_id("msg"),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
        return {
            "id": response_id or self._new_id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": output,
            "usage": {
                "input_tokens": usage.prompt,
                "input_tokens_details": {"cached_tokens": usage.cached},
                "output_tokens": usage.completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.prompt + usage.completion,
            }
            if done
            else None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": {},
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "user": None,
        }

    async def _stream_responses(
        self,
        request: web.Request,
        model: str,
        text: str,
        usage: _Usage,
        settings: UpstreamSettings,
        body: Mapping[str, Any],
    ) -> web.StreamResponse:
        response = await self._sse_start(request)
        resp_id, item_id = self._new_id("resp"), self._new_id("msg")
        seq = itertools.count()

        async def event(data: dict[str, Any]) -> None:
            data["sequence_number"] = next(seq)
            await response.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())

        await event(
            {
                "type": "response.created",
                "response": self._responses_body(
                    model, text, usage, body, "in_progress", item_id, resp_id
                ),
            }
        )
        await event(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {
                    "type": "message",
                    "id": item_id,
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            }
        )
        part = {"type": "output_text", "text": "", "annotations": []}
        await event(
            {
                "type": "response.content_part.added",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": part,
            }
        )
        for piece in _split(text, settings.stream_chunks):
            if settings.chunk_delay_ms > 0:
                await asyncio.sleep(settings.chunk_delay_ms / 1000)
            await event(
                {
                    "type": "response.output_text.delta",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                }
            )
        await event(
            {
                "type": "response.output_text.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "text": text,
            }
        )
        await event(
            {
                "type": "response.content_part.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": {**part, "text": text},
            }
        )
        final = self._responses_body(model, text, usage, body, "completed", item_id, resp_id)
        await event(
            {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]}
        )
        await event({"type": "response.completed", "response": final})
        await response.write_eof()
        return response

    async def _sse_start(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        return response

    async def _stream_openai(
        self,
        request: web.Request,
        model: str,
        text: str,
        usage: _Usage,
        settings: UpstreamSettings,
        chat: bool,
        include_usage: bool,
        finish: str,
    ) -> web.StreamResponse:
        response = await self._sse_start(request)
        chunk_id = self._new_id("chatcmpl")
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(
            delta: dict[str, Any] | str | None, finish: str | None, with_usage: bool = False
        ) -> bytes:
            choices: list[dict[str, Any]] = []
            if delta is not None:
                if chat:
                    choices = [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ]
                else:
                    choices = [
                        {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
                    ]
            payload: dict[str, Any] = {
                "id": chunk_id,
                "object": obj,
                "created": created,
                "model": model,
                "system_fingerprint": f"fp_{self.name}",
                "choices": choices,
            }
            # OpenAI sends "usage": null on every chunk when include_usage is set and the
            # totals on one last chunk with empty choices.
            if include_usage:
                payload["usage"] = usage.openai() if with_usage else None
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        pieces = _split(text, settings.stream_chunks)
        if chat:
            await response.write(chunk({"role": "assistant", "content": ""}, None))
        for piece in pieces:
            if settings.chunk_delay_ms > 0:
                await asyncio.sleep(settings.chunk_delay_ms / 1000)
            await response.write(chunk({"content": piece} if chat else piece, None))
        await response.write(chunk({} if chat else "", finish))
        if include_usage:
            await response.write(chunk(None, None, with_usage=True))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stream_anthropic(
        self,
        request: web.Request,
        model: str,
        text: str,
        usage: _Usage,
        settings: UpstreamSettings,
        stop: str,
    ) -> web.StreamResponse:
        response = await self._sse_start(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        await event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": self._new_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage.anthropic(output_tokens=1),
                },
            },
        )
        await event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        for piece in _split(text, settings.stream_chunks):
            if settings.chunk_delay_ms > 0:
                await asyncio.sleep(settings.chunk_delay_ms / 1000)
            await event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage.completion},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    def _error(
        self, status: int, message: str, anthropic: bool, retry_after: float | None = None
    ) -> web.Response:
        oa_type, oa_code, an_type = _ERROR_KINDS.get(
            status,
            (
                "server_error" if status >= 500 else "invalid_request_error",
                str(status),
                "api_error",
            ),
        )
        payload: dict[str, Any]
        if anthropic:
            payload = {"type": "error", "error": {"type": an_type, "message": message}}
        else:
            payload = {
                "error": {"message": message, "type": oa_type, "param": None, "code": oa_code}
            }
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        return web.json_response(payload, status=status, headers=headers)

    async def _control(self, request: web.Request) -> web.Response:
        """``GET /_recorded``, ``POST /_reset``, ``GET|POST /_configure`` (out-of-process use)."""
        path = request.path
        if path == "/_recorded" and request.method == "GET":
            return web.json_response(
                {"server": self.name, "requests": [r.to_dict() for r in self.requests]}
            )
        if path == "/_reset" and request.method == "POST":
            options = await request.json() if request.body_exists else {}
            if options.get("requests_only"):
                self.clear()
            else:
                self.reset()
            return web.json_response({"ok": True})
        if path == "/_configure" and request.method in ("GET", "POST"):
            if request.method == "POST":
                try:
                    self.settings.update(await request.json())
                except (ValueError, TypeError) as exc:
                    return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(self.settings.to_dict())
        return web.json_response({"error": f"no control route {request.method} {path}"}, status=404)


class UpstreamGroup:
    """Several stand-in servers on one event loop.

    ``base_port`` N gives provider i the port N+i; 0 picks free ephemeral ports.

    Either run them on a private background thread (tests)::

        with UpstreamGroup(["openai", "anthropic"], base_port=56100) as ups:
            ups["openai"].settings.fail_next = 1
            ... ups.base_urls["openai"] ...

    or inside a running loop with ``await start_async()`` / ``await stop_async()``.
    """

    def __init__(self, names: Sequence[str], base_port: int = 0, host: str = HOST) -> None:
        if not names:
            raise ValueError("UpstreamGroup needs at least one provider name")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate provider names: {list(names)}")
        self.servers: dict[str, UpstreamServer] = {
            name: UpstreamServer(name, port=base_port + i if base_port else 0, host=host)
            for i, name in enumerate(names)
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __getitem__(self, name: str) -> UpstreamServer:
        return self.servers[name]

    def __iter__(self) -> Iterator[UpstreamServer]:
        return iter(self.servers.values())

    @property
    def base_urls(self) -> dict[str, str]:
        """Provider name -> OpenAI-style base URL (``http://127.0.0.1:P/v1``)."""
        return {name: s.base_url for name, s in self.servers.items()}

    def reset(self) -> None:
        for server in self:
            server.reset()

    async def start_async(self) -> None:
        started: list[UpstreamServer] = []
        try:
            for server in self:
                await server.start()
                started.append(server)
        except BaseException:
            for server in started:
                await server.stop()
            raise

    async def stop_async(self) -> None:
        for server in self:
            await server.stop()

    def start(self, timeout: float = 10.0) -> UpstreamGroup:
        """Serve on a daemon thread with its own event loop; returns once all listen."""
        if self._thread is not None:
            raise RuntimeError("UpstreamGroup already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="stand-in-upstreams", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("stand-in upstreams did not start in time")
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> UpstreamGroup:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RemoteUpstream:
    """Client for the control endpoints of a stand-in running in another process."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        # Control routes live at the root; accept either the root or the /v1 base URL.
        root = base_url.rstrip("/")
        self.root_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self._timeout = timeout

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        response = httpx.request(method, self.root_url + path, json=payload, timeout=self._timeout)
        response.raise_for_status()
        return response.json()

    @property
    def requests(self) -> list[RecordedRequest]:
        data = self._call("GET", "/_recorded")
        return [RecordedRequest.from_dict(r) for r in data["requests"]]

    def reset(self, requests_only: bool = False) -> None:
        self._call("POST", "/_reset", {"requests_only": requests_only})

    def configure(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/_configure", changes)
        return result

    @property
    def settings(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_configure")
        return result


class UpstreamProcess:
    """Run ``python -m devtools.upstream`` as a child process (benchmark / demo use)."""

    def __init__(
        self,
        names: Sequence[str],
        base_port: int,
        *,
        record: bool = True,
        log_path: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.names = list(names)
        self.base_port = base_port
        self.record = record
        self.log_path = log_path
        self.python = python
        self.proc: subprocess.Popen[str] | None = None
        self.base_urls: dict[str, str] = {}

    def start(self, timeout: float = 20.0) -> UpstreamProcess:
        cmd = [
            self.python,
            "-m",
            "devtools.upstream",
            "--providers",
            ",".join(self.names),
            "--base-port",
            str(self.base_port),
        ]
        if not self.record:
            cmd.append("--no-record")
        env = dict(os.environ)
        repo_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
        stderr: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=repo_root
            )
        finally:
            if self.log_path:
                stderr.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        # readline() blocks; a watchdog timer kills a child that never gets ready.
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        if not line or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"stand-in upstream process did not start: {cmd}")
        self.base_urls = json.loads(line)
        return self

    def remote(self, name: str) -> RemoteUpstream:
        return RemoteUpstream(self.base_urls[name])

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> UpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_free_ports(count: int, start: int = 56000, end: int = 56999) -> int:
    """Return a base port P in [start, end] such that P..P+count-1 are free right now.

    Tests share the machine, so they probe instead of hard-coding ports. There is a small race
    (another process may bind in between); callers bind immediately after.
    """
    for base in range(start, end - count + 2):
        if all(_port_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in {start}-{end}")


def _port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _parse_names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--providers needs at least one name")
    return names


async def _serve(group: UpstreamGroup) -> None:
    await group.start_async()
    print(json.dumps(group.base_urls), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await group.stop_async()


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.upstream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--providers",
        type=_parse_names,
        default=["openai"],
        help="comma-separated provider names, one server each",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=0,
        help="first port; provider i gets base+i (0: ephemeral ports)",
    )
    parser.add_argument("--host", default=HOST)
    parser.add_argument(
        "--no-record", action="store_true", help="do not keep requests (long benchmark runs)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--completion-tokens", type=int, default=None)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(list(argv) if argv is not None else None)

    group = UpstreamGroup(args.providers, base_port=args.base_port, host=args.host)
    for server in group:
        server.settings.record = not args.no_record
        server.settings.prompt_tokens = args.prompt_tokens
        server.settings.completion_tokens = args.completion_tokens
        server.settings.delay_ms = args.delay_ms
        # reset() restores defaults; keep the command-line choices as this process's defaults.
        defaults = dataclasses.replace(server.settings)
        server.reset = _reset_to(server, defaults)  # type: ignore[method-assign]
    try:
        import uvloop  # optional: roughly doubles throughput for the benchmark
    except ImportError:
        asyncio.run(_serve(group))
    else:
        uvloop.run(_serve(group))


def _reset_to(server: UpstreamServer, defaults: UpstreamSettings) -> Any:
    def reset() -> None:
        server.requests.clear()
        server.settings = dataclasses.replace(defaults, models=list(defaults.models))

    return reset


if __name__ == "__main__":
    main()
