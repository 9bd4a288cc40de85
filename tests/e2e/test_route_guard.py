"""The route guard in the real proxy: routes the plugin cannot bill are refused with 403
before LiteLLM touches them, and the stand-in providers receive nothing.

The composition root (``litellm_credits.plugin``) installs the guard with the settings; a
scratch callback module on PYTHONPATH (``credits_e2e_guard``) installs it too, with the default
policy (a second install does nothing more). The proxy's OpenAI and Anthropic pass-through
targets and its Assistants provider all point at the stand-ins, so a request that slipped
through would be recorded there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from devtools.pg import PgCluster
from devtools.proxy import MASTER_KEY, ProxyProcess, user_key
from litellm_credits import guard
from tests.e2e.plugin_env import (
    PROXY_PORTS,
    PluginEnv,
    chat,
    chat_deployment,
    free_port,
    plugin_env,
)

pytestmark = [pytest.mark.e2e,
              pytest.mark.filterwarnings("ignore:The Assistants API is deprecated")]

WIRING = '''\
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy import proxy_server

from litellm_credits import guard

guard.install(proxy_server.app, guard.RoutePolicy.from_settings(guard.GuardSettings()))
handler = CustomLogger()
'''


@pytest.fixture(scope="module")
def env(pg_cluster: PgCluster) -> Iterator[PluginEnv]:
    with tempfile.TemporaryDirectory(prefix="credits-guard-") as tmp:
        Path(tmp, "credits_e2e_guard.py").write_text(WIRING)
        path = os.pathsep.join([str(Path(__file__).resolve().parents[2]), tmp])

        def edit(cfg: dict[str, Any]) -> None:
            cfg["litellm_settings"]["callbacks"] += ["credits_e2e_guard.handler"]
            bases = {d["model_info"]["provider"]: d["litellm_params"]["api_base"]
                     for d in cfg["model_list"]}
            openai_base = bases["openai"]
            anthropic_root = bases["anthropic"].removesuffix("/v1")
            # Everything that could reach a provider points at the stand-ins.
            cfg["environment_variables"] = {
                "OPENAI_API_BASE": openai_base.removesuffix("/v1"), "OPENAI_API_KEY": "sk-platform",
                "ANTHROPIC_API_BASE": anthropic_root, "ANTHROPIC_API_KEY": "sk-ant-platform",
            }
            cfg["assistant_settings"] = {"custom_llm_provider": "openai", "litellm_params": {
                "api_key": "sk-platform", "api_base": openai_base}}

        models = {"chat": [chat_deployment("openai"), chat_deployment("anthropic")]}
        with plugin_env(pg_cluster, models, providers=("openai", "anthropic"),
                        extra_env={"PYTHONPATH": path}, label="guard", edit_config=edit
                        ) as penv:
            yield penv


@pytest.fixture(autouse=True)
def _clean(env: PluginEnv) -> None:
    env.reset_upstreams()


def recorded(env: PluginEnv) -> list[str]:
    return [f"{r.server} {r.method} {r.path}" for s in env.ups for r in s.requests]


def assert_refused(exc: openai.PermissionDeniedError, family: str, setting: str) -> None:
    assert exc.status_code == 403
    body = exc.response.json()["error"]
    assert body["code"] == "route_not_billable"
    assert body["route_family"] == family
    assert body["setting"] == setting
    assert setting in body["message"]


def test_assistants_run_refused(env: PluginEnv) -> None:
    user = env.new_user("asst")
    client = env.user_client(user)
    with pytest.raises(openai.PermissionDeniedError) as plain:
        client.beta.threads.runs.create(thread_id="thread_abc", assistant_id="asst_abc")
    assert_refused(plain.value, "assistants", "allow_unbilled_routes: [assistants]")
    with pytest.raises(openai.PermissionDeniedError) as streamed:
        client.beta.threads.runs.create(thread_id="thread_abc", assistant_id="asst_abc",
                                        stream=True)
    assert_refused(streamed.value, "assistants", "allow_unbilled_routes: [assistants]")
    with pytest.raises(openai.PermissionDeniedError):
        client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError):
        client.beta.threads.messages.create(thread_id="thread_abc", role="user", content="hi")
    assert recorded(env) == []
    assert env.usage_rows(user) == [] and env.holds(user) == 0


def test_batches_and_batch_files_refused(env: PluginEnv) -> None:
    client = env.client(MASTER_KEY)
    with pytest.raises(openai.PermissionDeniedError) as batch:
        client.batches.create(input_file_id="file-abc", endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert_refused(batch.value, "batches", "allow_unbilled_routes: [batches]")
    with pytest.raises(openai.PermissionDeniedError) as upload:
        client.files.create(file=("batch.jsonl", b'{"custom_id": "1"}\n'), purpose="batch")
    assert_refused(upload.value, "files", "allow_unbilled_routes: [files]")
    assert recorded(env) == []


def test_pass_through_refused(env: PluginEnv) -> None:
    passthrough = openai.OpenAI(base_url=env.proxy.url("/openai/v1"), api_key=MASTER_KEY,
                                max_retries=0, timeout=30.0)
    with passthrough, pytest.raises(openai.PermissionDeniedError) as exc:
        passthrough.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert_refused(exc.value, "pass_through", "pass_through_billing: true")
    # The Anthropic wire format on /anthropic/v1/messages (no anthropic SDK installed here).
    resp = httpx.post(env.proxy.url("/anthropic/v1/messages"), timeout=30.0,
                      headers={"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"},
                      json={"model": "claude-3-5-haiku-latest", "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["route_family"] == "pass_through"
    assert recorded(env) == []


def test_realtime_websocket_refused(env: PluginEnv) -> None:
    url = env.proxy.url("/v1/realtime?model=chat").replace("http://", "ws://")

    async def connect() -> None:
        async with ws_connect(
                url, additional_headers={"Authorization": f"Bearer {MASTER_KEY}"}):
            pass

    with pytest.raises(InvalidStatus) as exc:
        asyncio.run(connect())
    assert exc.value.response.status_code == 403
    assert recorded(env) == []


def test_billed_and_management_routes_pass(env: PluginEnv) -> None:
    user = env.new_user("pass")
    reply = chat(env.user_client(user))
    assert reply.choices[0].message.content
    assert len(env.wait_for_rows(user, 1)) == 1
    assert len([r for s in env.ups for r in s.model_requests()]) == 1
    assert env.http("GET", "/health/liveliness").status_code == 200
    assert env.http("GET", "/v1/models").status_code == 200
    balance = env.http("GET", "/credits/balance", key=user_key(user))
    assert balance.status_code == 200, balance.text


def test_without_the_guard_the_same_calls_reach_the_provider(env: PluginEnv) -> None:
    """The control: the same proxy config minus the guard forwards an Assistants run and a
    pass-through call to the stand-ins, with no hold and no usage row (what the guard stops)."""
    config = yaml.safe_load(env.proxy.config_path.read_text())
    config["litellm_settings"]["callbacks"].remove("credits_e2e_guard.handler")
    extra = {k: v for k, v in env.proxy.env.items()
             if k.startswith("CREDITS_") or k == "PYTHONPATH"}
    extra["CREDITS_SPOOL_DIR"] = str(env.workdir / "spool-unguarded")
    # The plugin installs the guard itself: "without the guard" is every family opened.
    opened = yaml.safe_load(Path(extra["CREDITS_CONFIG"]).read_text()) or {}
    opened["allow_unbilled_routes"] = sorted(set(guard.UNBILLED_FAMILIES) - {guard.PASS_THROUGH})
    opened["pass_through_billing"] = True
    extra["CREDITS_CONFIG"] = str(env.workdir / "credits-unguarded.yaml")
    Path(extra["CREDITS_CONFIG"]).write_text(yaml.safe_dump(opened))
    proxy = ProxyProcess(config, free_port(PROXY_PORTS), extra,
                         log_path=env.workdir / "unguarded.log")
    user = env.new_user("unguarded")
    try:
        proxy.start()
        unguarded = openai.OpenAI(base_url=proxy.url("/v1"), api_key=user_key(user),
                                  max_retries=0, timeout=30.0)
        with unguarded, contextlib.suppress(openai.APIError):
            # The stand-in has no Assistants API, so the call fails after reaching it.
            unguarded.beta.threads.runs.create(thread_id="thread_abc", assistant_id="asst_abc")
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(proxy.url("/openai/v1/chat/completions"), timeout=30.0,
                       headers={"Authorization": f"Bearer {user_key(user)}"},
                       json={"model": "chat",  # a model the plugin knows, so its hook holds
                             "messages": [{"role": "user", "content": "hi"}]})
    finally:
        proxy.stop()
    paths = [r.path for r in env.up("openai").requests]
    assert "/v1/threads/thread_abc/runs" in paths, recorded(env)
    assert "/v1/chat/completions" in paths, recorded(env)
