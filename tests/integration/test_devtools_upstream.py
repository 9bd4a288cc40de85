"""Tests of the stand-in upstreams (devtools/upstream.py) and the proxy runner (devtools/proxy.py).

The stand-ins are what every other integration, e2e and benchmark test trusts for exact token
counts and fault injection, so each behaviour here is asserted against the raw wire format.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

# `pytest` (unlike `python -m pytest`) does not put the repo root on sys.path.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devtools.proxy import (  # noqa: E402
    MASTER_KEY,
    DeploymentSpec,
    ProxyProcess,
    build_proxy_config,
    user_key,
)
from devtools.upstream import (  # noqa: E402
    RemoteUpstream,
    UpstreamGroup,
    UpstreamProcess,
    UpstreamServer,
    estimate_prompt_tokens,
    find_free_ports,
)

NAMES = ["openai", "anthropic", "openrouter"]


@pytest.fixture(scope="module")
def group() -> Iterator[UpstreamGroup]:
    base = find_free_ports(len(NAMES), start=56300, end=56499)
    with UpstreamGroup(NAMES, base_port=base) as ups:
        yield ups


@pytest.fixture()
def ups(group: UpstreamGroup) -> UpstreamGroup:
    group.reset()  # each test starts from default settings and an empty record
    return group


def _chat(
    server: UpstreamServer,
    body: dict[str, Any],
    key: str = "sk-test",
    path: str = "/v1/chat/completions",
) -> httpx.Response:
    return httpx.post(
        server.root_url + path,
        json=body,
        timeout=10,
        headers={"Authorization": f"Bearer {key}", "X-Custom": "yes"},
    )


def _sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def test_records_path_headers_body_and_time(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    before = time.time()
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "user": "u1"}
    assert _chat(server, body, key="sk-abc").status_code == 200
    _chat(server, body, path="/chat/completions")  # LiteLLM may call without /v1

    assert [r.path for r in server.requests] == ["/v1/chat/completions", "/chat/completions"]
    first = server.requests[0]
    assert first.headers["authorization"] == "Bearer sk-abc"
    assert first.headers["x-custom"] == "yes"
    assert first.api_key == "sk-abc"
    assert first.body == body
    assert first.model == "m1"
    assert first.status == 200
    assert before <= first.time <= time.time()
    assert ups["anthropic"].requests == []  # servers record independently


def test_usage_is_deterministic_and_configurable(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    messages = [{"role": "user", "content": "x" * 41}]  # 41 chars -> ceil(41/4) = 11
    usage = _chat(server, {"model": "m", "messages": messages, "max_tokens": 7}).json()["usage"]
    assert usage["prompt_tokens"] == 11 == estimate_prompt_tokens({"messages": messages})
    assert usage["completion_tokens"] == 7  # = max_tokens
    assert usage["total_tokens"] == 18
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0

    data = _chat(server, {"model": "m", "messages": messages}).json()
    assert data["usage"]["completion_tokens"] == 10  # default without max_tokens
    assert data["choices"][0]["finish_reason"] == "stop"

    server.configure(prompt_tokens=1000, completion_tokens=3, cached_tokens=400)
    usage = _chat(server, {"model": "m", "messages": messages, "max_tokens": 50}).json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        1000,
        3,
        1003,
    )
    assert usage["prompt_tokens_details"]["cached_tokens"] == 400


def test_openai_client_sees_usage(ups: UpstreamGroup) -> None:
    ups["openrouter"].configure(prompt_tokens=5)
    client = openai.OpenAI(base_url=ups.base_urls["openrouter"], api_key="k", max_retries=0)
    result = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 4)
    assert result.choices[0].message.content == "openrouter: ok ok ok ok"
    assert [m.id for m in client.models.list()] == ["stand-in-model"]


def test_streaming_chunks_usage_and_done(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    server.configure(stream_chunks=4, prompt_tokens=9)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = _chat(server, body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = _sse_data(resp.text)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "openai: ok ok ok ok ok ok"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) == 4
    # usage only on the last chunk, which has no choices (OpenAI's include_usage format)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 9
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert all(c["usage"] is None for c in chunks[:-1])

    no_usage = _chat(server, {**body, "stream_options": None})
    assert all("usage" not in json.loads(f) for f in _sse_data(no_usage.text)[:-1])


def test_fails_when_told_then_recovers(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    server.configure(fail_next=2, fail_status=429, retry_after=1)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    first, second, third = (_chat(server, body) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (429, 429, 200)
    assert first.headers["retry-after"] == "1"
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    assert "message" in first.json()["error"]
    assert [r.status for r in server.requests] == [429, 429, 200]

    server.configure(fail_always=True, fail_status=500, fail_message="boom")
    for _ in range(3):
        resp = _chat(server, body)
        assert resp.status_code == 500
        assert resp.json()["error"] == {
            "message": "boom",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }


def test_openai_client_raises_on_injected_failure(ups: UpstreamGroup) -> None:
    ups["openai"].configure(fail_next=1, fail_status=503)
    client = openai.OpenAI(base_url=ups.base_urls["openai"], api_key="k", max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503


def test_require_api_key(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    server.configure(require_api_key="sk-byok-alice")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    denied = _chat(server, body, key="sk-platform")
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "invalid_api_key"
    assert _chat(server, body, key="sk-byok-alice").status_code == 200
    assert [(r.api_key, r.status) for r in server.requests] == [
        ("sk-platform", 401),
        ("sk-byok-alice", 200),
    ]


def test_delay_and_hang(ups: UpstreamGroup) -> None:
    server = ups["openai"]
    server.configure(delay_ms=300)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    start = time.monotonic()
    assert _chat(server, body).status_code == 200
    assert time.monotonic() - start >= 0.3
    server.configure(delay_ms=60_000)  # "hang": the client's timeout fires first
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/chat/completions", json=body, timeout=0.5)


def test_anthropic_messages_protocol(ups: UpstreamGroup) -> None:
    server = ups["anthropic"]
    server.configure(prompt_tokens=100, cached_tokens=30)
    body = {
        "model": "claude",
        "max_tokens": 5,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    resp = httpx.post(
        server.root_url + "/v1/messages", json=body, headers={"x-api-key": "sk-ant"}, timeout=10
    )
    data = resp.json()
    assert resp.status_code == 200 and data["type"] == "message"
    assert data["content"][0]["text"] == "anthropic: ok ok ok ok ok"
    assert data["stop_reason"] == "max_tokens"
    # input_tokens excludes cache reads, as Anthropic reports it
    assert data["usage"] == {
        "input_tokens": 70,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 30,
    }
    assert server.last_request.api_key == "sk-ant"

    streamed = httpx.post(
        server.root_url + "/v1/messages", json={**body, "stream": True}, timeout=10
    )
    events = [json.loads(f) for f in _sse_data(streamed.text)]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert events[0]["message"]["usage"]["input_tokens"] == 70
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["usage"]["output_tokens"] == 5

    server.configure(fail_next=1, fail_status=529)
    failed = httpx.post(server.root_url + "/v1/messages", json=body, timeout=10)
    assert failed.status_code == 529
    assert failed.json()["error"]["type"] == "overloaded_error"


def test_responses_api(ups: UpstreamGroup) -> None:
    client = openai.OpenAI(base_url=ups.base_urls["openai"], api_key="k", max_retries=0)
    result = client.responses.create(model="m", input="abcdefgh", max_output_tokens=3)
    assert result.output_text == "openai: ok ok ok"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (2, 3)


def test_remote_control_endpoints(ups: UpstreamGroup) -> None:
    server = ups["openrouter"]
    remote = RemoteUpstream(server.base_url)
    assert remote.configure(prompt_tokens=42)["prompt_tokens"] == 42
    _chat(server, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, key="sk-r")
    recorded = remote.requests
    assert len(recorded) == 1 and recorded[0].api_key == "sk-r"
    remote.reset()
    assert remote.requests == [] and remote.settings["prompt_tokens"] is None
    with pytest.raises(httpx.HTTPStatusError):
        remote.configure(no_such_knob=1)


def test_separate_process_mode(tmp_path: Path) -> None:
    base = find_free_ports(2, start=56500, end=56599)
    with UpstreamProcess(
        ["openai", "deepinfra"], base_port=base, log_path=tmp_path / "up.log"
    ) as proc:
        assert proc.base_urls == {
            "openai": f"http://127.0.0.1:{base}/v1",
            "deepinfra": f"http://127.0.0.1:{base + 1}/v1",
        }
        remote = proc.remote("deepinfra")
        remote.configure(completion_tokens=2)
        client = openai.OpenAI(base_url=proc.base_urls["deepinfra"], api_key="k-d", max_retries=0)
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert out.usage is not None and out.usage.completion_tokens == 2
        assert [r.api_key for r in remote.requests] == ["k-d"]
        assert proc.proc is not None
        pid = proc.proc.pid
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(pid, 0)


@pytest.mark.e2e
def test_proxy_routes_to_stand_ins_with_provider_names_and_exact_cost(
    ups: UpstreamGroup, tmp_path: Path
) -> None:
    """The real proxy, built by devtools.proxy, reaches each stand-in under its provider name."""
    config = build_proxy_config(
        ups.base_urls,
        {
            "m-anthropic": [
                DeploymentSpec(
                    "anthropic", input_cost_per_token=0.000003, output_cost_per_token=0.000015
                )
            ],
            "m-openrouter": ["openrouter"],
        },
    )
    for server in ups:
        server.configure(prompt_tokens=100)
    port = find_free_ports(1, start=56600, end=56699)
    with ProxyProcess(config, port, log_path=tmp_path / "proxy.log") as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key=user_key("alice"), max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="m-anthropic", messages=[{"role": "user", "content": "hi"}], max_tokens=20
        )
        assert raw.parse().usage.completion_tokens == 20  # type: ignore[union-attr]
        # 100 * 3e-6 + 20 * 15e-6 = 0.0006
        assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(0.0006)
        assert raw.headers["x-litellm-model-id"] == "m-anthropic-anthropic"
        sent = ups["anthropic"].last_request
        assert sent.path == "/v1/messages" and sent.api_key == "sk-platform-anthropic"

        client.chat.completions.create(
            model="m-openrouter", messages=[{"role": "user", "content": "hi"}]
        )
        assert ups["openrouter"].last_request.path == "/v1/chat/completions"

        bad = httpx.post(
            proxy.url("/v1/chat/completions"),
            timeout=30,
            headers={"Authorization": "Bearer sk-wrong"},
            json={"model": "m-openrouter", "messages": []},
        )
        assert bad.status_code == 401
        admin = httpx.get(
            proxy.url("/v1/models"), timeout=30, headers={"Authorization": f"Bearer {MASTER_KEY}"}
        )
        assert admin.status_code == 200
        pid = proxy.pid
    assert pid is not None and not proxy.running
    assert "Uvicorn running" in proxy.log_text() or "Application startup" in proxy.log_text()


@pytest.mark.e2e
def test_proxy_kill_and_restart(ups: UpstreamGroup, tmp_path: Path) -> None:
    """kill() is a crash (SIGKILL, port freed); restart() brings the same config back."""
    port = find_free_ports(1, start=56600, end=56699)
    proxy = ProxyProcess(
        build_proxy_config(ups.base_urls, {"m": ["openai"]}), port, log_path=tmp_path / "p.log"
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    with proxy:
        first_pid = proxy.pid
        assert proxy.kill() == -9
        assert not proxy.running
        with pytest.raises(httpx.ConnectError):
            httpx.post(proxy.url("/v1/chat/completions"), json=body, headers=headers)
        proxy.restart()
        assert proxy.pid != first_pid
        ok = httpx.post(proxy.url("/v1/chat/completions"), json=body, headers=headers, timeout=30)
        assert ok.status_code == 200
    assert proxy.log_text().count("=== start") == 2


@pytest.mark.parametrize("split_start", [False, True], ids=["start", "start-then-wait_ready"])
def test_proxy_moves_to_another_port_when_its_port_was_taken(
    ups: UpstreamGroup, tmp_path: Path, split_start: bool
) -> None:
    """A port chosen free and taken by someone else before the proxy binds it: the proxy
    starts on a port the kernel hands out instead of hanging until the start-up timeout.
    Harnesses that launch several proxies first and wait afterwards (the fault and bench
    environments) go through ``wait_ready`` alone, so that path must move too."""
    import socket

    config = build_proxy_config(ups.base_urls, {"m": ["openai"]})
    port = find_free_ports(1, start=56600, end=56699)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        started = time.monotonic()
        proxy = ProxyProcess(config, port, log_path=tmp_path / "proxy.log", startup_timeout=60)
        try:
            if split_start:
                proxy.start(wait=False)
                proxy.wait_ready()
            else:
                proxy.start()
            assert proxy.port != port
            assert time.monotonic() - started < 60
            assert "already in use" in proxy.log_text()
            assert httpx.get(proxy.url("/health/liveliness"), timeout=5).status_code == 200
        finally:
            proxy.stop()
