"""Optional API keys. Keys are kept only as SHA-256 hashes; a client is identified by its key's hash.

`REALIZ3D_API_KEYS` is a comma-separated list of keys, or of `sha256:<hex>` entries so that a deployment
never has to hold the plain key at all. Empty = no auth, every job visible to every caller.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_body

#: every job route lies under it; the playground, docs, probes and /metrics do not
GUARDED_PREFIX = "/v1/"
_UNAUTHORIZED = "a valid API key is required (Authorization: Bearer KEY)"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, spec: str) -> None:
        self._hashes: list[str] = []
        for entry in (e.strip() for e in spec.split(",")):
            if entry:
                self._hashes.append(entry[7:].lower() if entry.startswith("sha256:") else hash_key(entry))

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def owner_of(self, key: str | None) -> str | None:
        """The client id (a prefix of the key's hash) for a valid key, else None."""
        if not key:
            return None
        digest = hash_key(key)
        # compare_digest on every entry: the time taken does not tell how much of a hash matched
        if any(hmac.compare_digest(digest, h) for h in self._hashes):
            return digest[:24]
        return None


def presented_key(request: HTTPConnection) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


class ApiKeyMiddleware:
    """Authentication at the edge, installed only when keys are configured: a request under /v1/ without a
    valid key is answered 401 before routing, before its body is read or validated (an unknown caller
    learns nothing of the schema, nor of which routes exist), and the caller's owner id rides in the
    request's state for the routes (`request_owner`). No route solves a dependency for it."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(GUARDED_PREFIX):
            owner = self.keys.owner_of(presented_key(HTTPConnection(scope)))
            if owner is None:
                response = JSONResponse(
                    error_body("unauthorized", _UNAUTHORIZED), 401, headers={"WWW-Authenticate": "Bearer"}
                )
                return await response(scope, receive, send)
            scope.setdefault("state", {})["owner"] = owner
        await self.app(scope, receive, send)


def request_owner(request: Request) -> str | None:
    """The caller's owner id that ApiKeyMiddleware found (None when keys are off)."""
    return request.scope.get("state", {}).get("owner")
