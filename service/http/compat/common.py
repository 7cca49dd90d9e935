"""What the hosted APIs' routes share: their keys checked against API_KEYS as service/http/auth.py checks a bearer
key, the one way into the intake (the same Intake and Idempotency-Key machinery as /v1, no second pipeline), and
the route class that answers every refusal in the API's own error shape."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi import BackgroundTasks, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from service.config import Settings
from service.http.auth import api_key_id, matching_key
from service.http.deps import Accepting
from service.http.errors import json_safe
from service.http.limits import RETRY_AFTER_SECONDS, UNAVAILABLE_RETRY_AFTER_SECONDS, queue_full_detail
from service.intake.accept import Intake
from service.intake.attachments import AttachmentsTooLarge
from service.intake.request import NotificationRequest, split_addresses
from service.outbox import IdempotencyKeyTaken, Notification, OutboxUnavailable, QueueFull


class Refusal(Exception):
    """A refusal in words both APIs have: `kind` is one of KINDS; each API's ErrorShape says it its own way."""

    def __init__(
        self,
        status_code: int,
        kind: str,
        message: str,
        headers: dict[str, str] | None = None,
        addresses: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.kind = kind
        self.message = message
        self.headers = headers or {}
        # The suppressed recipients, for a `suppressed` refusal.
        self.addresses = list(addresses)


# missing_key, invalid_key: auth. validation: a field. suppressed: every recipient is on the suppression list.
# unknown_template: no such template. not_found: no such e-mail or route. conflict: not in a state for that.
# idempotency_in_progress, idempotency_reused: the key's cases. too_large: 413. too_many: a batch too long.
# attachment: an attachment that cannot be had (a `path` not fetched, no content).
# rate_limited: QUEUE_LIMIT. unavailable: the outbox cannot be written. not_offered: a route this service lacks.
KINDS = (
    "missing_key",
    "invalid_key",
    "validation",
    "suppressed",
    "unknown_template",
    "not_found",
    "conflict",
    "idempotency_in_progress",
    "idempotency_reused",
    "too_large",
    "too_many",
    "attachment",
    "rate_limited",
    "unavailable",
    "not_offered",
)


class ErrorShape:
    """How one API says a refusal: its body for a Refusal, and our field names in its words."""

    # Our NotificationRequest's field names as the API calls them, for the messages of a 422.
    field_names: ClassVar[dict[str, str]] = {}

    def body(self, refusal: Refusal) -> dict[str, Any]:
        raise NotImplementedError

    def response(self, refusal: Refusal) -> Response:
        return Response(
            json.dumps(self.body(refusal), separators=(",", ":")),
            refusal.status_code,
            refusal.headers,
            media_type="application/json",
        )

    def field(self, loc: Sequence[Any]) -> str:
        """A 422's location in the API's words: `To`, `Attachments[0].Content`."""
        parts = [part for part in loc if part not in ("body", "header")]
        if not parts:
            return "body"
        words = [self.field_names.get(str(parts[0]), str(parts[0]))]
        for part in parts[1:]:
            words.append(f"[{part}]" if isinstance(part, int) else f".{part}")
        return "".join(words)

    def describe(self, errors: Sequence[Any]) -> str:
        return "; ".join(
            f"{self.field(error.get('loc', ()))}: {self.words(str(error.get('msg', '')).removeprefix('Value error, '))}"
            for error in errors
        )

    def words(self, message: str) -> str:
        """A message of ours that names our fields (`text`) naming the API's (`TextBody`) instead."""
        for ours, theirs in self.field_names.items():
            message = message.replace(f"`{ours}`", f"`{theirs}`")
        return message


def refusal_of(exc: Exception, shape: ErrorShape) -> Refusal | None:
    """Our own exceptions (the same the /v1 routes raise) as a Refusal; None for anything else."""
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, RequestValidationError):
        errors = json_safe(jsonable_encoder(exc.errors()))
        kinds = {error.get("type") for error in errors}
        if "idempotency_key_reused" in kinds:
            return Refusal(409, "idempotency_reused", "; ".join(str(error.get("msg")) for error in errors))
        if "suppressed" in kinds:
            suppressed = next(error for error in errors if error.get("type") == "suppressed")
            addresses = suppressed.get("input") if isinstance(suppressed.get("input"), list) else []
            return Refusal(422, "suppressed", shape.describe(errors), addresses=[str(a) for a in addresses])
        if "unknown_template" in kinds:
            return Refusal(422, "unknown_template", shape.describe(errors))
        return Refusal(422, "validation", shape.describe(errors))
    if isinstance(exc, QueueFull):
        return Refusal(429, "rate_limited", queue_full_detail(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, OutboxUnavailable):
        return Refusal(
            503,
            "unavailable",
            "the outbox cannot be written now (the disk may be full, or the database down): nothing was accepted;"
            f" retry after {UNAVAILABLE_RETRY_AFTER_SECONDS} s",
            {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, HTTPException):
        # 413 (the body or the attachments too large), 409 (an Idempotency-Key in progress), 400 (not JSON text).
        kind = {413: "too_large", 409: "idempotency_in_progress", 404: "not_found"}.get(exc.status_code, "validation")
        detail = exc.detail if isinstance(exc.detail, str) else shape.describe(exc.detail)
        return Refusal(exc.status_code, kind, detail, dict(exc.headers or {}))
    return None


def body_limit_error(shape: ErrorShape) -> Callable[[int, Any], tuple[int, Any]]:
    """The body limit's refusals (413, a JSON too deep), answered before any route runs, in the API's shape."""

    def error_body(status_code: int, detail: Any) -> tuple[int, Any]:
        refusal = refusal_of(HTTPException(status_code, detail), shape)
        assert refusal is not None
        response = shape.response(refusal)
        return response.status_code, shape.body(refusal)

    return error_body


def compat_route_class(shape: ErrorShape) -> type[APIRoute]:
    """The route class of one API's router: every refusal, ours or FastAPI's (a body that is not JSON, a 413 while
    the body streams), answers in that API's error shape. Only the compat routes pay for it."""

    class CompatRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()

            async def handle_compat(request: Request) -> Response:
                try:
                    return await handle(request)
                except Exception as exc:
                    refusal = refusal_of(exc, shape)
                    if refusal is None:
                        raise
                    return shape.response(refusal)

            return handle_compat

    return CompatRoute


def check_key(request: Request, presented: str | None) -> None:
    """The API's key (as its SDK sends it) against API_KEYS, in constant time; with API_KEYS empty, any key or none
    passes, as /v1 is open then. Sets the key's fingerprint that scopes Idempotency-Keys, as auth.py does."""
    settings: Settings = request.app.state.settings
    keys = settings.api_keys()
    if not keys:
        return
    if not presented:
        raise Refusal(401, "missing_key", "this API needs a key: one of the keys in API_KEYS")
    key = matching_key(presented, keys)
    if key is None:
        raise Refusal(403, "invalid_key", "the key is not one of the keys in API_KEYS")
    request.state.api_key_id = api_key_id(key)


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def notification_request(fields: dict[str, Any]) -> NotificationRequest:
    """Our request from the fields an API's request maps to; its refusals are /v1's 422s."""
    try:
        return NotificationRequest.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


@dataclass(frozen=True, slots=True)
class Accepted:
    """What an API answers for one accepted notification: its status code and JSON body."""

    status_code: int
    body: Any


async def accept_one(
    request: Request,
    background: BackgroundTasks,
    body: BaseModel,
    fields: Callable[[], dict[str, Any]],
    answer: Callable[[Notification], Any],
    idempotency_key: str | None,
) -> Response:
    """One mail the way /v1/notifications takes it: the Idempotency-Key's replay, the intake's build (render,
    checks, suppressions), the answer stored with the notification in one transaction, then the dispatcher."""
    accepting = Accepting.of(request)
    async with accepting.idempotency.begin(request, idempotency_key, body) as claim:
        if claim.replay is not None:
            return claim.replay
        notification = accepting.intake.build(notification_request(fields()), request.state.request_id)
        encoded = json.dumps(answer(notification), separators=(",", ":")).encode()
        try:
            await accepting.intake.accept(notification, background, idempotency=claim.record(200, encoded, {}))
        except IdempotencyKeyTaken:
            return await accepting.idempotency.replay_taken(claim)
        return Response(encoded, 200, media_type="application/json")


def build_item(
    intake: Intake, fields: Callable[[], dict[str, Any]], request_id: str | None, shape: ErrorShape
) -> Notification | Refusal:
    """One item of a batch, judged alone: a notification ready for the outbox, or its refusal."""
    try:
        return intake.build(notification_request(fields()), request_id)
    except (RequestValidationError, AttachmentsTooLarge, Refusal) as exc:
        refusal = refusal_of(exc, shape)
        assert refusal is not None
        return refusal


async def accept_items(
    request: Request,
    background: BackgroundTasks,
    body: BaseModel,
    judge: Callable[[Intake], list[Notification | Refusal]],
    answer: Callable[[list[Notification | Refusal]], Any],
    idempotency_key: str | None,
) -> Response:
    """A batch the way /v1/notifications/batch takes it: each item judged alone, the accepted ones (and the key's
    answer) in one transaction and one wake-up."""
    accepting = Accepting.of(request)
    async with accepting.idempotency.begin(request, idempotency_key, body) as claim:
        if claim.replay is not None:
            return claim.replay
        results = judge(accepting.intake)
        accepted = [result for result in results if isinstance(result, Notification)]
        encoded = json.dumps(answer(results), separators=(",", ":")).encode()
        try:
            await accepting.intake.accept_batch(
                accepted,
                background,
                rejected=len(results) - len(accepted),
                idempotency=claim.record(200, encoded, {}),
            )
        except IdempotencyKeyTaken:
            return await accepting.idempotency.replay_taken(claim)
        return Response(encoded, 200, media_type="application/json")


def address_list(value: str | list[str] | None) -> list[str]:
    """A list of addresses from one string (commas between them, as Postmark sends To) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return split_addresses(value)


def sender_fields(requested: str) -> dict[str, Any]:
    """The API's sender as our request's `from`: the mail's From and envelope sender. The intake checks it
    against ALLOWED_FROM (also read as COMPAT_ALLOWED_FROM), as for /v1."""
    return {"from": requested}
