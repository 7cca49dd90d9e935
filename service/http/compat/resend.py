"""Resend's e-mail routes under /compat/resend, for its SDK (`resend.api_url`): each request is translated into
our NotificationRequest and taken by the same intake as /v1; answers and refusals in Resend's shapes
(docs/compat.md has the table of every field)."""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import mimetypes
import socket
import time
from datetime import UTC, datetime
from posixpath import basename
from typing import Annotated, Any, ClassVar
from urllib.parse import unquote, urlsplit

import httpx
import structlog
from fastapi import APIRouter, BackgroundTasks, Depends, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from service.config import Settings
from service.domain import Status
from service.http.compat.common import (
    ErrorShape,
    Refusal,
    accept_items,
    accept_one,
    address_list,
    bearer_token,
    build_item,
    check_key,
    compat_route_class,
    sender_fields,
)
from service.http.deps import DispatcherDep, NotificationStoreDep, SettingsDep
from service.http.idempotency import IdempotencyKeyHeader
from service.intake.accept import scheduled_for
from service.intake.request import SendAt
from service.outbox import Notification

log = structlog.get_logger("service.http.compat")

PREFIX = "/compat/resend"


class ResendErrors(ErrorShape):
    """`{statusCode, name, message}` with Resend's names, which its SDK turns into its own exception classes."""

    field_names: ClassVar[dict[str, str]] = {"send_at": "scheduled_at", "metadata": "tags", "template": "template"}
    NAMES: ClassVar[dict[str, str]] = {
        "missing_key": "missing_api_key",
        "invalid_key": "invalid_api_key",
        "not_found": "not_found",
        "not_offered": "not_implemented",
        "idempotency_in_progress": "concurrent_idempotent_requests",
        "idempotency_reused": "invalid_idempotent_request",
        "attachment": "invalid_attachment",
        "rate_limited": "rate_limit_exceeded",
        "unavailable": "application_error",
    }

    def body(self, refusal: Refusal) -> dict[str, Any]:
        name = self.NAMES.get(refusal.kind, "validation_error")
        return {"statusCode": refusal.status_code, "name": name, "message": refusal.message}


SHAPE = ResendErrors()


async def resend_key(request: Request) -> None:
    """Resend's SDK sends `Authorization: Bearer re_…`: checked against API_KEYS (401 without, 403 wrong)."""
    check_key(request, bearer_token(request))


router = APIRouter(
    prefix=PREFIX, tags=["compat: resend"], route_class=compat_route_class(SHAPE), dependencies=[Depends(resend_key)]
)

Addresses = str | list[str]


class ResendAttachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Base64 text, or the bytes as a list of integers (the SDK's `list(open(path, "rb").read())`).
    content: str | list[Annotated[int, Field(ge=0, le=255)]] | None = None
    filename: str | None = None
    path: str | None = None
    content_type: str | None = None
    content_id: str | None = None
    inline_content_id: str | None = None


class ResendTag(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    value: str


class ResendEmail(BaseModel):
    """`POST /emails`' body, as Resend's API reference gives it; `react` and templates are not taken."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from")
    to: Addresses
    subject: str | None = None
    cc: Addresses | None = None
    bcc: Addresses | None = None
    reply_to: Addresses | None = None
    html: str | None = None
    text: str | None = None
    headers: dict[str, Any] | None = None
    attachments: list[ResendAttachment] | None = None
    tags: list[ResendTag] | None = None
    scheduled_at: str | None = None


class ResendBatch(RootModel[list[Any]]):
    """`POST /emails/batch`' body: the items stay raw, each is judged alone."""


class ResendUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduled_at: SendAt
    # The SDK sends the id in the body too; the path's is the one used.
    id: str | None = None


def _reply_to(value: Addresses | None) -> str | None:
    addresses = address_list(value)
    if len(addresses) > 1:
        raise Refusal(422, "validation", f"reply_to: one address here, not {len(addresses)}")
    return addresses[0] if addresses else None


def _attachment(attachment: ResendAttachment, fetched: bytes | None, position: int) -> dict[str, Any]:
    where = f"attachments[{position}]"
    if fetched is not None:
        content: str = base64.b64encode(fetched).decode()
    elif isinstance(attachment.content, list):
        content = base64.b64encode(bytes(attachment.content)).decode()
    elif isinstance(attachment.content, str):
        content = attachment.content
    else:
        raise Refusal(422, "attachment", f"{where}: give `content` (base64) or `path` (a URL)")
    filename = attachment.filename
    if filename is None and attachment.path is not None:
        filename = unquote(basename(urlsplit(attachment.path).path))
    if not filename:
        raise Refusal(422, "attachment", f"{where}.filename: a file's name is needed")
    content_type = attachment.content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    fields = {"filename": filename, "content_type": content_type, "content": content}
    content_id = attachment.content_id or attachment.inline_content_id
    if content_id is not None:
        fields["content_id"] = content_id
    return fields


def notification_fields(email: ResendEmail, fetched: dict[int, bytes]) -> dict[str, Any]:
    """A Resend e-mail as our NotificationRequest's fields; every check of those stays the intake's."""
    reply_to = _reply_to(email.reply_to)
    fields: dict[str, Any] = {
        "to": address_list(email.to),
        "cc": address_list(email.cc),
        "bcc": address_list(email.bcc),
        "subject": email.subject,
        "text": email.text,
        "html": email.html,
        "headers": email.headers or {},
        "metadata": {tag.name: tag.value for tag in email.tags or []},
        "attachments": [
            _attachment(attachment, fetched.get(position), position)
            for position, attachment in enumerate(email.attachments or [])
        ],
        "send_at": email.scheduled_at,
        "reply_to": reply_to,
        **sender_fields(email.from_),
    }
    return {key: value for key, value in fields.items() if value is not None}


async def _check_public(host: str, port: int) -> None:
    """Refuse a host that resolves to any loopback, private, link-local or reserved address (SSRF)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Refusal(422, "attachment", f"the host {host!r} does not resolve ({exc})") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global:
            raise Refusal(
                422,
                "attachment",
                f"{host!r} resolves to the non-public address {address}: refused while"
                " COMPAT_FETCH_ALLOW_PRIVATE=false",
            )


async def fetch_attachment(url: str, settings: Settings, where: str) -> bytes:
    """An attachment's bytes from its `path`, only with COMPAT_FETCH_ATTACHMENTS=true: http(s) only, a public host
    unless COMPAT_FETCH_ALLOW_PRIVATE, no redirects followed, at most MAX_ATTACHMENT_BYTES within the timeout."""
    if not settings.COMPAT_FETCH_ATTACHMENTS:
        raise Refusal(
            422,
            "attachment",
            f"{where}.path: attachments by URL are not fetched here (COMPAT_FETCH_ATTACHMENTS=false, against SSRF);"
            " send the file's `content` instead",
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refusal(422, "attachment", f"{where}.path: an http(s) URL with a host, not {url[:200]!r}")
    if not settings.COMPAT_FETCH_ALLOW_PRIVATE:
        await _check_public(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    limit = settings.MAX_ATTACHMENT_BYTES
    received = bytearray()
    try:
        # A redirect is not followed: its target would escape the address check above.
        async with (
            httpx.AsyncClient(timeout=settings.COMPAT_FETCH_TIMEOUT_SECONDS, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise Refusal(422, "attachment", f"{where}.path: GET answered {response.status_code}, not 200")
            async for chunk in response.aiter_bytes():
                received += chunk
                if len(received) > limit:
                    raise Refusal(
                        413, "too_large", f"{where}.path: more than MAX_ATTACHMENT_BYTES={limit} bytes at {url[:200]}"
                    )
    except httpx.HTTPError as exc:
        raise Refusal(422, "attachment", f"{where}.path: the fetch failed ({type(exc).__name__}: {exc})") from None
    return bytes(received)


async def fetch_all(email: ResendEmail, settings: Settings, where: str = "attachments") -> dict[int, bytes]:
    fetched: dict[int, bytes] = {}
    for position, attachment in enumerate(email.attachments or []):
        if attachment.path is not None and attachment.content is None:
            fetched[position] = await fetch_attachment(attachment.path, settings, f"{where}[{position}]")
    return fetched


def _time(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, UTC).isoformat()


def last_event(notification: Notification) -> str:
    """Our status in Resend's event words. `sent` means the relay took the mail: we never see the recipient's
    server, so never say `delivered`; a queued mail that failed an attempt already is `delivery_delayed`."""
    match notification.status:
        case Status.SCHEDULED:
            return "scheduled"
        case Status.QUEUED | Status.SENDING:
            return "delivery_delayed" if notification.attempts and notification.last_error else "queued"
        case Status.SENT:
            return "sent"
        case Status.FAILED:
            return "failed"
        case Status.CANCELED:
            return "canceled"
    return str(notification.status)


def email_object(notification: Notification, settings: Settings) -> dict[str, Any]:
    """`GET /emails/{id}`'s answer in Resend's shape."""
    return {
        "object": "email",
        "id": notification.id,
        "to": notification.to,
        "from": notification.sender or settings.MAIL_FROM,
        "created_at": _time(notification.created_at),
        "subject": notification.subject,
        "html": notification.html,
        "text": notification.text,
        "cc": notification.cc or None,
        "bcc": notification.bcc or None,
        "reply_to": [notification.reply_to] if notification.reply_to else None,
        "last_event": last_event(notification),
        "scheduled_at": _time(notification.send_at),
        "tags": [{"name": name, "value": value} for name, value in notification.metadata.items()],
    }


@router.post("/emails", summary="Resend: send an e-mail")
async def send_email(
    email: ResendEmail,
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    fetched = await fetch_all(email, settings)
    return await accept_one(
        request,
        background,
        email,
        lambda: notification_fields(email, fetched),
        lambda notification: {"id": notification.id},
        idempotency_key,
    )


@router.post("/emails/batch", summary="Resend: send up to BATCH_LIMIT e-mails")
async def send_batch(
    batch: ResendBatch,
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
    batch_validation: Annotated[str | None, Header(alias="x-batch-validation")] = None,
) -> Response:
    """Strict (Resend's default): one refused item refuses the batch, naming it. `x-batch-validation: permissive`:
    the others are sent and the answer lists the refused ones under `errors`."""
    items = batch.root
    if not items:
        raise Refusal(422, "validation", "the batch is empty: send a list of e-mails")
    if len(items) > settings.BATCH_LIMIT:
        raise Refusal(422, "too_many", f"{len(items)} e-mails in one batch; at most BATCH_LIMIT={settings.BATCH_LIMIT}")
    permissive = (batch_validation or "strict").lower() == "permissive"
    emails: list[ResendEmail | Refusal] = []
    fetched: list[dict[int, bytes]] = []
    for position, raw in enumerate(items):
        try:
            email = ResendEmail.model_validate(raw)
            fetched.append(await fetch_all(email, settings, f"[{position}].attachments"))
            emails.append(email)
        except ValidationError as exc:
            emails.append(Refusal(422, "validation", SHAPE.describe(exc.errors(include_url=False))))
            fetched.append({})
        except Refusal as refusal:
            emails.append(refusal)
            fetched.append({})

    def judge(intake: Any) -> list[Notification | Refusal]:
        results: list[Notification | Refusal] = []
        for email, files in zip(emails, fetched, strict=True):
            if isinstance(email, Refusal):
                results.append(email)
                continue
            results.append(
                build_item(
                    intake,
                    functools.partial(notification_fields, email, files),
                    request.state.request_id,
                    SHAPE,
                )
            )
        refused = [(position, r) for position, r in enumerate(results) if isinstance(r, Refusal)]
        if refused and not permissive:
            position, first = refused[0]
            raise Refusal(first.status_code, first.kind, f"[{position}]: {first.message}")
        return results

    def answer(results: list[Notification | Refusal]) -> dict[str, Any]:
        body: dict[str, Any] = {"data": [{"id": r.id} for r in results if isinstance(r, Notification)]}
        if permissive:
            body["errors"] = [
                {"index": position, "message": r.message}
                for position, r in enumerate(results)
                if isinstance(r, Refusal)
            ]
        return body

    return await accept_items(request, background, batch, judge, answer, idempotency_key)


async def _existing(store: Any, email_id: str) -> Notification:
    notification: Notification | None = await store.get(email_id)
    if notification is None:
        raise Refusal(404, "not_found", "Email not found")
    return notification


@router.get("/emails/{email_id}", summary="Resend: one e-mail, its last_event from our status")
async def get_email(email_id: str, store: NotificationStoreDep, settings: SettingsDep) -> dict[str, Any]:
    return email_object(await _existing(store, email_id), settings)


@router.patch("/emails/{email_id}", summary="Resend: reschedule a scheduled e-mail")
async def update_email(
    email_id: str, update: ResendUpdate, store: NotificationStoreDep, settings: SettingsDep, dispatcher: DispatcherDep
) -> dict[str, Any]:
    now = time.time()
    # A time already past sends it at once, as a new scheduled_at does; past MAX_SCHEDULE_DAYS is a 422.
    send_at = scheduled_for(update.scheduled_at, settings, now) or now
    moved = await store.reschedule(email_id, send_at, now)
    if moved is None:
        existing = await _existing(store, email_id)
        raise Refusal(
            422, "conflict", f"email {email_id} is {existing.status}; only a scheduled e-mail can be rescheduled"
        )
    log.info("notification_rescheduled", notification_id=email_id, send_at=send_at)
    # It may be due sooner than the dispatcher's next wake-up.
    dispatcher.wake()
    return {"object": "email", "id": email_id}


@router.post("/emails/{email_id}/cancel", summary="Resend: cancel a scheduled (or queued) e-mail")
async def cancel_email(email_id: str, store: NotificationStoreDep) -> dict[str, Any]:
    canceled = await store.cancel(email_id, time.time())
    if canceled is None:
        existing = await _existing(store, email_id)
        raise Refusal(
            422, "conflict", f"email {email_id} is {existing.status}; only a scheduled or queued e-mail can be canceled"
        )
    log.info("notification_canceled", notification_id=email_id, original_request_id=canceled.request_id)
    return {"object": "email", "id": email_id}


# Resend's other APIs, not offered here: 501 in Resend's shape (any other path: 404).
NOT_OFFERED = (
    "domains",
    "api-keys",
    "audiences",
    "contacts",
    "broadcasts",
    "segments",
    "topics",
    "templates",
    "webhooks",
    "contact-properties",
    "automations",
    "events",
    "logs",
    "inboxes",
)


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False, response_model=None
)
async def not_offered(path: str, request: Request) -> Response:
    first = path.split("/", 1)[0]
    if first in NOT_OFFERED or path in ("emails", "emails/receiving") or path.startswith("emails/"):
        raise Refusal(
            501,
            "not_offered",
            f"{request.method} /{path} is not offered by this service: it speaks Resend's sending routes only"
            " (docs/compat.md)",
        )
    raise Refusal(404, "not_found", f"no route {request.method} /{path} here (docs/compat.md)")
