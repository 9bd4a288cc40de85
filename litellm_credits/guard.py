"""The route guard: which LiteLLM proxy routes the plugin can bill, and a refusal for the rest.

This module owns the policy that keeps invariant I5's second half ("no route that reaches a
provider is served without a hold"): every request path is put in a *route family*
(``chat``, ``assistants``, ``pass_through`` ...). A family is one of

* **billed**: LiteLLM runs the plugin's pre-call hook and sends a success event with a cost
  (chat, completions, embeddings, responses, ``/v1/messages``, images, audio, rerank,
  moderations), so the hold and the settlement cover it;
* **unbilled**: the route reaches a provider but the plugin cannot hold or settle it
  (Assistants never call the hook; a batch's requests never produce events; realtime holds
  only once per session; ...). Refused with 403 unless the operator opens the family;
* **other**: management, health, models, ``/credits/*``, the UI: not the guard's business.

The refusal happens in a pure ASGI middleware in front of LiteLLM's own routing, so the
provider is never called. Which LiteLLM routes fall where was read from 1.102.4's
``litellm/proxy/_types.py`` (``LiteLLMRoutes``); ``tests/unit/test_guard.py`` checks every
route of that table. Classification is a split of the path and a few dict lookups (about a
microsecond), because it runs on every request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BILLED_FAMILIES",
    "OTHER",
    "UNBILLED_FAMILIES",
    "GuardSettings",
    "Refusal",
    "RouteGuard",
    "RoutePolicy",
    "classify",
    "custom_pass_through_paths",
    "install",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OTHER: Final = "other"
PASS_THROUGH: Final = "pass_through"  # noqa: S105 - a route family name, not a secret

BILLED_FAMILIES: Final = frozenset({
    "chat", "completions", "embeddings", "responses", "anthropic_messages", "images",
    "audio", "rerank", "moderations",
})

# family -> why the plugin cannot bill it (shown to the client and in the docs).
UNBILLED_FAMILIES: Final[dict[str, str]] = {
    "assistants": "LiteLLM serves Assistants threads, messages and runs without calling the "
                  "billing hook, so they would run on the platform key unbilled",
    "batches": "the requests inside a batch reach the provider later and produce no billing "
               "event",
    "files": "file uploads feed batches, fine-tuning and assistants, none of which is billed",
    "fine_tuning": "fine-tuning jobs are billed by the provider after the request, with no "
                   "event the plugin sees",
    "realtime": "a realtime session is held once but runs on past the balance",
    "videos": "video generation is not priced by the plugin yet",
    "vector_stores": "vector store creation and search are not priced by the plugin",
    "search": "search tool calls are not priced by the plugin",
    "ocr": "OCR calls are not priced by the plugin",
    "containers": "code-interpreter containers are not priced by the plugin",
    "rag": "RAG ingest and query call providers the plugin does not price",
    "google_genai": "Google-native generateContent and interactions routes are not billed by "
                    "the plugin yet",
    "agents": "A2A agent invocations call models the plugin does not see",
    "mcp": "MCP tool calls reach tool servers on the platform's credentials, unbilled",
    "skills": "Anthropic skills are created on the platform's provider account, unbilled",
    PASS_THROUGH: "pass-through routes forward to the provider as-is and are billed only when "
                  "the operator turns their billing on (held, then billed LiteLLM's cost of "
                  "the provider's response, or the hold where LiteLLM cannot price it)",
}

# LiteLLM's mapped pass-through prefixes (LiteLLMRoutes.mapped_pass_through_routes).
PASS_THROUGH_PREFIXES: Final = frozenset({
    "bedrock", "comprehendmedical", "vertex-ai", "vertex_ai", "cohere", "cursor", "gemini",
    "anthropic", "langfuse", "azure", "azure_ai", "openai", "openai_passthrough", "assemblyai",
    "eu.assemblyai", "vllm", "mistral", "typesafe", "openrouter", "milvus", "gigachat",
    "watsonx",
})

# First path segment (after version prefixes) -> family.
_BY_SEGMENT: Final[dict[str, str]] = {
    "chat": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "responses",
    "images": "images",
    "audio": "audio",
    "moderations": "moderations",
    "rerank": "rerank",
    "messages": "anthropic_messages",
    "assistants": "assistants",
    "threads": "assistants",
    "batches": "batches",
    "files": "files",
    "fine_tuning": "fine_tuning",
    "realtime": "realtime",
    "videos": "videos",
    "vector_stores": "vector_stores",
    "search": "search",
    "ocr": "ocr",
    "containers": "containers",
    "rag": "rag",
    "interactions": "google_genai",
    "a2a": "agents",
    "mcp": "mcp",
    "mcp-rest": "mcp",
    "introspect": "mcp",
    "skills": "skills",
}
_VERSIONS: Final = frozenset({"v1", "v2", "v1beta"})
# Segments LiteLLM serves natively under /openai/v1/ (everything else there is pass-through).
_OPENAI_V1_NATIVE: Final = frozenset({"responses", "realtime"})
_GOOGLE_ACTIONS: Final = (":generateContent", ":streamGenerateContent", ":countTokens")


def _family_of_segments(segs: list[str], version: str | None) -> str:
    head = segs[0]
    if head == "models":
        # /models, /v1/models list models; /v1beta/models/<m>:generateContent is Google's API.
        if len(segs) > 1 and any(a in segs[-1] for a in _GOOGLE_ACTIONS):
            return "google_genai"
        return OTHER
    if head == "agents":
        # /v1beta/agents is Google's managed-agents API; /agents and /v1/agents are listings.
        return "google_genai" if version == "v1beta" else OTHER
    if head == "mcp" and version == "v1":
        # /v1/mcp/server... manages MCP servers; /v1/mcp/tools lists and calls tools.
        return "mcp" if len(segs) > 1 and segs[1] == "tools" else OTHER
    return _BY_SEGMENT.get(head, OTHER)


def classify(path: str) -> str:
    """The route family of a request path (``OTHER`` for routes that reach no provider)."""
    segs = [s for s in path.split("?", 1)[0].split("/") if s]
    if not segs:
        return OTHER
    head = segs[0]
    if head == "openai" and len(segs) > 2:
        if segs[1] == "deployments":  # Azure-style /openai/deployments/{model}/chat/completions
            return _family_of_segments(segs[3:], None) if len(segs) > 3 else PASS_THROUGH
        if segs[1] == "v1" and segs[2] in _OPENAI_V1_NATIVE:
            return _family_of_segments(segs[2:], "v1")
    if head == "cursor" and len(segs) > 1 and segs[1] in ("chat", "models", "v1"):
        # LiteLLM's own Cursor routes: /cursor/chat/completions, /cursor/models, /cursor/v1/models
        if segs[1] == "chat":
            return "chat"
        if segs[-1] == "models":
            return OTHER
    if head in PASS_THROUGH_PREFIXES:
        return PASS_THROUGH
    if head == "engines" and len(segs) > 2:  # /engines/{model}/chat/completions
        return _family_of_segments(segs[2:], None)
    version: str | None = None
    if head in _VERSIONS:
        version = head
        segs = segs[1:]
        if not segs:
            return OTHER
    return _family_of_segments(segs, version)


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The operator's choices (the keys of the same names in ``CREDITS_CONFIG``).

    ``allow_unbilled_routes`` opens families the plugin cannot bill (served unbilled, at the
    operator's own risk); ``pass_through_billing`` opens the pass-through routes, which are
    then held and settled from LiteLLM's cost of the provider's response (the settings keys
    of the same names; :func:`litellm_credits.plugin.route_policy` builds the policy).
    """

    allow_unbilled_routes: tuple[str, ...] = ()
    pass_through_billing: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.allow_unbilled_routes) - set(UNBILLED_FAMILIES))
        if unknown:
            raise ValueError(
                f"allow_unbilled_routes: unknown route famil{'y' if len(unknown) == 1 else 'ies'}"
                f" {', '.join(unknown)}; known: {', '.join(sorted(UNBILLED_FAMILIES))}"
            )

    @classmethod
    def from_mapping(cls, raw: MutableMapping[str, Any] | dict[str, Any]) -> GuardSettings:
        """Build from the YAML mapping; wrong types are refused with the key's name (I8)."""
        allow = raw.get("allow_unbilled_routes", ())
        if isinstance(allow, str) or not isinstance(allow, Iterable):
            raise ValueError("allow_unbilled_routes must be a list of route family names")
        names = tuple(allow)
        if not all(isinstance(n, str) for n in names):
            raise ValueError("allow_unbilled_routes must be a list of route family names")
        billing = raw.get("pass_through_billing", False)
        if not isinstance(billing, bool):
            raise ValueError("pass_through_billing must be true or false")
        return cls(allow_unbilled_routes=names, pass_through_billing=billing)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a route is refused, rendered as an OpenAI-style error body."""

    family: str
    path: str
    reason: str
    setting: str

    status: int = 403  # a policy refusal: not retried by SDKs (5xx would be), not an auth error

    def body(self) -> bytes:
        message = (f"{self.path} is refused: the credits plugin cannot bill the "
                   f"'{self.family}' routes ({self.reason}). To serve them anyway, set "
                   f"{self.setting} in the credits config (CREDITS_CONFIG).")
        return json.dumps({"error": {
            "message": message,
            "type": "route_not_billable",
            "code": "route_not_billable",
            "param": None,
            "route_family": self.family,
            "setting": self.setting,
        }}).encode()


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Which families are refused; built once from :class:`GuardSettings`."""

    refused: frozenset[str]
    # Operator-defined pass-through paths (general_settings.pass_through_endpoints[].path).
    custom_pass_through: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: GuardSettings,
                      custom_pass_through: Iterable[str] = ()) -> RoutePolicy:
        refused = set(UNBILLED_FAMILIES) - set(settings.allow_unbilled_routes)
        if settings.pass_through_billing:
            refused.discard(PASS_THROUGH)
        paths = tuple(p.rstrip("/") for p in custom_pass_through if p.strip("/"))
        return cls(refused=frozenset(refused), custom_pass_through=paths)

    def family(self, path: str) -> str:
        for prefix in self.custom_pass_through:
            if path == prefix or path.startswith(prefix + "/"):
                return PASS_THROUGH
        return classify(path)

    def decide(self, path: str) -> Refusal | None:
        """None to let the request through, else the refusal to send."""
        family = self.family(path)
        if family not in self.refused:
            return None
        setting = ("pass_through_billing: true" if family == PASS_THROUGH
                   else f"allow_unbilled_routes: [{family}]")
        return Refusal(family=family, path=path, reason=UNBILLED_FAMILIES[family],
                       setting=setting)


class RouteGuard:
    """Pure ASGI middleware: refuse what the policy refuses, pass the rest untouched.

    Not Starlette's ``BaseHTTPMiddleware``: that one buffers and slows streaming responses.
    """

    def __init__(self, app: ASGIApp, policy: RoutePolicy,
                 on_refusal: Callable[[Refusal], None] | None = None) -> None:
        self.app = app
        self.policy = policy
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):]
        refusal = self.policy.decide(path)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        if self.on_refusal is not None:
            self.on_refusal(refusal)
        if kind == "http":
            body = refusal.body()
            await send({"type": "http.response.start", "status": refusal.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        # A close before accept is turned into an HTTP 403 handshake refusal by the server;
        # the reason names the setting (close reasons are limited to 123 bytes).
        await receive()  # the websocket.connect message
        await send({"type": "websocket.close", "code": 1008,
                    "reason": f"route not billable; set {refusal.setting}"[:123]})


def custom_pass_through_paths(general_settings: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The paths of the pass-through endpoints an operator declared in LiteLLM's config
    (``general_settings.pass_through_endpoints``): they reach a provider too."""
    entries = (general_settings or {}).get("pass_through_endpoints") or ()
    if not isinstance(entries, (list, tuple)):
        return ()
    return tuple(str(e["path"]) for e in entries
                 if isinstance(e, Mapping) and isinstance(e.get("path"), str))


_INSTALLED: Final = "credits_route_guard"


def install(app: Any, policy: RoutePolicy,
            on_refusal: Callable[[Refusal], None] | None = None) -> None:
    """Put the guard in front of ``app`` (the proxy's FastAPI app). Installing twice does
    nothing more.

    Before the app has started this is an ordinary ``add_middleware``; LiteLLM loads callbacks
    after its middleware stack is built, so then the built stack is wrapped instead.
    """
    state = app.state
    if getattr(state, _INSTALLED, False):
        return
    setattr(state, _INSTALLED, True)
    if app.middleware_stack is None:
        app.add_middleware(RouteGuard, policy=policy, on_refusal=on_refusal)
    else:
        app.middleware_stack = RouteGuard(app.middleware_stack, policy, on_refusal)
