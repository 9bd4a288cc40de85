"""A shared end-to-end environment for the plugin tests: ONE real LiteLLM proxy per test module.

Each ``test_plugin_*.py`` module builds a :class:`PluginEnv` in a module-scoped fixture with
:func:`plugin_env`:

* a fresh PostgreSQL database on the session's test cluster (``pg_cluster``), migrated with
  ``litellm_credits.store.migrate.migrate`` and dropped at the end of the module;
* stand-in upstream providers (``devtools.upstream.UpstreamGroup``) on fixed free ports in
  59000-59499, one per provider name;
* the pinned LiteLLM proxy (``devtools.proxy.ProxyProcess``) on a free port in 58500-58999,
  loading ``litellm_credits.handler`` and ``devtools.proxy.custom_auth`` (``sk-master-test`` is
  the proxy admin, ``sk-user-<name>`` the internal user ``<name>``), with its own spool
  directory and a ``CREDITS_CONFIG`` that flushes the writer every 20 ms and refreshes the
  configuration every second.

The proxy is driven with the official ``openai`` client (:meth:`PluginEnv.client`), the
database is read with :meth:`PluginEnv.sql`, and the ``litellm-credits`` CLI is run as a
subprocess with :meth:`PluginEnv.cli`. Settlement is asynchronous, so tests poll the database
(:meth:`PluginEnv.wait_for_rows`) instead of sleeping.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devtools.pg import PgCluster  # noqa: E402
from devtools.proxy import (  # noqa: E402
    MASTER_KEY,
    DeploymentSpec,
    ProxyProcess,
    build_proxy_config,
    user_key,
)
from devtools.upstream import UpstreamGroup, UpstreamServer  # noqa: E402

PROXY_PORTS = range(58500, 59000)
UPSTREAM_PORTS = range(59000, 59500)
CALLBACK = "litellm_credits.handler"
CREDITS_PER_USD = Decimal("10")
CREDIT_PLACES = Decimal("0.00000001")
MULTIPLIER = {"eco": Decimal("0.7"), "balanced": Decimal("1.0"), "precision": Decimal("1.5")}
ALL_PROVIDERS = ("openai", "anthropic", "openrouter", "together_ai", "deepinfra")

# Per-deployment prices (USD per token) of the "chat" group, all different so that the
# exact charge also proves which deployment was billed. Exact in binary-to-decimal repr.
PRICES: dict[str, tuple[str, str]] = {
    "openai": ("0.000001", "0.000002"),
    "anthropic": ("0.000003", "0.000015"),
    "openrouter": ("0.0000005", "0.0000015"),
    "together_ai": ("0.0000002", "0.0000004"),
    "deepinfra": ("0.0000001", "0.0000003"),
}
# model_info.quality_score per deployment of "chat" (like the repo's litellm_config.yaml).
QUALITY: dict[str, str] = {
    "openai": "0.95",  # exactly precision's minimum: qualifies (>=)
    "anthropic": "0.97",
    "openrouter": "0.75",
    "together_ai": "0.72",
    "deepinfra": "0.70",
}
PROMPT_TOKENS = 12  # what every stand-in reports, unless a test says otherwise
COMPLETION_TOKENS = 5


def chat_deployment(provider: str, group: str = "chat", **overrides: Any) -> DeploymentSpec:
    """A deployment of ``group`` on the stand-in ``provider`` with the table's price/quality."""
    inp, out = PRICES[provider]
    info: dict[str, Any] = {"quality_score": float(QUALITY[provider])}
    info.update(overrides.pop("extra_model_info", {}))
    return DeploymentSpec(
        provider=provider,
        input_cost_per_token=float(inp),
        output_cost_per_token=float(out),
        extra_model_info=info,
        **overrides,
    )


def expected_credits(
    provider: str,
    level: str,
    prompt: int = PROMPT_TOKENS,
    completion: int = COMPLETION_TOKENS,
    *,
    byok_fee_percent: Decimal | None = None,
) -> Decimal:
    """Credits for one request: provider USD x credits_per_usd x level multiplier (8 places)."""
    inp, out = (Decimal(p) for p in PRICES[provider])
    usd = prompt * inp + completion * out
    full = (usd * CREDITS_PER_USD * MULTIPLIER[level]).quantize(CREDIT_PLACES, ROUND_HALF_EVEN)
    if byok_fee_percent is None:
        return full
    return (full * byok_fee_percent / 100).quantize(CREDIT_PLACES, ROUND_HALF_EVEN)


def expected_usd(provider: str, prompt: int = PROMPT_TOKENS,
                 completion: int = COMPLETION_TOKENS) -> Decimal:
    inp, out = (Decimal(p) for p in PRICES[provider])
    return prompt * inp + completion * out


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(ports: range) -> int:
    """A free port from ``ports``, picked at random so parallel sessions rarely collide."""
    candidates = list(ports)
    random.shuffle(candidates)
    for port in candidates:
        if _port_free(port):
            return port
    raise RuntimeError(f"no free TCP port in {ports.start}-{ports.stop - 1}")


def free_port_block(ports: range, size: int) -> int:
    """The first port of ``size`` consecutive free ports in ``ports`` (random start)."""
    starts = list(range(ports.start, ports.stop - size + 1))
    random.shuffle(starts)
    for start in starts:
        if all(_port_free(p) for p in range(start, start + size)):
            return start
    raise RuntimeError(f"no {size} consecutive free ports in {ports.start}-{ports.stop - 1}")


def venv_bin(name: str) -> str:
    candidate = Path(sys.prefix) / "bin" / name
    if candidate.exists():
        return str(candidate)
    return str(REPO_ROOT / ".venv" / "bin" / name)


@dataclass
class PluginEnv:
    """Everything one test module needs: database, stand-ins, proxy, CLI."""

    db_url: str
    db_name: str
    cluster: PgCluster
    ups: UpstreamGroup
    proxy: ProxyProcess
    workdir: Path
    env: dict[str, str]
    conn: psycopg.Connection[Any]
    _clients: list[openai.OpenAI] = field(default_factory=list)

    # -- clients -------------------------------------------------------------------------
    def client(self, key: str = MASTER_KEY, **kwargs: Any) -> openai.OpenAI:
        c = openai.OpenAI(base_url=self.proxy.url("/v1"), api_key=key, max_retries=0,
                          timeout=kwargs.pop("timeout", 30.0), **kwargs)
        self._clients.append(c)
        return c

    def user_client(self, name: str) -> openai.OpenAI:
        return self.client(user_key(name))

    def http(self, method: str, path: str, key: str | None = MASTER_KEY,
             **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.request(method, self.proxy.url(path), headers=headers, timeout=30.0,
                             **kwargs)

    # -- database ------------------------------------------------------------------------
    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []

    def one(self, query: str, *params: Any) -> Any:
        rows = self.sql(query, *params)
        assert len(rows) == 1, (query, rows)
        return rows[0][0] if len(rows[0]) == 1 else rows[0]

    def dict_rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        cur = self.conn.execute(query, params or None)
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def usage_rows(self, user: str) -> list[dict[str, Any]]:
        """``user``'s usage rows in the order the requests finished.

        Not by id: one settlement batch inserts its rows in request-id order."""
        return self.dict_rows(
            "SELECT * FROM llm_usage_log WHERE user_id = %s ORDER BY created_at, id", user)

    def usage_debits(self, user: str) -> list[dict[str, Any]]:
        return self.dict_rows(
            "SELECT * FROM credit_transactions WHERE user_id = %s AND transaction_type = 'usage'"
            " ORDER BY id", user)

    def balance(self, user: str) -> Decimal:
        value: Decimal = self.one("SELECT balance FROM user_credits WHERE user_id = %s", user)
        return value

    def holds(self, user: str) -> int:
        return int(self.one("SELECT count(*) FROM credit_holds WHERE user_id = %s", user))

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0,
                 what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                                     f"proxy log tail:\n{self.proxy.log_tail(40)}")
            time.sleep(0.02)

    def wait_for_rows(self, user: str, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll until ``user`` has at least ``n`` usage rows and no holds left; return rows."""
        self.wait_for(lambda: len(self.usage_rows(user)) >= n and self.holds(user) == 0,
                      timeout, f"{n} usage row(s) of {user} and their holds released")
        return self.usage_rows(user)

    def settle_quiet(self, user: str = "", seconds: float = 0.3) -> None:
        """Give late (wrong) writes a chance to appear before asserting their absence.

        ``user`` only documents whose writes the caller is waiting out."""
        time.sleep(seconds)

    # -- accounts ------------------------------------------------------------------------
    def new_user(self, prefix: str, credits: str | None = "100", level: str | None = None,
                 override_allowed: bool | None = None) -> str:
        """A fresh user id (with a granted balance and settings, unless ``credits`` is None)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        if credits is not None:
            self.sql("SELECT * FROM add_user_credits(%s, %s::numeric, 'admin_adjustment',"
                     " NULL, 'e2e grant', 'e2e')", name, credits)
        if level is not None:
            self.sql("UPDATE user_credits SET power_level = %s WHERE user_id = %s", level, name)
        if override_allowed is not None:
            self.sql("UPDATE user_credits SET level_override_allowed = %s WHERE user_id = %s",
                     override_allowed, name)
        return name

    # -- CLI -----------------------------------------------------------------------------
    def cli(self, *args: str, stdin: str = "", env: Mapping[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        run_env = dict(self.env)
        run_env.update(env or {})
        # The checkout under test, not whatever the venv's editable install points at.
        run_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), run_env.get("PYTHONPATH", "")) if p)
        done = subprocess.run([venv_bin("litellm-credits"), *args], input=stdin,
                              capture_output=True, text=True, env=run_env, timeout=60,
                              cwd=str(REPO_ROOT))
        if check:
            assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        return done

    @contextlib.contextmanager
    def another_proxy(self) -> Iterator[ProxyProcess]:
        """A second proxy process on the same database and stand-ins (own port and spool)."""
        spool = self.workdir / f"spool-{uuid.uuid4().hex[:6]}"
        extra = {k: v for k, v in self.proxy.env.items() if k.startswith("CREDITS_")}
        extra["CREDITS_SPOOL_DIR"] = str(spool)
        proxy = ProxyProcess(self.proxy.config_path, free_port(PROXY_PORTS), extra,
                             log_path=spool.with_suffix(".log"))
        try:
            proxy.start()
            yield proxy
        finally:
            proxy.stop()

    # -- stand-ins -----------------------------------------------------------------------
    def up(self, name: str) -> UpstreamServer:
        return self.ups[name]

    def reset_upstreams(self) -> None:
        for server in self.ups:
            server.reset()
            server.configure(prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS)

    def calls(self) -> dict[str, int]:
        """Model requests each stand-in received since the last reset."""
        return {s.name: len(s.model_requests()) for s in self.ups}

    def served_by(self) -> list[str]:
        """Names of the stand-ins that got a model request since the last reset."""
        return [name for name, n in self.calls().items() for _ in range(n)]

    def close(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()


def chat(client: openai.OpenAI, model: str = "chat", content: str = "hello", **kwargs: Any
         ) -> Any:
    kwargs.setdefault("max_tokens", COMPLETION_TOKENS)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs)


def raw_chat(client: openai.OpenAI, model: str = "chat", content: str = "hello", **kwargs: Any
             ) -> Any:
    kwargs.setdefault("max_tokens", COMPLETION_TOKENS)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs)


def credits_config(**extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"writer": {"flush_ms": 20}, "config_cache_seconds": 1}
    config.update(extra)
    return config


@contextlib.contextmanager
def plugin_env(
    pg_cluster: PgCluster,
    models: Mapping[str, Sequence[str | DeploymentSpec]],
    *,
    providers: Sequence[str] = ALL_PROVIDERS,
    config: Mapping[str, Any] | None = None,
    extra_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    label: str = "plugin",
    edit_config: Callable[[dict[str, Any]], None] | None = None,
    route_url: Callable[[str], str] | None = None,
) -> Iterator[PluginEnv]:
    """Start database, stand-ins and one proxy; tear all of them down afterwards.

    ``edit_config`` may change the generated LiteLLM config in place before it is written.
    ``route_url`` maps the module database's name to the URL the proxy and the CLI use
    (e.g. through a PgBouncer); the test's own connection stays direct.
    Set ``CREDITS_E2E_KEEP=1`` to keep the work directory (proxy log, configs) for a look.
    """
    from litellm_credits.store.migrate import migrate

    with contextlib.ExitStack() as stack:
        db_name = f"credits_e2e_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        db_url = pg_cluster.create_database(db_name)
        stack.callback(pg_cluster.drop_database, db_name)
        migrate(db_url)

        if os.environ.get("CREDITS_E2E_KEEP"):
            work = Path(tempfile.mkdtemp(prefix=f"credits-e2e-{label}-"))
        else:
            work = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix=f"credits-e2e-{label}-")))

        base = free_port_block(UPSTREAM_PORTS, len(providers))
        ups = UpstreamGroup(list(providers), base_port=base).start()
        stack.callback(ups.stop)
        for server in ups:
            server.configure(prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS)

        cfg_path = work / "credits.yaml"
        cfg_path.write_text(yaml.safe_dump(dict(config or credits_config())))
        env = {
            "CREDITS_DATABASE_URL": route_url(db_name) if route_url else db_url,
            "CREDITS_SPOOL_DIR": str(work / "spool"),
            "CREDITS_CONFIG": str(cfg_path),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        env.update(extra_env or {})
        proxy_config = build_proxy_config(ups.base_urls, models, callbacks=[CALLBACK])
        if edit_config is not None:
            edit_config(proxy_config)
        proxy = ProxyProcess(proxy_config, free_port(PROXY_PORTS), env,
                             log_path=work / "proxy.log", extra_args=extra_args)
        stack.callback(proxy.stop)
        proxy.start()

        conn = psycopg.connect(db_url, autocommit=True)
        stack.callback(conn.close)
        cli_env = {k: v for k, v in os.environ.items()
                   if not k.startswith("CREDITS_") and k != "DATABASE_URL"}
        cli_env.update(env)
        penv = PluginEnv(db_url=db_url, db_name=db_name, cluster=pg_cluster, ups=ups,
                         proxy=proxy, workdir=work, env=cli_env, conn=conn)
        stack.callback(penv.close)
        yield penv
