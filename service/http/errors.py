"""The 422 answer, made safe to serialise: FastAPI's own handler echoes each error's `input`, and a body with
NaN or a lone surrogate in it would make that echo fail as a 500 instead of the 422 it is."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

# An attachment's base64 in an echoed `input` (a refusal of the whole request or of one attachment echoes it): up
# to MAX_BODY_BYTES of it would come back in the 422. Longer than this, it is replaced by its length.
ECHOED_CONTENT_CHARS = 256


def json_safe(value: Any) -> Any:
    """An error detail any JSON encoder takes: NaN and infinities as text, a lone surrogate as its escape; an
    attachment's long `content` as its length."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {
            json_safe(str(key)): f"<{len(item)} characters, not echoed>"
            if key == "content" and isinstance(item, str) and len(item) > ECHOED_CONTENT_CHARS
            else json_safe(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


async def request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = json_safe(jsonable_encoder(exc.errors()))
    body = json.dumps({"detail": detail}, allow_nan=False, separators=(",", ":"))
    return Response(body, status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")
