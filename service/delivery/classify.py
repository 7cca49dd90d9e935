"""What an SMTP failure means: transient (4xx, connection refused or lost, timeouts: try again later) or
permanent (5xx: the server will never take this mail), and the outcome of a send that worked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiosmtplib


@dataclass(frozen=True, slots=True)
class Delivery:
    """The server took the mail (for at least one recipient)."""

    smtp_reply: str
    refused: list[dict[str, Any]] = field(default_factory=list)


class DeliveryFailed(Exception):
    def __init__(self, reason: str, *, transient: bool, refused: list[dict[str, Any]] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.refused = refused or []


def server_text(text: str) -> str:
    """A server's reply as text we can store, log and return. aiosmtplib decodes replies with surrogateescape, so
    a server answering in Latin-1 (`f\\xfcr`) leaves lone surrogates that no UTF-8 store accepts."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _refusal(address: str, code: int, message: str) -> dict[str, Any]:
    return {"address": address, "code": code, "message": server_text(message)}


def _refused(errors: dict[str, aiosmtplib.SMTPResponse]) -> list[dict[str, Any]]:
    return [_refusal(address, reply.code, reply.message) for address, reply in errors.items()]


def _describe(code: int, message: str) -> str:
    return server_text(f"{code} {message}".strip())


def classify(exc: BaseException) -> DeliveryFailed:
    """Turn what went wrong during a send into a DeliveryFailed that says whether to try again."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = [_refusal(r.recipient, r.code, r.message) for r in exc.recipients]
        transient = any(400 <= r.code < 500 for r in exc.recipients)
        reason = "all recipients refused: " + "; ".join(
            f"{r.recipient}: {_describe(r.code, r.message)}" for r in exc.recipients
        )
        return DeliveryFailed(reason, transient=transient, refused=refused)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(exc, aiosmtplib.SMTPConnectError):
        return DeliveryFailed(_describe(exc.code, exc.message), transient=not 500 <= exc.code < 600)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return DeliveryFailed(f"not supported by the server: {exc}", transient=False)
    if isinstance(exc, TimeoutError):
        return DeliveryFailed(f"timed out: {exc}" if str(exc) else "timed out", transient=True)
    if isinstance(exc, (aiosmtplib.SMTPException, OSError)):
        return DeliveryFailed(server_text(f"{type(exc).__name__}: {exc}"), transient=True)
    if isinstance(exc, ValueError):
        return DeliveryFailed(f"unsendable: {exc}", transient=False)
    raise exc
