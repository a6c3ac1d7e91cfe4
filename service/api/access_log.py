"""One short line per HTTP request on the `realiz3d.access` logger: `POST /v1/multiview 202 3.1 ms`.

Settings.access_log (REALIZ3D_ACCESS_LOG, `realiz3d serve --access-log/--no-access-log`); unset: on in
embedded mode, off in gateway mode. The query string is left out (it may carry tokens); a streamed response
(an event stream, an artifact) is logged when it ends, with its whole duration.
"""

from __future__ import annotations

import logging

from starlette.types import Scope

log = logging.getLogger("realiz3d.access")


def access_log_enabled(setting: bool | None, mode: str) -> bool:
    return setting if setting is not None else mode == "embedded"


def log_request(scope: Scope, status: int, seconds: float) -> None:
    log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000)
