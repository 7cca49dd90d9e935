"""Attachments of a request: the fields and their checks (422), and their bytes, decoded only once the total
size they would have is known to be under MAX_ATTACHMENT_BYTES (413)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.outbox import AttachmentInfo

FILENAME_MAX_CHARS = 255
# MAX_ATTACHMENTS' highest value: a list longer than this is refused before its items are validated.
MAX_ATTACHMENTS_CEILING = 100
# Control characters (tab too), DEL, C1 and the Unicode line separators: none belongs in a filename or a header.
_FILENAME_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# An RFC 2047 encoded word: mail readers decode one in a filename, so `=?utf-8?q?..?=` would not be the name given.
_ENCODED_WORD = re.compile(r"=\?.*\?=", re.DOTALL)
# RFC 6838's restricted-name characters on both sides of the slash, no parameters.
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
_CONTENT_ID = re.compile(r"^[A-Za-z0-9._@-]{1,200}$")


def check_filename(value: str) -> str:
    if value != value.strip():
        raise ValueError("must not start or end with white space (mail readers drop it)")
    if "/" in value or "\\" in value:
        raise ValueError("must be a file's name without a path: no `/` or `\\`")
    if _FILENAME_CONTROLS.search(value):
        raise ValueError("must not contain control or line-separator characters")
    if '"' in value:
        # The stdlib quotes it, but not every mail reader unquotes it: a broken Content-Disposition.
        raise ValueError('must not contain a double quote (")')
    if _ENCODED_WORD.search(value):
        raise ValueError("must not contain an RFC 2047 encoded word (`=?charset?q?...?=`); send the name as it is")
    if value.strip(".") == "":
        raise ValueError("must be a file's name, not `.` or `..`")
    return value


def check_content_type(value: str) -> str:
    if not _CONTENT_TYPE.match(value):
        raise ValueError("must be `type/subtype`, e.g. `application/pdf`, without parameters")
    if value.split("/", 1)[0].lower() in ("multipart", "message"):
        # Both may not be base64-encoded (RFC 2046 5.1, 5.2), and an attachment always is.
        raise ValueError("multipart/* and message/* cannot be attachments; send a mail as application/octet-stream")
    return value.lower()


def check_content_id(value: str) -> str:
    """`logo` or `<logo>`, kept without the brackets: html refers to it as `cid:logo`."""
    bare = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    if not _CONTENT_ID.match(bare):
        raise ValueError("must be 1 to 200 of the characters A-Z a-z 0-9 . _ @ -, with or without <>")
    return bare


class Attachment(BaseModel):
    """A file sent with the mail; with a `content_id`, an inline one that `html` shows as `<img src="cid:...">`."""

    model_config = ConfigDict(extra="forbid")

    filename: Annotated[str, Field(min_length=1, max_length=FILENAME_MAX_CHARS), AfterValidator(check_filename)] = (
        Field(examples=["invoice-2026-07.pdf"])
    )
    content_type: Annotated[str, Field(max_length=255), AfterValidator(check_content_type)] = Field(
        examples=["application/pdf"]
    )
    # Decoded (strictly) only after the sizes of all of them are known to fit: see decode_attachments.
    content: str = Field(description="the file's bytes in base64 (RFC 4648, with padding, no line breaks)")
    content_id: Annotated[str, Field(max_length=202), AfterValidator(check_content_id)] | None = Field(
        None, examples=["logo"]
    )


def decoded_size(content: str) -> int:
    """How many bytes `content` decodes to, from its length and padding alone (nothing is decoded)."""
    padding = 2 if content.endswith("==") else 1 if content.endswith("=") else 0
    return max(0, len(content) * 3 // 4 - padding)


class AttachmentsTooLarge(HTTPException):
    """413: the attachments would decode to more than MAX_ATTACHMENT_BYTES."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            413, f"the attachments decode to {size} bytes together; at most MAX_ATTACHMENT_BYTES={limit} are allowed"
        )


def _error(loc: tuple[str | int, ...], kind: str, msg: str) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": None}


def decode_attachments(
    attachments: Sequence[Attachment], *, max_count: int, max_bytes: int
) -> tuple[list[AttachmentInfo], list[bytes]]:
    """The attachments' metadata and bytes. Raises RequestValidationError (422) for too many, a content that is
    not base64 or a content_id used twice; AttachmentsTooLarge (413) before decoding anything too large."""
    if len(attachments) > max_count:
        raise RequestValidationError(
            [
                _error(
                    ("body", "attachments"),
                    "too_many_attachments",
                    f"{len(attachments)} attachments; at most MAX_ATTACHMENTS={max_count} are allowed",
                )
            ]
        )
    total = sum(decoded_size(attachment.content) for attachment in attachments)
    if total > max_bytes:
        raise AttachmentsTooLarge(total, max_bytes)
    seen: set[str] = set()
    infos: list[AttachmentInfo] = []
    data: list[bytes] = []
    for position, attachment in enumerate(attachments):
        if attachment.content_id is not None:
            if attachment.content_id in seen:
                raise RequestValidationError(
                    [
                        _error(
                            ("body", "attachments", position, "content_id"),
                            "duplicate_content_id",
                            f"content_id {attachment.content_id!r} is given to another attachment already",
                        )
                    ]
                )
            seen.add(attachment.content_id)
        try:
            decoded = base64.b64decode(attachment.content, validate=True)
        except (binascii.Error, ValueError):
            raise RequestValidationError(
                [
                    _error(
                        ("body", "attachments", position, "content"),
                        "base64",
                        "not valid base64: the standard alphabet (A-Z a-z 0-9 + /) with `=` padding,"
                        " no line breaks or spaces",
                    )
                ]
            ) from None
        infos.append(AttachmentInfo(attachment.filename, attachment.content_type, len(decoded), attachment.content_id))
        data.append(decoded)
    return infos, data
