"""``make demo``: the whole product end to end on a throwaway database.

Starts an embedded PostgreSQL, migrates it, sets up demo users with the
operator CLI (grants, power levels, a BYOK key read from stdin), starts
stand-in providers and the pinned LiteLLM proxy with the repo's
``litellm_config.yaml`` (its api_base entries pointed at the stand-ins), then
sends requests at each power level, a stream, a fallback, a BYOK request and
one refused for lack of credits. It prints balances, usage rows and
transactions, runs ``verify``, stops everything it started and exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import psycopg
import yaml
from psycopg.rows import dict_row

from devtools.pg import PgCluster, port_is_free
from devtools.proxy import ProxyProcess
from devtools.upstream import UpstreamGroup
from litellm_credits.byok.masterkeys import generate_key_entry
from litellm_credits.store import migrate as migrations

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("litellm-credits"))
MASTER = "sk-master-test"
PROVIDERS = ("openai", "anthropic", "openrouter", "together_ai", "deepinfra")
BYOK_SECRET = "sk-alice-own-openai-key-DEMO1234"  # noqa: S105 - a demo stand-in key


def free_port(candidates: range) -> int:
    for port in candidates:
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {candidates}")


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    print(f"$ litellm-credits {' '.join(args)}", flush=True)
    done = subprocess.run([CLI, *args], env=env, input=stdin, text=True,
                          capture_output=True, check=False)
    out = (done.stdout + done.stderr).rstrip()
    if out:
        print(out)
    if done.returncode != 0:
        raise SystemExit(f"demo step failed: litellm-credits {' '.join(args)}")
    return done.stdout


def proxy_config(upstreams: UpstreamGroup) -> dict[str, Any]:
    """The repo's drop-in config, with api_base pointed at this run's stand-ins."""
    config = yaml.safe_load((REPO / "litellm_config.yaml").read_text())
    for entry in config["model_list"]:
        params = entry["litellm_params"]
        provider = params["model"].split("/", 1)[0]
        server = upstreams[provider]
        params["api_base"] = server.root_url if provider == "anthropic" else server.base_url
    config["general_settings"].update({"master_key": MASTER,
                                       "custom_auth": "devtools.proxy.custom_auth"})
    return config


def _text(value: Any) -> str:
    if value is None:
        return ""
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def table(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        print("(none)")
        return
    cols = list(rows[0])
    cells = [[_text(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def query(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql.encode()).fetchall()


def wait_settled(url: str, expected: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(url, "SELECT count(*) AS n FROM llm_usage_log")
        if rows[0]["n"] >= expected and not query(url, "SELECT 1 FROM credit_holds"):
            return
        time.sleep(0.2)
    raise SystemExit("demo: settlement did not finish in time")


def client(key: str, port: int, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}", api_key=key,
                         default_headers=headers or None, max_retries=0)


def ask(c: openai.OpenAI, label: str, **extra: Any) -> None:
    raw = c.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": f"Hello from {label}"}],
        max_tokens=40, **extra)
    served_by = raw.headers.get("x-litellm-model-id")
    remaining = raw.headers.get("x-credits-remaining")
    print(f"{label:<34} 200 served by {served_by:<16} x-credits-remaining {remaining}")


def run(workdir: Path) -> None:
    say("starting a throwaway PostgreSQL")
    cluster = PgCluster(workdir, free_port(range(55350, 55400)), "demo")
    upstreams = UpstreamGroup(PROVIDERS)
    proxy: ProxyProcess | None = None
    cluster.init()
    cluster.start()
    try:
        url = cluster.create_database("credits")
        applied = migrations.migrate(url)
        print(f"migrated: {', '.join(m.filename for m in applied)}")
        env = {**os.environ, "CREDITS_DATABASE_URL": url,
               "CREDITS_ENCRYPTION_KEYS": generate_key_entry("demo1")}
        cli(env, "verify")

        say("operator setup with the CLI")
        cli(env, "grant", "alice", "5", "--description", "welcome credits")
        cli(env, "grant", "bob", "2")
        cli(env, "set-level", "bob", "eco")
        cli(env, "grant", "carol", "3")
        cli(env, "set-level", "carol", "precision")
        cli(env, "keys", "add", "alice", "openai", "--name", "personal", "--default",
            stdin=BYOK_SECRET + "\n")
        cli(env, "keys", "list", "alice")

        say("starting stand-in providers and the LiteLLM proxy with the plugin")
        upstreams.start()
        port = free_port(range(4000, 4100))
        proxy = ProxyProcess(
            proxy_config(upstreams), port, log_path=workdir / "proxy.log",
            env={"CREDITS_DATABASE_URL": url, "CREDITS_SPOOL_DIR": str(workdir / "spool"),
                 "CREDITS_ENCRYPTION_KEYS": env["CREDITS_ENCRYPTION_KEYS"]})
        proxy.start()
        print(f"proxy on http://127.0.0.1:{port} (pid {proxy.pid})")

        say("requests")
        ask(client("sk-user-alice", port), "alice, balanced, own openai key")
        seen = upstreams["openai"].last_request.api_key or ""
        print(f"{'':<34} openai stand-in saw alice's key ending ...{seen[-4:]}")
        ask(client("sk-user-bob", port), "bob, eco")
        ask(client("sk-user-carol", port), "carol, precision")
        stream = client("sk-user-carol", port).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "stream please"}],
            max_tokens=20, stream=True)
        text = "".join((ch.choices[0].delta.content or "") for ch in stream if ch.choices)
        print(f"{'carol, precision, streamed':<34} 200 {len(text)} characters")
        upstreams["openrouter"].configure(fail_next=1, fail_status=500)
        ask(client("sk-user-bob", port), "bob, eco, openrouter fails once")
        ask(client(MASTER, port, **{"x-litellm-end-user-id": "alice"}),
            "admin key billing alice, eco", metadata={"power_level": "eco"})
        try:
            client("sk-user-dave", port).chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=40)
            raise SystemExit("demo: dave should have been refused")
        except openai.APIStatusError as exc:
            message = exc.response.json()["error"]["message"]
            print(f"{'dave, no credits':<34} {exc.status_code} {message[:90]}...")

        wait_settled(url, expected=7)
        say("balances")
        table(query(url, "SELECT user_id, balance, tier, power_level FROM user_credits "
                         "ORDER BY user_id"))
        say("usage log")
        table(query(url, """
            SELECT user_id, power_level AS level, provider, byok_key_id IS NOT NULL AS byok,
                   prompt_tokens AS p_tok, completion_tokens AS c_tok, credits_charged,
                   success, status_code AS status, error_type
              FROM llm_usage_log ORDER BY id"""))
        say("transactions")
        table(query(url, """
            SELECT id, user_id, transaction_type AS type, amount, balance_before,
                   balance_after, request_id FROM credit_transactions ORDER BY id"""))
        say("ledger check")
        cli(env, "reconcile")
        say("done: every served request has one usage row and one debit")
    finally:
        if proxy is not None:
            proxy.stop()
        upstreams.stop()
        cluster.stop()
        cluster.destroy()


def main() -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with tempfile.TemporaryDirectory(prefix="litellm-credits-demo-") as tmp:
        run(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
