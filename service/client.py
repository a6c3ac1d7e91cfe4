"""A small typed Python client for the Realiz3D Serve HTTP API, sync (`Realiz3DClient`) and async
(`AsyncRealiz3DClient`), on httpx.

    with Realiz3DClient("http://127.0.0.1:8000") as client:
        job = client.submit_multiview({"prompt": "a red cube", "num_views": 4, "steps": 30})
        job = client.wait(job.id)                   # follows the job's Server-Sent Events
        png = client.download(job.id, "grid.png")

Every non-2xx answer raises `Realiz3DAPIError` with the API's error code and message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from engines.errors import Realiz3DError
from service.api.schemas import TERMINAL, JobAccepted, JobOut

__all__ = ["AsyncRealiz3DClient", "JobEvent", "JobAccepted", "JobOut", "Realiz3DAPIError", "Realiz3DClient"]


class Realiz3DAPIError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


@dataclass
class JobEvent:
    event: str  # "status" | "progress" | "error" | "shutdown" (the server is going away: reconnect)
    data: dict[str, Any]
    id: str | None = None  # the job's version: send it back as Last-Event-ID to resume

    @property
    def terminal(self) -> bool:
        return self.event == "error" or (self.event == "status" and self.data.get("status") in TERMINAL)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        err = response.json()["error"]
        code, message = err["code"], err["message"]
    except Exception:  # noqa: BLE001 - a proxy's HTML error page, say
        code, message = "http_error", response.text[:200]
    retry = response.headers.get("retry-after")
    raise Realiz3DAPIError(response.status_code, code, message, float(retry) if retry else None)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _params(request: BaseModel | dict[str, Any]) -> dict[str, Any]:
    if isinstance(request, BaseModel):
        return request.model_dump(mode="json", exclude_unset=True)
    return request


def _texture_parts(
    mesh: Path | bytes,
    params: BaseModel | dict[str, Any],
    filename: str | None,
    files: dict[str, bytes] | None = None,
) -> list:
    """Multipart parts: `mesh`, `params` and, for a .gltf, its buffers and images as `files` parts named
    by the URIs the .gltf uses."""
    if isinstance(mesh, Path | str):
        path = Path(mesh)
        data, filename = path.read_bytes(), filename or path.name
    else:
        data, filename = mesh, filename or "mesh.glb"
    parts = [
        ("mesh", (filename, data, "application/octet-stream")),
        ("params", (None, json.dumps(_params(params)), "application/json")),
    ]
    return parts + [
        ("files", (name, blob, "application/octet-stream"))
        for name, blob in _gltf_files(data, filename, files or {}).items()
    ]


def _gltf_files(gltf: bytes, filename: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """`files` keyed by the URIs the .gltf uses: a key may be the URI as written (`Normal%20Map.png`) or the
    file name it decodes to (`Normal Map.png`), as glTF URIs are percent-encoded. A URI no key carries is
    left for the gateway to refuse (422 naming it)."""
    if not files or not filename.lower().endswith(".gltf"):
        return files
    from engines.texturing.asset_files import gltf_file_uris, gltf_uri_path

    try:
        uris = gltf_file_uris(json.loads(gltf.decode("utf-8-sig")))
        by_path = {gltf_uri_path(uri): uri for uri in uris}
    except (ValueError, AttributeError, Realiz3DError):
        return files  # the gateway names what is wrong with the .gltf
    return {
        (name if name in uris else by_path.get(name.replace("\\", "/"), name)): blob
        for name, blob in files.items()
    }


class _SSEParser:
    """Server-Sent Events framing: `event:` and `data:` lines, a blank line ends an event."""

    def __init__(self) -> None:
        self.event, self.data, self.id = "message", [], None

    def feed(self, line: str) -> JobEvent | None:
        if not line:
            if not self.data:
                return None
            ev = JobEvent(self.event, json.loads("\n".join(self.data)), self.id)
            self.event, self.data, self.id = "message", [], None
            return ev
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self.event = value
        elif field == "id":
            self.id = value
        elif field == "data":
            self.data.append(value)
        return None


class Realiz3DClient:
    def __init__(
        self, base_url: str, api_key: str | None = None, timeout: float = 30.0, **httpx_kwargs: Any
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, **httpx_kwargs
        )

    def __enter__(self) -> Realiz3DClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, method: str, url: str, **kw: Any) -> Any:
        response = self._http.request(method, url, **kw)
        _raise_for(response)
        return response.json()

    def submit_multiview(
        self, request: BaseModel | dict[str, Any], idempotency_key: str | None = None
    ) -> JobAccepted:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return JobAccepted.model_validate(
            self._json("POST", "/v1/multiview", json=_params(request), headers=headers)
        )

    def submit_texture(
        self,
        mesh: Path | bytes,
        params: BaseModel | dict[str, Any],
        filename: str | None = None,
        idempotency_key: str | None = None,
        files: dict[str, bytes] | None = None,
    ) -> JobAccepted:
        """`files`: a .gltf's external buffers and images, keyed by the URI the .gltf gives them."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        parts = _texture_parts(mesh, params, filename, files)
        return JobAccepted.model_validate(self._json("POST", "/v1/texture", files=parts, headers=headers))

    def get_job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._json("DELETE", f"/v1/jobs/{job_id}"))

    def events(
        self, job_id: str, timeout: float | None = None, last_event_id: str | None = None
    ) -> Iterator[JobEvent]:
        """The job's events until it ends (or the server closes the stream); `last_event_id` resumes
        after an event already seen."""
        parser = _SSEParser()
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        url = f"/v1/jobs/{job_id}/events"
        with self._http.stream("GET", url, timeout=timeout, headers=headers) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            for line in response.iter_lines():
                if (ev := parser.feed(line)) is not None:
                    yield ev
                    if ev.terminal:
                        return

    def wait(self, job_id: str, timeout: float | None = None) -> JobOut:
        """Block until the job succeeded, failed or was canceled; returns its final record."""
        for ev in self.events(job_id, timeout=timeout):
            if ev.terminal and ev.event == "status":
                return JobOut.model_validate(ev.data)
        return self.get_job(job_id)

    def download(self, job_id: str, name: str) -> bytes:
        """The artifact's bytes, from the gateway or the object store it redirects to (presigned URL;
        httpx drops the API key on a redirect to another origin)."""
        response = self._http.get(f"/v1/jobs/{job_id}/artifacts/{name}", follow_redirects=True)
        _raise_for(response)
        return response.content

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def metrics(self) -> str:
        response = self._http.get("/metrics")
        _raise_for(response)
        return response.text


class AsyncRealiz3DClient:
    def __init__(
        self, base_url: str, api_key: str | None = None, timeout: float = 30.0, **httpx_kwargs: Any
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, **httpx_kwargs
        )

    async def __aenter__(self) -> AsyncRealiz3DClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _json(self, method: str, url: str, **kw: Any) -> Any:
        response = await self._http.request(method, url, **kw)
        _raise_for(response)
        return response.json()

    async def submit_multiview(
        self, request: BaseModel | dict[str, Any], idempotency_key: str | None = None
    ) -> JobAccepted:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = await self._json("POST", "/v1/multiview", json=_params(request), headers=headers)
        return JobAccepted.model_validate(data)

    async def submit_texture(
        self,
        mesh: Path | bytes,
        params: BaseModel | dict[str, Any],
        filename: str | None = None,
        idempotency_key: str | None = None,
        files: dict[str, bytes] | None = None,
    ) -> JobAccepted:
        """`files`: a .gltf's external buffers and images, keyed by the URI the .gltf gives them."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        parts = _texture_parts(mesh, params, filename, files)
        return JobAccepted.model_validate(
            await self._json("POST", "/v1/texture", files=parts, headers=headers)
        )

    async def get_job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(await self._json("GET", f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate(await self._json("DELETE", f"/v1/jobs/{job_id}"))

    async def events(self, job_id: str, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        parser = _SSEParser()
        async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
            if not response.is_success:
                await response.aread()
                _raise_for(response)
            async for line in response.aiter_lines():
                if (ev := parser.feed(line)) is not None:
                    yield ev
                    if ev.terminal:
                        return

    async def wait(self, job_id: str, timeout: float | None = None) -> JobOut:
        async for ev in self.events(job_id, timeout=timeout):
            if ev.terminal and ev.event == "status":
                return JobOut.model_validate(ev.data)
        return await self.get_job(job_id)

    async def download(self, job_id: str, name: str) -> bytes:
        response = await self._http.get(f"/v1/jobs/{job_id}/artifacts/{name}", follow_redirects=True)
        _raise_for(response)
        return response.content

    async def ready(self) -> bool:
        return (await self._http.get("/readyz")).status_code == 200
