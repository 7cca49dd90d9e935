"""Postmark's sending routes under /compat/postmark, for its SDK (`ServerClient(token, base_url=...)`): each
request is translated into our NotificationRequest and taken by the same intake as /v1; answers and refusals in
Postmark's shapes (docs/compat.md has the table of every field)."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Any, ClassVar

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from service.config import Settings
from service.http.compat.common import (
    ErrorShape,
    Refusal,
    accept_items,
    accept_one,
    address_list,
    build_item,
    check_key,
    compat_route_class,
    sender_fields,
)
from service.http.deps import SettingsDep
from service.http.idempotency import IdempotencyKeyHeader
from service.intake.accept import Intake
from service.outbox import Notification

PREFIX = "/compat/postmark"


class PostmarkErrors(ErrorShape):
    """`{ErrorCode, Message}` with Postmark's codes (its API overview's list), which its SDK turns into its own
    exception classes; 404 is ours (no Postmark code says "no such route")."""

    field_names: ClassVar[dict[str, str]] = {
        "to": "To",
        "cc": "Cc",
        "bcc": "Bcc",
        "reply_to": "ReplyTo",
        "subject": "Subject",
        "text": "TextBody",
        "html": "HtmlBody",
        "headers": "Headers",
        "attachments": "Attachments",
        "tags": "Tag",
        "metadata": "Metadata",
        "template": "TemplateAlias",
        "data": "TemplateModel",
        "from": "From",
    }
    CODES: ClassVar[dict[str, int]] = {
        "missing_key": 10,
        "invalid_key": 10,
        "suppressed": 406,
        "unknown_template": 1101,
        "too_many": 410,
        "rate_limited": 429,
        "unavailable": 100,
        "not_found": 404,
        "not_offered": 404,
    }
    # Postmark answers a refused request 422, and a missing or wrong token 401.
    STATUS: ClassVar[dict[str, int]] = {
        "missing_key": 401,
        "invalid_key": 401,
        "validation": 422,
        "conflict": 422,
        "attachment": 422,
    }

    def body(self, refusal: Refusal) -> dict[str, Any]:
        return {"ErrorCode": self.CODES.get(refusal.kind, 300), "Message": self.message(refusal)}

    @staticmethod
    def message(refusal: Refusal) -> str:
        if refusal.kind == "suppressed":
            # The SDK reads the addresses out of these words (InactiveRecipientException.inactive_recipients).
            return (
                "You tried to send to recipient(s) that have been marked as inactive."
                f" Found inactive addresses: {', '.join(refusal.addresses)}. Inactive recipients are on this"
                " service's suppression list (DELETE /v1/suppressions/{address} lifts one)."
            )
        return refusal.message

    def response(self, refusal: Refusal) -> Response:
        refusal.status_code = self.STATUS.get(refusal.kind, refusal.status_code)
        return super().response(refusal)


SHAPE = PostmarkErrors()


async def postmark_token(request: Request) -> None:
    """Postmark's SDK sends `X-Postmark-Server-Token`: checked against API_KEYS (401, ErrorCode 10)."""
    check_key(request, request.headers.get("x-postmark-server-token"))


router = APIRouter(
    prefix=PREFIX,
    tags=["compat: postmark"],
    route_class=compat_route_class(SHAPE),
    dependencies=[Depends(postmark_token)],
)


class PostmarkHeader(BaseModel):
    Name: str
    Value: str


class PostmarkAttachment(BaseModel):
    Name: str
    Content: str
    ContentType: str | None = None
    ContentID: str | None = None
    # Sent by some clients; the length is the content's own.
    ContentLength: int | None = None


class PostmarkMessage(BaseModel):
    """What `POST /email` and `POST /email/withTemplate` both take, as Postmark's API reference gives it."""

    model_config = ConfigDict(extra="forbid")

    From: str
    To: str
    Cc: str | None = None
    Bcc: str | None = None
    Tag: str | None = None
    ReplyTo: str | None = None
    Headers: list[PostmarkHeader] | None = None
    # Accepted and ignored: this service tracks no opens or clicks.
    TrackOpens: bool | None = None
    TrackLinks: str | None = None
    Attachments: list[PostmarkAttachment] | None = None
    Metadata: dict[str, str] | None = None
    MessageStream: str | None = None


class PostmarkEmail(PostmarkMessage):
    """`POST /email`'s body: the message and its content."""

    Subject: str | None = None
    HtmlBody: str | None = None
    TextBody: str | None = None


class PostmarkTemplateEmail(PostmarkMessage):
    """`POST /email/withTemplate`'s body: a template by its alias (our templates' names) and its model."""

    TemplateId: int | None = None
    TemplateAlias: str | None = None
    TemplateModel: dict[str, Any] = Field(default_factory=dict)
    # Accepted and ignored: our templates' HTML is sent as written.
    InlineCss: bool | None = None


class PostmarkBatch(RootModel[list[Any]]):
    """`POST /email/batch`'s body: the items stay raw, each is judged alone."""


class PostmarkTemplateBatch(BaseModel):
    Messages: list[Any]


_NOT_A_TAG_CHARACTER = re.compile(r"[^a-z0-9_.-]+")


def tag_of(value: str) -> str:
    """Postmark's free-text Tag in our tags' charset: lower-cased, every run of other characters one `-`, at most
    64 characters ("Welcome Mail" → "welcome-mail"); the Tag as sent stays in the metadata (`Tag`)."""
    tag = _NOT_A_TAG_CHARACTER.sub("-", value.strip().lower()).strip("-")[:64].strip("-")
    if not tag:
        raise Refusal(422, "validation", f"Tag: {value[:80]!r} has no letter or digit to file the mail under")
    return tag


def _common_fields(email: PostmarkMessage) -> dict[str, Any]:
    reply_to = address_list(email.ReplyTo)
    if len(reply_to) > 1:
        raise Refusal(422, "validation", f"ReplyTo: one address here, not {len(reply_to)}")
    metadata = dict(email.Metadata or {})
    # Kept so that the status view and webhooks still show them; Postmark's names as keys.
    if email.MessageStream is not None:
        metadata["MessageStream"] = email.MessageStream
    if email.Tag is not None and tag_of(email.Tag) != email.Tag:
        metadata["Tag"] = email.Tag
    fields: dict[str, Any] = {
        "to": address_list(email.To),
        "cc": address_list(email.Cc),
        "bcc": address_list(email.Bcc),
        "reply_to": reply_to[0] if reply_to else None,
        "headers": {header.Name: header.Value for header in email.Headers or []},
        "tags": [tag_of(email.Tag)] if email.Tag else [],
        "metadata": metadata,
        "attachments": [
            {
                "filename": attachment.Name,
                "content": attachment.Content,
                "content_type": attachment.ContentType or "application/octet-stream",
                **({"content_id": attachment.ContentID.removeprefix("cid:")} if attachment.ContentID else {}),
            }
            for attachment in email.Attachments or []
        ],
    }
    fields.update(sender_fields(email.From))
    return {key: value for key, value in fields.items() if value is not None}


def notification_fields(email: PostmarkEmail) -> dict[str, Any]:
    """A Postmark e-mail as our NotificationRequest's fields; every check of those stays the intake's."""
    fields = _common_fields(email)
    fields.update({"subject": email.Subject, "text": email.TextBody, "html": email.HtmlBody})
    return {key: value for key, value in fields.items() if value is not None}


def template_fields(email: PostmarkTemplateEmail) -> dict[str, Any]:
    """A template send: TemplateAlias names one of our templates, TemplateModel is its `data`."""
    if email.TemplateAlias is None:
        raise Refusal(
            422,
            "unknown_template",
            "TemplateAlias: give the template's name (GET /v1/templates lists them); templates here have names,"
            " not numeric TemplateIds",
        )
    return {**_common_fields(email), "template": email.TemplateAlias, "data": email.TemplateModel}


def sent(notification: Notification) -> dict[str, Any]:
    return {
        "To": ", ".join(notification.to),
        "SubmittedAt": datetime.fromtimestamp(notification.created_at, UTC).isoformat(),
        "MessageID": notification.id,
        "ErrorCode": 0,
        "Message": "OK",
    }


def refused_item(refusal: Refusal, raw: Any) -> dict[str, Any]:
    """A batch item's refusal. Postmark's own carries ErrorCode and Message; To, SubmittedAt and MessageID are here
    too (empty) because its SDK reads every item as a send's answer."""
    to = raw.get("To") if isinstance(raw, dict) and isinstance(raw.get("To"), str) else ""
    return {
        "To": to,
        "SubmittedAt": datetime.now(UTC).isoformat(),
        "MessageID": "",
        "ErrorCode": SHAPE.body(refusal)["ErrorCode"],
        "Message": SHAPE.message(refusal),
    }


@router.post("/email", summary="Postmark: send an e-mail")
async def send_email(
    email: PostmarkEmail,
    request: Request,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await accept_one(request, background, email, lambda: notification_fields(email), sent, idempotency_key)


@router.post("/email/withTemplate", summary="Postmark: send an e-mail from one of our templates")
# postmarker, the other widely used client, posts to these with a trailing slash.
@router.post("/email/withTemplate/", include_in_schema=False)
async def send_with_template(
    email: PostmarkTemplateEmail,
    request: Request,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await accept_one(request, background, email, lambda: template_fields(email), sent, idempotency_key)


async def _send_items(
    request: Request,
    background: BackgroundTasks,
    settings: Settings,
    body: BaseModel,
    items: list[Any],
    model: type[PostmarkEmail] | type[PostmarkTemplateEmail],
    idempotency_key: str | None,
) -> Response:
    if not items:
        raise Refusal(422, "validation", "the batch is empty: send a list of e-mails")
    if len(items) > settings.BATCH_LIMIT:
        raise Refusal(
            422, "too_many", f"{len(items)} messages in one batch; at most BATCH_LIMIT={settings.BATCH_LIMIT}"
        )

    def item_fields(email: Any) -> dict[str, Any]:
        if isinstance(email, PostmarkTemplateEmail):
            return template_fields(email)
        return notification_fields(email)

    def judge(intake: Intake) -> list[Notification | Refusal]:
        results: list[Notification | Refusal] = []
        for raw in items:
            try:
                email = model.model_validate(raw)
            except ValidationError as exc:
                results.append(Refusal(422, "validation", SHAPE.describe(exc.errors(include_url=False))))
                continue
            results.append(build_item(intake, functools.partial(item_fields, email), request.state.request_id, SHAPE))
        return results

    def answer(results: list[Notification | Refusal]) -> list[dict[str, Any]]:
        return [
            sent(result) if isinstance(result, Notification) else refused_item(result, raw)
            for result, raw in zip(results, items, strict=True)
        ]

    return await accept_items(request, background, body, judge, answer, idempotency_key)


@router.post("/email/batch", summary="Postmark: up to BATCH_LIMIT e-mails, each judged alone")
async def send_batch(
    batch: PostmarkBatch,
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _send_items(request, background, settings, batch, batch.root, PostmarkEmail, idempotency_key)


@router.post("/email/batchWithTemplates", summary="Postmark: up to BATCH_LIMIT template sends, each judged alone")
@router.post("/email/batchWithTemplates/", include_in_schema=False)
async def send_batch_with_templates(
    batch: PostmarkTemplateBatch,
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _send_items(
        request, background, settings, batch, batch.Messages, PostmarkTemplateEmail, idempotency_key
    )


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False, response_model=None
)
async def not_offered(path: str, request: Request) -> Response:
    """Postmark's other APIs (bounces, templates, servers, messages, stats, domains, webhooks, ...): 501."""
    raise Refusal(
        501,
        "not_offered",
        f"{request.method} /{path} is not offered by this service: it speaks Postmark's sending routes only"
        " (docs/compat.md)",
    )
