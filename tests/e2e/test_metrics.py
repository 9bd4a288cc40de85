"""Metrics and alerts through the real proxy: run requests, scrape ``/credits/metrics``, and
compare every counter with what the database holds.

One proxy for the module (``plugin_env``), with the Stripe stand-in for a purchase and a
refund, a local webhook receiver for low-balance alerts, and ``CREDITS_METRICS_REFRESH_SECONDS``
at 1 s so the database-wide gauges are fresh quickly.

Environment knobs (both optional):

* ``CREDITS_E2E_PORTS=LOW-HIGH``: take every port (proxy, stand-ins, Stripe stub, receiver)
  from this range instead of the suite's usual ones.
* ``CREDITS_E2E_WIRE=1``: load a scratch callback that calls ``monitoring.mount``,
  ``ui.mount``, ``monitoring.install`` and ``alerts.install``, for a ``hook.py`` that does
  not call them yet (they are idempotent, so it is harmless once it does).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tests.e2e.plugin_env as pe
from devtools.pg import PgCluster
from devtools.proxy import MASTER_KEY, user_key
from devtools.stripe_stub import StripeStub, completed_event
from tests.e2e.plugin_env import PluginEnv, chat, chat_deployment, credits_config, plugin_env

pytestmark = pytest.mark.e2e

ALERT_SECRET = "whsec_alerts_e2e"
STRIPE_KEY = "sk_test_metrics_e2e"
STRIPE_SECRET = "whsec_stripe_metrics_e2e"
THRESHOLD = Decimal("0.0014")  # the free tier's low-balance threshold in this module
WIRING = '''\
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy import proxy_server

from litellm_credits.observe import alerts
from litellm_credits.observe import monitoring
from litellm_credits.api import ui
from litellm_credits.runtime import get_runtime

monitoring.mount(proxy_server.app)
ui.mount(proxy_server.app)
monitoring.install(get_runtime())
alerts.install(get_runtime())
handler = CustomLogger()
'''


# --- environment ------------------------------------------------------------------------------


def port_range() -> range | None:
    spec = os.environ.get("CREDITS_E2E_PORTS")
    if not spec:
        return None
    low, high = (int(p) for p in spec.split("-"))
    return range(low, high + 1)


@contextlib.contextmanager
def ports_for(tag: int) -> Iterator[tuple[range, range, range]]:
    """(proxy, upstream, extra) port ranges; from CREDITS_E2E_PORTS when set."""
    chosen = port_range()
    saved = pe.PROXY_PORTS, pe.UPSTREAM_PORTS
    if chosen is None:
        yield pe.PROXY_PORTS, pe.UPSTREAM_PORTS, range(58300 + 50 * tag, 58350 + 50 * tag)
        return
    third = len(chosen) // 3
    proxy = range(chosen.start, chosen.start + third)
    upstream = range(chosen.start + third, chosen.start + 2 * third)
    extra = range(chosen.start + 2 * third, chosen.stop)
    pe.PROXY_PORTS, pe.UPSTREAM_PORTS = proxy, upstream
    try:
        yield proxy, upstream, extra
    finally:
        pe.PROXY_PORTS, pe.UPSTREAM_PORTS = saved


@contextlib.contextmanager
def scratch_wiring() -> Iterator[tuple[list[str], dict[str, str]]]:
    """(extra callbacks, extra env) that wire monitoring/ui/alerts when CREDITS_E2E_WIRE=1."""
    if os.environ.get("CREDITS_E2E_WIRE") != "1":
        yield [], {}
        return
    with tempfile.TemporaryDirectory(prefix="credits-wiring-") as tmp:
        Path(tmp, "credits_e2e_wiring.py").write_text(WIRING)
        path = os.pathsep.join([str(pe.REPO_ROOT), tmp])
        yield ["credits_e2e_wiring.handler"], {"PYTHONPATH": path}


class Receiver:
    """A webhook receiver on 127.0.0.1: records (headers, body) of every POST, answers 200."""

    def __init__(self, ports: range) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = self._bind(Handler, ports)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def _bind(handler: Any, ports: range) -> ThreadingHTTPServer:
        for port in ports:
            with contextlib.suppress(OSError):
                return ThreadingHTTPServer(("127.0.0.1", port), handler)
        raise RuntimeError(f"no free port in {ports}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/credits"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port(ports: range) -> int:
    return pe.free_port(ports)


@pytest.fixture(scope="module")
def world(pg_cluster: PgCluster) -> Iterator[tuple[PluginEnv, StripeStub, Receiver]]:
    with contextlib.ExitStack() as stack:
        _, _, extra = stack.enter_context(ports_for(0))
        callbacks, wiring_env = stack.enter_context(scratch_wiring())
        stub = stack.enter_context(StripeStub(port=free_port(extra), api_key=STRIPE_KEY,
                                              webhook_secret=STRIPE_SECRET))
        receiver = stack.enter_context(Receiver(extra))
        config = credits_config(
            tiers={"free": {"low_balance_threshold": str(THRESHOLD)}},
            alerts={"webhook_url": receiver.url},
            stripe={"success_url": "http://localhost/ok", "cancel_url": "http://localhost/no"},
        )
        env = {
            "CREDITS_ALERT_WEBHOOK_SECRET": ALERT_SECRET,
            "CREDITS_STRIPE_API_KEY": STRIPE_KEY,
            "CREDITS_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
            "CREDITS_STRIPE_API_BASE": stub.base_url,
            "CREDITS_METRICS_REFRESH_SECONDS": "1",
            **wiring_env,
        }

        def edit(cfg: dict[str, Any]) -> None:
            cfg["litellm_settings"]["callbacks"] += callbacks

        models = {
            "chat": [chat_deployment("openai"), chat_deployment("anthropic")],
            "flaky": [chat_deployment("deepinfra", "flaky")],
        }
        penv = stack.enter_context(plugin_env(
            pg_cluster, models, providers=("openai", "anthropic", "deepinfra"), config=config,
            extra_env=env, label="metrics", edit_config=edit))
        stub.webhook_url = penv.proxy.url("/credits/stripe/webhook")
        yield penv, stub, receiver


# --- scraping ---------------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(env: PluginEnv) -> Samples:
    r = env.http("GET", "/credits/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == w for k, w in match.items()))


def close(a: float, b: Decimal | int | float) -> bool:
    return abs(Decimal(repr(a)) - Decimal(b)) <= Decimal("0.000001") * max(1, abs(Decimal(b)))


def grant(env: PluginEnv, user: str, amount: str) -> None:
    r = env.http("POST", "/credits/admin/grant", json={"user_id": user, "amount": amount})
    assert r.status_code == 200, r.text


# --- the run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def after_run(world: tuple[PluginEnv, StripeStub, Receiver]) -> dict[str, Any]:
    """Drive a mixed run of requests, purchases and refunds; wait until all of it settled."""
    env, stub, _ = world
    alice, carol, dave = "m-alice", "m-carol", "m-dave"
    grant(env, alice, "100")
    grant(env, carol, "0.00001")   # too little for any request: 402
    grant(env, dave, "0.0015")     # one request takes dave below the threshold
    a = env.user_client(alice)
    for level in ("balanced", "eco", "precision", "balanced", "precision"):
        chat(a, metadata={"power_level": level})
    chat(env.user_client(dave))
    refused = 0
    for name in ("m-bob", carol, carol):  # bob has no account at all
        with pytest.raises(Exception) as info:
            chat(env.user_client(name))
        assert getattr(info.value, "status_code", None) == 402, info.value
        refused += 1
    env.up("deepinfra").configure(fail_always=True)
    with pytest.raises(Exception) as failed:
        chat(a, model="flaky")
    assert getattr(failed.value, "status_code", 0) >= 500
    env.up("deepinfra").configure(fail_always=False)

    # A purchase through the API and the Stripe stand-in, then a partial refund.
    r = env.http("POST", "/credits/purchase", key=user_key(alice), json={"package_id": 1})
    assert r.status_code == 200, r.text
    session = stub.complete_session(r.json()["session_id"])
    assert stub.deliver(completed_event(session)) == 200
    assert stub.deliver(stub.refund(session["payment_intent"], amount=250)) == 200

    # Everything settled: 6 served + 3 refused + 1 failed rows, no holds left.
    env.wait_for(lambda: env.one("SELECT count(*) FROM llm_usage_log") == 10
                 and env.one("SELECT count(*) FROM credit_holds") == 0,
                 timeout=20, what="settlement of the run")
    return {"refused": refused}


def test_metrics_need_an_admin_key(world: tuple[PluginEnv, StripeStub, Receiver]) -> None:
    env, _, _ = world
    assert env.http("GET", "/credits/metrics", key=user_key("m-alice")).status_code == 403
    assert env.http("GET", "/credits/metrics", key="sk-not-a-key").status_code == 401
    assert env.http("GET", "/credits/metrics", key=None).status_code == 401
    assert env.http("GET", "/credits/metrics", key=MASTER_KEY).status_code == 200


def test_request_counters_match_the_usage_log(
        world: tuple[PluginEnv, StripeStub, Receiver], after_run: dict[str, Any]) -> None:
    env, _, _ = world
    m = scrape(env)
    served = env.dict_rows(
        "SELECT power_level, provider, count(*) AS n FROM llm_usage_log WHERE success "
        "GROUP BY 1, 2")
    assert sum(r["n"] for r in served) == 6
    for row in served:
        assert total(m, "credits_requests_total", outcome="served",
                     power_level=row["power_level"], provider=row["provider"]) == row["n"], row
    assert total(m, "credits_requests_total", outcome="served") == 6
    refused = env.one("SELECT count(*) FROM llm_usage_log WHERE NOT success "
                      "AND status_code = 402")
    assert refused == after_run["refused"] == total(m, "credits_requests_total",
                                                    outcome="rejected_402")
    failed = env.one("SELECT count(*) FROM llm_usage_log WHERE NOT success "
                     "AND coalesce(status_code, 0) <> 402")
    assert failed == 1 == total(m, "credits_requests_total", outcome="failed")
    # Platform keys only in this run; BYOK share 0.
    assert total(m, "credits_byok_requests_total", key_source="platform") == 6
    assert total(m, "credits_byok_requests_total", key_source="byok") == 0
    # The pre-call hook ran once per request (served, refused and failed alike).
    assert total(m, "credits_pre_call_hook_seconds_count") == 10
    assert total(m, "credits_pre_call_hook_seconds_bucket", le="+Inf") == 10


def test_money_counters_match_the_ledger(
        world: tuple[PluginEnv, StripeStub, Receiver], after_run: dict[str, Any]) -> None:
    env, _, _ = world
    m = scrape(env)
    debited = env.dict_rows(
        "SELECT l.power_level, -sum(t.amount) AS credits FROM credit_transactions t "
        "JOIN llm_usage_log l ON l.request_id = t.request_id "
        "WHERE t.transaction_type = 'usage' GROUP BY 1")
    assert debited
    for row in debited:
        assert close(total(m, "credits_debited_total", power_level=row["power_level"]),
                     row["credits"]), row
    for kind in ("admin_adjustment", "purchase"):
        granted = env.one("SELECT coalesce(sum(amount), 0) FROM credit_transactions "
                          "WHERE transaction_type = %s AND amount > 0", kind)
        assert granted > 0
        assert close(total(m, "credits_granted_total", type=kind), granted), kind
    revenue = env.one("SELECT sum(amount_usd) FROM credit_transactions "
                      "WHERE transaction_type = 'purchase'")
    assert revenue == Decimal("10.00")
    assert close(total(m, "credits_purchase_revenue_usd_total"), revenue)
    refunded = env.one("SELECT -sum(amount) FROM credit_transactions "
                       "WHERE transaction_type = 'refund'")
    assert refunded == Decimal("25")  # $2.50 of $10 back: a quarter of 100 credits
    assert close(total(m, "credits_taken_back_total", type="refund"), refunded)
    assert close(total(m, "credits_refunds_usd_total"), Decimal("2.50"))
    usage_debits = env.one("SELECT count(*) FROM credit_transactions "
                           "WHERE transaction_type = 'usage'")
    assert total(m, "credits_settlements_total", outcome="debited") == usage_debits == 6
    assert total(m, "credits_settlements_total", outcome="failure_logged") == 4


def test_holds_and_writer_metrics_add_up(
        world: tuple[PluginEnv, StripeStub, Receiver], after_run: dict[str, Any]) -> None:
    env, _, _ = world
    m = scrape(env)
    placed = total(m, "credits_holds_total", event="placed")
    settled = total(m, "credits_holds_total", event="settled")
    released = total(m, "credits_holds_total", event="released")
    expired = total(m, "credits_holds_total", event="expired")
    assert (placed, settled, released, expired) == (7, 6, 1, 0)
    assert env.one("SELECT count(*) FROM credit_holds") == 0  # placed = settled + released
    assert total(m, "credits_writer_queue_depth") == 0
    assert total(m, "credits_spool_depth") == 0
    assert total(m, "credits_writer_failures_total") == 0
    batches = total(m, "credits_writer_batch_size_count")
    assert batches >= 1
    assert total(m, "credits_writer_batch_size_sum") == 10  # every settled record
    assert total(m, "credits_writer_batch_seconds_count") == batches


def test_database_gauges_and_the_alert(
        world: tuple[PluginEnv, StripeStub, Receiver], after_run: dict[str, Any]) -> None:
    env, _, receiver = world
    below = env.one("SELECT count(*) FROM user_credits WHERE balance < coalesce("
                    "low_balance_threshold, %s)", THRESHOLD)
    assert below == 2  # carol (granted little, never alerted) and dave
    env.wait_for(lambda: receiver.calls, timeout=20, what="the low-balance webhook")
    deadline = time.monotonic() + 15
    while True:
        m = scrape(env)
        # The gauges come from a periodic poll of the database; one taken between
        # the debit and the alert's record shows the account below, not yet alerted.
        if total(m, "credits_users_below_threshold") == below and \
                total(m, "credits_alerts_total", result="sent") == 1 and \
                total(m, "credits_users_alerted") == 1:
            break
        assert time.monotonic() < deadline, {k: v for k, v in m.items() if "alert" in k[0]
                                             or "below" in k[0]}
        time.sleep(0.3)
    assert total(m, "credits_monitoring_db_up") == 1
    assert total(m, "credits_users_alerted") == 1

    # Exactly one alert: dave's, recorded and sent once, signed with the configured secret.
    rows = env.dict_rows("SELECT user_id, kind, status, threshold FROM credit_alerts")
    assert rows == [{"user_id": "m-dave", "kind": "low_balance", "status": "sent",
                     "threshold": THRESHOLD}]
    assert total(m, "credits_alerts_total", kind="low_balance", result="recorded") == 1
    assert len(receiver.calls) == 1
    headers, body = receiver.calls[0]
    ts, v1 = (p.split("=", 1)[1] for p in headers["x-credits-signature"].split(","))
    expected = hmac.new(ALERT_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(v1, expected.hexdigest())
    payload = json.loads(body)
    assert payload["type"] == "credits.low_balance"
    assert payload["data"]["user_id"] == "m-dave"
    assert Decimal(payload["data"]["balance"]) == env.balance("m-dave") < THRESHOLD


def test_no_metric_carries_a_user_id(
        world: tuple[PluginEnv, StripeStub, Receiver], after_run: dict[str, Any]) -> None:
    env, _, _ = world
    text = env.http("GET", "/credits/metrics").text
    for user in ("m-alice", "m-bob", "m-carol", "m-dave"):
        assert user not in text


def test_metrics_route_is_in_the_openapi_docs(
        world: tuple[PluginEnv, StripeStub, Receiver]) -> None:
    env, _, _ = world
    spec = env.http("GET", "/openapi.json").json()
    assert "credits" in spec["paths"]["/credits/metrics"]["get"]["tags"]
    assert "/credits/ui" not in spec["paths"]
