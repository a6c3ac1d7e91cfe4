"""Request limits, enforced while the body streams in (never after buffering all of it): size, the time
the body may take to arrive, and the size and nesting of a GLB's JSON before any parser reads it."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engines.errors import MeshError
from engines.texturing.gltf_document import MAX_GLTF_JSON_BYTES, load_json
from service.api.errors import ApiError
from service.api.texture_form import FILE_PARTS, PARAMS_PART, merged_params

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


def check_gltf_json(data: bytes) -> None:
    """MeshError when `data` is a GLB whose JSON chunk is over MAX_GLTF_JSON_BYTES, too many objects or
    nested too deep, checked by the one loader every glTF JSON goes through (`gltf_document.load_json`)."""
    if len(data) < 20 or data[:4] != b"glTF":
        return
    (chunk_len,) = struct.unpack_from("<I", data, 12)
    if chunk_len > MAX_GLTF_JSON_BYTES:
        raise MeshError(f"the GLB's JSON chunk is {chunk_len} bytes, over {MAX_GLTF_JSON_BYTES}")
    load_json(data[20 : 20 + chunk_len], "the GLB")


class BodyLimitMiddleware:
    """413 for any request body over `limit` bytes (early from Content-Length, else while streaming), and
    408 for a body that takes longer than `timeout_s` to arrive (a slow client holds no worker of ours)."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 60.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is None:
            if b"transfer-encoding" not in headers:  # no body (RFC 9112 6.3): nothing to bound or time
                return await self.app(scope, receive, send)
        elif declared.isdigit() and int(declared) > limit:
            await _drain(receive, limit * _DRAIN_FACTOR)
            return await _send_413(send, limit)
        seen = 0
        deadline: float | None = None
        body_done = False

        async def limited_receive() -> Message:
            nonlocal seen, deadline, body_done
            if body_done:  # later receives wait for a disconnect (streaming responses): no deadline
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout_s
            try:
                # timeout_at, not wait_for: no task per receive (~15 us of a small POST's CPU)
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(
                    408, "body_timeout", f"the request body did not arrive within {self.timeout_s:g} s"
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
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
    display_name: str | None = None  # what the client uploaded, when `filename` is our packing of it


#: A .gltf's own files (buffers, images) arrive as repeated `files` parts; more than this is refused.
MAX_MESH_FILE_PARTS = 64
#: non-file parts: `params` and the job's parameters as plain form fields (texture_form)
MAX_FORM_FIELDS = 48


def pack_gltf_parts(gltf_name: str, gltf: bytes, files: list[tuple[str, bytes]]) -> MeshUpload:
    """A .gltf and the files it refers to, sent as separate parts, as one in-memory .zip: the mesh loader
    already resolves a zipped .gltf's relative URIs. Part file names are the URIs as the .gltf writes them
    (`textures/Normal%20Map.png`) or the file names they decode to (`textures/Normal Map.png`): each is
    stored under the decoded name, which is what the loader reads (glTF URIs are percent-encoded). Absolute
    paths and `..` are refused, and so is a .gltf that names a file no part carries (422 naming it)."""
    import io
    import posixpath
    import zipfile

    from engines.texturing.asset_files import gltf_file_uris, match_gltf_parts

    try:
        uris = gltf_file_uris(load_json(gltf, posixpath.basename(gltf_name) or "the .gltf"))
    except MeshError as e:
        raise ApiError(422, e.code, f"mesh: {e}") from e
    try:
        paths, missing = match_gltf_parts(uris, [name for name, _ in files])
    except MeshError:
        paths, missing = {}, []
    if missing:
        raise ApiError(
            422,
            "invalid_mesh",
            f"files: the .gltf refers to '{missing[0][:200]}', which no `files` part carries (name each "
            "part by the URI the .gltf uses; percent-encoded or decoded both work)",
        )
    buffer = io.BytesIO()
    seen: set[str] = set()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(posixpath.basename(gltf_name) or "scene.gltf", gltf)
        for name, data in files:
            clean = paths.get(name)
            if not name or clean is None or clean in seen:
                why = "repeated" if clean in seen else "not a relative path inside the asset"
                raise ApiError(422, "invalid_request", f"files: part file name {name!r} is {why}")
            seen.add(clean)
            zf.writestr(clean, data)
    stem = posixpath.splitext(posixpath.basename(gltf_name))[0] or "scene"
    return MeshUpload(
        filename=f"{stem}.zip",
        data=buffer.getvalue(),
        params_json="",
        display_name=posixpath.basename(gltf_name) or None,
    )


async def read_mesh_upload(request: Request) -> MeshUpload:
    """Parse `multipart/form-data` with parts `mesh` (file), `params` (JSON text) and/or the parameters as
    plain form fields (merged into one JSON text, `texture_form.merged_params`) and, for a `.gltf` with
    external buffers or images, its files as repeated `files` parts (packed here into one .zip).

    The body size is already capped by BodyLimitMiddleware while it streams; file parts spool to disk
    past 1 MiB inside the parser, so memory stays bounded too.
    """
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "multipart/form-data":  # media types are case-insensitive
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data with parts 'mesh' and 'params'"
        )
    parser = MultiPartParser(
        request.headers, request.stream(), max_files=1 + MAX_MESH_FILE_PARTS, max_fields=MAX_FORM_FIELDS
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {e.message}") from e
    try:
        mesh = form.get("mesh")
        params = form.get("params")
        if not isinstance(mesh, UploadFile):
            raise ApiError(422, "invalid_request", "mesh: a file part named 'mesh' is required")
        if isinstance(params, UploadFile):
            params = (await params.read()).decode("utf-8", errors="replace")
        # plain form fields (-F prompt=... -F steps=20) join the params part's object
        fields = {k: v for k, v in form.multi_items() if k not in (*FILE_PARTS, PARAMS_PART)}
        for name, value in fields.items():
            if not isinstance(value, str):
                raise ApiError(422, "invalid_request", f"{name}: a form field, not a file, is expected")
        params = merged_params(params, fields)
        data = await mesh.read()
        filename = mesh.filename or "mesh"
        parts = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not parts:
            return MeshUpload(filename=filename, data=data, params_json=str(params))
        if not filename.lower().endswith(".gltf"):
            raise ApiError(
                422,
                "invalid_request",
                "files: extra file parts go with a .gltf mesh (its buffers and images)",
            )
        files = [(f.filename or "", await f.read()) for f in parts]
        packed = pack_gltf_parts(filename, data, files)
        packed.params_json = str(params)
        return packed
    finally:
        await form.close()
