"""Run the pinned LiteLLM proxy as a child process, and build configs that point it at stand-ins.

This module owns:

* :class:`ProxyProcess`: writes a config YAML, starts ``<venv>/bin/litellm --config X --port P
  --host 127.0.0.1 --num_workers 1``, waits for ``GET /health/liveliness``, captures
  stdout+stderr in a log file, and stops (SIGTERM then SIGKILL), kills (SIGKILL, for crash
  tests) or restarts it.
* :func:`build_proxy_config` / :class:`DeploymentSpec`: a minimal proxy config whose model
  groups route to the stand-ins of :mod:`devtools.upstream`, each deployment reported by
  LiteLLM under the provider name we want (see :data:`PROVIDER_ROUTES`), with exact
  per-token prices.
* :func:`custom_auth`: the test ``general_settings.custom_auth`` hook (no LiteLLM database is
  needed): the master key is a ``proxy_admin``, ``sk-user-<name>`` an ``internal_user`` with
  user_id ``<name>``, ``sk-admin-<name>`` a ``proxy_admin`` with user_id ``<name>``, anything
  else is a 401.

Importing this module does not import LiteLLM (tests stay fast); only :func:`custom_auth`
does, and it runs inside the proxy process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

if TYPE_CHECKING:  # pragma: no cover - typing only; LiteLLM is heavy to import
    from fastapi import Request
    from litellm.proxy._types import UserAPIKeyAuth

__all__ = [
    "MASTER_KEY",
    "PROVIDER_ROUTES",
    "DeploymentSpec",
    "ProxyProcess",
    "ProxyStartError",
    "build_proxy_config",
    "custom_auth",
    "user_key",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
MASTER_KEY = "sk-master-test"
USER_KEY_PREFIX = "sk-user-"
ADMIN_KEY_PREFIX = "sk-admin-"
CUSTOM_AUTH_PATH = "devtools.proxy.custom_auth"
READY_PATH = "/health/liveliness"  # unauthenticated; 200 "I'm alive!" once startup finished

# How a stand-in named <provider> becomes a LiteLLM deployment that LiteLLM reports as that
# provider (standard_logging_object["custom_llm_provider"], kwargs["custom_llm_provider"]).
# value: (model prefix, api_base suffix appended to the stand-in root URL).
# * openai / openrouter / together_ai / deepinfra ... are OpenAI-compatible in LiteLLM: they post
#   to f"{api_base}/chat/completions", so api_base is the stand-in's /v1 URL.
# * anthropic speaks the Anthropic Messages API: LiteLLM appends "/v1/messages" to api_base, so
#   api_base is the stand-in's root; devtools.upstream serves that protocol too.
# Any other name falls back to "openai/" and is tagged in model_info["provider"] only.
PROVIDER_ROUTES: dict[str, tuple[str, str]] = {
    "openai": ("openai", "/v1"),
    "anthropic": ("anthropic", ""),
    "openrouter": ("openrouter", "/v1"),
    "together_ai": ("together_ai", "/v1"),
    "deepinfra": ("deepinfra", "/v1"),
    "groq": ("groq", "/v1"),
    "fireworks_ai": ("fireworks_ai", "/v1"),
    "mistral": ("mistral", "/v1"),
    "deepseek": ("deepseek", "/v1"),
    "xai": ("xai", "/v1"),
}

# Exact binary-friendly defaults so a test can compute cost = tokens * price exactly.
DEFAULT_INPUT_COST = 0.000001  # USD per prompt token
DEFAULT_OUTPUT_COST = 0.000002  # USD per completion token


class ProxyStartError(RuntimeError):
    """The proxy exited or did not answer in time; the message carries the log tail."""


class PortInUse(ProxyStartError):
    """Another process took the chosen port between choosing it and the proxy's bind."""


_BIND_FAILED = "address already in use"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def user_key(name: str) -> str:
    """The test API key that :func:`custom_auth` maps to internal_user ``name``."""
    return f"{USER_KEY_PREFIX}{name}"


@dataclasses.dataclass
class DeploymentSpec:
    """One deployment in a model group, pointing at one stand-in."""

    provider: str  # stand-in / provider name, e.g. "anthropic"
    model: str = "stand-in-model"  # model id sent upstream
    input_cost_per_token: float = DEFAULT_INPUT_COST
    output_cost_per_token: float = DEFAULT_OUTPUT_COST
    api_key: str | None = None  # platform key; default "sk-platform-<provider>"
    deployment_id: str | None = None  # model_info.id; default "<group>-<provider>"
    extra_litellm_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra_model_info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _deployment(group: str, spec: DeploymentSpec, upstream_root: str) -> dict[str, Any]:
    prefix, suffix = PROVIDER_ROUTES.get(spec.provider, ("openai", "/v1"))
    litellm_params: dict[str, Any] = {
        "model": f"{prefix}/{spec.model}",
        "api_base": upstream_root.rstrip("/") + suffix,
        "api_key": spec.api_key or f"sk-platform-{spec.provider}",
        "input_cost_per_token": spec.input_cost_per_token,
        "output_cost_per_token": spec.output_cost_per_token,
        **spec.extra_litellm_params,
    }
    model_info: dict[str, Any] = {
        # A stable id makes deployments addressable (router filtering, assertions in tests);
        # LiteLLM would otherwise hash the params into a random-looking id.
        "id": spec.deployment_id or f"{group}-{spec.provider}",
        # Our own tag; the only provider signal for names not in PROVIDER_ROUTES.
        "provider": spec.provider,
        **spec.extra_model_info,
    }
    return {"model_name": group, "litellm_params": litellm_params, "model_info": model_info}


def _root(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def build_proxy_config(
    upstreams: Mapping[str, str],
    models: Mapping[str, Sequence[str | DeploymentSpec]] | None = None,
    *,
    master_key: str = MASTER_KEY,
    callbacks: Sequence[str] = (),
    use_custom_auth: bool = True,
    num_retries: int = 0,
    disable_cooldowns: bool = True,
    router_settings: Mapping[str, Any] | None = None,
    litellm_settings: Mapping[str, Any] | None = None,
    general_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A minimal proxy config routing to stand-ins.

    ``upstreams``: provider name -> stand-in URL (root or ``/v1``; e.g.
    ``UpstreamGroup.base_urls``). ``models``: model group -> deployments, each a provider name
    or a :class:`DeploymentSpec`; default: group ``"test-model"`` with one deployment per
    upstream. ``num_retries`` defaults to 0 so a failing stand-in fails the request at once
    (tests that want retries say so). ``callbacks`` are dotted paths such as
    ``"litellm_credits.handler"``.

    ``disable_cooldowns`` defaults to True: otherwise one upstream 401/404/408/429 (e.g. one
    user's bad BYOK key) puts the shared deployment in a 5 s cooldown and every other user of
    that model group gets 429 "No deployments available" (seen; docs/litellm-hooks.md).
    """
    if models is None:
        models = {"test-model": list(upstreams)}
    model_list: list[dict[str, Any]] = []
    for group, deployments in models.items():
        for item in deployments:
            spec = item if isinstance(item, DeploymentSpec) else DeploymentSpec(provider=item)
            if spec.provider not in upstreams:
                raise KeyError(f"model group {group!r}: no upstream named {spec.provider!r}")
            model_list.append(_deployment(group, spec, _root(upstreams[spec.provider])))

    # always_include_stream_usage: bill streams on the provider's own usage (see
    # litellm_config.yaml).
    general: dict[str, Any] = {"master_key": master_key, "always_include_stream_usage": True}
    if use_custom_auth:
        general["custom_auth"] = CUSTOM_AUTH_PATH
    general.update(general_settings or {})
    litellm_s: dict[str, Any] = {
        "num_retries": num_retries,
        "request_timeout": 30,
        # No network here: nothing should try to phone home.
        "telemetry": False,
    }
    if callbacks:
        litellm_s["callbacks"] = list(callbacks)
    litellm_s.update(litellm_settings or {})
    router: dict[str, Any] = {"num_retries": num_retries, "disable_cooldowns": disable_cooldowns}
    router.update(router_settings or {})
    return {
        "model_list": model_list,
        "litellm_settings": litellm_s,
        "router_settings": router,
        "general_settings": general,
    }


def _venv_litellm() -> Path:
    """The ``litellm`` console script of the interpreter running us (the project's .venv)."""
    candidate = Path(sys.prefix) / "bin" / "litellm"
    if candidate.exists():
        return candidate
    fallback = REPO_ROOT / ".venv" / "bin" / "litellm"
    if fallback.exists():
        return fallback
    raise FileNotFoundError("no litellm executable in the virtualenv; run `make install`")


class ProxyProcess:
    """The pinned LiteLLM proxy as a subprocess with one worker.

    ``config`` is a dict (written as YAML next to the log) or an existing YAML path. ``env`` is
    added on top of this process's environment, with these defaults:

    * ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no price-map download; there is no network);
    * the repo root on ``PYTHONPATH`` so ``devtools.proxy.custom_auth`` and
      ``litellm_credits.handler`` import;
    * ``DATABASE_URL`` removed unless ``env`` sets it: with it LiteLLM itself tries to run
      Prisma. The plugin reads ``CREDITS_DATABASE_URL``.

    The config file is written outside the repo on purpose: LiteLLM resolves dotted paths
    (callbacks, custom_auth) relative to the config's directory first and, if a matching file
    is there, loads it as a second, separate module object (read in source,
    ``proxy/types_utils/utils.py`` ``get_instance_fn``).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | Path,
        port: int,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port
        self._log_offset = 0  # where this start's part of the log begins
        self.host = host
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if log_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix=f"litellm-proxy-{port}-")
            log_path = Path(self._tmpdir.name) / "proxy.log"
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(config, Path):
            self.config_path = config
        else:
            self.config_path = self.log_path.with_name(f"{self.log_path.stem}.config.yaml")
            self.write_config(config)
        self.env = self._build_env(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    # -- configuration ---------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        """(Re)write the YAML; takes effect at the next start()/restart()."""
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))

    @staticmethod
    def _build_env(extra: Mapping[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        if "DATABASE_URL" not in extra:
            env.pop("DATABASE_URL", None)
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file before a crash
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.update(extra)
        return env

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            str(_venv_litellm()),
            "--config",
            str(self.config_path),
            "--port",
            str(self.port),
            "--host",
            self.host,
            "--num_workers",
            "1",
            *self.extra_args,
        ]

    def start(self, wait: bool = True) -> ProxyProcess:
        self._launch()
        if wait:
            self.wait_ready()
        return self

    def _launch(self) -> None:
        if self.running:
            raise RuntimeError(f"proxy on port {self.port} already running (pid {self.pid})")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')} {self.command()}\n".encode())
            log.flush()
            # Own session: the proxy and anything it spawns form one process group whose id
            # is the pid we got, so stop() can clean up children without matching by name.
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=str(REPO_ROOT),
                start_new_session=True,
            )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the proxy answers; if its port was taken, relaunch it on another.

        Ports are chosen free, then bound seconds later by the proxy, and they lie in the
        kernel's ephemeral range: another test's server or any outgoing connection can take
        one meanwhile. ``self.port`` follows the move, so ``url()`` stays right.
        """
        for attempt in range(3):
            try:
                self._await_ready(timeout)
                return
            except PortInUse:
                if attempt == 2:
                    raise
                self.port = _free_port(self.host)
                self._launch()

    def _await_ready(self, timeout: float | None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while time.monotonic() < deadline:
            exited = self.proc is None or self.proc.poll() is not None
            # Checked before the exit: a proxy that could not bind logs it and then exits
            # (code 3), often before this loop looks again.
            if self._bind_failed():
                self.kill()
                raise PortInUse(f"port {self.port} is already in use\n{self.log_tail()}")
            if exited:
                code = None if self.proc is None else self.proc.returncode
                raise ProxyStartError(f"proxy exited with {code}\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url(READY_PATH), timeout=2.0).status_code == 200:
                    return
            time.sleep(0.2)
        self.kill()
        raise ProxyStartError(
            f"proxy not ready after {timeout or self.startup_timeout}s\n{self.log_tail()}"
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # pgid == pid: start_new_session=True

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful: LiteLLM flushes callbacks), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        self._signal_group(signal.SIGKILL)  # leftovers of our own group only
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> int | None:
        """SIGKILL now: simulates a crash (no shutdown hooks, no flush)."""
        if self.proc is None:
            return None
        self._signal_group(signal.SIGKILL)
        self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self, wait: bool = True) -> ProxyProcess:
        self.stop()
        return self.start(wait=wait)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _bind_failed(self) -> bool:
        """Whether this start's part of the log says the port was taken."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return _BIND_FAILED.encode() in log.read()
        except FileNotFoundError:
            return False

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> ProxyProcess:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


@contextlib.contextmanager
def running_proxy(
    config: Mapping[str, Any] | Path,
    port: int,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> Iterator[ProxyProcess]:
    """``with running_proxy(cfg, port) as proxy:`` convenience wrapper."""
    proxy = ProxyProcess(config, port, env, log_path)
    with proxy:
        yield proxy


async def custom_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """Test auth for ``general_settings.custom_auth: devtools.proxy.custom_auth``.

    Runs inside the proxy. LiteLLM without its database rejects every key but the master key
    ("No connected db."), so tests get non-admin users from here instead. Any exception raised
    here becomes a 401 ProxyException (read in source,
    ``proxy/auth/auth_exception_handler.py`` ``_as_proxy_exception``).
    """
    from fastapi import HTTPException
    from litellm.proxy._types import LitellmUserRoles
    from litellm.proxy._types import UserAPIKeyAuth as Auth

    try:  # the master key configured for this proxy, not a hard-coded one
        from litellm.proxy.proxy_server import master_key as configured_master
    except ImportError:  # pragma: no cover - always present in 1.102.4
        configured_master = None
    master = configured_master or MASTER_KEY

    if api_key == master:
        # Same identity LiteLLM's own master-key path produces (user_id "default_user_id").
        return Auth(
            api_key=api_key, user_id="default_user_id", user_role=LitellmUserRoles.PROXY_ADMIN
        )
    for prefix, role in (
        (USER_KEY_PREFIX, LitellmUserRoles.INTERNAL_USER),
        (ADMIN_KEY_PREFIX, LitellmUserRoles.PROXY_ADMIN),
    ):
        if api_key and api_key.startswith(prefix) and len(api_key) > len(prefix):
            name = api_key[len(prefix) :]
            return Auth(api_key=api_key, user_id=name, user_role=role, key_alias=name)
    raise HTTPException(status_code=401, detail="invalid test API key")
