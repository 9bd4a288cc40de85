"""Edges of the /credits API on the real proxy: streamed bodies over the cap, BYOK without a vault.

A chunked body (no ``Content-Length``) over the cap must be refused while it streams in:
the client sees 413 before it has finished uploading. The upload is driven over a raw socket
so the test sees exactly how much was sent when the answer came.

A BYOK user on a proxy without ``CREDITS_ENCRYPTION_KEYS`` gets the same status and message
on a chat and on ``POST /credits/keys``.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.pg import PgCluster
from devtools.proxy import MASTER_KEY, ProxyProcess, user_key
from litellm_credits.api.bodies import MAX_BODY_BYTES, MAX_WEBHOOK_BYTES
from litellm_credits.byok.masterkeys import NOT_CONFIGURED_MESSAGE, generate_key_entry
from tests.e2e.plugin_env import PluginEnv, chat_deployment, credits_config, plugin_env

pytestmark = pytest.mark.e2e

UPLOAD_BYTES = 50 * 1024 * 1024  # what the client would send if nobody stopped it
CHUNK = 64 * 1024


def _status_of(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    return int(line.split()[1])


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(10)
    while b"\r\n\r\n" not in data:
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not part:
            break
        data += part
    return data


def stream_upload(proxy: ProxyProcess, path: str, headers: dict[str, str]) -> tuple[int, int]:
    """POST a chunked body of up to :data:`UPLOAD_BYTES`; stop when an answer arrives.

    Returns (HTTP status, body bytes sent before the answer was seen)."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{proxy.port}",
                "Transfer-Encoding: chunked", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        frame = f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n"
        sent = 0
        while sent < UPLOAD_BYTES:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server stopped reading: its answer is waiting
            sent += CHUNK
        else:
            sock.sendall(b"0\r\n\r\n")
        answer = _read_answer(sock)
        assert answer, f"no answer after {sent} bytes sent"
        return _status_of(answer), sent
    finally:
        sock.close()


def declared_upload(proxy: ProxyProcess, path: str, headers: dict[str, str]) -> int:
    """Declare a 50 MB ``Content-Length``, send none of it, and return the status."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{proxy.port}",
                f"Content-Length: {UPLOAD_BYTES}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        answer = _read_answer(sock)
        assert answer, "no answer to a declared oversize body"
        return _status_of(answer)
    finally:
        sock.close()


ROUTES = [
    pytest.param("/credits/stripe/webhook", {"Stripe-Signature": "t=1,v1=00"},
                 MAX_WEBHOOK_BYTES, id="webhook"),
    pytest.param("/credits/admin/grant", {"Authorization": f"Bearer {MASTER_KEY}",
                                          "Content-Type": "application/json"},
                 MAX_BODY_BYTES, id="json"),
]


@pytest.mark.parametrize(("path", "headers", "limit"), ROUTES)
def test_chunked_body_over_the_cap_is_refused_while_it_streams(
    api_proxy: ProxyProcess, path: str, headers: dict[str, str], limit: int
) -> None:
    status, sent = stream_upload(api_proxy, path, headers)
    assert status == 413
    # Cut long before the end: the server stopped at the cap (plus socket buffers),
    # it did not read 50 MB before answering.
    assert limit < sent < UPLOAD_BYTES // 2, sent


@pytest.mark.parametrize(("path", "headers", "limit"), ROUTES)
def test_declared_length_over_the_cap_is_refused_at_once(
    api_proxy: ProxyProcess, path: str, headers: dict[str, str], limit: int
) -> None:
    assert declared_upload(api_proxy, path, headers) == 413


def test_chunked_body_under_the_cap_still_works(api: Any) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"user_id": "chunky", '
        yield b'"amount": "3"}'

    r = api.post("/credits/admin/grant", content=body(),
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == "3.00000000"


# --- BYOK without a vault ---------------------------------------------------------------


@pytest.fixture(scope="module")
def novault(pg_cluster: PgCluster) -> Iterator[PluginEnv]:
    with plugin_env(pg_cluster, {"chat": [chat_deployment("openai")]}, providers=("openai",),
                    label="novault", config=credits_config()) as penv:
        yield penv


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    error = body.get("error", body.get("detail"))
    assert isinstance(error, dict), body
    return error


def test_byok_user_without_a_vault_gets_one_status_and_message(novault: PluginEnv) -> None:
    assert "CREDITS_ENCRYPTION_KEYS" not in novault.proxy.env
    user = novault.new_user("byok-novault")
    # The key was stored by an operator whose shell has the vault key; the proxy has none.
    novault.cli("keys", "add", user, "openai", "--name", "main", "--default",
                stdin="sk-novault-BYOK-secret\n",
                env={"CREDITS_ENCRYPTION_KEYS": generate_key_entry("k1")})

    chat = novault.http("POST", "/v1/chat/completions", key=user_key(user),
                        json={"model": "chat", "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]})
    add = novault.http("POST", "/credits/keys", key=user_key(user),
                       json={"provider": "openai", "name": "other", "secret": "sk-x"})

    assert chat.status_code == add.status_code == 503, (chat.text, add.text)
    chat_error, add_error = _error(chat), _error(add)
    assert add_error["code"] == "vault_not_configured"
    assert add_error["message"] == NOT_CONFIGURED_MESSAGE
    assert "vault_not_configured" in chat.text
    assert "CREDITS_ENCRYPTION_KEYS is not set" in str(chat_error)
    assert novault.calls() == {"openai": 0}  # nothing reached the provider
    assert novault.holds(user) == 0  # the hold was released
