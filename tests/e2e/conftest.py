"""Shared end-to-end fixtures: the real LiteLLM proxy with the plugin loaded, and stand-ins.

Fixtures of the credits API tests (all module-scoped, so each test module starts ONE proxy):

``api_db_url``
    A fresh, migrated database for the module (a clone of the session's template).
``api_stripe``
    :class:`devtools.stripe_stub.StripeStub` on a free port in 58100-58199, with
    ``STRIPE_API_KEY`` / ``WEBHOOK_SECRET``; its ``webhook_url`` points at the proxy.
``api_proxy``
    The proxy (``devtools.proxy.ProxyProcess``) on a free port in 58000-58099, loading the
    ``litellm_credits.handler`` callback, with ``devtools.proxy.custom_auth`` (master key
    ``sk-master-test`` is proxy_admin, ``sk-user-<name>`` is internal_user ``<name>``),
    Stripe pointed at the stub, a BYOK master key, and a ``CREDITS_CONFIG`` with two tiers.
``api``
    An :class:`ApiClient` for ``api_proxy``: ``api.get("/credits/balance", key=...)``.
``api_sql``
    ``api_sql(query, *params)``: rows (tuples) from the module's database, to count what
    was (not) written.

Ports: this project's e2e fixtures use 58000-58499; these take 58000-58199.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor

# Some tests import litellm in this process: never try to download its price map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devtools.proxy import MASTER_KEY, ProxyProcess, build_proxy_config, user_key  # noqa: E402
from devtools.stripe_stub import StripeStub  # noqa: E402

STRIPE_API_KEY = "sk_test_credits_api"
WEBHOOK_SECRET = "whsec_test_credits_api"
PROXY_PORTS = range(58000, 58100)
STUB_PORTS = range(58100, 58200)
CALLBACK = "litellm_credits.handler"

TIERS_CONFIG: dict[str, Any] = {
    "tiers": {
        "free": {},
        "pro": {"monthly_quota": "5000", "low_balance_threshold": "50"},
    },
    "stripe": {
        "success_url": "http://localhost/credits/done?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://localhost/credits/cancelled",
    },
}


def free_port(ports: range) -> int:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port in {ports.start}-{ports.stop - 1}")


@pytest.fixture(scope="module")
def api_db_url(credits_pg: NoopExecutor) -> Iterator[str]:
    name = f"{credits_pg.template_dbname.removesuffix('_tmpl')}_api{uuid.uuid4().hex[:8]}"
    janitor = DatabaseJanitor(
        user=credits_pg.user,
        host=credits_pg.host,
        port=credits_pg.port,
        dbname=name,
        template_dbname=credits_pg.template_dbname,
        maintenance_dbname=credits_pg.maintenance_dbname,
        password=credits_pg.password,
    )
    with janitor:
        yield f"postgresql://{credits_pg.user}@{credits_pg.host}:{credits_pg.port}/{name}"


@pytest.fixture(scope="module")
def api_sql(api_db_url: str) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    conn = psycopg.connect(api_db_url, autocommit=True)

    def sql(query: str, *params: Any) -> list[tuple[Any, ...]]:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []

    yield sql
    conn.close()


@pytest.fixture(scope="module")
def api_stripe() -> Iterator[StripeStub]:
    stub = StripeStub(port=free_port(STUB_PORTS), api_key=STRIPE_API_KEY,
                      webhook_secret=WEBHOOK_SECRET)
    with stub:
        yield stub


@pytest.fixture(scope="module")
def api_proxy(api_db_url: str, api_stripe: StripeStub) -> Iterator[ProxyProcess]:
    with tempfile.TemporaryDirectory(prefix="credits-api-e2e-") as tmp:
        work = Path(tmp)
        credits_config = work / "credits.yaml"
        credits_config.write_text(yaml.safe_dump(TIERS_CONFIG))
        port = free_port(PROXY_PORTS)
        config = build_proxy_config(
            # No LLM call is made by these tests; the deployment only has to exist.
            {"openai": "http://127.0.0.1:9/v1"},
            callbacks=[CALLBACK],
        )
        master = base64.urlsafe_b64encode(os.urandom(32)).decode()
        env = {
            "CREDITS_DATABASE_URL": api_db_url,
            "CREDITS_CONFIG": str(credits_config),
            "CREDITS_SPOOL_DIR": str(work / "spool"),
            "CREDITS_STRIPE_API_KEY": STRIPE_API_KEY,
            "CREDITS_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CREDITS_STRIPE_API_BASE": api_stripe.base_url,
            "CREDITS_ENCRYPTION_KEYS": f"e2e1:{master}",
        }
        # Verbose LiteLLM logging, so tests can show that no secret reaches the log.
        proxy = ProxyProcess(config, port, env, log_path=work / "proxy.log",
                             extra_args=("--detailed_debug",))
        api_stripe.webhook_url = proxy.url("/credits/stripe/webhook")
        with proxy:
            yield proxy


class ApiClient:
    """Small helper over httpx for the proxy: the key goes in ``Authorization: Bearer``."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.http = httpx.Client(base_url=proxy.base_url, timeout=30.0)

    def request(self, method: str, path: str, *, key: str | None = MASTER_KEY,
                **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.http.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    @staticmethod
    def user(name: str) -> str:
        return user_key(name)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def api(api_proxy: ProxyProcess) -> Iterator[ApiClient]:
    client = ApiClient(api_proxy)
    yield client
    client.close()


@pytest.fixture(scope="session")
def litellm_proxy(pg_cluster: Any) -> Iterator[Any]:
    """ONE proxy on LiteLLM's own database for the session (tests/e2e/litellm_db.py).

    Skipped, with the reason, where the workplace's ../shared/tools/litellm-db is absent."""
    from tests.e2e.litellm_db import shared_litellm_env

    with shared_litellm_env(pg_cluster) as env:
        yield env
