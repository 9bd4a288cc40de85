"""The LiteLLM callbacks: ``litellm_settings: callbacks: litellm_credits.handler``.

Each callback is a few lines that delegate; the handler itself is built by
:mod:`litellm_credits.plugin` (importing this module creates nothing).

Before the call, ``async_pre_call_hook`` identifies the payer
(:mod:`~litellm_credits.identity`), admits the request
(:mod:`~litellm_credits.admission`: estimate, hold, route, BYOK choice) and
writes the typed :class:`~litellm_credits.context.RequestContext` into the
request's metadata. The BYOK key itself is set only in
``async_pre_call_deployment_hook``, after the router picked a deployment;
setting ``data["api_key"]`` earlier would add a deployment carrying one user's
key to the shared model group. The router asks ``async_filter_deployments``
before every attempt; it answers with the first deployment of the route that
has not failed for this request, so the level's remaining preferred providers
are the fallbacks.

After the call, the record of a served request is built and journaled BEFORE
the response leaves the proxy (:mod:`~litellm_credits.settlement.journal`), so
a killed process loses nothing: ``async_post_call_success_hook`` for a
non-streamed response (the proxy awaits it before it sends the body), and
``async_post_call_streaming_iterator_hook``, which wraps the stream and sees
its final chunk before the client does. Both also tell the client the charge
(``usage.cost``; ``x-credits-charged`` from ``async_post_call_response_headers_hook``,
which the proxy calls after the success hook for a non-streamed response, before
the stream for a stream). A stream the provider cuts short after text reached
the client is billed for that text (see docs/reliability.md, "Streams cut short").
``async_log_success_event`` (exactly once per request, streams included, after
the response was sent) settles what the early path could not (other response
types, a client that hung up mid-stream) and nothing twice; and
``async_post_call_failure_hook`` (once, when the whole request failed) queues
the failure record.
``async_log_failure_event`` is deliberately not used: LiteLLM fires it for the
first failed attempt even when a retry then succeeds.

The request id that keys holds and settlement is our own uuid: LiteLLM's call
id can be chosen by the client (``x-litellm-call-id``), and the client can
also write metadata, so neither is trusted (see :mod:`~litellm_credits.context`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from litellm_credits import answered, context, errors, identity
from litellm_credits.admission import Admitter, Refused
from litellm_credits.attempts import Attempts
from litellm_credits.byok.vault import Vault
from litellm_credits.context import RequestContext
from litellm_credits.observe import metrics
from litellm_credits.runtime import Runtime, get_runtime
from litellm_credits.settlement import build
from litellm_credits.settlement.record import SettlementRecord

log = logging.getLogger("litellm_credits.hook")

def _http_error(exc: errors.CreditsError) -> HTTPException:
    detail = {"error": exc.message, "code": exc.code, **exc.details}
    return HTTPException(status_code=exc.http_status, detail=detail)


def _outcome_for(exc: errors.CreditsError) -> str:
    if exc.http_status in (401, 402, 429):
        return f"rejected_{exc.http_status}"
    if isinstance(exc, errors.DatabaseUnavailable):  # not a missing vault: that is config
        return "unavailable_503"
    return "rejected_other"


class CreditsHandler(CustomLogger):
    """Checks, routes, and settles every request through the proxy."""

    def __init__(self, runtime: Runtime | None = None, vault: Vault | None = None) -> None:
        super().__init__()
        self._runtime = runtime
        self._admitter: Admitter | None = None
        self._vault = vault
        self._vault_loaded = vault is not None
        self._issued = context.Issued()
        self.attempts = Attempts()

    # -- plumbing ----------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = get_runtime()
        return self._runtime

    @property
    def admitter(self) -> Admitter:
        if self._admitter is None:
            self._admitter = Admitter(self.runtime, self.vault)
        return self._admitter

    def vault(self) -> Vault:
        if not self._vault_loaded:
            self._vault = Vault.from_env()
            self._vault_loaded = True
        if self._vault is None:
            raise errors.VaultNotConfigured("BYOK vault is not configured")
        return self._vault

    # -- before the call -----------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        started = time.perf_counter()
        level_label, outcome = "unknown", "served"
        try:
            await self.runtime.ensure_started()
            context.ensure_metadata(data)
            payer = identity.resolve(user_api_key_dict, data)  # user, team, or named end user
            ctx = RequestContext(
                request_id=self._issued.request_id(data),
                user_id=payer.account, payer=payer,
                model_group=data.get("model") if isinstance(data.get("model"), str) else None)
            self._issued.write(data, ctx)
            try:
                admission = await self.admitter.admit(data, ctx)
            except Refused as refused:
                self._issued.write(data, refused.context)
                level_label = refused.context.power_level or "unknown"
                if not isinstance(refused.error, errors.DatabaseUnavailable):
                    # A refusal is logged as a rejection row, never billed.
                    self.runtime.writer.submit(build.failure_record(
                        refused.context, error_type=refused.error.code,
                        status_code=refused.error.http_status, message=refused.error.message))
                raise refused.error from None
            self._issued.write(data, admission.context)
            self.attempts.start(admission)
            data["num_retries"] = admission.num_retries
            return data
        except errors.CreditsError as exc:
            outcome = _outcome_for(exc)
            raise _http_error(exc) from None
        finally:
            metrics.HOOK_SECONDS.observe(time.perf_counter() - started)
            if outcome != "served":
                metrics.count(metrics.REQUESTS, level_label, "none", outcome)

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: Any,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[Any]:
        ctx = context.read(request_kwargs or {})
        if ctx is None or not healthy_deployments:
            return healthy_deployments
        return self.attempts.next_deployment(ctx, healthy_deployments)

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        ctx = context.read(kwargs)
        if ctx is None or not ctx.byok:
            return None
        key = self.attempts.key_for(ctx, self._provider_of(ctx, kwargs))
        if key is None:
            return None
        kwargs["api_key"] = key
        return kwargs

    def _provider_of(self, ctx: RequestContext, kwargs: Mapping[str, Any]) -> str | None:
        info = kwargs.get("model_info") or {}
        deployment_id = str(info.get("id")) if isinstance(info, Mapping) else None
        if deployment_id and ctx.model_group is not None:
            for d in self.runtime.group(ctx.model_group):
                if d.id == deployment_id:
                    return d.provider
        return None

    async def async_post_call_failure_deployment_hook(
        self,
        request_data: Mapping[str, Any],
        exception: Exception,
        call_type: Any,
        fallback_depth: int | None = None,
    ) -> None:
        ctx = context.read(request_data)
        if ctx is None:
            return
        info = request_data.get("model_info") or {}
        deployment_id = str(info.get("id")) if isinstance(info, Mapping) else ""
        self.attempts.failed(ctx, deployment_id, self._provider_of(ctx, request_data),
                             getattr(exception, "status_code", None))

    # -- after the call ----------------------------------------------------------------

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        ctx = context.read_event(kwargs)
        if ctx is None:
            metrics.UNBILLED_SUCCESSES.inc()
            return
        if self.attempts.take_settled(ctx):
            return  # journaled before the response left: one record, one bill (I1)
        state = self.attempts.finish(ctx)
        try:
            served = build.served(self.runtime, kwargs, ctx, state)
        except Exception as exc:  # noqa: BLE001 - a served request is billed whatever happens
            log.exception("could not build the settlement record of %s; billing its hold",
                          ctx.request_id)
            served = build.Served(build.hold_record(ctx, exc), None, None)
        self.runtime.writer.submit(served.record)
        self._count_served(ctx, served)

    @staticmethod
    def _count_served(ctx: RequestContext, served: build.Served) -> None:
        provider = str(served.provider or "unknown")
        metrics.count(metrics.REQUESTS, ctx.power_level or "unknown", provider, "served")
        metrics.count(metrics.BYOK_REQUESTS, "byok" if served.byok_key_id else "platform",
                      provider)

    def _settle_early(self, ctx: RequestContext, kwargs: dict[str, Any],
                      partial: bool = False) -> SettlementRecord | None:
        """Build the record and journal it before the response leaves; None if it could not be.

        On None the request is settled from LiteLLM's success event after the response, as
        before this path existed (logged and counted, never dropped): the attempt state is
        left in place for it.
        """
        try:
            served = build.served(self.runtime, kwargs, ctx, self.attempts.get(ctx))
            record = served.record
            if partial:
                record = record.replace(response_metadata={
                    **record.response_metadata, "partial": True, "priced_from_client_view": True})
            self.runtime.writer.submit_served(record)
        except OSError as exc:
            metrics.EARLY_SETTLEMENT_FALLBACKS.labels("journal_error").inc()
            log.error("cannot journal the settlement of %s before answering (%s); it is "
                      "settled from the success event instead", ctx.request_id, exc)
            return None
        except Exception:  # noqa: BLE001 - the success event still bills it (see docstring)
            metrics.EARLY_SETTLEMENT_FALLBACKS.labels("build_error").inc()
            log.exception("cannot build the settlement of %s before answering; it is "
                          "settled from the success event instead", ctx.request_id)
            return None
        self.attempts.finish(ctx)
        self.attempts.settled_early(ctx, record.credits_charged)
        self._count_served(ctx, served)
        return record

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any
    ) -> Any:
        """A non-streamed response before the proxy sends it: journal the record, set usage.cost."""
        ctx = context.read(data)
        if ctx is None or not ctx.admitted:
            return None
        kwargs = answered.response_event(data, response)
        if kwargs is None:
            metrics.EARLY_SETTLEMENT_FALLBACKS.labels("response_type").inc()
            return None
        record = self._settle_early(ctx, kwargs)
        if record is not None:
            answered.set_usage_cost(answered.usage_of(response), record.credits_charged)
        return None

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """Wrap a stream: journal its record before the client sees the final chunk.

        Chunks are passed on as they come, except one that may be the last (a finish reason
        or the usage), which is held until the next one arrives: when the stream ends, the
        record is journaled first and its charge written into the final usage, then the
        held chunk goes out. If the provider cuts the stream after text reached the client,
        what reached the client is billed (once), and the error goes on to LiteLLM.
        """
        ctx = context.read(request_data)
        if ctx is None or not ctx.admitted or answered.cached_stream(response):
            # A stream replayed from LiteLLM's cache is settled from its success event,
            # which knows it was a cache hit.
            async for chunk in response:
                yield chunk
            return
        passed: list[Any] = []
        held: Any = None
        finish: str | None = None
        try:
            async for chunk in response:
                if not answered.is_chunk(chunk):
                    yield chunk
                    continue
                if held is not None:
                    passed.append(held)
                    yield held
                    held = None
                if answered.is_final(chunk):
                    held = chunk
                    finish = answered.finish_reason_of(chunk) or finish
                else:
                    passed.append(chunk)
                    yield chunk
        except Exception:
            # Whatever cut the stream, the text the client already got is billed; the
            # error itself goes on to LiteLLM unchanged (re-raised below).
            if any(answered.has_content(c) for c in passed):
                self._settle_cut_stream(ctx, request_data, passed)
            raise
        if held is not None:
            self._settle_stream(ctx, request_data, held, finish)
            yield held

    def _settle_stream(self, ctx: RequestContext, data: dict[str, Any], last: Any,
                       finish: str | None) -> None:
        found = answered.stream_event(data, last, finish)
        if found is None:
            metrics.EARLY_SETTLEMENT_FALLBACKS.labels("stream_usage").inc()
            return
        kwargs, usage = found
        record = self._settle_early(ctx, kwargs)
        if record is not None and getattr(last, "usage", None) is not None:
            answered.set_usage_cost(usage, record.credits_charged)

    def _settle_cut_stream(self, ctx: RequestContext, data: dict[str, Any],
                           passed: list[Any]) -> None:
        try:
            kwargs = answered.partial_event(data, passed)
        except Exception:  # noqa: BLE001 - then the failure hook logs it unbilled, as before
            log.exception("cannot count the part of cut stream %s the client received",
                          ctx.request_id)
            kwargs = None
        if kwargs is None:
            metrics.EARLY_SETTLEMENT_FALLBACKS.labels("cut_stream").inc()
            return
        if self._settle_early(ctx, kwargs, partial=True) is not None:
            metrics.STREAMS_CUT_BILLED.inc()

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> HTTPException | None:
        ctx = context.read(request_data)
        if ctx is None or not ctx.admitted:
            return None  # not ours, or refused by our own pre-call hook (already logged)
        if self.attempts.take_settled(ctx):
            return None  # a stream cut short: what the client received is already billed
        state = self.attempts.finish(ctx)
        status = getattr(original_exception, "status_code", None)
        self.runtime.writer.submit(build.failed(ctx, request_data, original_exception, state))
        metrics.count(metrics.REQUESTS, ctx.power_level or "unknown", "none", "failed")
        if state is not None and state.keys and status in (401, 403):
            names = ", ".join(sorted(state.keys))
            return HTTPException(
                status_code=status,
                detail={"error": f"the provider refused your own API key for {names}; "
                         "replace it with PUT /credits/keys or `litellm-credits keys add`, "
                         "or allow fallback to platform keys",
                         "code": "byok_key_rejected"},
            )
        return None

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        ctx = context.read(data)
        if ctx is None:
            return None
        headers: dict[str, str] = {}
        if ctx.available_after is not None:
            headers["x-credits-remaining"] = format(ctx.available_after, "f")
        charged = self.attempts.charged(ctx)
        if charged is not None:  # non-streamed: settled in the success hook, just before
            headers["x-credits-charged"] = format(charged, "f")
        return headers or None
