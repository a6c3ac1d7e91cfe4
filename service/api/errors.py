"""One error shape for every 4xx/5xx: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("realiz3d.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(StarletteHTTPException):
    """An error the API answers on purpose: status, a stable machine code, and a one-line message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def validation_message(errors: list[dict]) -> str:
    """`num_views: Input should be less than or equal to 8; prompt: Field required` (locations without `body`)."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (a 405's `Allow`; Starlette names only the first
    route's, and GET and DELETE of a job are two routes). Each method is tried against the routes."""
    from starlette.routing import Match

    return [
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in request.app.routes)
    ]


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = getattr(exc, "code", None) or _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)


async def _broker_down(request: Request, exc: Exception) -> JSONResponse:
    """Redis unreachable (or restarting) on any route: 503 with Retry-After, never a 500."""
    log.warning("broker unavailable on %s %s: %s", request.method, request.url.path, exc)
    context = getattr(request.app.state, "context", None)
    retry = str(context.settings.retry_after_seconds) if context is not None else "5"
    body = error_body("broker_unavailable", "the job broker is unreachable; retry later")
    return JSONResponse(body, status_code=503, headers={"Retry-After": retry})


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if (not_json := _not_json(request, errors)) is not None:
        return not_json
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(error_body("invalid_json", "the request body is not valid JSON"), status_code=400)
    return JSONResponse(error_body("invalid_request", validation_message(errors)), status_code=422)


def _not_json(request: Request, errors: list[dict]) -> JSONResponse | None:
    """A JSON route sent a body of another media type (curl's -d says application/x-www-form-urlencoded):
    415 naming the header, not a 422 about a dictionary (FastAPI reads no JSON without the header either)."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    if not any(tuple(e.get("loc", ()))[:1] == ("body",) and len(e.get("loc", ())) == 1 for e in errors):
        return None  # a whole-body problem only; field errors are the fields' (a JSON body was read)
    message = (
        f"{request.method} {request.url.path} takes a JSON body: send the header "
        f"'Content-Type: application/json' (this request sent {repr(media) if media else 'none'}; with curl add "
        "-H 'content-type: application/json')"
    )
    return JSONResponse(error_body("unsupported_media_type", message), status_code=415)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    try:
        import redis
    except ImportError:  # embedded-only install: no broker to lose
        return
    app.add_exception_handler(redis.RedisError, _broker_down)
