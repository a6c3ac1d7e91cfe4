"""One short line per HTTP request on the `realiz3d.access` logger: `POST /v1/multiview 202 3.1 ms`.

Settings.access_log (REALIZ3D_ACCESS_LOG, `realiz3d serve --access-log/--no-access-log`); unset: on in
embedded mode, off in gateway mode. The query string is left out (it may carry tokens); a streamed response
(an event stream, an artifact) is logged when it ends, with its whole duration.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("realiz3d.access")


def access_log_enabled(setting: bool | None, mode: str) -> bool:
    return setting if setting is not None else mode == "embedded"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            ms = (time.perf_counter() - start) * 1000
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, ms)
