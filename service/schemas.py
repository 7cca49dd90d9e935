"""What crosses the HTTP boundary: the request to send a notification and the status object returned for one.

Every field that can end up in a mail header is checked here, so nothing a client sends can add a header.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.headerregistry import Address
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Status = Literal["queued", "sending", "sent", "failed"]

_HEADER_BREAKERS = re.compile(r"[\r\n\x00]")
_DISPLAY_NAME_FORM = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<addr>[^<>]*)>\s*$", re.DOTALL)
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def reject_header_breakers(value: str) -> str:
    if _HEADER_BREAKERS.search(value):
        raise ValueError("must not contain CR, LF or NUL characters")
    return value


def normalize_address(value: str) -> str:
    """`user@example.com` or `Display Name <user@example.com>`, in a canonical, safely quoted form."""
    reject_header_breakers(value)
    match = _DISPLAY_NAME_FORM.match(value)
    name, addr = (match["name"].strip('"').strip(), match["addr"]) if match else ("", value.strip())
    try:
        checked = validate_email(addr, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid e-mail address: {exc}") from None
    if not name:
        return checked.normalized
    return str(Address(display_name=name, addr_spec=checked.normalized))


EmailAddress = Annotated[
    str,
    Field(max_length=320, examples=["Ada Lovelace <ada@example.com>"]),
    AfterValidator(normalize_address),
]
Subject = Annotated[str, Field(min_length=1, max_length=998), AfterValidator(reject_header_breakers)]
MetadataKey = Annotated[str, AfterValidator(reject_header_breakers), Field(pattern=_METADATA_KEY.pattern)]


class NotificationRequest(BaseModel):
    """A mail to send: at least one of `text` and `html`; with both, a multipart/alternative mail."""

    model_config = ConfigDict(extra="forbid")

    to: list[EmailAddress] = Field(min_length=1)
    cc: list[EmailAddress] = Field(default_factory=list)
    bcc: list[EmailAddress] = Field(default_factory=list)
    reply_to: EmailAddress | None = None
    subject: Subject
    text: str | None = Field(None, max_length=1_000_000)
    html: str | None = Field(None, max_length=1_000_000)
    metadata: dict[MetadataKey, Annotated[str, Field(max_length=1024)]] = Field(default_factory=dict, max_length=32)

    @model_validator(mode="after")
    def _needs_a_body(self) -> NotificationRequest:
        if not self.text and not self.html:
            raise ValueError("give `text`, `html` or both")
        return self

    def recipient_count(self) -> int:
        return len(self.to) + len(self.cc) + len(self.bcc)


class RefusedRecipient(BaseModel):
    address: str
    code: int
    message: str


class NotificationStatus(BaseModel):
    id: str
    status: Status
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None
    message_id: str
    smtp_reply: str | None
    refused_recipients: list[RefusedRecipient]
    request_id: str | None
    metadata: dict[str, str]


class NotificationPage(BaseModel):
    items: list[NotificationStatus]
    next_cursor: str | None


class Message(BaseModel):
    message: str


class ReadinessChecks(BaseModel):
    outbox: Literal["pass", "fail"]
    smtp: Literal["pass", "fail"]


class Readiness(BaseModel):
    status: Literal["pass", "warn", "fail"]
    checks: ReadinessChecks
    # The last outbox schema migration applied (None while the outbox cannot be read).
    schema_version: int | None = None
