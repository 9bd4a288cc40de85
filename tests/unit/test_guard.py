"""The route guard's classification, checked against every route in LiteLLM 1.102.4's table
(``litellm.proxy._types.LiteLLMRoutes``), and its ASGI behaviour on HTTP and websockets."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from litellm.proxy._types import LiteLLMRoutes

from litellm_credits import guard
from litellm_credits.guard import (
    BILLED_FAMILIES,
    OTHER,
    UNBILLED_FAMILIES,
    GuardSettings,
    RouteGuard,
    RoutePolicy,
    classify,
)

# Every LLM route LiteLLM declares, by the family the guard must give it. Reviewed by hand: a
# LiteLLM upgrade that adds a route fails test_table_is_complete until it is placed here.
EXPECTED: dict[str, tuple[str, ...]] = {
    'agents': (
        '/a2a/{agent_id}', '/a2a/{agent_id}/message/send', '/a2a/{agent_id}/message/stream',
        '/a2a/{agent_id}/.well-known/agent-card.json',
    ),
    'anthropic_messages': (
        '/v1/messages', '/v1/messages/count_tokens',
    ),
    'assistants': (
        '/assistants', '/v1/assistants', '/v1/assistants/{assistant_id}',
        '/assistants/{assistant_id}', '/threads', '/v1/threads', '/threads/{thread_id}',
        '/v1/threads/{thread_id}', '/threads/{thread_id}/messages',
        '/v1/threads/{thread_id}/messages', '/threads/{thread_id}/runs',
        '/v1/threads/{thread_id}/runs',
    ),
    'audio': (
        '/audio/transcriptions', '/v1/audio/transcriptions', '/audio/speech', '/v1/audio/speech',
    ),
    'batches': (
        '/v1/batches', '/batches', '/v1/batches/{batch_id}', '/batches/{batch_id}',
        '/v1/batches/{batch_id}/cancel', '/batches/{batch_id}/cancel',
    ),
    'chat': (
        '/engines/{model}/chat/completions', '/openai/deployments/{model}/chat/completions',
        '/chat/completions', '/v1/chat/completions', '/cursor/chat/completions',
    ),
    'completions': (
        '/engines/{model}/completions', '/openai/deployments/{model}/completions', '/completions',
        '/v1/completions',
    ),
    'containers': (
        '/containers', '/v1/containers', '/containers/*', '/v1/containers/*',
    ),
    'embeddings': (
        '/engines/{model}/embeddings', '/openai/deployments/{model}/embeddings', '/embeddings',
        '/v1/embeddings',
    ),
    'files': (
        '/v1/files', '/files', '/v1/files/{file_id}', '/files/{file_id}',
        '/v1/files/{file_id}/content', '/files/{file_id}/content',
    ),
    'fine_tuning': (
        '/fine_tuning/jobs', '/v1/fine_tuning/jobs',
        '/fine_tuning/jobs/{fine_tuning_job_id}/cancel',
        '/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel',
    ),
    'google_genai': (
        '/v1beta/models/{model_name:path}:countTokens',
        '/v1beta/models/{model_name:path}:generateContent',
        '/v1beta/models/{model_name:path}:streamGenerateContent',
        '/models/{model_name:path}:countTokens', '/models/{model_name:path}:generateContent',
        '/models/{model_name:path}:streamGenerateContent', '/interactions', '/v1beta/interactions',
        '/interactions/{interaction_id}', '/v1beta/interactions/{interaction_id}',
        '/interactions/{interaction_id}/cancel', '/v1beta/interactions/{interaction_id}/cancel',
        '/v1beta/agents', '/v1beta/agents/{name}', '/v1beta/agents/{name}/versions',
    ),
    'images': (
        '/images/generations', '/v1/images/generations', '/images/edits', '/v1/images/edits',
    ),
    'mcp': (
        '/mcp', '/mcp/', '/mcp/proxy', '/mcp/{subpath}', '/mcp/tools', '/mcp/tools/list',
        '/mcp/tools/call', '/mcp-rest/tools/list', '/mcp-rest/tools/call', '/v1/mcp/tools',
        '/introspect',
    ),
    'moderations': (
        '/moderations', '/v1/moderations',
    ),
    'ocr': (
        '/ocr', '/v1/ocr',
    ),
    'other': (
        '/cursor/models', '/cursor/v1/models', '/models', '/v1/models', '/utils/token_counter',
        '/utils/transform_request', '/vector_store/list', '/v1/vector_store/list',
        '/claude-code/marketplace.json', '/claude-code/plugins',
        '/claude-code/plugins/{plugin_name}', '/guardrails/apply_guardrail', '/agents',
        '/model/info', '/v1/model/info', '/model_group/info',
    ),
    'pass_through': (
        '/bedrock', '/comprehendmedical', '/vertex-ai', '/vertex_ai', '/cohere', '/cursor',
        '/gemini', '/anthropic', '/langfuse', '/azure', '/azure_ai', '/openai',
        '/openai_passthrough', '/assemblyai', '/eu.assemblyai', '/vllm', '/mistral', '/typesafe',
        '/openrouter', '/milvus', '/gigachat', '/watsonx', '/bedrock/*', '/comprehendmedical/*',
        '/vertex-ai/*', '/vertex_ai/*', '/cohere/*', '/cursor/*', '/gemini/*', '/anthropic/*',
        '/langfuse/*', '/azure/*', '/azure_ai/*', '/openai/*', '/openai_passthrough/*',
        '/assemblyai/*', '/eu.assemblyai/*', '/vllm/*', '/mistral/*', '/typesafe/*',
        '/openrouter/*', '/milvus/*', '/gigachat/*', '/watsonx/*',
    ),
    'rag': (
        '/rag/ingest', '/v1/rag/ingest', '/rag/query', '/v1/rag/query',
    ),
    'realtime': (
        '/realtime', '/v1/realtime', '/openai/v1/realtime', '/realtime?{model}',
        '/v1/realtime?{model}', '/openai/v1/realtime?{model}', '/realtime/client_secrets',
        '/v1/realtime/client_secrets', '/openai/v1/realtime/client_secrets', '/realtime/calls',
        '/v1/realtime/calls', '/openai/v1/realtime/calls', '/realtime/transcription_sessions',
        '/v1/realtime/transcription_sessions', '/openai/v1/realtime/transcription_sessions',
    ),
    'rerank': (
        '/rerank', '/v1/rerank', '/v2/rerank',
    ),
    'responses': (
        '/responses', '/v1/responses', '/openai/v1/responses', '/responses/{response_id}',
        '/v1/responses/{response_id}', '/openai/v1/responses/{response_id}',
        '/responses/{response_id}/input_items', '/v1/responses/{response_id}/input_items',
        '/openai/v1/responses/{response_id}/input_items', '/responses/{response_id}/cancel',
        '/v1/responses/{response_id}/cancel', '/openai/v1/responses/{response_id}/cancel',
        '/responses/input_tokens', '/v1/responses/input_tokens',
        '/openai/v1/responses/input_tokens',
    ),
    'search': (
        '/search', '/v1/search', '/search/{search_tool_name}', '/v1/search/{search_tool_name}',
    ),
    'skills': (
        '/v1/skills', '/v1/skills/{skill_id}',
    ),
    'vector_stores': (
        '/vector_stores', '/v1/vector_stores', '/vector_stores/{vector_store_id}',
        '/v1/vector_stores/{vector_store_id}', '/vector_stores/{vector_store_id}/search',
        '/v1/vector_stores/{vector_store_id}/search', '/vector_stores/{vector_store_id}/files',
        '/v1/vector_stores/{vector_store_id}/files',
        '/vector_stores/{vector_store_id}/files/{file_id}',
        '/v1/vector_stores/{vector_store_id}/files/{file_id}',
        '/vector_stores/{vector_store_id}/files/{file_id}/content',
        '/v1/vector_stores/{vector_store_id}/files/{file_id}/content',
    ),
    'videos': (
        '/videos', '/v1/videos', '/videos/{video_id}', '/v1/videos/{video_id}',
        '/videos/{video_id}/content', '/v1/videos/{video_id}/content', '/videos/{video_id}/remix',
        '/v1/videos/{video_id}/remix',
    ),
}


def concrete(template: str) -> str:
    """A request path for a route template: parameters and wildcards filled in."""
    path = template.replace("{model_name:path}", "gemini-2.0-flash").replace("*", "x/y")
    path = path.replace("{path:path}", "a/b")
    return re.sub(r"\{[^}]+\}", "id_123", path)


def all_declared_routes() -> set[str]:
    routes: set[str] = set()
    for member in LiteLLMRoutes:
        value = member.value
        if isinstance(value, (list, tuple)):
            routes.update(r for r in value if isinstance(r, str) and r.startswith("/"))
    return routes


def test_table_is_complete() -> None:
    listed = [r for routes in EXPECTED.values() for r in routes]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(LiteLLMRoutes.llm_api_routes.value)


@pytest.mark.parametrize(("family", "template"),
                         [(f, r) for f, rs in EXPECTED.items() for r in rs])
def test_llm_route_family(family: str, template: str) -> None:
    assert classify(concrete(template)) == family
    assert family in BILLED_FAMILIES or family in UNBILLED_FAMILIES or family == OTHER


def test_every_family_is_known() -> None:
    assert set(EXPECTED) <= BILLED_FAMILIES | set(UNBILLED_FAMILIES) | {OTHER}
    assert not BILLED_FAMILIES & set(UNBILLED_FAMILIES)


def test_non_llm_routes_pass() -> None:
    """Management, info, spend, UI, health ... routes are the guard's 'other'."""
    llm = set(LiteLLMRoutes.llm_api_routes.value)
    for route in sorted(all_declared_routes() - llm):
        assert classify(concrete(route)) == OTHER, route


@pytest.mark.parametrize("path", [
    "/", "", "/health", "/health/liveliness", "/credits/balance", "/credits/ui", "/ui",
    "/key/generate", "/user/new", "/v1/models", "/models", "/model/info", "/metrics",
    "/openapi.json", "/credits/stripe/webhook", "/v1", "/v1/", "/v1/mcp/server",
    "/v1/agents", "/vector_store/new",
])
def test_other_paths(path: str) -> None:
    assert classify(path) == OTHER


@pytest.mark.parametrize(("path", "family"), [
    ("/v1/chat/completions/", "chat"),
    ("/v1/threads/thread_1/runs/run_1/steps", "assistants"),
    ("/v1/threads/thread_1/runs/run_1/submit_tool_outputs", "assistants"),
    ("/anthropic/v1/messages", "pass_through"),
    ("/openai/v1/chat/completions", "pass_through"),  # not LiteLLM's native route
    ("/openai/v1/responses", "responses"),
    ("/openai/v1/realtime", "realtime"),
    ("/openai/deployments/gpt-4o/chat/completions", "chat"),
    ("/openai/deployments/gpt-4o/images/generations", "images"),
    ("/openai/deployments", "pass_through"),
    ("/cursor/v1/chat/completions", "pass_through"),
    ("/vertex_ai/live", "pass_through"),
    ("/v1/realtime?model=gpt-4o-realtime", "realtime"),
    ("/v1/files/file-1/content", "files"),
    ("/v2/rerank", "rerank"),
    ("/v1/images/variations", "images"),
])
def test_edge_paths(path: str, family: str) -> None:
    assert classify(path) == family


def test_default_policy_refuses_exactly_the_unbilled() -> None:
    policy = RoutePolicy.from_settings(GuardSettings())
    for family, routes in EXPECTED.items():
        for route in routes:
            refusal = policy.decide(concrete(route))
            if family in UNBILLED_FAMILIES:
                assert refusal is not None and refusal.family == family, route
            else:
                assert refusal is None, route


def test_allow_list_and_pass_through_billing() -> None:
    policy = RoutePolicy.from_settings(
        GuardSettings(allow_unbilled_routes=("assistants",), pass_through_billing=True))
    assert policy.decide("/v1/threads/t/runs") is None
    assert policy.decide("/anthropic/v1/messages") is None
    refusal = policy.decide("/v1/batches")
    assert refusal is not None and refusal.setting == "allow_unbilled_routes: [batches]"
    pt = RoutePolicy.from_settings(GuardSettings()).decide("/openai/v1/chat/completions")
    assert pt is not None and pt.setting == "pass_through_billing: true"


def test_custom_pass_through_endpoints() -> None:
    general = {"pass_through_endpoints": [
        {"path": "/my-llm", "target": "https://llm.example/v1"},
        {"path": "/v1/rerank-custom/", "target": "https://x"}, {"no": "path"}]}
    paths = guard.custom_pass_through_paths(general)
    assert paths == ("/my-llm", "/v1/rerank-custom/")
    policy = RoutePolicy.from_settings(GuardSettings(), paths)
    for refused in ("/my-llm", "/my-llm/chat", "/v1/rerank-custom/x"):
        refusal = policy.decide(refused)
        assert refusal is not None and refusal.family == "pass_through", refused
    assert policy.decide("/my-llmx") is None
    assert policy.decide("/v1/chat/completions") is None
    assert guard.custom_pass_through_paths(None) == ()
    assert guard.custom_pass_through_paths({"pass_through_endpoints": "bad"}) == ()
    opened = RoutePolicy.from_settings(GuardSettings(pass_through_billing=True), paths)
    assert opened.decide("/my-llm/chat") is None


def test_settings_refuse_unknown_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="unknown route family chats"):
        GuardSettings(allow_unbilled_routes=("chats",))
    with pytest.raises(ValueError, match="allow_unbilled_routes must be a list"):
        GuardSettings.from_mapping({"allow_unbilled_routes": "assistants"})
    with pytest.raises(ValueError, match="pass_through_billing must be true or false"):
        GuardSettings.from_mapping({"pass_through_billing": "yes"})
    assert GuardSettings.from_mapping({}) == GuardSettings()
    assert GuardSettings.from_mapping({"allow_unbilled_routes": ["realtime"]}) == GuardSettings(
        allow_unbilled_routes=("realtime",))


def test_refusal_body_names_family_reason_and_setting() -> None:
    refusal = RoutePolicy.from_settings(GuardSettings()).decide("/v1/assistants")
    assert refusal is not None and refusal.status == 403
    error = json.loads(refusal.body())["error"]
    assert error["code"] == "route_not_billable"
    assert error["route_family"] == "assistants"
    assert error["setting"] == "allow_unbilled_routes: [assistants]"
    assert "allow_unbilled_routes: [assistants]" in error["message"]
    assert "/v1/assistants" in error["message"]


# --- ASGI behaviour -----------------------------------------------------------------------

class Inner:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]] | None = None
        ) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = list(incoming or [{"type": "http.request", "body": b""}])

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_middleware_refuses_http_before_inner_app() -> None:
    inner = Inner()
    refused: list[str] = []
    app = RouteGuard(inner, RoutePolicy.from_settings(GuardSettings()),
                     on_refusal=lambda r: refused.append(r.family))
    sent = run(app, {"type": "http", "path": "/v1/batches", "root_path": ""})
    assert inner.calls == [] and refused == ["batches"]
    assert sent[0]["status"] == 403
    assert json.loads(sent[1]["body"])["error"]["route_family"] == "batches"
    sent = run(app, {"type": "http", "path": "/v1/chat/completions"})
    assert inner.calls == ["/v1/chat/completions"] and sent[0]["status"] == 200


def test_middleware_strips_root_path() -> None:
    inner = Inner()
    app = RouteGuard(inner, RoutePolicy.from_settings(GuardSettings()))
    sent = run(app, {"type": "http", "path": "/llm/v1/threads", "root_path": "/llm"})
    assert sent[0]["status"] == 403 and inner.calls == []


def test_middleware_closes_websocket_before_accept() -> None:
    inner = Inner()
    app = RouteGuard(inner, RoutePolicy.from_settings(GuardSettings()))
    sent = run(app, {"type": "websocket", "path": "/v1/realtime"},
               [{"type": "websocket.connect"}])
    assert inner.calls == []
    assert sent == [{"type": "websocket.close", "code": 1008,
                     "reason": "route not billable; set allow_unbilled_routes: [realtime]"}]


def test_lifespan_passes() -> None:
    inner_scopes: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        inner_scopes.append(scope["type"])

    run(RouteGuard(inner, RoutePolicy.from_settings(GuardSettings())), {"type": "lifespan"})
    assert inner_scopes == ["lifespan"]


def test_install_before_and_after_start_and_twice() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    policy = RoutePolicy.from_settings(GuardSettings())
    for started in (False, True):
        app = FastAPI()

        @app.post("/v1/batches")
        def batches() -> dict[str, str]:
            return {"served": "yes"}

        @app.post("/v1/chat/completions")
        def chat() -> dict[str, str]:
            return {"served": "yes"}

        client = TestClient(app)
        if started:
            assert client.post("/v1/batches").status_code == 200  # builds the stack
        guard.install(app, policy)
        guard.install(app, policy)
        assert client.post("/v1/batches").status_code == 403
        assert client.post("/v1/chat/completions").json() == {"served": "yes"}
        if not started:
            assert sum(m.cls is RouteGuard for m in app.user_middleware) == 1
