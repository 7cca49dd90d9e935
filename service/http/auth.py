"""API keys: when API_KEYS is set, /v1 and the tutorial routes need `Authorization: Bearer <key>`.

Keys are compared in constant time, never logged and never echoed; a request is known afterwards only by its
key's fingerprint (`request.state.api_key_id`), which scopes its Idempotency-Keys.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from service.config import Settings
from service.http.schemas import ErrorDetail

UNAUTHORIZED_RESPONSE: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorDetail,
        "description": "API_KEYS is set and no valid `Authorization: Bearer <key>` header was sent",
        "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    }
}


def api_key_id(key: str) -> str:
    """A stable name for a key that says nothing about it: safe to store and to log."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def matching_key(presented: str, keys: list[str]) -> str | None:
    """The configured key equal to `presented`, comparing with every key in constant time."""
    found = None
    for key in keys:
        # No early exit: the time taken does not say which key, or how much of one, matched.
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = key
    return found


class ApiKeyBearer(HTTPBearer):
    """The bearer scheme and the key check as one dependency: FastAPI's cost is per dependency and per request,
    and the check ran as a second one below `HTTPBearer`. It still documents itself as `HTTPBearer`."""

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        settings: Settings = request.app.state.settings
        keys = settings.api_keys()
        if not keys:
            return None
        credentials = await super().__call__(request)
        if credentials is None:
            raise _unauthorized(
                "this API needs an `Authorization: Bearer <key>` header with one of the keys in API_KEYS"
            )
        key = matching_key(credentials.credentials, keys)
        if key is None:
            raise _unauthorized("the bearer key is not one of the keys in API_KEYS")
        request.state.api_key_id = api_key_id(key)
        return credentials


require_api_key = ApiKeyBearer(
    auto_error=False,
    scheme_name="HTTPBearer",
    description="One of the keys in API_KEYS, when it is set; without API_KEYS the API is open.",
)
