"""What a request to send a notification must be: the fields, and every check on what can end up in a mail header,
so that nothing a client sends (over HTTP, in a batch or in a CSV row) can add a header."""

from __future__ import annotations

import re
from email.headerregistry import Address
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from service.intake.attachments import MAX_ATTACHMENTS_CEILING, Attachment

# CR, LF and NUL, and every other character Python's str.splitlines() breaks a line at (VT, FF, FS, GS, RS,
# NEL, U+2028, U+2029) or that is a control character: the email package refuses such a header value when
# the mail is built, long after the 202, so they are refused here instead. Tab stays allowed.
_HEADER_BREAKERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# An RFC 2047 encoded word. Python's email package (3.11, 3.12) decodes one when a header is set from a string
# and writes what it decoded raw: "=?utf-8?q?hi=0D=0ABcc:_x@y?=" in a subject became a Bcc header. Refused.
_ENCODED_WORD = re.compile(r"=\?.*\?=", re.DOTALL)
_DISPLAY_NAME_FORM = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<addr>[^<>]*)>\s*$", re.DOTALL)
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# RFC 5321 4.5.3.1.1, in octets: email-validator's `strict` counts characters, so "ü" * 33 would pass it.
LOCAL_PART_MAX_OCTETS = 64


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


def reject_header_breakers(value: str) -> str:
    if _HEADER_BREAKERS.search(value):
        raise ValueError("must not contain CR, LF, NUL or other control or line-separator characters")
    if _ENCODED_WORD.search(value):
        raise ValueError("must not contain an RFC 2047 encoded word (`=?charset?q?...?=`); send the text as it is")
    return value


def reject_nul(value: str) -> str:
    # A body goes out as 7bit when it can, and no transfer encoding may carry a raw NUL (RFC 5322 2.3, 5321).
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
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
    octets = len(checked.local_part.encode())
    if octets > LOCAL_PART_MAX_OCTETS:
        raise ValueError(
            f"not a valid e-mail address: the part before the @ is {octets} octets long,"
            f" over the {LOCAL_PART_MAX_OCTETS} octets SMTP allows (RFC 5321)"
        )
    if not name:
        return checked.normalized
    # From the parts, not the addr_spec: the stdlib's parser refuses a non-ASCII local part (an SMTPUTF8
    # address), which email-validator has already checked and which the bare form takes.
    return str(Address(display_name=name, username=checked.local_part, domain=checked.domain))


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
    subject: Subject | None = None
    text: Annotated[str, AfterValidator(reject_nul)] | None = Field(None, max_length=1_000_000)
    html: Annotated[str, AfterValidator(reject_nul)] | None = Field(None, max_length=1_000_000)
    # No NUL in a value either: PostgreSQL cannot store one, and the failed write would be a 500.
    metadata: dict[MetadataKey, Annotated[str, Field(max_length=1024), AfterValidator(reject_nul)]] = Field(
        default_factory=dict, max_length=32
    )
    # Files, and inline images by Content-ID; at most MAX_ATTACHMENTS, decoded at build (intake/attachments.py).
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS_CEILING)
    # The other form: a template's name and its variables, rendered into subject/text/html before the 202.
    template: str | None = Field(None, min_length=1, max_length=200, examples=["welcome"])
    data: dict[str, Any] | None = Field(None, examples=[{"first_name": "Ada"}])

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, values: Any) -> Any:
        # JSON may carry "\ud800": a string Python holds but no UTF-8 can store or send. Refused here, it
        # can never reach the outbox (where it would fail the transaction it shares with other requests).
        if _has_lone_surrogate(values):
            raise ValueError("text must be valid Unicode: a lone surrogate (e.g. \\ud800) cannot be sent")
        return values

    @model_validator(mode="after")
    def _needs_a_body(self) -> NotificationRequest:
        if self.template is not None:
            given = [name for name in ("subject", "text", "html") if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"give either `template` (with `data`) or `subject` and a body, not both: drop {given}"
                )
            return self
        if self.data is not None:
            raise ValueError("`data` goes with `template`; name the template to render")
        if self.subject is None:
            raise ValueError("give `subject` with `text`/`html`, or `template` with `data`")
        if not self.text and not self.html:
            raise ValueError("give `text`, `html` or both")
        return self

    def recipient_count(self) -> int:
        return len(self.to) + len(self.cc) + len(self.bcc)
