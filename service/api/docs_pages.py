"""`/docs` (Swagger UI) and `/redoc` (ReDoc) from vendored files, never a CDN: they render offline.

FastAPI's own pages load Swagger UI and ReDoc from jsdelivr (and ReDoc's fonts from Google), which leaves a
blank page without network. The same pages are built here with the files under `service/static/vendor/`
(`swagger-ui/`, `redoc/`: pinned versions, licences and digests in their VENDOR.md), served by the
playground's `/static` mount.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

SWAGGER_JS = "/static/vendor/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "/static/vendor/swagger-ui/swagger-ui.css"
FAVICON = "/static/vendor/swagger-ui/favicon-32x32.png"
REDOC_JS = "/static/vendor/redoc/redoc.standalone.js"


def install_docs(app: FastAPI, docs_url: str | None, redoc_url: str | None) -> None:
    """Add the two documentation pages (each only when its URL is set; both read `app.openapi_url`).
    Call with the URLs that FastAPI itself was given None for."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        return
    title = app.title
    if docs_url:
        oauth2_redirect = docs_url + "/oauth2-redirect"

        @app.get(docs_url, include_in_schema=False)
        async def swagger_ui() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{title} - API docs",
                swagger_js_url=SWAGGER_JS,
                swagger_css_url=SWAGGER_CSS,
                swagger_favicon_url=FAVICON,
                oauth2_redirect_url=oauth2_redirect,
            )

        @app.get(oauth2_redirect, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    if redoc_url:

        @app.get(redoc_url, include_in_schema=False)
        async def redoc() -> HTMLResponse:
            page = get_redoc_html(
                openapi_url=openapi_url,
                title=f"{title} - API reference",
                redoc_js_url=REDOC_JS,
                redoc_favicon_url=FAVICON,
                with_google_fonts=False,
            )
            # ReDoc's menu shows a logo from its CDN (hidden again when it fails to load): images from
            # this origin only, so the page asks nothing of the network
            page.headers["Content-Security-Policy"] = "img-src 'self' data: blob:"
            return page
