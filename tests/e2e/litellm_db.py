"""The real LiteLLM proxy on LiteLLM's OWN database, for end-to-end tests with real virtual keys.

LiteLLM keeps users, teams and virtual keys in PostgreSQL through Prisma, whose native engines
download from Prisma's servers. ``../shared/tools/litellm-db`` (outside this repository, in the
workplace) replaces them offline; see its README. This module:

* :func:`tool_dir` finds the tool, or says why the tests that need it are skipped;
* :func:`prepare_tool` runs its ``setup`` into ``.run/litellm-db`` (idempotent, under a file lock
  because it regenerates the Prisma client inside the shared venv) and returns the ``PRISMA_*``
  variables of its ``env.sh``;
* :func:`shared_litellm_env` is the session's one such proxy (fixture ``litellm_proxy`` in
  ``tests/e2e/conftest.py``), with a Stripe stub; every test makes its own users and teams;
* :func:`litellm_env` creates a LiteLLM database on the test cluster, applies LiteLLM's own
  migrations with ``apply-migrations``, and starts ONE proxy through
  :func:`tests.e2e.plugin_env.plugin_env` (which creates the credits database and the stand-in
  upstreams) with ``DATABASE_URL`` = the LiteLLM database, ``CREDITS_DATABASE_URL`` = the
  credits database, ``DISABLE_SCHEMA_UPDATE=true``, the master key and no ``custom_auth``:
  every key is LiteLLM's own.

:class:`LiteLLMEnv` adds LiteLLM's management API to :class:`~tests.e2e.plugin_env.PluginEnv`:
:meth:`~LiteLLMEnv.new_user`, :meth:`~LiteLLMEnv.new_team`, :meth:`~LiteLLMEnv.new_key` call
``/user/new``, ``/team/new`` and ``/key/generate`` with the master key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devtools.pg import PgCluster
from devtools.proxy import MASTER_KEY, DeploymentSpec
from devtools.stripe_stub import StripeStub
from tests.e2e.plugin_env import (
    REPO_ROOT,
    PluginEnv,
    chat_deployment,
    credits_config,
    free_port,
    plugin_env,
)

SHARED = REPO_ROOT.parent / "shared"
TOOL = SHARED / "tools" / "litellm-db"
WORKDIR = REPO_ROOT / ".run" / "litellm-db"
STRIPE_API_KEY = "sk_test_litellm_db"
WEBHOOK_SECRET = "whsec_test_litellm_db"
STUB_PORTS = range(58200, 58300)  # this project's e2e range is 58000-58499


def tool_dir() -> Path:
    """The litellm-db tool, or a pytest skip that says why it is missing."""
    if not (TOOL / "setup").exists():
        pytest.skip(f"LiteLLM's own database needs the litellm-db tool at {TOOL}, which exists "
                    "only in the workplace checkout (../shared is absent here)")
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("LiteLLM's own database needs node and npm for the litellm-db tool "
                    "(`make install` installs Debian's nodejs and npm as root)")
    return TOOL


def _venv() -> Path:
    return Path(sys.prefix)


def _run(args: Sequence[str], what: str, timeout: float) -> None:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    done = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def prepare_tool() -> dict[str, str]:
    """Run the tool's ``setup`` (idempotent) and return the variables of its ``env.sh``."""
    tool = tool_dir()
    WORKDIR.parent.mkdir(parents=True, exist_ok=True)
    with open(WORKDIR.parent / "litellm-db.lock", "w") as lock:
        # setup rewrites the generated Prisma client in the venv: one at a time.
        fcntl.flock(lock, fcntl.LOCK_EX)
        _run([str(tool / "setup"), str(_venv()), str(WORKDIR)], "litellm-db setup", 300)
    env: dict[str, str] = {}
    for line in (WORKDIR / "env.sh").read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line.removeprefix("export ").split("=", 1)
            env[name.strip()] = value.strip()
    return env


@contextlib.contextmanager
def litellm_database(cluster: PgCluster, label: str) -> Iterator[str]:
    """A fresh database with LiteLLM's own migrations applied; dropped afterwards."""
    name = f"litellm_e2e_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = cluster.create_database(name)
    try:
        _run([str(tool_dir() / "apply-migrations"), str(_venv()), url],
             "litellm-db apply-migrations", 300)
        yield url
    finally:
        cluster.drop_database(name)


def hash_key(key: str) -> str:
    """LiteLLM's ``hash_token``: the sha256 hex digest under which it stores a virtual key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class LiteLLMEnv:
    """A :class:`PluginEnv` whose proxy runs on LiteLLM's own database."""

    plugin: PluginEnv
    litellm_url: str
    litellm_conn: psycopg.Connection[Any]
    stripe: StripeStub | None = None

    def __getattr__(self, name: str) -> Any:  # the PluginEnv helpers, unchanged
        return getattr(self.plugin, name)

    def admin(self, method: str, path: str, body: Mapping[str, Any] | None = None,
              key: str = MASTER_KEY) -> dict[str, Any]:
        resp = self.plugin.http(method, path, key=key, json=dict(body or {}))
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        data: dict[str, Any] = resp.json()
        return data

    def new_user(self, prefix: str, credits: str | None = "100", **fields: Any) -> str:
        """A LiteLLM user (``/user/new``) with a credits account unless ``credits`` is None."""
        user_id = self.plugin.new_user(prefix, credits)
        self.admin("POST", "/user/new", {"user_id": user_id, "user_role": "internal_user",
                                         **fields})
        return user_id

    def new_team(self, prefix: str, *, admins: Sequence[str] = (),
                 members: Sequence[str] = (), metadata: Mapping[str, Any] | None = None,
                 **fields: Any) -> str:
        """A LiteLLM team (``/team/new``) with ``members_with_roles``; no credits account."""
        team_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
        roles = [{"user_id": u, "role": "admin"} for u in admins]
        roles += [{"user_id": u, "role": "user"} for u in members]
        body: dict[str, Any] = {"team_id": team_id, "team_alias": team_id,
                                "members_with_roles": roles, **fields}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        self.admin("POST", "/team/new", body)
        return team_id

    def new_key(self, *, user_id: str | None = None, team_id: str | None = None,
                metadata: Mapping[str, Any] | None = None, alias: str | None = None,
                **fields: Any) -> str:
        """A virtual key from ``/key/generate``; returns the key itself (``sk-...``)."""
        body: dict[str, Any] = dict(fields)
        if user_id is not None:
            body["user_id"] = user_id
        if team_id is not None:
            body["team_id"] = team_id
        if metadata is not None:
            body["metadata"] = dict(metadata)
        body["key_alias"] = alias or f"key-{uuid.uuid4().hex[:8]}"
        key: str = self.admin("POST", "/key/generate", body)["key"]
        return key

    def litellm_sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        cur = self.litellm_conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def litellm_env(
    pg_cluster: PgCluster,
    models: Mapping[str, Sequence[str | DeploymentSpec]],
    *,
    providers: Sequence[str],
    label: str,
    config: Mapping[str, Any] | None = None,
    edit_config: Callable[[dict[str, Any]], None] | None = None,
    stripe: StripeStub | None = None,
) -> Iterator[LiteLLMEnv]:
    """LiteLLM database + credits database + stand-ins + one proxy on LiteLLM's own auth.

    With ``stripe``, the proxy's Stripe points at that stub and the stub's webhook at the
    proxy."""
    prisma_env = prepare_tool()

    def own_auth(cfg: dict[str, Any]) -> None:
        general = cfg["general_settings"]
        general.pop("custom_auth", None)  # LiteLLM's own virtual keys, not the test hook
        general["master_key"] = MASTER_KEY
        general["disable_prisma_schema_update"] = True
        if edit_config is not None:
            edit_config(cfg)

    with litellm_database(pg_cluster, label) as url, contextlib.ExitStack() as stack:
        env = dict(prisma_env)
        env.update({"DATABASE_URL": url, "DISABLE_SCHEMA_UPDATE": "true"})
        if stripe is not None:
            env.update({"CREDITS_STRIPE_API_KEY": STRIPE_API_KEY,
                        "CREDITS_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                        "CREDITS_STRIPE_API_BASE": stripe.base_url})
        penv = stack.enter_context(plugin_env(
            pg_cluster, models, providers=providers, config=config, extra_env=env,
            label=label, edit_config=own_auth))
        if stripe is not None:
            stripe.webhook_url = penv.proxy.url("/credits/stripe/webhook")
        conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        yield LiteLLMEnv(plugin=penv, litellm_url=url, litellm_conn=conn, stripe=stripe)


@contextlib.contextmanager
def shared_litellm_env(pg_cluster: PgCluster) -> Iterator[LiteLLMEnv]:
    """The session's one proxy on LiteLLM's database: model group ``chat`` on the ``openai``
    stand-in, Stripe on a stub, a credits config with the "free" and "pro" tiers."""
    tool_dir()
    config = credits_config(tiers={"free": {}, "pro": {"monthly_quota": "5000"}},
                            stripe={"success_url": "http://localhost/ok",
                                    "cancel_url": "http://localhost/cancel"})
    with StripeStub(port=free_port(STUB_PORTS), api_key=STRIPE_API_KEY,
                    webhook_secret=WEBHOOK_SECRET) as stub, litellm_env(
            pg_cluster, {"chat": [chat_deployment("openai")]}, providers=("openai",),
            label="litellm", config=config, stripe=stub) as env:
        yield env
