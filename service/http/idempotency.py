"""Idempotency-Key: a client that retries a POST (a timeout, a lost answer) gets the first answer again, and
no second mail.

The key's record (the first answer) is written by the outbox in the same transaction as the notifications
that answer describes, so a crash never leaves one without the other. While a request with a key is being
handled, the key is held in memory: a second request with it gets the stored answer when there is one by
then, else 409 instead of racing the first. A finished key always replays, on any replica. Any route that
accepts notifications uses it the same way:

    async with idempotency.begin(request, idempotency_key, body) as claim:
        if claim.replay is not None:
            return claim.replay
        ...build the notifications and the answer...
        record = claim.record(202, answer_bytes, {"Location": ...})   # None without a key
        try:
            await outbox.add(notifications, idempotency=record)
        except IdempotencyKeyTaken:
            return await idempotency.replay_taken(claim)   # another replica stored it first
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Header, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from service.http.limits import LIMIT_RESPONSES
from service.http.schemas import ErrorDetail
from service.outbox import IdempotencyRecord, IdempotencyStore, OutboxUnavailable

log = structlog.get_logger("service.http.idempotency")

REPLAYED_HEADER = "Idempotent-Replayed"
# Expired keys are swept this often (or every TTL, when that is shorter); lookups ignore them meanwhile.
SWEEP_INTERVAL_SECONDS = 600.0

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique string (a UUID): a retry with the same key and body gets the first answer again"
        " (header `Idempotent-Replayed: true`) instead of a second mail. Remembered IDEMPOTENCY_TTL_HOURS.",
    ),
]


# The OpenAPI answers of a route that accepts notifications under an Idempotency-Key (besides its 202).
REPLAYED_HEADER_DOC = {
    "description": "`true` when this is the stored answer to an earlier request with the same Idempotency-Key",
    "schema": {"type": "string"},
}
ACCEPTING_RESPONSES: dict[int | str, dict[str, Any]] = {
    # FastAPI's own answer to a body it cannot decode as text (not UTF-8) before any JSON parsing.
    400: {"model": ErrorDetail, "description": "The body could not be read as JSON text"},
    409: {"model": ErrorDetail, "description": "A request with the same Idempotency-Key is still in progress"},
    **LIMIT_RESPONSES,
}


def fingerprint(request: Request, body: BaseModel) -> str:
    """What makes two requests "the same": the route and the body's content (not its whitespace)."""
    # ensure_ascii: any text, lone surrogates included, hashes (as its escapes) instead of failing to encode.
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n{canonical}".encode())
    return digest.hexdigest()


def caller_scope(request: Request) -> str:
    """Keys are per caller: the API key's fingerprint set by auth, or "" when the API is open."""
    return str(getattr(request.state, "api_key_id", ""))


@dataclass
class Claim:
    """One request's hold on its key: either the first answer to replay, or the right to store one."""

    scope: str
    key: str | None
    # Only a request with a key is compared with another: without one it stays "" (hashing the body is a
    # measurable share of an accept).
    fingerprint: str
    ttl_seconds: float
    replay: Response | None = None

    def record(self, status_code: int, body: bytes, headers: dict[str, str]) -> IdempotencyRecord | None:
        if self.key is None:
            return None
        now = time.time()
        return IdempotencyRecord(
            scope=self.scope,
            key=self.key,
            fingerprint=self.fingerprint,
            status_code=status_code,
            body=body,
            headers=headers,
            created_at=now,
            expires_at=now + self.ttl_seconds,
        )


def replay_of(record: IdempotencyRecord) -> Response:
    return Response(
        content=record.body,
        status_code=record.status_code,
        headers={**record.headers, REPLAYED_HEADER: "true"},
        media_type="application/json",
    )


def _different_body(key: str) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "idempotency_key_reused",
                "loc": ("header", "Idempotency-Key"),
                "msg": f"Idempotency-Key {key!r} was first used with a different request;"
                " send a new key for a new notification",
                "input": key,
            }
        ]
    )


def _in_progress(key: str) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"a request with Idempotency-Key {key!r} is still being handled; retry once it has been answered",
    )


class Idempotency:
    """The app's keys in flight (in memory) in front of the keys stored in the outbox."""

    def __init__(self, store: IdempotencyStore, ttl_seconds: float) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        # Each key in flight with its holder's lookup of the stored answer, which answers for every request
        # that comes with the key meanwhile.
        self._in_flight: dict[tuple[str, str], asyncio.Task[IdempotencyRecord | None]] = {}

    @asynccontextmanager
    async def begin(self, request: Request, key: str | None, body: BaseModel) -> AsyncIterator[Claim]:
        if key is None:
            yield Claim(caller_scope(request), None, "", self.ttl_seconds)
            return
        claim = Claim(caller_scope(request), key, fingerprint(request, body), self.ttl_seconds)
        held = (claim.scope, key)
        holders_lookup = self._in_flight.get(held)
        if holders_lookup is not None:
            # The holder may be a retry of a request that finished long ago, only looking its answer up: then
            # that answer replays here too. 409 only when the holder found none, so is being handled itself.
            stored = await asyncio.shield(holders_lookup)
            if stored is None:
                raise _in_progress(key)
            claim.replay = self._replay_of(claim, stored)
            yield claim
            return
        # A task of its own (and shielded): a holder that goes away (its client hung up) does not cancel the
        # lookup the others wait for.
        lookup = asyncio.create_task(self.store.get(claim.scope, key, time.time()))
        self._in_flight[held] = lookup
        try:
            stored = await asyncio.shield(lookup)
            if stored is not None:
                claim.replay = self._replay_of(claim, stored)
            yield claim
        finally:
            del self._in_flight[held]

    async def replay_taken(self, claim: Claim) -> Response:
        """The answer when the outbox found the key taken at commit: another replica stored it meanwhile."""
        assert claim.key is not None
        stored = await self.store.get(claim.scope, claim.key, time.time())
        if stored is None:
            raise _in_progress(claim.key)
        return self._replay_of(claim, stored)

    @staticmethod
    def _replay_of(claim: Claim, stored: IdempotencyRecord) -> Response:
        """The stored answer, replayed; 422 when the key was first used for another request."""
        assert claim.key is not None
        if stored.fingerprint != claim.fingerprint:
            raise _different_body(claim.key)
        log.info("idempotent_replay", idempotency_key=claim.key)
        return replay_of(stored)

    async def sweep_expired_forever(self) -> None:
        interval = min(SWEEP_INTERVAL_SECONDS, self.ttl_seconds)
        while True:
            try:
                swept = await self.store.sweep(time.time())
            except OutboxUnavailable as exc:
                log.warning("idempotency_sweep_failed", error=str(exc))
            else:
                if swept:
                    log.info("idempotency_keys_swept", count=swept)
            await asyncio.sleep(interval)
