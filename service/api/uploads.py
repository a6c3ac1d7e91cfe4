"""Request size limits, enforced while the body streams in (never after buffering all of it)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ApiError

# Past the limit the rest of the body is read and dropped, up to this many times the limit, so the
# client gets its 413 instead of a reset connection; beyond that the connection is cut.
_DRAIN_FACTOR = 4


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")


async def _drain(receive: Receive, budget: int) -> None:
    more = True
    while more and budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        more = message.get("more_body", False)


class BodyLimitMiddleware:
    """413 for any request body over `limit` bytes: early from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _drain(receive, limit * _DRAIN_FACTOR)
            return await _send_413(send, limit)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if message.get("more_body"):
                        await _drain(receive, limit * _DRAIN_FACTOR)
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_413(send: Send, limit: int) -> None:
    import json

    body = json.dumps(
        {"error": {"code": "payload_too_large", "message": f"the request body is larger than {limit} bytes"}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class MeshUpload:
    filename: str
    data: bytes
    params_json: str


async def read_mesh_upload(request: Request) -> MeshUpload:
    """Parse `multipart/form-data` with parts `mesh` (file) and `params` (JSON text).

    The body size is already capped by BodyLimitMiddleware while it streams; file parts spool to disk
    past 1 MiB inside the parser, so memory stays bounded too.
    """
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data with parts 'mesh' and 'params'"
        )
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=2)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {e.message}") from e
    try:
        mesh = form.get("mesh")
        params = form.get("params")
        if not isinstance(mesh, UploadFile):
            raise ApiError(422, "invalid_request", "mesh: a file part named 'mesh' is required")
        if params is None:
            params = "{}"
        if isinstance(params, UploadFile):
            params = (await params.read()).decode("utf-8", errors="replace")
        data = await mesh.read()
        return MeshUpload(filename=mesh.filename or "mesh", data=data, params_json=str(params))
    finally:
        await form.close()
