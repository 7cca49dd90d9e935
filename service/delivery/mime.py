"""MIME: a notification's mail as wire bytes.

The common mail (ASCII headers that need no quoting or folding, ASCII bodies with short lines) is written
straight to its wire bytes; everything else is built and flattened by the stdlib `email` package, which the fast
path must match byte for byte (tests/delivery/test_mime.py is the oracle).
"""

from __future__ import annotations

import random
import re
import sys
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formatdate, parseaddr
from io import BytesIO
from typing import cast

from service.outbox import Notification


def addr_spec(address: str) -> str:
    """`Name <user@example.com>` → `user@example.com`, for the SMTP envelope."""
    return parseaddr(address)[1]


class _VerbatimHeader(UnstructuredHeader):
    """A request's own header (`headers`: every name the stdlib has no class for). An ASCII value is written as
    it is, folded only at its spaces: the stdlib would turn a word longer than a line, e.g. a List-Unsubscribe
    URL with a token, into RFC 2047 encoded words, which hide the URI from a receiver. RFC 5322 allows lines of
    998 characters, and the intake keeps a value under that."""

    def fold(self, *, policy: Policy) -> str:
        # A mixin, as the stdlib's header classes are: the registry makes the class with BaseHeader behind it.
        header = cast(BaseHeader, self)
        value = str(header)
        if not value.isascii():
            return BaseHeader.fold(header, policy=policy)
        limit = policy.max_line_length or 0
        lines, line = [], f"{header.name}:"
        for number, word in enumerate(value.split(" ")):
            if (
                number
                and word
                and limit
                and len(line) + 1 + len(word) > limit
                and line.strip(" \t") != f"{header.name}:"
            ):
                lines.append(line)
                line = ""
            line += f" {word}"
        lines.append(line)
        return policy.linesep.join(lines) + policy.linesep


class _ReusedHeaderClasses(HeaderRegistry):
    """The stdlib's registry creates a new header class with `type()` for every header it is asked for (nine
    per mail); created once per header name instead, a mail is built in about half the CPU (make bench)."""

    def __init__(self) -> None:
        super().__init__(default_class=_VerbatimHeader)
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        if (cls := self._classes.get(key)) is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


MAIL_POLICY = policy.default.clone(header_factory=_ReusedHeaderClasses())


# RFC 5322 2.2: a header field's name is printable ASCII but the colon.
_HEADER_NAME = re.compile(r"[!-9;-~]+")


def build_message(notification: Notification, mail_from: str, *, boundary: str | None = None) -> EmailMessage:
    """The mail the stdlib way, for every case build_fast_bytes declines: with its flattening ~370 µs for a plain
    mail, ~900 µs for text+html (the fast path: 15 and 30). `boundary` fixes a multipart's boundary."""
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = mail_from
    message["To"] = ", ".join(notification.to)
    if notification.cc:
        message["Cc"] = ", ".join(notification.cc)
    # Bcc recipients are only in the envelope, never in a header.
    if notification.reply_to:
        message["Reply-To"] = notification.reply_to
    message["Subject"] = notification.subject
    message["Date"] = formatdate(notification.created_at, usegmt=True)
    # Fixed when the notification is accepted, so a retried or duplicated send carries the same id.
    message["Message-ID"] = notification.message_id
    # The request's own (service/intake/request.py checked the names, none of the above, and the values).
    for name, value in notification.headers.items():
        # The stdlib writes any name as it is given, CR and LF included: checked again here, whatever stored it.
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not printable ASCII without a colon (RFC 5322 ftext)")
        message[name] = value
    if notification.text is not None:
        message.set_content(notification.text)
        if notification.html is not None:
            message.add_alternative(notification.html, subtype="html")
            if boundary is not None:
                message.set_boundary(boundary)
    elif notification.html is not None:
        message.set_content(notification.html, subtype="html")
    if notification.attachments:
        add_attachments(message, notification)
    return message


def add_attachments(message: EmailMessage, notification: Notification) -> None:
    """Inline attachments (a content_id) beside the html in a multipart/related, inside the multipart/alternative
    when there is a text part too; the others after the body in a multipart/mixed. Without html an inline one has
    nothing to show it, and goes out as an ordinary attachment (keeping its Content-ID)."""
    data = notification.attachment_data
    if len(data) != len(notification.attachments):
        raise ValueError(f"{len(notification.attachments)} attachments, {len(data)} found in the outbox")
    html_part: EmailMessage | None = None
    if notification.html is not None:
        # text + html: the html is the alternative's second part; html alone: the message itself.
        html_part = message.get_payload()[1] if notification.text is not None else message  # type: ignore[assignment,index]
    for info, content in zip(notification.attachments, data, strict=True):
        maintype, _, subtype = info.content_type.partition("/")
        if info.content_id is not None and html_part is not None:
            html_part.add_related(
                content, maintype, subtype, cid=f"<{info.content_id}>", disposition="inline", filename=info.filename
            )
    for info, content in zip(notification.attachments, data, strict=True):
        maintype, _, subtype = info.content_type.partition("/")
        if info.content_id is None or html_part is None:
            cid = None if info.content_id is None else f"<{info.content_id}>"
            message.add_attachment(content, maintype, subtype, filename=info.filename, cid=cid)


def build_stdlib_bytes(
    notification: Notification,
    mail_from: str,
    *,
    utf8: bool = False,
    cte_type: str = "8bit",
    boundary: str | None = None,
) -> bytes:
    """The mail's wire bytes exactly as aiosmtplib's send_message flattens build_message's mail: the SMTP policy
    (CRLF), SMTPUTF8 when an envelope address is not ASCII, 7bit when the server has no 8BITMIME."""
    smtp_policy = policy.SMTPUTF8 if utf8 else policy.SMTP
    if cte_type != "8bit":
        smtp_policy = smtp_policy.clone(cte_type=cte_type)
    out = BytesIO()
    BytesGenerator(out, policy=smtp_policy).flatten(build_message(notification, mail_from, boundary=boundary))
    return out.getvalue()


# What the fast path writes without asking the stdlib: only shapes whose stdlib rendering is the text itself. No
# `?` anywhere, so no `=?...?=` encoded word the stdlib would decode; no quoting, comments, groups or literals.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ADDRESS = rf"(?:{_ATEXT}(?: {_ATEXT})* <{_ADDR_SPEC}>|{_ADDR_SPEC})"
_PLAIN_ADDRESSES = re.compile(rf"{_PLAIN_ADDRESS}(?:, {_PLAIN_ADDRESS})*")
_PLAIN_MESSAGE_ID = re.compile(rf"<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>")
# Printable ASCII words with single spaces between them: an unstructured header the stdlib writes as it is.
_PLAIN_SUBJECT = re.compile(r"[!->@-~]+(?: [!->@-~]+)*")
# ASCII control characters other than tab, CR and LF: left to the stdlib.
_ODD_BODY_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The stdlib folds a header longer than this (policy.max_line_length), and re-encodes a longer body line.
_MAX_LINE = 78
# Dates from 1970 to 9999: the stdlib reads a year below 100 in a Date header as 19xx/20xx.
_LAST_SECOND = 253402300800.0

_TEXT_PART = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
_HTML_PART = b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
_MIME_VERSION = b"MIME-Version: 1.0\r\n"


def build_boundary(*bodies: bytes) -> str:
    """A multipart boundary the way the stdlib's generator makes one, and in none of the bodies."""
    while True:
        boundary = "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="
        if not any(boundary.encode() in body for body in bodies):
            return boundary


def _plain_header(name: str, value: str, pattern: re.Pattern[str]) -> str | None:
    if len(name) + 2 + len(value) > _MAX_LINE or not value.isascii() or pattern.fullmatch(value) is None:
        return None
    return f"{name}: {value}\r\n"


def _plain_body(text: str) -> bytes | None:
    if not text.isascii():
        return None
    data = text.encode("ascii")
    if _ODD_BODY_BYTES.search(data) is not None:
        return None
    lines = data.splitlines()
    if lines and max(map(len, lines)) > _MAX_LINE:
        return None
    return b"\r\n".join(lines) + b"\r\n"


def build_fast_bytes(notification: Notification, mail_from: str, *, boundary: str | None = None) -> bytes | None:
    """The mail's wire bytes written directly, or None when the mail is not one the fast path covers.

    Covers text/plain, text/html and multipart/alternative mails without attachments whose headers (the request's
    own too) are short plain ASCII and whose bodies are ASCII with lines of at most 78 characters. For those the
    bytes equal build_stdlib_bytes' exactly.
    """
    n = notification
    if n.attachments or not 0 <= n.created_at < _LAST_SECOND:
        return None
    headers = [
        _plain_header("From", mail_from, _PLAIN_ADDRESSES),
        _plain_header("To", ", ".join(n.to), _PLAIN_ADDRESSES),
    ]
    if n.cc:
        headers.append(_plain_header("Cc", ", ".join(n.cc), _PLAIN_ADDRESSES))
    if n.reply_to:
        headers.append(_plain_header("Reply-To", n.reply_to, _PLAIN_ADDRESSES))
    headers.append(_plain_header("Subject", n.subject, _PLAIN_SUBJECT))
    headers.append(_plain_header("Message-ID", n.message_id, _PLAIN_MESSAGE_ID))
    # The request's own headers are unstructured to the stdlib, like Subject: short plain ones are written as given.
    headers += [
        _plain_header(name, value, _PLAIN_SUBJECT) if _HEADER_NAME.fullmatch(name) else None
        for name, value in n.headers.items()
    ]
    plain = [header for header in headers if header is not None]
    if len(plain) != len(headers):
        return None
    # The stdlib reads the Date it is given back into a datetime and writes UTC as +0000, not GMT.
    plain.insert(len(plain) - len(n.headers) - 1, f"Date: {formatdate(n.created_at, usegmt=True)[:-3]}+0000\r\n")
    head = "".join(plain).encode("ascii")

    text = None if n.text is None else _plain_body(n.text)
    html = None if n.html is None else _plain_body(n.html)
    if (
        (text is None and html is None)
        or (text is None and n.text is not None)
        or (html is None and n.html is not None)
    ):
        return None
    if text is not None and html is not None:
        b = (boundary or build_boundary(text, html)).encode("ascii")
        return b"".join(
            (
                head,
                _MIME_VERSION,
                b'Content-Type: multipart/alternative;\r\n boundary="',
                b,
                b'"\r\n\r\n--',
                b,
                b"\r\n",
                _TEXT_PART,
                b"\r\n",
                text,
                b"\r\n--",
                b,
                b"\r\n",
                _HTML_PART,
                _MIME_VERSION,
                b"\r\n",
                html,
                b"\r\n--",
                b,
                b"--\r\n",
            )
        )
    if text is not None:
        return b"".join((head, _TEXT_PART, _MIME_VERSION, b"\r\n", text))
    assert html is not None
    return b"".join((head, _HTML_PART, _MIME_VERSION, b"\r\n", html))


def build_mail_bytes(
    notification: Notification, mail_from: str, *, utf8: bool = False, cte_type: str = "8bit"
) -> bytes:
    """The mail's wire bytes: the fast path when it covers the mail, else the stdlib's. Raises ValueError (or
    TypeError) for what cannot be a mail, e.g. a header value with CR or LF."""
    fast = build_fast_bytes(notification, mail_from)
    if fast is not None:
        return fast
    return build_stdlib_bytes(notification, mail_from, utf8=utf8, cte_type=cte_type)


def envelope_recipients(notification: Notification) -> list[str]:
    if notification.envelope:
        return notification.envelope
    seen: dict[str, str] = {}
    for address in notification.recipients:
        spec = addr_spec(address)
        seen.setdefault(spec.lower(), spec)
    return list(seen.values())
