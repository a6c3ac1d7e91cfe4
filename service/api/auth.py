"""Optional API keys. Keys are kept only as SHA-256 hashes; a client is identified by its key's hash.

`REALIZ3D_API_KEYS` is a comma-separated list of keys, or of `sha256:<hex>` entries so that a deployment
never has to hold the plain key at all. Empty = no auth, every job visible to every caller.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from service.api.errors import ApiError


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


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def authenticate(keys: ApiKeys, request: Request) -> str | None:
    """The caller's owner id (None when auth is off); 401 without a valid key."""
    if not keys.enabled:
        return None
    owner = keys.owner_of(presented_key(request))
    if owner is None:
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return owner
