"""The media and special-usage stand-ins (devtools/upstream_media.py): each answers in its
provider's wire format, records what it received, and LiteLLM itself parses and prices it."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import litellm
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devtools.upstream import UpstreamGroup, UpstreamServer, find_free_ports  # noqa: E402
from devtools.upstream_media import media_settings  # noqa: E402

NAMES = ["openai", "anthropic", "cohere", "openrouter"]


@pytest.fixture(scope="module")
def group() -> Iterator[UpstreamGroup]:
    base = find_free_ports(len(NAMES), start=56500, end=56699)
    with UpstreamGroup(NAMES, base_port=base) as ups:
        yield ups


@pytest.fixture()
def ups(group: UpstreamGroup) -> UpstreamGroup:
    group.reset()
    return group


def client(server: UpstreamServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def dec(x: float) -> Decimal:
    return Decimal(repr(x))


def test_images(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    out = client(server).images.generate(model="dall-e-3", prompt="a cat", n=2,
                                         size="1024x1024")
    assert len(out.data) == 2 and out.data[0].url
    rec = server.last_request
    assert rec.path == "/v1/images/generations" and rec.body["n"] == 2 and rec.status == 200
    media_settings(server).image_usage = (10, 4160)
    raw = httpx.post(f"{server.base_url}/images/generations",
                     json={"model": "gpt-image-1", "prompt": "x"}).json()
    assert raw["usage"]["output_tokens"] == 4160 and raw["usage"]["input_tokens"] == 10
    resp = litellm.image_generation(model="openai/dall-e-3", prompt="a cat", n=1,
                                    api_base=server.base_url, api_key="sk-test")
    assert resp._hidden_params["response_cost"] > 0  # noqa: SLF001


def test_transcription(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    audio = ("a.mp3", b"ID3" + b"\x00" * 500, "audio/mpeg")
    out = client(server).audio.transcriptions.create(model="whisper-1", file=audio,
                                                     response_format="verbose_json")
    assert out.text == "stand-in transcription" and out.duration == 12.5
    rec = server.last_request
    assert rec.path == "/v1/audio/transcriptions"
    assert rec.body["model"] == "whisper-1" and rec.body["file"] == {"filename_bytes": 503}
    raw = httpx.post(f"{server.base_url}/audio/transcriptions",
                     files={"file": audio}, data={"model": "whisper-1"}).json()
    assert raw["usage"] == {"type": "duration", "seconds": 12}
    media_settings(server).transcription_tokens = (120, 8)
    raw = httpx.post(f"{server.base_url}/audio/transcriptions", files={"file": audio},
                     data={"model": "gpt-4o-transcribe"}).json()
    assert raw["usage"]["input_token_details"]["audio_tokens"] == 120
    media_settings(server).transcription_tokens = None
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:  # any file: only its size matters here
        resp = litellm.transcription(model="openai/whisper-1", file=f, api_base=server.base_url,
                                     api_key="sk-test", response_format="verbose_json")
    assert dec(resp._hidden_params["response_cost"]) == Decimal("12.5") * Decimal("0.0001")  # noqa: SLF001


def test_speech_returns_bytes(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    media_settings(server).speech_bytes = 4000
    out = client(server).audio.speech.create(model="tts-1", voice="alloy", input="hello there")
    assert len(out.content) == 4000
    assert server.last_request.body == {"model": "tts-1", "voice": "alloy",
                                        "input": "hello there"}


def test_rerank_cohere(ups: UpstreamGroup) -> None:
    server = ups["cohere"]
    media_settings(server).search_units = 2
    docs = ["a", "b", "c"]
    raw = httpx.post(f"{server.root_url}/v1/rerank",
                     json={"model": "rerank-english-v3.0", "query": "q", "documents": docs,
                           "top_n": 2}).json()
    assert [r["index"] for r in raw["results"]] == [0, 1]
    assert raw["meta"]["billed_units"]["search_units"] == 2
    resp = litellm.rerank(model="cohere/rerank-english-v3.0", query="q", documents=docs,
                          api_base=server.root_url, api_key="sk-test")
    assert server.last_request.path.endswith("/rerank")
    assert dec(resp._hidden_params["response_cost"]) == 2 * Decimal("0.002")  # noqa: SLF001


def test_chat_audio_output(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    server.configure(prompt_tokens=100, completion_tokens=500)
    media_settings(server).audio_output_tokens = 450
    media_settings(server).audio_input_tokens = 60
    out = client(server).chat.completions.create(
        model="gpt-4o-audio-preview", modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.audio is not None
    assert base64.b64decode(out.choices[0].message.audio.data)
    assert out.usage is not None and out.usage.completion_tokens_details is not None
    assert out.usage.completion_tokens_details.audio_tokens == 450
    resp = litellm.completion(model="openai/gpt-4o-audio-preview",
                              messages=[{"role": "user", "content": "hi"}],
                              modalities=["text", "audio"],
                              audio={"voice": "alloy", "format": "wav"},
                              api_base=server.base_url, api_key="sk-test")
    expected = (40 * Decimal("2.5e-6") + 60 * Decimal("4e-5") + 50 * Decimal("1e-5")
                + 450 * Decimal("8e-5"))
    assert abs(dec(resp._hidden_params["response_cost"]) - expected) < Decimal("1e-12")  # noqa: SLF001


def test_openai_prompt_caching(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    server.configure(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    out = client(server).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert out.usage is not None and out.usage.prompt_tokens_details is not None
    assert out.usage.prompt_tokens_details.cached_tokens == 400


def test_anthropic_prompt_caching(ups: UpstreamGroup) -> None:
    server = ups["anthropic"]
    server.configure(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    media_settings(server).cache_creation_tokens = 300
    body = {"model": "claude-sonnet-4-20250514", "max_tokens": 200,
            "messages": [{"role": "user", "content": "hi"}]}
    raw = httpx.post(f"{server.root_url}/v1/messages", json=body).json()
    assert raw["usage"] == {"input_tokens": 600, "output_tokens": 200,
                            "cache_creation_input_tokens": 300, "cache_read_input_tokens": 400}
    resp = litellm.completion(model="anthropic/claude-sonnet-4-20250514",
                              messages=[{"role": "user", "content": "hi"}], max_tokens=200,
                              api_base=server.root_url, api_key="sk-test")
    expected = (600 * Decimal("3e-6") + 400 * Decimal("3e-7") + 300 * Decimal("3.75e-6")
                + 200 * Decimal("1.5e-5"))
    assert abs(dec(resp._hidden_params["response_cost"]) - expected) < Decimal("1e-12")  # noqa: SLF001
    # streamed: the cache write is in message_start's usage
    with httpx.stream("POST", f"{server.root_url}/v1/messages",
                      json={**body, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0]["message"]["usage"]["cache_creation_input_tokens"] == 300
    assert events[-1]["type"] == "message_stop"


def test_openrouter_usage_cost(ups: UpstreamGroup) -> None:
    server = ups["openrouter"]
    media_settings(server).provider_cost = 0.00042
    raw = httpx.post(f"{server.base_url}/chat/completions",
                     json={"model": "m", "messages": [{"role": "user", "content": "x"}]}).json()
    assert raw["usage"]["cost"] == 0.00042
    with httpx.stream("POST", f"{server.base_url}/chat/completions",
                      json={"model": "m", "stream": True,
                            "messages": [{"role": "user", "content": "x"}]}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["usage"]["cost"] == 0.00042


@pytest.mark.parametrize("anthropic", [False, True])
def test_stream_dies_after_n_chunks(ups: UpstreamGroup, anthropic: bool) -> None:
    server = ups["anthropic" if anthropic else "openai"]
    server.configure(stream_chunks=5, completion_tokens=10)
    media_settings(server).die_after_chunks = 2
    url = f"{server.root_url}/v1/messages" if anthropic else f"{server.base_url}/chat/completions"
    body = {"model": "m", "stream": True, "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}]}
    got: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        got.extend(line for line in r.iter_lines() if line.startswith("data: "))
    marker = "text_delta" if anthropic else '"delta": {"content"'
    deltas = [line for line in got if marker in line]
    assert len(deltas) == 2
    assert not any("[DONE]" in line or "message_stop" in line for line in got)
    assert server.last_request.status == 200


def test_plain_chat_untouched(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    out = client(server).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert out.choices[0].message.content == "openai: ok ok ok"
    assert out.usage is not None and "cost" not in (out.usage.model_extra or {})
