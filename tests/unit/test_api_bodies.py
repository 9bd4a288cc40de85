"""The body caps of the /credits API, without a proxy: read chunk by chunk, stop at the cap."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Request

from litellm_credits.api.bodies import PayloadTooLarge, read_capped


def request(chunks: list[bytes], headers: dict[str, str] | None = None
            ) -> tuple[Request, list[int]]:
    """A Request whose body arrives in ``chunks``; the list counts the chunks handed out."""
    handed: list[int] = [0]
    feed: Iterator[bytes] = iter(chunks)

    async def receive() -> dict[str, Any]:
        chunk = next(feed, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        handed[0] += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""}
    return Request(scope, receive), handed


def test_a_body_under_the_cap_is_read_whole_and_cached() -> None:
    req, _ = request([b'{"a": ', b"1}"])
    body = asyncio.run(read_capped(req, 100))
    assert body == b'{"a": 1}'
    assert asyncio.run(req.body()) == body  # FastAPI and LiteLLM's auth reuse it


def test_a_streamed_body_is_cut_at_the_cap() -> None:
    req, handed = request([b"x" * 1000] * 10_000)  # 10 MB if read to the end
    with pytest.raises(PayloadTooLarge) as caught:
        asyncio.run(read_capped(req, 4096))
    assert caught.value.http_status == 413
    assert handed[0] == 5  # stopped at the first chunk past 4096 bytes


def test_a_declared_length_over_the_cap_reads_nothing() -> None:
    req, handed = request([b"x" * 1000] * 10, {"Content-Length": "10000"})
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_capped(req, 4096))
    assert handed[0] == 0


def test_a_body_exactly_at_the_cap_is_accepted() -> None:
    req, _ = request([b"x" * 2048, b"x" * 2048])
    assert len(asyncio.run(read_capped(req, 4096))) == 4096
