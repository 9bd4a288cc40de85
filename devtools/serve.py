"""``make run``: serve the proxy with the plugin on port 4000, offline.

Migrates the credits database (``CREDITS_DATABASE_URL``), starts the stand-in
providers the repo's ``litellm_config.yaml`` points at (127.0.0.1:8101-8105)
unless ``STANDINS=0``, and runs the pinned proxy in the foreground until
Ctrl-C, then stops the stand-ins it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devtools.upstream import UpstreamProcess
from litellm_credits.store import migrate as migrations

PROVIDERS = ["openai", "anthropic", "openrouter", "together_ai", "deepinfra"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    url = os.environ["CREDITS_DATABASE_URL"]
    config = os.environ.get("LITELLM_CONFIG", "litellm_config.yaml")
    port = os.environ.get("PROXY_PORT", "4000")
    for m in migrations.migrate(url):
        print(f"applied {m.filename}")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.setdefault("LITELLM_MASTER_KEY", "sk-local-master")
    # The local run keeps its spool beside its database, under .run/, not in $HOME.
    env.setdefault("CREDITS_SPOOL_DIR", str(Path(".run/spool").resolve()))
    standins = None
    if env.get("STANDINS", "1") == "1":
        standins = UpstreamProcess(PROVIDERS, 8101, record=False)
        standins.start()
        print(f"stand-in providers: {standins.base_urls}")
    print(f"proxy on http://127.0.0.1:{port} (master key from LITELLM_MASTER_KEY, "
          f"default sk-local-master), credits db {url}", flush=True)
    litellm = Path(sys.executable).with_name("litellm")
    proxy = subprocess.Popen([str(litellm), "--config", config, "--port", port], env=env)
    try:
        return proxy.wait()
    except KeyboardInterrupt:
        proxy.send_signal(signal.SIGINT)
        return proxy.wait()
    finally:
        if standins is not None:
            standins.stop()


if __name__ == "__main__":
    sys.exit(main())
