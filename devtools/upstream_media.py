"""Stand-in provider endpoints beyond plain token chat, in each provider's real wire format.

``devtools.upstream.UpstreamServer._dispatch`` offers every request to :func:`dispatch` first;
it answers here, or returns None and the ordinary chat/completions/responses handling runs.

Served here (every request is still recorded on ``server.requests``):

* ``POST .../images/generations``: OpenAI images; ``data`` has ``n`` items, plus gpt-image
  style ``usage`` when ``media.image_usage`` is set;
* ``POST .../audio/transcriptions`` (multipart): ``duration`` and ``usage`` of type
  ``duration`` (whisper), or of type ``tokens`` when ``media.transcription_tokens`` is set;
* ``POST .../audio/speech``: raw audio bytes (``audio/mpeg``), ``media.speech_bytes`` long;
* ``POST .../rerank`` (Cohere v1 and v2): results plus ``meta.billed_units.search_units``;
* chat with knobs that plain chat lacks (only when a knob is set, or the request asks for
  audio output): audio output (``modalities: ["text", "audio"]`` ->
  ``completion_tokens_details.audio_tokens`` and ``message.audio``), audio input tokens,
  Anthropic ``cache_creation_input_tokens``, OpenRouter's ``usage.cost``, and a stream that
  dies after N content chunks (the connection is cut, no final chunk, no ``[DONE]``).

The knobs live on ``media_settings(server)`` (in-process only) and are cleared by
:func:`reset_media`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from devtools.upstream import RecordedRequest, UpstreamServer, UpstreamSettings

__all__ = ["MediaSettings", "dispatch", "media_settings", "reset_media"]

_ATTR = "_media_settings"


@dataclasses.dataclass
class MediaSettings:
    """Knobs of the media and special-usage stand-ins; all off by default."""

    # chat
    audio_output_tokens: int = 0  # part of completion_tokens reported as audio
    audio_input_tokens: int = 0  # part of prompt_tokens reported as audio
    cache_creation_tokens: int = 0  # Anthropic cache writes (on top of input/cache reads)
    provider_cost: float | None = None  # OpenRouter's usage.cost in USD
    die_after_chunks: int | None = None  # cut a stream after this many content chunks
    # transcription
    transcription_seconds: float = 12.5
    transcription_tokens: tuple[int, int] | None = None  # (audio input, text output) tokens
    # speech
    speech_bytes: int = 2048
    # rerank
    search_units: int = 1
    # images
    image_usage: tuple[int, int] | None = None  # (input text tokens, output image tokens)

    def chat_knobs_set(self) -> bool:
        return bool(self.audio_output_tokens or self.audio_input_tokens
                    or self.cache_creation_tokens or self.provider_cost is not None
                    or self.die_after_chunks is not None)


def media_settings(server: UpstreamServer) -> MediaSettings:
    settings: MediaSettings | None = getattr(server, _ATTR, None)
    if settings is None:
        settings = MediaSettings()
        setattr(server, _ATTR, settings)
    return settings


def reset_media(server: UpstreamServer) -> None:
    setattr(server, _ATTR, MediaSettings())


def _gate(server: UpstreamServer, record: RecordedRequest, settings: UpstreamSettings
          ) -> web.Response | None:
    """The same key check and failure injection as the chat routes."""
    if settings.require_api_key is not None and record.api_key != settings.require_api_key:
        record.status = 401
        return server._error(401, f"Incorrect API key provided to stand-in {server.name}.",
                             False)
    if settings.fail_always or settings.fail_next > 0:
        if not settings.fail_always:
            settings.fail_next -= 1
        record.status = settings.fail_status
        return server._error(settings.fail_status, settings.fail_message
                             or f"stand-in {server.name} told to fail", False,
                             settings.retry_after)
    return None


async def dispatch(server: UpstreamServer, request: web.Request, record: RecordedRequest,
                   raw: bytes, settings: UpstreamSettings) -> web.StreamResponse | None:
    """Answer a media request, or a chat request that needs a special usage; else None."""
    path = request.path
    if request.method != "POST":
        return None
    body = record.body if isinstance(record.body, dict) else {}
    media = media_settings(server)
    kind = _kind(path, body, media)
    if kind is None:
        return None
    if kind == "transcription":
        record.body = _form_fields(request, raw)
    gate = _gate(server, record, settings)
    if gate is not None:
        return gate
    if settings.delay_ms > 0:
        await asyncio.sleep(settings.delay_ms / 1000)
    record.status = 200
    if kind == "images":
        return web.json_response(_images_body(body, media))
    if kind == "transcription":
        return web.json_response(_transcription_body(media))
    if kind == "speech":
        return web.Response(body=b"\xff\xf3" + b"\x00" * max(media.speech_bytes - 2, 0),
                            content_type="audio/mpeg")
    if kind == "rerank":
        return web.json_response(_rerank_body(body, media))
    return await _chat(server, request, body, settings, media, anthropic=kind == "anthropic")


def _kind(path: str, body: Mapping[str, Any], media: MediaSettings) -> str | None:
    if path.endswith("/images/generations"):
        return "images"
    if path.endswith("/audio/transcriptions"):
        return "transcription"
    if path.endswith("/audio/speech"):
        return "speech"
    if path.endswith("/rerank"):
        return "rerank"
    wants_audio = "audio" in (body.get("modalities") or ())
    if path.endswith("/chat/completions") and (wants_audio or media.chat_knobs_set()):
        return "chat"
    if path.endswith("/messages") and media.chat_knobs_set():
        return "anthropic"
    return None


def _form_fields(request: web.Request, raw: bytes) -> dict[str, Any]:
    """The text fields of a multipart body, and the uploaded file's size (not its bytes)."""
    ctype = request.headers.get("Content-Type", "")
    boundary = ctype.split("boundary=", 1)[1].strip('"') if "boundary=" in ctype else ""
    fields: dict[str, Any] = {}
    if not boundary:
        return fields
    for part in raw.split(b"--" + boundary.encode()):
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep or b'name="' not in head:
            continue
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        value = value.removesuffix(b"\r\n")
        if b"filename=" in head:
            fields[name] = {"filename_bytes": len(value)}
        else:
            fields[name] = value.decode(errors="replace")
    return fields


def _images_body(body: Mapping[str, Any], media: MediaSettings) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    b64 = body.get("response_format") == "b64_json"
    data = [{"b64_json": base64.b64encode(b"png").decode()} if b64 else
            {"url": f"https://stand-in.invalid/image-{i}.png", "revised_prompt": None}
            for i in range(n)]
    out: dict[str, Any] = {"created": int(time.time()), "data": data}
    if media.image_usage is not None:
        text_in, image_out = media.image_usage
        out["usage"] = {
            "input_tokens": text_in, "output_tokens": image_out * n,
            "total_tokens": text_in + image_out * n,
            "input_tokens_details": {"text_tokens": text_in, "image_tokens": 0},
        }
    return out


def _transcription_body(media: MediaSettings) -> dict[str, Any]:
    body: dict[str, Any] = {"task": "transcribe", "language": "english",
                            "duration": media.transcription_seconds,
                            "text": "stand-in transcription"}
    if media.transcription_tokens is None:
        body["usage"] = {"type": "duration", "seconds": round(media.transcription_seconds)}
    else:
        audio, text = media.transcription_tokens
        body["usage"] = {"type": "tokens", "input_tokens": audio, "output_tokens": text,
                         "total_tokens": audio + text,
                         "input_token_details": {"audio_tokens": audio, "text_tokens": 0}}
    return body


def _rerank_body(body: Mapping[str, Any], media: MediaSettings) -> dict[str, Any]:
    docs = body.get("documents") or []
    top = body.get("top_n") or len(docs)
    results = [{"index": i, "relevance_score": round(1.0 - i / (len(docs) + 1), 6)}
               for i in range(min(int(top), len(docs)))]
    return {"id": f"rerank-{uuid.uuid4().hex[:12]}", "results": results,
            "meta": {"api_version": {"version": "2"},
                     "billed_units": {"search_units": media.search_units}}}


def _openai_usage(base: dict[str, Any], media: MediaSettings) -> dict[str, Any]:
    usage = dict(base)
    usage["prompt_tokens_details"] = {**(usage.get("prompt_tokens_details") or {}),
                                      "audio_tokens": media.audio_input_tokens}
    usage["completion_tokens_details"] = {**(usage.get("completion_tokens_details") or {}),
                                          "audio_tokens": media.audio_output_tokens}
    if media.provider_cost is not None:
        usage["cost"] = media.provider_cost
    return usage


async def _chat(server: UpstreamServer, request: web.Request, body: dict[str, Any],
                settings: UpstreamSettings, media: MediaSettings, *, anthropic: bool
                ) -> web.StreamResponse:
    usage = server._usage(body, settings)
    model = str(body.get("model") or "stand-in-model")
    text = settings.reply if settings.reply is not None else (
        f"{server.name}:" + " ok" * usage.completion)
    if body.get("stream"):
        return await _stream(server, request, model, text, usage, settings, media, anthropic)
    if anthropic:
        payload = server._anthropic_body(model, text, usage, body)
        payload["usage"]["cache_creation_input_tokens"] = media.cache_creation_tokens
        return web.json_response(payload)
    payload = server._openai_body(model, text, usage, body, True)
    payload["usage"] = _openai_usage(payload["usage"], media)
    if "audio" in (body.get("modalities") or ()):
        payload["choices"][0]["message"]["audio"] = {
            "id": f"audio_{uuid.uuid4().hex[:12]}", "expires_at": int(time.time()) + 3600,
            "data": base64.b64encode(b"RIFF....WAVEfmt ").decode(), "transcript": text}
        payload["choices"][0]["message"]["content"] = None
    return web.json_response(payload)


async def _stream(server: UpstreamServer, request: web.Request, model: str, text: str,
                  usage: Any, settings: UpstreamSettings, media: MediaSettings,
                  anthropic: bool) -> web.StreamResponse:
    response = await server._sse_start(request)
    pieces = _split(text, settings.stream_chunks)
    die = media.die_after_chunks

    async def write(data: dict[str, Any], event: str | None = None) -> None:
        prefix = f"event: {event}\n" if event else ""
        await response.write(f"{prefix}data: {json.dumps(data)}\n\n".encode())

    msg_id = f"msg-{server.name}-{uuid.uuid4().hex[:8]}"
    if anthropic:
        start_usage = usage.anthropic(output_tokens=1)
        start_usage["cache_creation_input_tokens"] = media.cache_creation_tokens
        await write({"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}},
            "message_start")
        await write({"type": "content_block_start", "index": 0,
                     "content_block": {"type": "text", "text": ""}}, "content_block_start")
    for i, piece in enumerate(pieces):
        if die is not None and i >= die:
            _cut(request)
            return response
        if settings.chunk_delay_ms > 0:
            await asyncio.sleep(settings.chunk_delay_ms / 1000)
        if anthropic:
            await write({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
        else:
            await write({"id": msg_id, "object": "chat.completion.chunk", "created": 0,
                         "model": model, "choices": [{"index": 0, "delta": {"content": piece},
                                                      "finish_reason": None}]})
    if die is not None:  # asked to die after at least as many chunks as there are
        _cut(request)
        return response
    if anthropic:
        await write({"type": "content_block_stop", "index": 0}, "content_block_stop")
        await write({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                        "stop_sequence": None},
                     "usage": {"output_tokens": usage.completion}}, "message_delta")
        await write({"type": "message_stop"}, "message_stop")
    else:
        await write({"id": msg_id, "object": "chat.completion.chunk", "created": 0,
                     "model": model, "choices": [{"index": 0, "delta": {},
                                                  "finish_reason": "stop"}]})
        await write({"id": msg_id, "object": "chat.completion.chunk", "created": 0,
                     "model": model, "choices": [],
                     "usage": _openai_usage(usage.openai(), media)})
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _cut(request: web.Request) -> None:
    """Drop the connection mid-stream, as a crashed upstream does (no terminating chunk)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, parts))) if text else 1
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]
