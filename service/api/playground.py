"""The web playground: `GET /` and `GET /playground` serve one static page, `/static/*` its files.

Everything the page needs ships in the package (`service/static/`, three.js vendored at a pinned version):
no build step, no CDN, nothing fetched from outside the service's own origin, so it works offline and from
the API image (no torch) as well as in embedded mode. The page talks to the public HTTP API only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def _page() -> tuple[str, str]:
    """The page and its Content-Security-Policy: only this origin; the inline import map by its hash."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    inline = re.findall(r"<script type=\"importmap\">(.*?)</script>", html, flags=re.S)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline
    )
    csp = (
        "default-src 'self'; "
        f"script-src 'self' {hashes}; "
        # blob: the artifacts are fetched with the API key header and shown from object URLs
        "img-src 'self' blob: data:; connect-src 'self' blob: data:; "
        "style-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
    )
    return html, csp


def _page_response() -> HTMLResponse:
    html, csp = _page()
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": csp,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
def playground_root() -> HTMLResponse:
    return _page_response()


@router.api_route("/playground", methods=["GET", "HEAD"], response_class=HTMLResponse)
def playground() -> HTMLResponse:
    return _page_response()


def install_playground(app: FastAPI) -> None:
    """Add the page routes and mount its static files at /static."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
