"""The credits page, ``GET /credits/ui``: one static HTML file, no build step, no libraries.

The page (``static/credits.html``) is plain HTML with one inline script and
one inline stylesheet; the chart is inline SVG drawn by that script. It holds
no data itself: the browser asks the ``/credits`` API with the key the user
pastes, so the page needs no authentication and every authorization decision
stays in :mod:`litellm_credits.api.auth`.

Served with a strict Content-Security-Policy: only the page's own script and
style (pinned by their SHA-256 hashes, computed here when the file is read),
requests only to this origin, no framing, no referrer. API data is put on the
page with ``textContent`` only, never as markup. The key is kept in the tab's
``sessionStorage`` (gone when the tab closes) and sent only in the
``Authorization`` header to this proxy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["UI_PATH", "mount", "page"]

UI_PATH = "/credits/ui"
_MOUNTED = "litellm_credits_ui_mounted"
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


@dataclass(frozen=True)
class Page:
    html: bytes
    headers: dict[str, str]


def _hashes(pattern: re.Pattern[str], text: str) -> str:
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode("utf-8")).digest()).decode() + "'"
        for m in pattern.findall(text)
    )


@cache
def page(name: str = "static/credits.html") -> Page:
    """A page and its security headers (read once per process); api/console.py serves
    ``static/console.html`` the same way."""
    text = resources.files("litellm_credits.api").joinpath(name).read_text("utf-8")
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {_hashes(_SCRIPT, text)}",
        f"style-src {_hashes(_STYLE, text)}",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Page(text.encode("utf-8"), headers)


def mount(app: Any) -> None:
    """Serve ``GET /credits/ui`` on ``app`` (the proxy's). Mounting twice does nothing."""
    state = getattr(app, "state", None)
    if state is not None and getattr(state, _MOUNTED, False):
        return
    if any(getattr(r, "path", None) == UI_PATH for r in app.router.routes):
        return
    from fastapi.responses import HTMLResponse

    async def credits_ui() -> Any:  # only names of this module's globals in annotations
        current = page()
        return HTMLResponse(current.html, headers=current.headers)

    app.add_api_route(UI_PATH, credits_ui, methods=["GET"], include_in_schema=False,
                      response_class=HTMLResponse, response_model=None)
    if state is not None:
        setattr(state, _MOUNTED, True)
