"""`/docs` (Swagger UI) and `/redoc` render in Debian's Chromium with nothing fetched from outside the
service: the UI files are vendored (service/static/vendor/{swagger-ui,redoc}, digests in their VENDOR.md),
and the playground's "API docs" link leads there.

The app runs without a model (an in-memory job store, no worker): the pages need only the OpenAPI document.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_playground_browser import CHROMIUM_ARGS, _same_origin, chromium_path

pytestmark = pytest.mark.timeout(180)

VENDOR = Path(__file__).resolve().parent.parent / "service" / "static" / "vendor"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory) -> Iterator[str]:
    import uvicorn

    from service.api.app import create_app
    from service.api.auth import ApiKeys
    from service.api.context import ServiceContext
    from service.jobs.memory_store import MemoryJobStore
    from service.jobs.queue import InProcessJobQueue
    from service.settings import Settings
    from service.storage import make_artifact_store

    settings = Settings(artifact_dir=tmp_path_factory.mktemp("artifacts"), webhook_secret="x")
    ctx = ServiceContext(
        settings=settings,
        store=MemoryJobStore(),
        queue=InProcessJobQueue(),
        artifacts=make_artifact_store(settings),
        keys=ApiKeys(""),
        mode="embedded",
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("name", ["swagger-ui", "redoc"])
def test_vendored_files_match_their_manifest(name):
    manifest = (VENDOR / name / "VENDOR.md").read_text()
    rows = dict(re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", manifest))
    assert rows and "LICENSE" in rows
    for file, digest in rows.items():
        assert hashlib.sha256((VENDOR / name / file).read_bytes()).hexdigest() == digest, file


def test_pages_name_only_local_files(docs_server):
    for path in ("/docs", "/redoc"):
        html = httpx.get(docs_server + path).text
        assert "/static/vendor/" in html
        assert not re.findall(r"(?:src|href)=\"https?://", html), html
    for path in (
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/redoc/redoc.standalone.js",
    ):
        assert httpx.get(docs_server + path).status_code == 200, path


def test_docs_and_redoc_render_offline_in_chromium(docs_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            requests: list[str] = []  # what reached the network
            errors: list[str] = []

            def network(route) -> None:  # noqa: ANN001
                # Anything leaving the service is refused, as it would be offline.
                requests.append(route.request.url)
                if _same_origin(route.request.url, docs_server):
                    route.continue_()
                else:
                    route.abort("internetdisconnected")

            context.route("**/*", network)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))

            # The playground's "API docs" link opens Swagger UI, which lists the job routes.
            page.goto(docs_server + "/")
            page.locator("a", has_text="API docs").first.click()
            page.wait_for_url(docs_server + "/docs")
            page.locator(".opblock-summary-path", has_text="/v1/multiview").first.wait_for(timeout=30_000)
            assert page.locator(".opblock-summary-path", has_text="/v1/texture").count() >= 1
            assert "Realiz3D Serve" in page.locator(".info .title").inner_text()
            page.screenshot(path=str(tmp_path / "docs.png"))

            page.goto(docs_server + "/redoc")
            page.locator("h1", has_text="Realiz3D Serve").wait_for(timeout=30_000)
            page.locator("h2", has_text="Generate N views of an object from a prompt").wait_for()
            page.screenshot(path=str(tmp_path / "redoc.png"))

            foreign = [u for u in requests if not _same_origin(u, docs_server)]
            assert not foreign, f"the docs reached outside the service: {foreign}"
            assert not errors, errors
        finally:
            browser.close()
