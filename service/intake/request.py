"""What a request to send a notification must be: the fields, and every check on what can end up in a mail header,
so that nothing a client sends (over HTTP, in a batch or in a CSV row) can add a header."""

from __future__ import annotations

import re
from datetime import datetime
from email.headerregistry import Address
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, model_validator

from service.domain import MAX_TAGS, TAG_PATTERN
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
# The headers a client may add (`headers`), by their lower-cased name, in the spelling the mail carries; and any
# `X-` name of RFC 5322 ftext (printable ASCII but the colon). The mail's own headers (From, To, Subject, Date,
# Message-ID, MIME) are never among them: no request can replace or repeat one.
ALLOWED_HEADERS = {
    name.lower(): name
    for name in (
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Id",
        "Auto-Submitted",
        "Precedence",
        "References",
        "In-Reply-To",
    )
}
_X_HEADER = re.compile(r"^[Xx]-[!-9;-~]{1,62}$")
MAX_HEADERS = 20
# RFC 5322 2.1.1: a line is at most 998 characters. A long ASCII value is folded only at its spaces (a URL is
# never broken), so the whole header, name and value, must fit in one line.
MAX_HEADER_LINE = 998
# RFC 8058: one-click unsubscribe is this exact value, beside a List-Unsubscribe that holds an https URI.
ONE_CLICK = "List-Unsubscribe=One-Click"
_URI_LIST = re.compile(r"^\s*<[^<>\s]+>(?:\s*,\s*<[^<>\s]+>)*\s*$")
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


def rfc3339_only(value: Any) -> Any:
    """A send_at is an RFC 3339 string; a bare number (seconds? milliseconds?) is refused, not guessed at."""
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 date-time string with an offset, e.g. 2030-01-01T09:00:00Z")
    return value


def needs_offset(value: datetime) -> datetime:
    # A time without an offset means a different moment on every server: refused rather than read as UTC.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("needs an offset, e.g. Z or +02:00 (2030-01-01T09:00:00+02:00)")
    return value


SendAt = Annotated[
    datetime,
    BeforeValidator(rfc3339_only),
    AfterValidator(needs_offset),
    Field(examples=["2030-01-01T09:00:00+02:00"]),
]


def header_name(name: str) -> str:
    """The name as the mail carries it: a listed one in its usual spelling, an `X-` one as given; ValueError
    for any other."""
    canonical = ALLOWED_HEADERS.get(name.lower())
    if canonical is not None:
        return canonical
    if _X_HEADER.match(name):
        return name
    raise ValueError(
        f"header {name!r} cannot be set: allowed are X-… names (printable ASCII, no colon, at most 64 characters)"
        f" and {', '.join(ALLOWED_HEADERS.values())}"
    )


class _HeaderEntry(str):
    """A header's value on its way to _check_header, with its name and what the check needs of the others; a
    str, so that a refusal's `input` shows the value as it was sent."""

    name: str
    spellings: list[str]
    unsubscribe: Any


def _pair_headers(value: Any) -> Any:
    """Each value with its name, so that each header is checked in its own place: a refusal's `loc` names it,
    ["body", "headers", name]."""
    if not isinstance(value, dict):
        return value
    unsubscribe = next((v for k, v in value.items() if str(k).lower() == "list-unsubscribe"), None)
    paired: dict[Any, Any] = {}
    for name, header_value in value.items():
        if not isinstance(header_value, str) or not isinstance(name, str):
            paired[name] = header_value
            continue
        entry = paired[name] = _HeaderEntry(header_value)
        entry.name = name
        entry.spellings = [other for other in value if isinstance(other, str) and other.lower() == name.lower()]
        entry.unsubscribe = unsubscribe
    return paired


def _check_header(value: Any) -> str:
    """One header of `headers`: its name allowed and not given twice, its value a single safe line."""
    if not isinstance(value, str):
        raise ValueError("a header's value must be a string")
    if isinstance(value, _HeaderEntry):
        canonical = header_name(value.name)
        if len(value.spellings) > 1:
            raise ValueError(
                f"header {value.name!r} is given {len(value.spellings)} times ({', '.join(value.spellings)}):"
                " names ignore case"
            )
    if not value.strip():
        raise ValueError("a header's value must not be empty")
    line = len(value) + (len(value.name) + 2 if isinstance(value, _HeaderEntry) else 0)
    if line > MAX_HEADER_LINE:
        raise ValueError(
            f"a header's name, `: ` and value are at most {MAX_HEADER_LINE} characters together (RFC 5322), not {line}"
        )
    reject_header_breakers(value)
    if isinstance(value, _HeaderEntry):
        if canonical == "List-Unsubscribe" and not _URI_LIST.match(value):
            raise ValueError("one or more URIs in angle brackets, e.g. `<https://example.com/unsubscribe/42>`")
        if canonical == "List-Unsubscribe-Post":
            if value != ONE_CLICK:
                raise ValueError(f"the only value RFC 8058 defines is `{ONE_CLICK}`")
            if not isinstance(value.unsubscribe, str) or "<https://" not in value.unsubscribe.lower():
                raise ValueError("one-click unsubscribe (RFC 8058) needs a List-Unsubscribe header with an https URI")
    return str(value)


def _canonical_headers(headers: dict[str, str]) -> dict[str, str]:
    return {header_name(name): value for name, value in headers.items()}


def _unique_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


def parse_tags(text: str) -> list[str]:
    """Comma-separated tags (a CSV job's `tags` form field), checked like a request's `tags`; ValueError."""
    tags = _unique_tags([tag.strip() for tag in text.split(",") if tag.strip()])
    for tag in tags:
        if not re.match(TAG_PATTERN, tag):
            raise ValueError(f"{tag[:80]!r} is not a tag: 1 to 64 characters of a-z, 0-9, _ . -")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags, not {len(tags)}")
    return tags


def split_addresses(text: str, separators: str = ",") -> list[str]:
    """The addresses in one line of text as a client writes them: split at `separators` (commas; the page's
    form adds line ends) outside double quotes and angle brackets, so `"Lovelace, Ada" <ada@example.com>` stays
    whole. Each part is checked by the request's validators, not here."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    angle = False
    # Hand-written: email.utils.getaddresses re-quotes and drops what it cannot parse; the intake checks each part.
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "<" and not quoted:
            angle = True
        elif char == ">" and not quoted:
            angle = False
        if char in separators and not quoted and not angle:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


EmailAddress = Annotated[
    str,
    Field(max_length=320, examples=["Ada Lovelace <ada@example.com>"]),
    AfterValidator(normalize_address),
]
Subject = Annotated[str, Field(min_length=1, max_length=998), AfterValidator(reject_header_breakers)]
MetadataKey = Annotated[str, AfterValidator(reject_header_breakers), Field(pattern=_METADATA_KEY.pattern)]
HeaderValue = Annotated[str, PlainValidator(_check_header, json_schema_input_type=str)]
Headers = Annotated[dict[str, HeaderValue], BeforeValidator(_pair_headers), AfterValidator(_canonical_headers)]
Tag = Annotated[str, Field(pattern=TAG_PATTERN, examples=["welcome"])]


class NotificationRequest(BaseModel):
    """A mail to send: at least one of `text` and `html`; with both, a multipart/alternative mail."""

    # `from` is a Python keyword: the attribute is `sender`, and the JSON (and the OpenAPI) say only "from".
    model_config = ConfigDict(extra="forbid", validate_by_alias=True, validate_by_name=False, serialize_by_alias=True)

    # The mail's From and envelope sender instead of MAIL_FROM; within ALLOWED_FROM (checked by the intake,
    # which has the settings). Absent: MAIL_FROM, as before.
    # Left out of a dump when absent, so an Idempotency-Key's fingerprint of an older body stays the same.
    sender: EmailAddress | None = Field(
        None, alias="from", examples=["Acme Billing <billing@example.com>"], exclude_if=lambda value: value is None
    )
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
    # More headers for the mail (docs/api.md#headers): X-… names and a few listed ones, e.g. List-Unsubscribe.
    headers: Headers = Field(
        default_factory=dict,
        max_length=MAX_HEADERS,
        examples=[{"List-Unsubscribe": "<https://example.com/unsubscribe/42>", "X-Campaign": "spring"}],
    )
    # What the notification is filed under: `GET /v1/notifications?tag=`, the metrics' `tag` label (METRIC_TAGS).
    tags: Annotated[list[Tag], AfterValidator(_unique_tags)] = Field(
        default_factory=list, max_length=MAX_TAGS, examples=[["welcome"]]
    )
    # Files, and inline images by Content-ID; at most MAX_ATTACHMENTS, decoded at build (intake/attachments.py).
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS_CEILING)
    # The other form: a template's name and its variables, rendered into subject/text/html before the 202.
    template: str | None = Field(None, min_length=1, max_length=200, examples=["welcome"])
    data: dict[str, Any] | None = Field(None, examples=[{"first_name": "Ada"}])
    # Send later: kept `scheduled` until then (at most MAX_SCHEDULE_DAYS ahead); a time not in the future sends
    # at once, as Resend and SendGrid do.
    send_at: SendAt | None = None

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
