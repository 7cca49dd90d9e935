"""What an SMTP failure means: transient (4xx, connection refused or lost, timeouts: try again later) or
permanent (5xx: the server will never take this mail), as the SendFailed the dispatcher acts on."""

from __future__ import annotations

import re
from collections.abc import Sequence

import aiosmtplib

from service.domain import Bounce, Refusal, SendFailed

# The enhanced status codes (RFC 3463, the IANA registry of RFC 5248) that say the address itself is dead, so
# asking again, today or next week, cannot help: X.1.1 bad destination mailbox, X.1.2 bad destination system
# (no such domain), X.1.10 null MX (RFC 7505), X.2.1 mailbox disabled. Postmark's HardBounce and SES's permanent
# "General"/"NoEmail" bounces are these; a full mailbox (X.2.2) or a policy refusal (X.7.x) is not. docs/events.md
HARD_BOUNCE_STATUSES = frozenset({"5.1.1", "5.1.2", "5.1.10", "5.2.1"})
_ENHANCED_STATUS = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


class DeliveryFailed(Exception):
    """Raised out of a send: carries the SendFailed outcome, the SMTP code as an int when there was one."""

    def __init__(
        self, reason: str, *, transient: bool, code: int | None = None, refused: tuple[Refusal, ...] = ()
    ) -> None:
        super().__init__(reason)
        self.outcome = SendFailed(message=reason, transient=transient, code=code, refused=refused)

    @property
    def reason(self) -> str:
        return self.outcome.message

    @property
    def transient(self) -> bool:
        return self.outcome.transient


def server_text(text: str) -> str:
    """A server's reply as text we can store, log and return. aiosmtplib decodes replies with surrogateescape, so
    a server answering in Latin-1 (`f\\xfcr`) leaves lone surrogates that no UTF-8 store accepts."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def refusal(address: str, code: int, message: str) -> Refusal:
    return Refusal(address=address, code=code, message=server_text(message))


def refusals(errors: dict[str, aiosmtplib.SMTPResponse]) -> tuple[Refusal, ...]:
    """The recipients a server refused in a send it took for the others (aiosmtplib's errors dict)."""
    return tuple(refusal(address, reply.code, reply.message) for address, reply in errors.items())


def describe(code: int, message: str) -> str:
    return server_text(f"{code} {message}".strip())


def classify(exc: BaseException) -> DeliveryFailed:
    """Turn what went wrong during a send into a DeliveryFailed that says whether to try again."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = tuple(refusal(r.recipient, r.code, r.message) for r in exc.recipients)
        transient = any(r.for_now for r in refused)
        reason = "all recipients refused: " + "; ".join(
            f"{r.recipient}: {describe(r.code, r.message)}" for r in exc.recipients
        )
        return DeliveryFailed(reason, transient=transient, refused=refused)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(exc, aiosmtplib.SMTPConnectError):
        return DeliveryFailed(describe(exc.code, exc.message), transient=not 500 <= exc.code < 600, code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return DeliveryFailed(f"not supported by the server: {exc}", transient=False)
    if isinstance(exc, TimeoutError):
        return DeliveryFailed(f"timed out: {exc}" if str(exc) else "timed out", transient=True)
    if isinstance(exc, (aiosmtplib.SMTPException, OSError)):
        return DeliveryFailed(server_text(f"{type(exc).__name__}: {exc}"), transient=True)
    if isinstance(exc, ValueError):
        return DeliveryFailed(f"unsendable: {exc}", transient=False)
    raise exc


def is_hard_bounce(refusal: Refusal) -> bool:
    """A 5xx reply whose enhanced status code (its text's first word) says the mailbox does not exist or is
    disabled: HARD_BOUNCE_STATUSES. A reply without an enhanced code is never a hard bounce (too vague)."""
    if not 500 <= refusal.code < 600:
        return False
    match = _ENHANCED_STATUS.match(refusal.message)
    return match is not None and match[1] in HARD_BOUNCE_STATUSES


def hard_bounces(refused: Sequence[Refusal], *, suppress: bool) -> list[Bounce]:
    """The refusals that are hard bounces, as the outcome write records them on the suppression list."""
    return [
        Bounce(address=r.address, smtp_reply=describe(r.code, r.message), suppress=suppress)
        for r in refused
        if is_hard_bounce(r)
    ]
